"""Drawing one token per row from a decode step's logits: the sampling mode and its filters.

`Mode` holds the static settings (a jit cache key): which filters are active (temperature == 0 is
greedy, top_k > 0, top_p < 1, min_p > 0), top_k, eos ids and stop sequences decide which ops run.
`make_knobs` holds the dynamic ones as device scalars (temperature, top_p, min_p,
max_new_tokens): changing them does not recompile. Greedy is a max; top-p without top-k never
sorts V: it finds the nucleus threshold by a 31-step bisection (on XLA:CPU, `lax.top_k` over a
49k vocabulary becomes a full sort, 10-20x slower than the bisection), over each row's most
likely blocks of ids when its nucleus lies inside them, and over all of V for the few rows whose
nucleus does not.

Filters, in Hugging Face's order: logits / temperature, top-k (exactly k tokens), top-p (the most
likely tokens until their mass reaches top_p, renormalised over the top-k survivors), min-p
(probability >= min_p times the top one's). A token is drawn by inverse CDF from a per-row
uniform, the row's key with the step folded in. Log-probs are those of the sampled token under
the model's raw distribution (log-softmax of the logits at temperature 1, unfiltered): what DPO
needs.

Axis legend: R rows, V vocabulary, C top-k candidates, X any last axis of weights, N blocks of
B = NUCLEUS_BLOCK ids, G = NUCLEUS_BLOCKS blocks searched, S spilled rows gathered.
"""

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
# Top-p searches a row's nucleus among its NUCLEUS_BLOCKS blocks of NUCLEUS_BLOCK vocabulary ids
# with the most likely top ids (4096 of SmolLM2's 49152), and over all of V for up to
# NUCLEUS_SPILL rows a step whose nucleus spans more blocks (`_nucleus`).
NUCLEUS_BLOCK = 64
NUCLEUS_BLOCKS = 64
NUCLEUS_SPILL = 8


@dataclasses.dataclass(frozen=True)
class Mode:
  """The static sampling settings (a jit cache key)."""
  greedy: bool = True
  top_k: int = 0
  use_top_p: bool = False
  use_min_p: bool = False
  eos_ids: tuple[int, ...] = ()
  stop_seqs: tuple[tuple[int, ...], ...] = ()
  pad_id: int = 0

  @property
  def stop_width(self) -> int:
    return max([len(s) for s in self.stop_seqs], default=1)


def make_mode(*, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
              min_p: float = 0.0, eos_ids: Sequence[int] = (),
              stop_seqs: Sequence[Sequence[int]] = (), pad_id: int = 0) -> Mode:
  """Returns the static Mode of these settings (checking them)."""
  if temperature < 0 or top_k < 0 or not 0 < top_p <= 1 or not 0 <= min_p <= 1:
    raise ValueError(f'need temperature >= 0, top_k >= 0, 0 < top_p <= 1, 0 <= min_p <= 1; got '
                     f'{temperature}, {top_k}, {top_p}, {min_p}')
  stop_seqs = tuple(tuple(int(t) for t in s) for s in stop_seqs)
  if any(not s for s in stop_seqs):
    raise ValueError('stop sequences must not be empty')
  return Mode(greedy=temperature == 0, top_k=int(top_k), use_top_p=top_p < 1,
              use_min_p=min_p > 0, eos_ids=tuple(sorted({int(e) for e in eos_ids})),
              stop_seqs=stop_seqs, pad_id=int(pad_id))


def make_knobs(*, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
               min_p: float = 0.0) -> dict:
  """Returns the dynamic settings as device scalars (changing them does not recompile)."""
  put = lambda x, dtype: jax.device_put(np.asarray(x, dtype))  # an explicit transfer
  return {'max_new_tokens': put(max_new_tokens, np.int32), 'top_p': put(top_p, np.float32),
          'temperature': put(temperature or 1.0, np.float32), 'min_p': put(min_p, np.float32)}


def _first_above(c_RX: Array, t_R: Array, w_RX: Array) -> Array:
  """Returns per row the first index with c > t (c = cumsum(w)), else the last one with w > 0."""
  x = c_RX.shape[1]
  i_R = jnp.sum(c_RX <= t_R[:, None], axis=1)
  last_R = x - 1 - jnp.argmax(w_RX[:, ::-1] > 0, axis=1)
  return jnp.where(i_R < x, i_R, last_R).astype(jnp.int32)


