"""Preference pairs from judged candidates: (chosen, rejected) per prompt, on the device.

Rules (Self-Rewarding LMs, Yuan et al. 2024, with the Meta-Rewarding length control):
  * A candidate counts when its score is valid and not NaN.
  * chosen = the highest-scored, rejected = the lowest-scored counted candidate; among equal
    scores the lowest index wins, so the result is deterministic.
  * No pair when fewer than two candidates count, when best == worst (a tie), or when the
    chosen score exceeds the rejected one by less than `min_gap`.
  * Length control (`length_margin` set): chosen is the SHORTEST counted candidate whose score
    is >= best - length_margin and > worst (the worst-scored candidates are left out so that a
    pair remains; lowest index among equal lengths). Rejected stays the lowest-scored.

Axis legend: P prompts, N candidates per prompt, K judgments per candidate.
"""

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp

# `reason` codes of select_pairs, by index.
REASONS = ('pair', 'fewer_than_two_valid', 'tie', 'gap_below_min')
PAIR, FEWER_THAN_TWO_VALID, TIE, GAP_BELOW_MIN = range(4)


def mean_valid(scores_PxNxK: jax.Array, valid_PxNxK: jax.Array
               ) -> Tuple[jax.Array, jax.Array]:
  """Returns (mean_PxN of the valid judgments, NaN where none; count_PxN int32 of them)."""
  scores_PxNxK = jnp.asarray(scores_PxNxK, jnp.float32)
  counted_PxNxK = jnp.asarray(valid_PxNxK, bool) & ~jnp.isnan(scores_PxNxK)
  count_PxN = counted_PxNxK.sum(axis=-1, dtype=jnp.int32)
  total_PxN = jnp.where(counted_PxNxK, scores_PxNxK, 0.0).sum(axis=-1)
  mean_PxN = jnp.where(count_PxN > 0, total_PxN / jnp.maximum(count_PxN, 1), jnp.nan)
  return mean_PxN, count_PxN


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
