"""Preference pairs from judged candidates, and the DPO dataset built from their token ids.

`choose_pairs` takes the judgments of the candidates as arrays and, in one jitted function,
reduces the valid judgments of each candidate (judges.aggregate: their mean, the paper, or
their sum, SPCT's vote) and picks (chosen, rejected) per prompt. `preference_dataset` then
builds the DPO batch rows from the candidate Rollout's sampled ids (no text is tokenised
again) with the Rollout's log-probs as the reference's, on the device.

Rules (Self-Rewarding LMs, Yuan et al. 2024, with the Meta-Rewarding length control):
  * A candidate counts when its score is valid and not NaN, and it is usable: not empty and
    (by default) not truncated (stopped by the length limit: its text is cut off, so it is
    neither a good example nor a fair bad one).
  * chosen = the highest-scored, rejected = the lowest-scored counted candidate; among equal
    scores the lowest index wins, so the result is deterministic.
  * No pair when fewer than two candidates count ('fewer_than_two_usable' when two or more
    have a valid score but the unusable ones leave fewer than two), when best == worst (a
    tie), or when the chosen score exceeds the rejected one by less than `min_gap`.
  * Length control (`length_margin` set): chosen is the SHORTEST counted candidate whose score
    is >= best - length_margin and > worst (the worst-scored candidates are left out so that a
    pair remains; lowest index among equal lengths). Rejected stays the lowest-scored.

Axis legend: P prompts, N candidates per prompt, K judgments per candidate, R = P*N candidate
rows (prompt-major), Q pairs, S = prompt width + completion width (a DPO row), M completion
width.
"""

import functools
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from srlm_jax import sampler
from srlm_jax.judges.base import aggregate as judge_aggregate
from srlm_jax.judges.base import mean_valid  # pylint: disable=unused-import (re-exported)
from srlm_jax.rollout import rollout as rollout_lib

# `reason` codes of select_pairs / choose_pairs, by index.
REASONS = ('pair', 'fewer_than_two_valid', 'tie', 'gap_below_min', 'fewer_than_two_usable')
PAIR, FEWER_THAN_TWO_VALID, TIE, GAP_BELOW_MIN, FEWER_THAN_TWO_USABLE = range(5)


def _first(mask_PxN: jax.Array) -> jax.Array:
  """Returns the int32 index of the first True per row (0 where none)."""
  return jnp.argmax(mask_PxN, axis=-1).astype(jnp.int32)


def select_pairs(scores_PxN: jax.Array, valid_PxN: jax.Array,
                 lengths_PxN: Optional[jax.Array] = None, *, min_gap=0.0,
                 length_margin=None) -> Dict[str, jax.Array]:
  """Returns per prompt the pair: chosen, rejected, has_pair, chosen/rejected_score, reason.

  Args:
    scores_PxN: float scores (NaN counts as invalid).
    valid_PxN: bool, whether each score is valid.
    lengths_PxN: candidate lengths (e.g. tokens); required with `length_margin`.
    min_gap: the least chosen - rejected score difference that makes a pair.
    length_margin: when set, length control (see the module docstring).

  Returns:
    A dict of [P] arrays: `chosen`, `rejected` (int32 indices, meaningful where `has_pair`;
    0 in rows where nothing counts), `has_pair` (bool), `chosen_score`, `rejected_score`
    (float32, NaN where the index points at no counted candidate) and `reason` (int32 index
    into REASONS).
  """
  scores_PxN = jnp.asarray(scores_PxN, jnp.float32)
  counted_PxN = jnp.asarray(valid_PxN, bool) & ~jnp.isnan(scores_PxN)
  n_counted_P = counted_PxN.sum(axis=-1)
  best_P = jnp.max(jnp.where(counted_PxN, scores_PxN, -jnp.inf), axis=-1)
  worst_P = jnp.min(jnp.where(counted_PxN, scores_PxN, jnp.inf), axis=-1)
  # Compare with the extremes rather than argmax/argmin so that +-inf scores stay exact.
  chosen_P = _first(counted_PxN & (scores_PxN == best_P[:, None]))
  rejected_P = _first(counted_PxN & (scores_PxN == worst_P[:, None]))
  if length_margin is not None:
    if lengths_PxN is None:
      raise ValueError('select_pairs: length_margin is set but lengths_PxN is not given')
    lengths_PxN = jnp.asarray(lengths_PxN)
    near_top_PxN = (counted_PxN & (scores_PxN >= (best_P - length_margin)[:, None])
                    & (scores_PxN > worst_P[:, None]))
    big = (jnp.iinfo(lengths_PxN.dtype).max if jnp.issubdtype(lengths_PxN.dtype, jnp.integer)
           else jnp.inf)
    shortest_P = jnp.min(jnp.where(near_top_PxN, lengths_PxN, big), axis=-1)
    short_PxN = near_top_PxN & (lengths_PxN == shortest_P[:, None])
    # With a tie nothing is near-top-and-above-worst; keep the plain choice there.
    chosen_P = jnp.where(short_PxN.any(axis=-1), _first(short_PxN), chosen_P)

  def score_at(index_P):
    take = lambda a: jnp.take_along_axis(a, index_P[:, None], axis=-1)[:, 0]
    return jnp.where(take(counted_PxN), take(scores_PxN), jnp.nan)

  chosen_score_P, rejected_score_P = score_at(chosen_P), score_at(rejected_P)
  reason_P = jnp.where(
      n_counted_P < 2, FEWER_THAN_TWO_VALID,
      jnp.where(best_P == worst_P, TIE,
                jnp.where(chosen_score_P - rejected_score_P < min_gap, GAP_BELOW_MIN, PAIR)))
  reason_P = reason_P.astype(jnp.int32)
  return dict(chosen=chosen_P, rejected=rejected_P, has_pair=reason_P == PAIR,
              chosen_score=chosen_score_P, rejected_score=rejected_score_P, reason=reason_P)


