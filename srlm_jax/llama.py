"""A Llama-family decoder as a Flax Linen module: the params are a pytree, the model a function.

Covers Llama 2, Llama 3.x and the many models that share their architecture (SmolLM2, ...):
RMSNorm, rotary embeddings (plain, linear or Llama 3.x frequency scaling), grouped-query
attention, a SwiGLU MLP, tied or untied input and output embeddings.

Axis legend used in names: B batch, T query tokens, S key slots (T without a cache, the cache
length with one), D model dim, H query heads, K kv heads, G = H // K queries per kv head,
Dh head dim, F MLP hidden dim, V vocabulary, L layers.

The param tree (layers are stacked on a leading L axis by `nn.scan`; kernels are [in, out]):

    embed/embedding                  [V, D]
    layers/attn_norm/scale           [L, D]
    layers/attn/{q,k,v}_proj/kernel  [L, D, H*Dh] ([L, D, K*Dh] for k and v)
    layers/attn/o_proj/kernel        [L, H*Dh, D]
    layers/mlp_norm/scale            [L, D]
    layers/mlp/{gate,up}_proj/kernel [L, D, F]
    layers/mlp/down_proj/kernel      [L, F, D]
    final_norm/scale                 [D]
    lm_head/kernel                   [D, V]  (absent when embeddings are tied)

Masking works on cache slots: a query at slot i of row b sees key slot j when j <= i and
`kv_mask[b, j]` is set (and, when given, the segment ids match). Left padding is therefore
exact: pad slots are never attended to, and positions (for RoPE) are given per row.
"""

import dataclasses
import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from srlm_jax import sharding

Array = jax.Array
_NEG_INF = float(np.finfo(np.float32).min)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Rotary frequency scaling: 'linear' (positions / factor) or 'llama3' (Llama 3.1+)."""
  kind: str = 'llama3'
  factor: float = 8.0
  low_freq_factor: float = 1.0  # llama3 only
  high_freq_factor: float = 4.0  # llama3 only
  original_max_position_embeddings: int = 8192  # llama3 only


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Architecture and numerics of a Llama-family model (hashable: a static jit argument)."""
  vocab_size: int
  dim: int  # model width D
  n_layers: int
  n_heads: int  # query heads H
  n_kv_heads: int  # key/value heads K; H % K == 0 (K == H is plain multi-head attention)
  ffn_dim: int  # SwiGLU hidden width F
  head_dim: Optional[int] = None  # Dh; None means dim // n_heads
  norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  rope_scaling: Optional[RopeScaling] = None
  tie_embeddings: bool = False
  max_seq_len: int = 4096  # longest sequence the model was trained for (informational)
  dtype: str = 'float32'  # compute dtype: 'float32' or 'bfloat16'
  param_dtype: str = 'float32'  # dtype params are created in; loaded params keep their own
  remat: bool = False  # recompute each layer in the backward pass (saves activation memory)
  # Compile the layers as straight-line code rather than a loop over the stacked params: no
  # per-layer slicing and stacking of params and activations (SmolLM2-135M gradient on CPU:
  # 24.5 -> 20.6 s), at 3.6x the compile time. The param tree is the same either way.
  unroll_layers: bool = False
  # Causal attention over a whole sequence (training, prefill) runs in blocks of at most this
  # many queries, each against the keys up to its end, skipping the score blocks above the
  # diagonal (at 256 tokens, 2 blocks: 3/4 of the score work). 0: one block.
  query_block: int = 128

  def __post_init__(self):
    if self.head_dim is None:
      object.__setattr__(self, 'head_dim', self.dim // self.n_heads)
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f'n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}')
    for name in ('dtype', 'param_dtype'):
      if getattr(self, name) not in ('float32', 'bfloat16', 'float16'):
        raise ValueError(f'{name}={getattr(self, name)!r}: expected float32, bfloat16 or float16')

  def replace(self, **changes) -> 'LlamaConfig':
    """Returns a copy with the given fields changed."""
    return dataclasses.replace(self, **changes)

  @property
  def num_params(self) -> int:
    """Returns the parameter count."""
    d, f, dh = self.dim, self.ffn_dim, self.head_dim
    attn = d * dh * (2 * self.n_heads + 2 * self.n_kv_heads)
    per_layer = attn + 3 * d * f + 2 * d
    head = 0 if self.tie_embeddings else d * self.vocab_size
    return self.vocab_size * d + self.n_layers * per_layer + d + head


