"""Stage `guard`: the iteration measured against people and a frozen judge, and the decision.

Measures (srlm_jax/guards.py): agreement with people (the eval stage's held-out pairs,
eval.json `judge_agreement`, pooled with the self-judge's agreement with this iteration's
human review labels, <workdir>/human_labels/iter_<t>.jsonl); the self-judge against a frozen
reference judge (`guard.reference`: M0 or M1) that judges the same candidates (forced verdicts,
`guard.k` each: cheap); the mean candidate length and the score-length correlation. Then the
policy (`guard.*`) decides: continue, warn, roll back to the best model kept so far, or stop.

Writes reference.jsonl (the frozen judge's judgments; reused from the review stage when it ran
first), guard.json ({iteration, model, start_model, reference, measured, decision}), the run's
<workdir>/guard_history.jsonl (every iteration's record so far), and DONE info
{'action', 'rollback_to' (a params dir relative to the workdir, '' for M0) or 'stop': True},
which the runner follows.
"""

import dataclasses
import json
import os
from typing import Optional

import jax.numpy as jnp
import numpy as np

from srlm_jax import distributed
from srlm_jax import guards
from srlm_jax import judges
from srlm_jax.data_io import write_jsonl
from srlm_jax.pipeline import stage as stage_lib
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage
from srlm_jax.review import labels as labels_lib

HISTORY = 'guard_history.jsonl'


def workdir_of(ctx) -> str:
  """Returns the run's workdir (iteration folders are its children)."""
  return os.path.dirname(ctx.iter_dir)


def relative(ctx, params_dir: Optional[str]) -> str:
  """Returns a params dir relative to the workdir ('' for M0, None)."""
  return '' if params_dir is None else os.path.relpath(params_dir, workdir_of(ctx))


def reference_params(ctx) -> Optional[str]:
  """Returns the frozen reference judge's params dir: M1's ('m1') or None, M0 ('m0')."""
  if ctx.config.guard.reference == 'm1' and ctx.config.sft.enabled:
    return os.path.join(workdir_of(ctx), 'm1_sft', stage_lib.get('sft').params)
  return None


def reference_settings(ctx) -> judges.JudgeSettings:
  """Returns the frozen judge's settings: the self-judge's rubric, guard.k forced judgments."""
  g = ctx.config.guard
  return dataclasses.replace(ctx.settings.judge, k=g.k, verdict=g.verdict,
                             max_new_tokens=g.max_new_tokens)


def judge_reference(ctx, out_dir: str) -> dict:
  """Returns the frozen judge's {'reference_scores_RxK', 'reference_valid_RxK'} of every
  candidate (resumable shards under out_dir), after writing out_dir/reference.jsonl."""
  model = ctx.model_at(reference_params(ctx))
  settings = reference_settings(ctx)
  cands = ctx.records('candidates', 'candidates.jsonl')

  def shard(records, s):
    flat = [(r, j, text) for r in records for j, text in enumerate(r['candidates'])]
    texts, scores = judges.judge(
        model, settings.kind, [r['prompt'] for r, _, _ in flat], [t for _, _, t in flat],
        settings, seed=(ctx.settings.seed + 7) * 1_000_003 + s, progress=ctx.progress,
        where=[f'reference judgment of {r["id"]} candidate {j}' for r, j, _ in flat],
        truncate=ctx.settings.truncate_prompts)
    items = [{'id': r['id'], 'candidate': j} for r, j, _ in flat]
    out = judges.judgment_records(items, judges.to_host(texts, scores), settings.kind)
    return out, {'reference_scores_RxK': scores.scores_RxK,
                 'reference_valid_RxK': scores.valid_RxK}

  records, arrays = ctx.sharded(out_dir, cands, shard, 'reference judgments')
  write_jsonl(os.path.join(out_dir, 'reference.jsonl'), records)
  return arrays


def reference_arrays(ctx, out_dir: str) -> tuple[dict, bool]:
  """Returns (the frozen judge's arrays, whether this stage judged them): the review stage's
  when it ran before this one, else judged here."""
  if ctx.info('review').get('reference_judged'):
    return ctx.arrays('review'), False
  return judge_reference(ctx, out_dir), True


def _pairs_arrays(pair_records, ids, p):
  """Host edge: the DPO pairs as (chosen_P, rejected_P, has_pair_P) index arrays."""
  row = {pid: i for i, pid in enumerate(ids)}
  chosen, rejected, has = np.zeros(p, np.int32), np.zeros(p, np.int32), np.zeros(p, bool)
  for r in pair_records:
    i = row[r['id']]
    chosen[i], rejected[i], has[i] = r['chosen_index'], r['rejected_index'], True
  return chosen, rejected, has


def _ratio(agree, count) -> Optional[float]:
  return None if not int(count) else round(1.0 - float(agree) / int(count), 6)


