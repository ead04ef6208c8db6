"""Stage `eval`: what iteration t made, measured (eval.json).

Response lengths of the chosen, rejected and all candidates; with config.eval.pairs, M_{t+1}
judges those human-ranked responses and eval.json holds its agreement with the people
(judgments.jsonl holds its judgments; <judge key>/shards/ the same, chunk by chunk).
"""

import dataclasses
import json
import os

from srlm_jax import distributed
from srlm_jax import evaluate as evaluate_lib
from srlm_jax import report as report_lib
from srlm_jax.data_io import write_jsonl
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage


def run(ctx, out_dir: str) -> None:
  """Writes eval.json: lengths, and M_{t+1}'s judge agreement when config.eval.pairs is set."""
  cfg = ctx.config
  result = {'lengths': report_lib.response_lengths(ctx.records('pairs', 'pairs.jsonl'),
                                                   ctx.records('candidates', 'candidates.jsonl'))}
  if ctx.eval_groups:  # M_{t+1} judges the human pairs
    judged = ctx.model_at(ctx.params_after())
    # Judged in shards under out_dir/<judge key>/ (resumable), then all in judgments.jsonl.
    metrics, records = evaluate_lib.evaluate_judge(
        judged, ctx.eval_groups, dataclasses.replace(ctx.settings.judge, k=cfg.eval.k),
        seed=ctx.settings.seed, progress=ctx.progress, cache_dir=out_dir)
    write_jsonl(os.path.join(out_dir, 'judgments.jsonl'), records)
    result['judge_agreement'] = {'model': f'M{ctx.t + 1}', 'pairs_file': cfg.eval.pairs,
                                 **metrics}
  if distributed.is_writer():
    with open(os.path.join(out_dir, 'eval.json'), 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=2)


STAGE = register(Stage('eval', run, inputs=('candidates', 'pairs')))
