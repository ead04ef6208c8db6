"""Attention over blocks of cached key slots: the one softmax of training, prefill and decode.

Axis legend (llama.py's): B rows, K kv heads, G query heads per kv head, T queries, S key slots,
Dh head dim; a lower-case b is a block's rows (B, or B / N when N consecutive rows share it).
Keys are slot-minor ([b, K, Dh, S]) and values slot-major ([b, K, S, Dh]), `llama.init_cache`'s
layout.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
_NEG_INF = float(np.finfo(np.float32).min)
# A decode step's scores on a CPU are a sum of products (`scores`) from this many query rows
# (b * K * X) on; a step of bench_sampler's prompts with the sum, against the dot: batch 64
# (576 rows) 151 against 167 ms, batch 32 (288) 117 against 119, batch 16 (144) 81.5 against
# 80.6, batch 1 31.1 against 29.8.
SUM_MIN_ROWS = 256


def _to_block(x_BKGTX: Array, n: int) -> Array:
  """[B, K, G, ...] per row -> [B/N, K, N*G, ...]: the N consecutive rows of a shared block."""
  if n == 1:
    return x_BKGTX
  b, k, g = x_BKGTX.shape[:3]
  x = x_BKGTX.reshape((b // n, n, k, g) + x_BKGTX.shape[3:])
  return jnp.swapaxes(x, 1, 2).reshape((b // n, k, n * g) + x_BKGTX.shape[3:])


def _to_rows(x_bKXTX: Array, n: int) -> Array:
  """The inverse of `_to_block`: [B/N, K, N*G, ...] -> [B, K, G, ...]."""
  if n == 1:
    return x_bKXTX
  b, k, x = x_bKXTX.shape[:3]
  y = x_bKXTX.reshape((b, k, n, x // n) + x_bKXTX.shape[3:])
  return jnp.swapaxes(y, 1, 2).reshape((b * n, k, x // n) + x_bKXTX.shape[3:])


def scores(q_bKXTd: Array, key_bKdS: Array) -> Array:
  """Returns the float32 products [b, K, X, T, S] of the queries with slot-minor keys.

  For one query a row (a decode step) of at least SUM_MIN_ROWS query rows on a CPU, a sum of
  Dh broadcast products: XLA:CPU runs the batched dot's [X, Dh] x [Dh, S] products on one core
  and this loop on all (scores 36 -> 24 ms of a 167-ms step at bench_sampler's batch 64). The
  `cond` on a value XLA cannot fold keeps the sum from being fused into, and computed again by,
  both users of the scores (the softmax's max and its exponentials); either branch returns it
  unchanged.

  Summed instead as 16 products of 4-entry head-dim slices, the partial sums reduced after, the
  scores took 20 ms a step, not 26, but the step took 172 ms, not 160-164: XLA:CPU then ran
  the two blocks' single-core value products one after the other instead of one per core.
  """
  query_rows, t = int(np.prod(q_bKXTd.shape[:3])), q_bKXTd.shape[3]
  if t > 1 or query_rows < SUM_MIN_ROWS or jax.default_backend() != 'cpu':
    return jnp.einsum('bkxtd,bkds->bkxts', q_bKXTd, key_bKdS, preferred_element_type=jnp.float32)
  q, k = q_bKXTd.astype(jnp.float32), key_bKdS.astype(jnp.float32)
  total = functools.reduce(jnp.add, [q[..., i, None] * k[:, :, None, None, i]
                                     for i in range(q.shape[-1])])
  return jax.lax.cond(jnp.isnan(q[0, 0, 0, 0, 0]), lambda x: x * 1.0, lambda x: x, total)


def attend(q_BKGTd: Array, blocks, dtype) -> Array:
  """Returns attention [B, K, G, T, Dh] of the queries over blocks of key slots, one softmax.

  Each block is (key_bKdS, val_bKSd, allowed_bTS) with b = B, or b = B / N for a block shared
  by N consecutive rows (a prompt's keys read once by its N samples: they act as N*G query
  heads per kv head). Scores are float32. One block is plain softmax(q k^T / sqrt(Dh)) v;
  several are merged through their running max and sum, with no concatenation.

  The max is taken over every block before any exponential. A max and sum per block, rescaled
  when merged (as flash attention merges), made bench_sampler's batch-64 decode step slower on
  a 2-core CPU (164-167 -> 181-185 ms), and so did splitting a row's generation slots into
  32-slot blocks, the ones not written yet skipped by a `cond` (161 -> 270 ms: the cache's
  slices were copied, and sums of products over 32 slots run slowly).
  """
  b, dh = q_BKGTd.shape[0], q_BKGTd.shape[-1]
  parts = []
  for key_bKdS, val_bKSd, allowed_bTS in blocks:
    n = b // key_bKdS.shape[0]
    s = scores(_to_block(q_BKGTd, n), key_bKdS) / np.sqrt(dh).astype(np.float32)
    parts.append((n, jnp.where(allowed_bTS[:, None, None], s, _NEG_INF), val_bKSd))
  if len(parts) == 1:
    _, s, val_bKSd = parts[0]
    probs = jax.nn.softmax(s, axis=-1).astype(dtype)
    return jnp.einsum('bkxts,bksd->bkxtd', probs, val_bKSd)
  max_BKGT1 = functools.reduce(jnp.maximum, [
      _to_rows(jnp.max(s, axis=-1, keepdims=True), n) for n, s, _ in parts])
  total, out = 0.0, 0.0
  for n, s, val_bKSd in parts:
    e = jnp.exp(s - _to_block(max_BKGT1, n))
    total = total + _to_rows(jnp.sum(e, axis=-1, keepdims=True), n)
    out = out + _to_rows(jnp.einsum('bkxts,bksd->bkxtd', e.astype(dtype), val_bKSd), n)
  return out / total.astype(dtype)
