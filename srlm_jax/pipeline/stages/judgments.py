"""Stage `judgments`: M_t judges each candidate K times (judgments.jsonl; stats in DONE)."""

import os

from srlm_jax import creation
from srlm_jax import judge
from srlm_jax.data_io import write_jsonl
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage


def run(ctx, out_dir: str) -> dict:
  """Returns the judgment statistics (valid fraction, ties, variances) after writing them."""
  model = ctx.model()
  parser = judge.make_score_parser(model.tokenizer)
  cands = ctx.records('candidates', 'candidates.jsonl')
  out, _ = ctx.sharded(
      out_dir, cands,
      lambda rs, s: (creation.judge_candidates(model, rs, ctx.settings, parser=parser, shard=s,
                                               progress=ctx.progress), {}),
      'judgments')
  write_jsonl(os.path.join(out_dir, 'judgments.jsonl'), out)
  return creation.judgment_stats(out)


STAGE = register(Stage('judgments', run, inputs=('candidates',), records=('judgments.jsonl',)))
