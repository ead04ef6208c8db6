"""Stage `pairs`: the best and worst judged candidate of each prompt become a DPO pair.

Writes pairs.jsonl and decisions.jsonl (one line per prompt: a pair, or why none).
"""

import os

from srlm_jax import creation
from srlm_jax.data_io import write_jsonl
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage


def run(ctx, out_dir: str) -> dict:
  """Returns the number of pairs after writing them and one decision per prompt."""
  cands = ctx.records('candidates', 'candidates.jsonl')
  judged = ctx.records('judgments', 'judgments.jsonl')
  pair_records, decisions = creation.make_pairs(cands, judged, ctx.settings)
  write_jsonl(os.path.join(out_dir, 'pairs.jsonl'), pair_records)
  write_jsonl(os.path.join(out_dir, 'decisions.jsonl'), decisions)
  return {'pairs': len(pair_records)}


STAGE = register(Stage('pairs', run, inputs=('candidates', 'judgments'),
                       records=('pairs.jsonl', 'decisions.jsonl')))
