"""Stage `pairs`: the best and worst judged candidate of each prompt become a DPO pair.

Reads the candidate Rollout and the judgment scores as arrays, chooses the pairs and builds
the DPO dataset from the sampled token ids on the device (rewards/pairs.py), and publishes
it (flattened: 'chosen/inputs', ..., 'ref_chosen_logps', ...) for the dpo stage. At the host
edge it writes pairs.jsonl ({id, prompt, chosen, rejected, chosen_index, rejected_index,
chosen_score, rejected_score, chosen_length, rejected_length}) and decisions.jsonl (one line
per prompt: {id, decision, scores[N] (mean valid judgment), excluded[N] (null, 'empty' or
'truncated': candidates that are never chosen nor rejected)}).

The reference log-probs are the Rollout's when M_t sampled in float32 (the policy DPO starts
from); when it sampled in a lower compute dtype (bf16 on accelerators) they are recomputed by
one forward pass of M_t's float32 master over the dataset's rows.
"""

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from srlm_jax import judges
from srlm_jax import rollout
from srlm_jax import sampler
from srlm_jax.data_io import write_jsonl
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage
from srlm_jax.rewards import pairs as pairs_lib
from srlm_jax.train import reference as train_reference


def excluded(candidate_records: Sequence[dict], pair_truncated: bool) -> list:
  """Returns per prompt, per candidate, why it cannot be paired: None, 'empty' (its text is
  blank: no training example) or 'truncated' (stopped by the length limit)."""
  cut = sampler.StopReason.MAX_TOKENS.name.lower()
  return [['empty' if not text.strip() else
           'truncated' if reason == cut and not pair_truncated else None
           for text, reason in zip(r['candidates'], r['stop_reasons'])]
          for r in candidate_records]


def make_pairs(candidate_records: Sequence[dict], cand: rollout.Rollout, scores_RxK: jax.Array,
               valid_RxK: jax.Array, settings, pad_id: int = 0) -> tuple[list, list, dict]:
  """Returns (pair records, one decision record per prompt, the DPO dataset on the device)."""
  n, p = settings.n_candidates, len(candidate_records)
  why = excluded(candidate_records, settings.pair_truncated)
  # Host edge: which candidates are blank is a property of their texts.
  nonempty_R = jax.device_put(np.array([w != 'empty' for ws in why for w in ws], bool))
  usable_PxN = pairs_lib.usable(cand.stop_reason, nonempty_R, n=n,
                                pair_truncated=settings.pair_truncated)
  k = scores_RxK.shape[-1]
  out = pairs_lib.choose_pairs(
      scores_RxK.reshape(p, n, k), valid_RxK.reshape(p, n, k), cand.lengths.reshape(p, n),
      usable_PxN, min_gap=float(settings.min_gap),
      length_margin=None if settings.length_margin is None else float(settings.length_margin),
      aggregate=settings.judge.aggregate)
  rows_Q = pairs_lib.pair_rows(out['has_pair'])
  dataset = pairs_lib.preference_dataset(cand, out['chosen'], out['rejected'], rows_Q,
                                         pad_id=pad_id)
  host = jax.device_get(out)  # host edge: the records
  pair_records, decisions = [], []
  for i, r in enumerate(candidate_records):
    c, rj = int(host['chosen'][i]), int(host['rejected'][i])
    decisions.append({'id': r['id'], 'decision': pairs_lib.REASONS[int(host['reason'][i])],
                      'scores': [judges.score_json(s) for s in host['mean_PxN'][i]],
                      'excluded': why[i]})
    if host['has_pair'][i]:
      pair_records.append({
          'id': r['id'], 'prompt': r['prompt'], 'chosen': r['candidates'][c],
          'rejected': r['candidates'][rj], 'chosen_index': c, 'rejected_index': rj,
          'chosen_score': float(host['chosen_score'][i]),
          'rejected_score': float(host['rejected_score'][i]),
          'chosen_length': int(r['lengths'][c]), 'rejected_length': int(r['lengths'][rj])})
  return pair_records, decisions, dataset


def float32_reference(sampled_by, master, dataset: dict) -> dict:
  """Returns the dataset with the reference log-probs of the float32 `master` (one forward
  pass) when the candidates were sampled in a lower precision, else the dataset as it is."""
  if jnp.dtype(sampled_by.config.dtype) == jnp.float32 or not dataset['chosen']['inputs'].size:
    return dataset
  out = dict(dataset)
  for side in ('chosen', 'rejected'):
    token_logps = train_reference.dataset_token_logps(
        master.config, master.params, dataset[side], mesh=getattr(master, 'mesh', None))
    out[f'ref_{side}_token_logps'] = jax.device_put(np.asarray(token_logps, np.float32))
    out[f'ref_{side}_logps'] = jax.device_put(np.asarray(token_logps, np.float32).sum(-1))
  return out


def run(ctx, out_dir: str) -> dict:
  """Returns the number of pairs (and of excluded candidates) after writing and publishing."""
  cands = ctx.records('candidates', 'candidates.jsonl')
  cand = rollout.from_arrays(ctx.arrays('candidates'), n=ctx.settings.n_candidates)
  judged = ctx.arrays('judgments')
  model = ctx.model()  # the one that sampled the candidates
  pair_records, decisions, dataset = make_pairs(
      cands, cand, judged['scores_RxK'], judged['valid_RxK'], ctx.settings,
      pad_id=model.tokenizer.pad_id)
  if jnp.dtype(model.config.dtype) != jnp.float32:
    dataset = float32_reference(model, ctx.model(training=True), dataset)
  write_jsonl(os.path.join(out_dir, 'pairs.jsonl'), pair_records)
  write_jsonl(os.path.join(out_dir, 'decisions.jsonl'), decisions)
  ctx.publish(out_dir, rollout.flatten(dataset))
  counts = [w for d in decisions for w in d['excluded'] if w]
  return {'pairs': len(pair_records), 'excluded_empty': counts.count('empty'),
          'excluded_truncated': counts.count('truncated')}


STAGE = register(Stage('pairs', run, inputs=('candidates', 'judgments'),
                       records=('pairs.jsonl', 'decisions.jsonl')))
