"""Stage `steps`: process-based self-rewarding's data: step search on the iteration's tasks.

M_t solves each task of the `tasks` stage step by step (process/search.py): per step it
samples creation.n_candidates next steps from one prefix, judges them with its own step judge
(creation.judge.kind 'step' pointwise or 'step_pair' pairwise), pairs the best and worst, and
extends the prefix with the best. The step pairs' DPO rows (prompt = the prefix, completion =
the step, M_t's sampling log-probs as the reference) are published, flattened as the pairs
stage's, for the step_dpo stage.

Records (audit): solutions.jsonl, per task {id, prompt, steps: [{step, candidates, scores,
truth, usable, stop_reasons, extended_by, pair, decision, chosen, rejected, judgments}],
solution, correct, answer}; step_pairs.jsonl, per step pair {id, step, prefix, chosen,
rejected, chosen_score, rejected_score, chosen_truth, rejected_truth}. `truth` is the
program's label of each candidate (process/truth.py); DONE holds the step judge's agreement
with it and the solutions' accuracy, the numbers to compare across iterations.
"""

import os

import jax.numpy as jnp

from srlm_jax import rollout
from srlm_jax.data_io import write_jsonl
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage
from srlm_jax.pipeline.stages import pairs as pairs_stage
from srlm_jax.process import search as search_lib
from srlm_jax.process import steps as steps_lib
from srlm_jax.process import truth as truth_lib


def search_settings(config, settings) -> search_lib.SearchSettings:
  """Returns the step search's settings from config.process and the creation settings."""
  p = config.process
  return search_lib.SearchSettings(
      split=steps_lib.SplitRule(p.split, p.marker), n=settings.n_candidates,
      max_steps=p.max_steps, max_new_tokens=p.step_max_new_tokens,
      temperature=settings.temperature, top_p=settings.top_p, judge=settings.judge,
      min_gap=settings.min_gap, pair_truncated=settings.pair_truncated,
      final_marker=p.final_marker)


def step_pairs(records) -> list:
  """Returns one record per step pair of the searched solutions."""
  out = []
  for rec in records:
    prefix = []
    for step in rec['steps']:
      if step['pair']:
        c, r = step['chosen'], step['rejected']
        out.append({'id': rec['id'], 'step': step['step'], 'prefix': list(prefix),
                    'chosen': step['candidates'][c], 'rejected': step['candidates'][r],
                    'chosen_score': step['scores'][c], 'rejected_score': step['scores'][r],
                    'chosen_truth': step['truth'][c], 'rejected_truth': step['truth'][r]})
      prefix.append(step['candidates'][step['extended_by']])
  return out


def run(ctx, out_dir: str) -> dict:
  """Returns the step pairs, solution accuracy and judge agreement after writing the records."""
  problems = ctx.records('tasks', 'tasks.jsonl')
  model = ctx.model()
  settings = search_settings(ctx.config, ctx.settings)

  def shard(items, s):
    records, dataset = search_lib.search(model, items, settings,
                                         seed=(ctx.settings.seed + 3) * 1_000_003 + s,
                                         progress=ctx.progress)
    truth_lib.label_records(records, items, settings.final_marker)
    return records, (rollout.flatten(dataset) if dataset is not None else {})

  records, arrays = ctx.sharded(out_dir, problems, shard, 'steps')
  pairs = step_pairs(records)
  write_jsonl(os.path.join(out_dir, 'solutions.jsonl'), records)
  write_jsonl(os.path.join(out_dir, 'step_pairs.jsonl'), pairs)
  if pairs:
    if jnp.dtype(model.config.dtype) != jnp.float32:  # sampled in bf16: float32 reference
      arrays = rollout.flatten(pairs_stage.float32_reference(
          model, ctx.model(training=True), rollout.unflatten(arrays)))
    ctx.publish(out_dir, arrays)
  return {'pairs': len(pairs), 'solutions': len(records),
          'accuracy': truth_lib.solution_accuracy(records),
          'steps_per_solution': sum(len(r['steps']) for r in records) / max(1, len(records)),
          'judge_vs_truth': truth_lib.judge_agreement(records)}


STAGE = register(Stage('steps', run, inputs=('tasks',),
                       records=('solutions.jsonl', 'step_pairs.jsonl')))