@functools.partial(jax.jit, static_argnames=('min_gap', 'length_margin', 'aggregate'))
def choose_pairs(scores_PxNxK: jax.Array, valid_PxNxK: jax.Array, lengths_PxN: jax.Array,
                 usable_PxN: jax.Array, *, min_gap: float = 0.0,
                 length_margin: Optional[float] = None,
                 aggregate: str = 'mean') -> Dict[str, jax.Array]:
  """Returns select_pairs' [P] arrays of each usable candidate's score, its K judgments
  reduced by judges.aggregate (`aggregate`: 'mean' of the valid ones, the paper, or 'sum',
  SPCT's vote), plus `mean_PxN` (that score, NaN where no judgment is valid; the name is
  kept from when it was always the mean) and `count_PxN` (valid judgments).

  One jitted function: the reduction over K and the selection. A prompt with two or more
  scored candidates of which fewer than two are usable gets reason FEWER_THAN_TWO_USABLE.
  """
  mean_PxN, count_PxN = judge_aggregate(scores_PxNxK, valid_PxNxK, aggregate)
  scored_PxN = count_PxN > 0
  out = select_pairs(mean_PxN, scored_PxN & jnp.asarray(usable_PxN, bool), lengths_PxN,
                     min_gap=min_gap, length_margin=length_margin)
  unusable_P = (out['reason'] == FEWER_THAN_TWO_VALID) & (scored_PxN.sum(axis=-1) >= 2)
  out['reason'] = jnp.where(unusable_P, FEWER_THAN_TWO_USABLE, out['reason']).astype(jnp.int32)
  return {**out, 'mean_PxN': mean_PxN, 'count_PxN': count_PxN}


@functools.partial(jax.jit, static_argnames=('n', 'pair_truncated'))
def usable(stop_reason_R: jax.Array, nonempty_R: jax.Array, *, n: int,
           pair_truncated: bool = False) -> jax.Array:
  """Returns usable_PxN: candidates that are not empty and, unless pair_truncated, did not
  stop at the length limit (sampler.StopReason.MAX_TOKENS)."""
  ok_R = jnp.asarray(nonempty_R, bool)
  if not pair_truncated:
    ok_R &= stop_reason_R != int(sampler.StopReason.MAX_TOKENS)
  return ok_R.reshape(-1, n)


def pair_rows(has_pair_P: jax.Array) -> jax.Array:
  """Returns the int32 indices [Q] of the prompts with a pair, on the device.

  A host edge: the number of pairs sets the dataset's shape, so has_pair is read on the host
  (explicitly) and the indices go back up explicitly.
  """
  rows = np.flatnonzero(np.asarray(jax.device_get(has_pair_P))).astype(np.int32)
  return jax.device_put(rows)


