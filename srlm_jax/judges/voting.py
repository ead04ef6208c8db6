"""Voting over K judgments of a response: the meta filter's selection (SPCT, DeepSeek-GRM).

SPCT's inference-time scaling samples K judgments and sums each response's valid scores
(`base.aggregate(scores, valid, 'sum')`: an invalid sample adds nothing). With a meta filter,
a meta RM (meta_rm.py) scores each judgment and only the top k_meta of a response's valid
judgments are voted (`meta_select`); judging.meta_filtered applies it to JudgeScores.

Axis legend: R judged responses, K judgments per response.
"""

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames='k_meta')
def meta_select(meta_RxK: jax.Array, valid_RxK: jax.Array, k_meta: int) -> jax.Array:
  """Returns kept_RxK bool: per row the (at most) k_meta valid judgments with the highest meta
  scores (ties: the earlier judgment first; a NaN meta score ranks below every number)."""
  meta_RxK = meta_RxK.astype(jnp.float32)
  # Ascending sort key: valid judgments by meta score descending, NaN meta scores after them;
  # invalid judgments last. argsort is stable, so ties keep the judgments' order.
  sort_key_RxK = jnp.where(valid_RxK, jnp.where(jnp.isnan(meta_RxK), jnp.finfo(jnp.float32).max,
                                                -meta_RxK), jnp.inf)
  order_RxK = jnp.argsort(sort_key_RxK, axis=-1, stable=True)
  rank_RxK = jnp.argsort(order_RxK, axis=-1, stable=True)
  return (rank_RxK < k_meta) & valid_RxK