def inverse_cdf(w_RX: Array, u_R: Array, block: int = 256) -> Array:
  """Returns one index per row drawn with probability w / sum(w), from uniforms u in [0, 1)."""
  r, x = w_RX.shape
  if x <= 4 * block:
    c_RX = jnp.cumsum(w_RX, axis=1)
    return _first_above(c_RX, u_R * c_RX[:, -1], w_RX)
  # Two levels (blocks, then within the chosen block): a cumsum over V is slow on CPU.
  nb = -(-x // block)
  w_RNB = jnp.pad(w_RX, ((0, 0), (0, nb * block - x))).reshape(r, nb, block)
  mass_RN = jnp.sum(w_RNB, axis=2)
  c_RN = jnp.cumsum(mass_RN, axis=1)
  t_R = u_R * c_RN[:, -1]
  j_R = _first_above(c_RN, t_R, mass_RN)
  inner_RB = jnp.take_along_axis(w_RNB, j_R[:, None, None], axis=1)[:, 0]
  before_R = jnp.take_along_axis(c_RN - mass_RN, j_R[:, None], axis=1)[:, 0]
  i_R = _first_above(jnp.cumsum(inner_RB, axis=1), t_R - before_R, inner_RB)
  return j_R * block + i_R


def _nucleus_threshold(q_RX: Array, top_p: Array) -> Array:
  """Returns per row the smallest float32 t whose mass strictly above it is < top_p (the nucleus
  is q >= t): a bisection over the bit patterns of non-negative float32s (ordered like the
  floats), 31 steps, each a masked sum over X."""
  def body(_, lo_hi):
    lo, hi = lo_hi
    mid = lo + (hi - lo) // 2
    t_R = jax.lax.bitcast_convert_type(mid, jnp.float32)
    ok = jnp.sum(jnp.where(q_RX > t_R[:, None], q_RX, 0.0), axis=1) < top_p
    return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)
  r, one = q_RX.shape[0], int(np.float32(1).view(np.int32))
  _, hi = jax.lax.fori_loop(0, 31, body, (jnp.zeros(r, jnp.int32), jnp.full(r, one, jnp.int32)))
  return jax.lax.bitcast_convert_type(hi, jnp.float32)


def _nucleus_over_vocab(x_RV: Array, u_R: Array, top_p: Array, min_p: Array,
                        mode: Mode) -> Array:
  """Returns tokens drawn from the exact top-p (and min-p) filter, searched over all of V."""
  w_RV = jnp.exp(x_RV - jnp.max(x_RV, axis=1, keepdims=True))
  q_RV = w_RV / jnp.sum(w_RV, axis=1, keepdims=True)
  keep = q_RV >= _nucleus_threshold(q_RV, top_p)[:, None]
  if mode.use_min_p:
    keep &= w_RV >= min_p
  return inverse_cdf(jnp.where(keep, w_RV, 0.0), u_R)