def sequence_rows(prompt_QxP, prompt_mask_QxP, tokens_QxM, logps_QxM, lengths_Q, pad_id):
  """Returns (DPO arrays {inputs, targets, loss_mask, mask} [Q, S], ref log-probs [Q, S] at
  the targets) of rows = the real prompt tokens followed by the completion's tokens (the row
  builder of preference_dataset and of GRPO's batches, rl/step.py)."""
  (q, p), m = prompt_QxP.shape, tokens_QxM.shape[1]
  s = p + m
  rows_Q1 = jnp.arange(q)[:, None]
  prompt_len_Q = prompt_mask_QxP.sum(axis=-1).astype(jnp.int32)
  # Scatter the real prompt tokens to the front (by their rank), then the completion after
  # them; padding goes to index s and is dropped.
  prompt_to_QxP = jnp.where(prompt_mask_QxP, jnp.cumsum(prompt_mask_QxP, axis=-1) - 1, s)
  j_1M = jnp.arange(m)[None, :]
  real_QxM = j_1M < lengths_Q[:, None]
  completion_to_QxM = jnp.where(real_QxM, prompt_len_Q[:, None] + j_1M, s)
  seq_QxS = jnp.full((q, s), pad_id, jnp.int32)
  seq_QxS = seq_QxS.at[rows_Q1, prompt_to_QxP].set(prompt_QxP, mode='drop')
  seq_QxS = seq_QxS.at[rows_Q1, completion_to_QxM].set(tokens_QxM, mode='drop')
  t_1S = jnp.arange(s)[None, :]
  mask_QxS = t_1S < (prompt_len_Q + lengths_Q - 1)[:, None]  # the last token predicts nothing
  next_QxS = jnp.concatenate([seq_QxS[:, 1:], jnp.full((q, 1), pad_id, jnp.int32)], axis=1)
  # Target t is completion token j = t - prompt_len + 1: its log-prob sits at t = prompt_len-1+j.
  target_to_QxM = jnp.where(real_QxM, prompt_len_Q[:, None] - 1 + j_1M, s)
  ref_QxS = jnp.zeros((q, s), jnp.float32).at[rows_Q1, target_to_QxM].set(
      jnp.where(real_QxM, logps_QxM, 0.0), mode='drop')
  seq = {'inputs': jnp.where(mask_QxS, seq_QxS, pad_id),
         'targets': jnp.where(mask_QxS, next_QxS, pad_id),
         'loss_mask': mask_QxS & (t_1S >= (prompt_len_Q - 1)[:, None]),
         'mask': mask_QxS}
  return seq, ref_QxS


@functools.partial(jax.jit, static_argnames='pad_id')
def preference_dataset(cand: rollout_lib.Rollout, chosen_P: jax.Array, rejected_P: jax.Array,
                       pair_rows_Q: jax.Array, *, pad_id: int = 0) -> dict:
  """Returns the DPO dataset of the pairs at pair_rows, built on the device from the ids the
  candidates sampled: {'chosen': seq, 'rejected': seq} ([Q, S] inputs, targets, loss_mask,
  mask) plus the reference log-probs from the Rollout ('ref_chosen_logps' [Q], summed over
  loss_mask, and per token 'ref_chosen_token_logps' [Q, S] aligned with targets; likewise
  rejected): the policy that sampled the candidates is the reference, so no forward pass."""
  prompt_QxP = cand.prompt_tokens[pair_rows_Q]
  prompt_mask_QxP = cand.prompt_mask[pair_rows_Q].astype(bool)
  out = {}
  for name, index_P in (('chosen', chosen_P), ('rejected', rejected_P)):
    rows_Q = pair_rows_Q * cand.n + index_P[pair_rows_Q]
    seq, ref_QxS = sequence_rows(prompt_QxP, prompt_mask_QxP, cand.tokens[rows_Q],
                             cand.logprobs[rows_Q], cand.lengths[rows_Q], pad_id)
    out[name] = seq
    out[f'ref_{name}_token_logps'] = ref_QxS
    out[f'ref_{name}_logps'] = jnp.sum(jnp.where(seq['loss_mask'], ref_QxS, 0.0), axis=-1)
  return out


def concat_datasets(datasets, pad_id: int = 0) -> dict:
  """Returns preference datasets (preference_dataset's layout) joined along the pair axis,
  each [Q, S] array right-padded to the widest S (pad_id inputs and targets, False masks,
  0 reference log-probs): the dpo stage's actor pairs beside the judge pairs."""
  datasets = [d for d in datasets if d]
  if len(datasets) == 1:
    return datasets[0]
  width = max(d['chosen']['inputs'].shape[1] for d in datasets)

  def widen(x, fill):
    return jnp.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=fill)

  out = {}
  for key in datasets[0]:
    if isinstance(datasets[0][key], dict):
      out[key] = {name: jnp.concatenate([widen(d[key][name], pad_id if name in (
          'inputs', 'targets') else False) for d in datasets]) for name in datasets[0][key]}
    elif datasets[0][key].ndim == 2:
      out[key] = jnp.concatenate([widen(d[key], 0.0) for d in datasets])
    else:
      out[key] = jnp.concatenate([d[key] for d in datasets])
  return out