def measure(ctx, reference: dict, labels: list) -> dict:
  """Returns this iteration's guard measurements (guards.decide's input)."""
  n = ctx.settings.n_candidates
  cands = ctx.records('candidates', 'candidates.jsonl')
  judged = ctx.arrays('judgments')
  how = ctx.settings.judge.aggregate  # as the pairs stage reduces the K judgments
  self_R, _ = judges.aggregate(judged['scores_RxK'], judged['valid_RxK'], how)
  ref_R, _ = judges.aggregate(reference['reference_scores_RxK'],
                              reference['reference_valid_RxK'], how)
  lengths_R = ctx.arrays('candidates')['lengths']
  p = len(cands)
  agree, count = guards.judge_agreement(self_R.reshape(p, n), ref_R.reshape(p, n))
  pairs = ctx.records('pairs', 'pairs.jsonl') if ctx.info('pairs') else []
  chosen, rejected, has = _pairs_arrays(pairs, [c['id'] for c in cands], p)
  pair_agree, pair_count = guards.chosen_agreement(ref_R.reshape(p, n), chosen, rejected, has)
  corr = guards.score_length_correlation(self_R, lengths_R)
  mean_length = jnp.mean(lengths_R.astype(jnp.float32))
  host = distributed.to_host({'agree': agree, 'count': count, 'pair_agree': pair_agree,
                              'pair_count': pair_count, 'corr': corr, 'len': mean_length})
  heldout = (ctx.info('eval') and _eval_agreement(ctx)) or {}
  review_agree, review_n = guards.label_agreement(labels)
  review = review_agree / review_n if review_n else None
  corr = float(host['corr'])
  return {
      'heldout_agreement': heldout.get('pairwise_accuracy'),
      'heldout_pairs': heldout.get('pairs', 0),
      'start_heldout_agreement': heldout.get('start'),
      'review_agreement': None if review is None else round(review, 6),
      'review_labels': review_n,
      'human_agreement': guards.pooled([(heldout.get('pairwise_accuracy'),
                                         heldout.get('pairs', 0)), (review, review_n)]),
      'disagreement': _ratio(host['agree'], host['count']),
      'candidate_pairs': int(host['count']),
      'pair_disagreement': _ratio(host['pair_agree'], host['pair_count']),
      'dpo_pairs': int(host['pair_count']),
      'mean_length': round(float(host['len']), 4) if p else None,
      'score_length_correlation': None if np.isnan(corr) else round(corr, 6),
  }


def _eval_agreement(ctx) -> dict:
  path = ctx.path('eval', 'eval.json')
  if not os.path.exists(path):
    return {}
  with open(path, encoding='utf-8') as f:
    result = json.load(f)
  agreement = result.get('judge_agreement') or {}
  if 'pairwise_accuracy' not in agreement:
    return {}
  # Iteration 1's eval also measures where the run starts (M1, or M0 without SFT).
  start = ((result.get('baselines') or {}).get('M1' if ctx.config.sft.enabled else 'M0') or {}
           ).get('judge_agreement') or {}
  return {'pairwise_accuracy': agreement['pairwise_accuracy'],
          'pairs': int(agreement.get('counts', {}).get('pairs', 0)),
          'start': start.get('pairwise_accuracy')}


def history(workdir: str, t: int) -> list:
  """Returns the guard records of iterations 1 .. t-1 that have one, in order."""
  out = []
  for s in range(1, t):
    path = os.path.join(workdir, f'iter_{s}', 'guard', 'guard.json')
    if os.path.exists(path):
      with open(path, encoding='utf-8') as f:
        out.append(json.load(f))
  return out


def run(ctx, out_dir: str) -> dict:
  """Writes guard.json and the run's guard history; returns the decision the runner follows."""
  workdir = workdir_of(ctx)
  reference, judged_here = reference_arrays(ctx, out_dir)
  labels = labels_lib.read_labels(labels_lib.labels_path(workdir, ctx.t))
  measured = measure(ctx, reference, labels)
  if judged_here:
    ctx.publish(out_dir, reference)
  measured['start_model'] = relative(ctx, ctx.params_dir)
  earlier = history(workdir, ctx.t)
  decision = guards.decide(measured, earlier, guards.policy_from_config(ctx.config.guard))
  record = {'iteration': ctx.t, 'model': relative(ctx, ctx.params_after()),
            'start_model': measured.pop('start_model'),
            'reference': ctx.config.guard.reference, 'measured': measured,
            'decision': decision}
  if distributed.is_writer():
    with open(os.path.join(out_dir, 'guard.json'), 'w', encoding='utf-8') as f:
      json.dump(record, f, indent=2)
  write_jsonl(os.path.join(workdir, HISTORY), earlier + [record])
  info = {'action': decision['action']}
  if decision['action'] == 'rollback':
    info['rollback_to'] = decision['rollback_to']
  if decision['action'] == 'stop':
    info['stop'] = True
  return info


STAGE = register(Stage('guard', run, inputs=('candidates', 'judgments'),
                       records=('guard.json', 'reference.jsonl')))