def rope_frequencies(config: LlamaConfig) -> np.ndarray:
  """Returns the [Dh/2] rotary inverse frequencies, with the config's scaling applied."""
  dh = config.head_dim
  inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dh, 2, dtype=np.float64) / dh))
  s = config.rope_scaling
  if s is None:
    return inv_freq.astype(np.float32)
  if s.kind == 'linear':
    return (inv_freq / s.factor).astype(np.float32)
  if s.kind != 'llama3':
    raise ValueError(f'rope scaling kind {s.kind!r} is not supported (linear, llama3)')
  # Llama 3.1: long wavelengths are divided by `factor`, short ones kept, the band in between
  # interpolated smoothly.
  low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
  high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
  smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
      s.high_freq_factor - s.low_freq_factor)
  smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(x_BTNh: Array, positions_BT: Array, inv_freq: np.ndarray) -> Array:
  """Returns x rotated by its positions (the rotate-half layout of Hugging Face Llama)."""
  angles = positions_BT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(angles).astype(x_BTNh.dtype), jnp.sin(angles).astype(x_BTNh.dtype)
  x1, x2 = jnp.split(x_BTNh, 2, axis=-1)
  return x_BTNh * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


class RMSNorm(nn.Module):
  eps: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return scale.astype(self.dtype)[None, None, :] * x32.astype(self.dtype)


@jax.custom_vjp
def matmul(x: Array, w: Array) -> Array:
  """Returns x [..., I] @ w [I, O]; its weight gradient is one 2-D matmul over all tokens.

  Autodiff of the same product contracts the [B, T] axes of activations and output gradients,
  which XLA:CPU lowers by transposing the activations first (strided copies fused with the
  elementwise backward, slower than the matmuls themselves). Flattening the tokens to one
  [B*T] axis contracts the leading axis of two row-major operands, a plain GEMM on every
  backend; under a mesh the flattened axis keeps the batch sharding.
  """
  return x @ w


def _matmul_fwd(x, w):
  return x @ w, (x, w)


def _matmul_bwd(residuals, dy):
  x, w = residuals
  dx = jax.lax.dot_general(dy, w, (((dy.ndim - 1,), (1,)), ((), ())))
  dw = jax.lax.dot_general(x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1]),
                           (((0,), (0,)), ((), ())))
  return dx.astype(x.dtype), dw.astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def head_matmul(x: Array, w: Array, tied: bool) -> Array:
  """Returns float32 logits x [..., D] @ w: w is the [D, V] head, or the [V, D] embedding if tied.

  Like `matmul`, its weight gradient is one GEMM over all tokens; a tied embedding's comes out
  as [V, D] directly, with no [D, V] gradient to transpose.
  """
  return _head_product(x, w, tied)


def _head_product(x, w, tied):
  contract = ((x.ndim - 1,), (1 if tied else 0,))
  return jax.lax.dot_general(x, w.astype(x.dtype), (contract, ((), ())),
                             preferred_element_type=jnp.float32)


def _head_fwd(x, w, tied):
  return _head_product(x, w, tied), (x, w)


def _head_bwd(tied, residuals, dy):
  x, w = residuals
  dy = dy.astype(x.dtype)  # what autodiff of the mixed-precision product does too
  f32 = jnp.float32
  contract = ((dy.ndim - 1,), (0 if tied else 1,))
  dx = jax.lax.dot_general(dy, w.astype(x.dtype), (contract, ((), ())), preferred_element_type=f32)
  x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
  operands = (dy2, x2) if tied else (x2, dy2)
  dw = jax.lax.dot_general(*operands, (((0,), (0,)), ((), ())), preferred_element_type=f32)
  return dx.astype(x.dtype), dw.astype(w.dtype)


head_matmul.defvjp(_head_fwd, _head_bwd)


def logits(config: 'LlamaConfig', params, x_ND: Array) -> Array:
  """Returns float32 logits [..., V] of final-norm hidden states [..., D] (the output head)."""
  if config.tie_embeddings:
    return head_matmul(x_ND, params['embed']['embedding'], True)
  return head_matmul(x_ND, params['lm_head']['kernel'], False)


def _dense_dot_general(lhs, rhs, dimension_numbers, precision=None, **kwargs):
  """nn.Dense's product (last axis of lhs with the kernel's first) through `matmul`."""
  if dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())) or precision or kwargs:
    raise ValueError(f'unexpected Dense product {dimension_numbers}, {precision}, {kwargs}')
  return matmul(lhs, rhs)


def _dense(features, name, cfg):
  return nn.Dense(features, use_bias=False, name=name, dtype=cfg.dtype,
                  param_dtype=cfg.param_dtype, kernel_init=nn.initializers.normal(0.02),
                  dot_general=_dense_dot_general)


