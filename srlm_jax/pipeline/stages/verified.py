"""Stage `verified`: Iterative RPO's pairs: correct against incorrect chains of thought.

Iterative RPO (Pang et al. 2024, arXiv 2404.19733): M_t samples creation.n_candidates chains
of thought for each task of the `tasks` stage; the task's checker (tasks.check: the program's
answer, never a model) scores each 1 (correct) or 0 (incorrect), and a task with at least one
of each makes a pair, a correct chain chosen against an incorrect one (rewards/pairs.py: the
first correct and the first incorrect usable candidate; all correct or all incorrect: a tie,
no pair). The checker stands where the judge stands in the self-rewarding loop, as one
judgment per candidate (K = 1, always valid), so pairing, length control, the DPO rows and
the reference log-probs are the pairs stage's own code. The rpo stage trains on the result.

Records: candidates.jsonl (the candidates stage's per-task record plus `correct` [N]),
pairs.jsonl and decisions.jsonl (the pairs stage's formats). DONE: the candidates' accuracy
(the fraction correct: M_t's pass rate), the fraction of tasks with any correct candidate,
and the pair count.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from srlm_jax import rollout
from srlm_jax import tasks as tasks_lib
from srlm_jax.data_io import write_jsonl
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage
from srlm_jax.pipeline.stages import candidates as candidates_stage
from srlm_jax.pipeline.stages import pairs as pairs_stage


def checker_scores(problems, candidate_records) -> np.ndarray:
  """Returns host float32 [R, 1]: 1 where a candidate's final answer checks, else 0."""
  return np.array([[float(tasks_lib.check(task, text))] for task, r in
                   zip(problems, candidate_records) for text in r['candidates']], np.float32)


def run(ctx, out_dir: str) -> dict:
  """Returns the candidates' accuracy and the pair count after writing and publishing."""
  problems = ctx.records('tasks', 'tasks.jsonl')
  model = ctx.model()
  ids, _ = candidates_stage.encode(model, problems, ctx.settings)
  width = max([len(x) for x in ids], default=1)

  def shard(items, s):
    records, cand = candidates_stage.sample_candidates(
        model, items, ctx.settings, shard=s, prompt_width=width, progress=ctx.progress)
    return records, cand.arrays()

  records, arrays = ctx.sharded(out_dir, problems, shard, 'verified')
  cand = rollout.from_arrays(arrays, n=ctx.settings.n_candidates)
  scores_Rx1 = checker_scores(problems, records)
  for r, row in zip(records, scores_Rx1.reshape(len(records), -1)):
    r['correct'] = [bool(x) for x in row]
  # Host edge: the checker's verdicts go up as one judgment per candidate.
  scores = jax.device_put(scores_Rx1)
  pair_records, decisions, dataset = pairs_stage.make_pairs(
      records, cand, scores, jnp.ones(scores.shape, bool), ctx.settings,
      pad_id=model.tokenizer.pad_id)
  if jnp.dtype(model.config.dtype) != jnp.float32:
    dataset = pairs_stage.float32_reference(model, ctx.model(training=True), dataset)
  write_jsonl(os.path.join(out_dir, 'candidates.jsonl'), records)
  write_jsonl(os.path.join(out_dir, 'pairs.jsonl'), pair_records)
  write_jsonl(os.path.join(out_dir, 'decisions.jsonl'), decisions)
  if pair_records:
    ctx.publish(out_dir, rollout.flatten(dataset))
  correct = [x for r in records for x in r['correct']]
  return {'pairs': len(pair_records),
          'accuracy': sum(correct) / len(correct) if correct else None,
          'any_correct': sum(any(r['correct']) for r in records) / max(1, len(records))}


STAGE = register(Stage('verified', run, inputs=('tasks',),
                       records=('candidates.jsonl', 'pairs.jsonl', 'decisions.jsonl')))