def block_nucleus(x_RV: Array, top_p: Array, min_p: Array, mode: Mode) -> tuple:
  """Returns (kept weights [R, X], their blocks [R, G], fits [R]) of the top-p (and min-p)
  filter searched among each row's G = NUCLEUS_BLOCKS blocks of NUCLEUS_BLOCK ids with the
  largest top probabilities, X = G * NUCLEUS_BLOCK ids in vocabulary order. It is exact for the
  rows that fit: every id outside their blocks is below the threshold found."""
  r, v = x_RV.shape
  size, g = NUCLEUS_BLOCK, NUCLEUS_BLOCKS
  nb = -(-v // size)
  w_RV = jnp.exp(x_RV - jnp.max(x_RV, axis=1, keepdims=True))
  total_R = jnp.sum(w_RV, axis=1)
  w_RNB = jnp.pad(w_RV, ((0, 0), (0, nb * size - v))).reshape(r, nb, size)
  top_RN = jnp.max(w_RNB, axis=2)
  # (lax.top_k's indices only: XLA:CPU then runs its TopK; with the values read, a full sort.)
  blocks_RG = jnp.sort(jax.lax.top_k(top_RN, g)[1], axis=1)
  outside_R = jnp.max(top_RN.at[jnp.arange(r)[:, None], blocks_RG].set(0.0), axis=1)
  w_RX = jnp.take_along_axis(w_RNB, blocks_RG[:, :, None], axis=1).reshape(r, g * size)
  q_RX = w_RX / total_R[:, None]
  t_R = _nucleus_threshold(q_RX, top_p)
  keep = q_RX >= t_R[:, None]
  if mode.use_min_p:
    keep &= w_RX >= min_p
  return jnp.where(keep, w_RX, 0.0), blocks_RG, outside_R / total_R < t_R


def _nucleus(x_RV: Array, u_R: Array, top_p: Array, min_p: Array, mode: Mode) -> Array:
  """Returns tokens drawn from the exact top-p (and min-p) filter over all of V, sort-free.

  Each row's nucleus is searched among its most likely blocks first (`block_nucleus`). The rows
  it does not fit, up to NUCLEUS_SPILL of them, are gathered and searched over all of V (all
  rows when more spill). Which search a row gets depends on its logits only, so a row's token
  does not depend on the rest of its batch.
  """
  r, v = x_RV.shape
  if -(-v // NUCLEUS_BLOCK) <= NUCLEUS_BLOCKS:
    return _nucleus_over_vocab(x_RV, u_R, top_p, min_p, mode)
  w_RX, blocks_RG, fits_R = block_nucleus(x_RV, top_p, min_p, mode)
  i_R = inverse_cdf(w_RX, u_R)
  token_R = (jnp.take_along_axis(blocks_RG, (i_R // NUCLEUS_BLOCK)[:, None], axis=1)[:, 0]
             * NUCLEUS_BLOCK + i_R % NUCLEUS_BLOCK)
  spill = min(NUCLEUS_SPILL, r)

  def some_rows():
    rows_S = jnp.nonzero(~fits_R, size=spill, fill_value=r)[0]  # r: no row (dropped below)
    at = jnp.minimum(rows_S, r - 1)
    full_S = _nucleus_over_vocab(x_RV[at], u_R[at], top_p, min_p, mode)
    return token_R.at[rows_S].set(full_S.astype(token_R.dtype), mode='drop')

  def all_rows():
    return jnp.where(fits_R, token_R, _nucleus_over_vocab(x_RV, u_R, top_p, min_p, mode))

  n_spill = jnp.sum(~fits_R)
  branch = jnp.where(n_spill == 0, 0, jnp.where(n_spill <= spill, 1, 2))
  return jax.lax.switch(branch, [lambda: token_R, some_rows, all_rows])


def _filtered_draw(x_RV: Array, u_R: Array, top_p: Array, min_p: Array, mode: Mode) -> Array:
  """Returns tokens drawn from softmax(x) after the top-k / top-p / min-p filters of mode."""
  v = x_RV.shape[1]
  if not (mode.top_k or mode.use_top_p):
    w_RV = jnp.exp(x_RV - jnp.max(x_RV, axis=1, keepdims=True))  # the max has weight 1
    if mode.use_min_p:
      w_RV = jnp.where(w_RV >= min_p, w_RV, 0.0)
    return inverse_cdf(w_RV, u_R)
  if not mode.top_k:  # top-p (and min-p): exact over all of V, sort-free
    return _nucleus(x_RV, u_R, top_p, min_p, mode)
  vals_RC, idx_RC = jax.lax.top_k(x_RV, min(v, mode.top_k))  # sorted, most likely first
  w_RC = jnp.exp(vals_RC - vals_RC[:, :1])
  keep = jnp.ones(w_RC.shape, bool)
  if mode.use_top_p:  # renormalised over the top-k survivors
    total_R = jnp.sum(w_RC, axis=1)
    c_RC = jnp.cumsum(w_RC, axis=1) / total_R[:, None]
    keep = c_RC - w_RC / total_R[:, None] < top_p
  if mode.use_min_p:
    keep &= w_RC >= min_p
  choice_R = inverse_cdf(jnp.where(keep, w_RC, 0.0), u_R)
  return jnp.take_along_axis(idx_RC, choice_R[:, None], axis=1)[:, 0]


def next_token(logits_RV: Array, key_R: Array, step: Array, knobs: dict, mode: Mode):
  """Returns (sampled tokens [R], their raw-model log-probs [R]) for one decode step."""
  v = logits_RV.shape[1]
  max_R = jnp.max(logits_RV, axis=1)
  lse_R = max_R + jnp.log(jnp.sum(jnp.exp(logits_RV - max_R[:, None]), axis=1))
  if mode.greedy:  # the first maximum; two plain reductions are 2x faster than argmax on CPU
    token_R = jnp.min(jnp.where(logits_RV == max_R[:, None], jnp.arange(v)[None, :], v), axis=1)
    return token_R.astype(jnp.int32), max_R - lse_R
  u_R = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, step)))(key_R)
  x_RV = logits_RV / knobs['temperature']
  token_R = _filtered_draw(x_RV, u_R, knobs['top_p'], knobs['min_p'], mode).astype(jnp.int32)
  return token_R, jnp.take_along_axis(logits_RV, token_R[:, None], axis=1)[:, 0] - lse_R
