"""Stage `judgments`: M_t judges each candidate K times, as the judge `creation.judge.kind`.

Per shard of candidate records, `judges.judge` samples the judge Rollout and reads its
verdicts from the device tokens; the shard's JudgeScores (scores_RxK, valid_RxK, forced_RxK,
argmax_RxK, mass_RxK, truncated_R; one row per candidate, prompt-major like the candidate
Rollout) are saved beside its records, so a killed run resumes, and published for the pairs
stage. judgments.jsonl holds one record per (prompt, candidate) for audit; DONE holds the
judgment statistics (valid and forced fractions, tie rate, within/between variances) and the
judge requests' prefill counts (`prefill`, as the candidates stage's).
"""

import os
from typing import Any, Optional, Sequence

from srlm_jax import judges
from srlm_jax import rollout
from srlm_jax.data_io import write_jsonl
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage


def judge_candidates(model: Any, candidate_records: Sequence[dict], settings, *,
                     shard: int = 0, progress: Any = True,
                     stats: Optional[dict] = None) -> tuple[list, judges.JudgeScores]:
  """Returns (one record per (prompt, candidate) with its K judgments, their JudgeScores);
  `stats` gets the judge requests' prefill counts."""
  flat = [(r, j, text) for r in candidate_records for j, text in enumerate(r['candidates'])]
  texts, scores = judges.judge(
      model, settings.judge.kind, [r['prompt'] for r, _, _ in flat], [t for _, _, t in flat],
      settings.judge, seed=(settings.seed + 2) * 1_000_003 + shard, progress=progress,
      where=[f'judgment of {r["id"]} candidate {j}' for r, j, _ in flat],
      truncate=settings.truncate_prompts, stats=stats)
  # Host edge: the audit records.
  items = [{'id': r['id'], 'candidate': j, 'prompt': r['prompt'], 'response': text}
           for r, j, text in flat]
  records = judges.judgment_records(items, judges.to_host(texts, scores), settings.judge.kind,
                                    settings.truncate_prompts)
  return records, scores


def run(ctx, out_dir: str) -> dict:
  """Writes judgments.jsonl, publishes the JudgeScores; returns the judgment statistics."""
  model = ctx.model()
  cands = ctx.records('candidates', 'candidates.jsonl')

  def shard(records, s):
    stats = {}
    out, scores = judge_candidates(model, records, ctx.settings, shard=s, progress=ctx.progress,
                                   stats=stats)
    return out, scores.arrays(), {'prefill': stats}

  infos = []
  records, arrays = ctx.sharded(out_dir, cands, shard, 'judgments', infos)
  write_jsonl(os.path.join(out_dir, 'judgments.jsonl'), records)
  ctx.publish(out_dir, arrays)
  return dict(judges.judgment_stats(records), judge=ctx.settings.judge.kind,
              prefill=rollout.prefill_summary([i.get('prefill', {}) for i in infos]))


STAGE = register(Stage('judgments', run, inputs=('candidates',), records=('judgments.jsonl',)))