class Attention(nn.Module):
  config: LlamaConfig

  @nn.compact
  def __call__(self, x_BTD, positions_BT, kv_mask_BS, cache_index, layer_cache, segment_ids):
    cfg = self.config
    h, k, dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    b, t, _ = x_BTD.shape
    q = _dense(h * dh, 'q_proj', cfg)(x_BTD).reshape(b, t, h, dh)
    key = _dense(k * dh, 'k_proj', cfg)(x_BTD).reshape(b, t, k, dh)
    val = _dense(k * dh, 'v_proj', cfg)(x_BTD).reshape(b, t, k, dh)
    inv_freq = rope_frequencies(cfg)
    q, key = apply_rope(q, positions_BT, inv_freq), apply_rope(key, positions_BT, inv_freq)

    new_cache = None
    if layer_cache is not None:  # write this step's keys and values at slots [index, index+T)
      key = jax.lax.dynamic_update_slice_in_dim(
          layer_cache['k'], key.astype(layer_cache['k'].dtype), cache_index, axis=1)
      val = jax.lax.dynamic_update_slice_in_dim(
          layer_cache['v'], val.astype(layer_cache['v'].dtype), cache_index, axis=1)
      new_cache = {'k': key, 'v': val}
      key, val = key.astype(cfg.dtype), val.astype(cfg.dtype)
    s = key.shape[1]

    q_slot = cache_index + jnp.arange(t)
    allowed_BTS = (jnp.arange(s)[None, :] <= q_slot[:, None])[None] & kv_mask_BS[:, None, :]
    if segment_ids is not None:
      allowed_BTS &= segment_ids[:, :, None] == segment_ids[:, None, :]

    # Heads-major operands [B, K, G, T, Dh] and [B, K, S, Dh]: both products are then plain
    # batched matmuls, and the mask is one additive [B, T, S] bias shared by all heads.
    q_BKGTd = q.reshape(b, t, k, h // k, dh).transpose(0, 2, 3, 1, 4)
    key_BKSd, val_BKSd = key.transpose(0, 2, 1, 3), val.transpose(0, 2, 1, 3)
    bias_BTS = jnp.where(allowed_BTS, 0.0, _NEG_INF)
    blocks = _query_blocks(t, s, cache_index, cfg.query_block)
    size = t // blocks
    # Query block i sees key slots up to its last query's, [0, (i + 1) * size); later ones are
    # masked for all its queries, so they are left out.
    ends = [s] if blocks == 1 else [(i + 1) * size for i in range(blocks)]
    out = jnp.concatenate([
        _attend(q_BKGTd[:, :, :, i * size:(i + 1) * size], key_BKSd[:, :, :end],
                val_BKSd[:, :, :end], bias_BTS[:, i * size:(i + 1) * size, :end], cfg.dtype)
        for i, end in enumerate(ends)], axis=3)
    out = out.transpose(0, 3, 1, 2, 4).reshape(b, t, h * dh)
    return _dense(cfg.dim, 'o_proj', cfg)(out), new_cache


def _query_blocks(t: int, s: int, cache_index, query_block: int) -> int:
  """Returns how many causal query blocks a [T, S] attention splits into (1: no split).

  Only attention over the sequence itself (no earlier cache slots: S == T, index 0) splits,
  into the fewest power-of-two blocks of at most query_block queries that divide T.
  """
  if not query_block or s != t or not isinstance(cache_index, int) or cache_index:
    return 1
  blocks = 1
  while t // blocks > query_block and t % (2 * blocks) == 0:
    blocks *= 2
  return blocks


def _attend(q_BKGTd, key_BKSd, val_BKSd, bias_BTS, dtype):
  """Returns softmax(q k^T / sqrt(Dh) + bias) v: [B, K, G, T, Dh], scores in float32."""
  scores = jnp.einsum('bkgtd,bksd->bkgts', q_BKGTd, key_BKSd, preferred_element_type=jnp.float32)
  scores = scores / np.sqrt(q_BKGTd.shape[-1]).astype(np.float32) + bias_BTS[:, None, None]
  probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
  return jnp.einsum('bkgts,bksd->bkgtd', probs, val_BKSd)


class Mlp(nn.Module):
  config: LlamaConfig

  @nn.compact
  def __call__(self, x_BTD):
    cfg = self.config
    gate = _dense(cfg.ffn_dim, 'gate_proj', cfg)(x_BTD)
    up = _dense(cfg.ffn_dim, 'up_proj', cfg)(x_BTD)
    hidden = sharding.constrain(nn.silu(gate) * up, sharding.ACTIVATION_FFN)
    return _dense(cfg.dim, 'down_proj', cfg)(hidden)


class Block(nn.Module):
  """One decoder layer; scanned over L, so its params get a leading layer axis."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, x_BTD, layer_cache, positions_BT, kv_mask_BS, cache_index, segment_ids):
    cfg = self.config
    norm = functools.partial(RMSNorm, cfg.norm_eps, cfg.dtype, cfg.param_dtype)
    attn_out, new_cache = Attention(cfg, name='attn')(
        norm(name='attn_norm')(x_BTD), positions_BT, kv_mask_BS, cache_index, layer_cache,
        segment_ids)
    x_BTD = sharding.constrain(x_BTD + attn_out, sharding.ACTIVATION)
    x_BTD = x_BTD + Mlp(cfg, name='mlp')(norm(name='mlp_norm')(x_BTD))
    return sharding.constrain(x_BTD, sharding.ACTIVATION), new_cache


class LmHead(nn.Module):
  """The untied output projection; returns its [D, V] kernel (logits are taken in float32)."""
  config: LlamaConfig

  @nn.compact
  def __call__(self):
    cfg = self.config
    return self.param('kernel', nn.initializers.normal(0.02), (cfg.dim, cfg.vocab_size),
                      cfg.param_dtype)


class Llama(nn.Module):
  """The decoder: (tokens, positions, kv_mask[, cache]) -> (float32 logits, new cache).

  With `hidden_only`, it returns the final-norm hidden states [B, T, D] instead of the logits,
  for callers that apply the head (`logits`) to some positions only.
  """
  config: LlamaConfig

  @nn.compact
  def __call__(self, tokens_BT, positions_BT, kv_mask_BS, cache=None, cache_index=0,
               segment_ids=None, hidden_only: bool = False):
    cfg = self.config
    embed = nn.Embed(cfg.vocab_size, cfg.dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                     embedding_init=nn.initializers.normal(0.02), name='embed')
    x_BTD = sharding.constrain(embed(tokens_BT), sharding.ACTIVATION)
    block = nn.remat(Block, prevent_cse=False) if cfg.remat else Block
    layers = nn.scan(block, variable_axes={'params': 0}, split_rngs={'params': True},
                     in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                     length=cfg.n_layers, unroll=cfg.n_layers if cfg.unroll_layers else 1)
    x_BTD, new_cache = layers(cfg, name='layers')(
        x_BTD, cache, positions_BT, kv_mask_BS.astype(bool), cache_index, segment_ids)
    x_BTD = RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name='final_norm')(x_BTD)
    if hidden_only:
      return x_BTD, new_cache
    if cfg.tie_embeddings:
      return head_matmul(x_BTD, embed.embedding, True), new_cache
    return head_matmul(x_BTD, LmHead(cfg, name='lm_head')(), False), new_cache


def default_positions(mask_BT: Array) -> Array:
  """Returns per-row positions that count only real tokens (0 for left padding)."""
  return jnp.maximum(jnp.cumsum(mask_BT.astype(jnp.int32), axis=-1) - 1, 0)


@functools.partial(jax.jit, static_argnames='config')
def forward(config: LlamaConfig, params, tokens: Array, positions: Optional[Array] = None,
            mask: Optional[Array] = None, segment_ids: Optional[Array] = None) -> Array:
  """Returns float32 logits [B, T, V] for int32 tokens [B, T].

  `mask` [B, T] marks real tokens (1) and padding (0); `positions` default to the count of
  real tokens before each one, so left-padded rows get the same logits as unpadded ones.
  `segment_ids` [B, T] restricts attention to tokens of the same segment (packed sequences).
  """
  tokens = jnp.asarray(tokens, jnp.int32)
  mask = jnp.ones(tokens.shape, bool) if mask is None else jnp.asarray(mask).astype(bool)
  if positions is None:
    positions = default_positions(mask)
  logits, _ = Llama(config).apply({'params': params}, tokens, positions, mask,
                                  segment_ids=segment_ids)
  return logits


def init_cache(config: LlamaConfig, batch: int, length: int, dtype=None) -> dict:
  """Returns an empty KV cache {'k', 'v'} of shape [L, B, S, K, Dh]."""
  shape = (config.n_layers, batch, length, config.n_kv_heads, config.head_dim)
  dtype = dtype or config.dtype
  return {'k': jnp.zeros(shape, dtype), 'v': jnp.zeros(shape, dtype)}


def init_params(config: LlamaConfig, rng: Array):
  """Returns freshly initialised params (unsharded; see sharding.init_params for a mesh)."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  return Llama(config).init(rng, tokens, tokens, tokens.astype(bool))['params']
