"""The decoder's own properties: padding, packing, the cache, dtypes, rope scaling, sharding.

Agreement with transformers' PyTorch Llama is tested in test_hf_io.py (random configs and the
real SmolLM2 weights).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srlm_jax import llama
from srlm_jax import sharding

GQA = llama.LlamaConfig(vocab_size=96, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128)


def _params(config, seed=0):
  return llama.init_params(config, jax.random.key(seed))


def _tokens(batch, length, vocab, seed=1):
  return np.asarray(jax.random.randint(jax.random.key(seed), (batch, length), 1, vocab), np.int32)


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def test_left_padding_is_exact():
  params = _params(GQA)
  tokens = _tokens(3, 10, GQA.vocab_size)
  lengths = [10, 7, 3]
  padded = np.zeros_like(tokens)
  mask = np.zeros_like(tokens)
  for row, n in enumerate(lengths):
    padded[row, 10 - n:] = tokens[row, :n]
    mask[row, 10 - n:] = 1
  batch_logits = llama.forward(GQA, params, padded, mask=mask)
  for row, n in enumerate(lengths):
    alone = llama.forward(GQA, params, tokens[row:row + 1, :n])
    assert _rel(batch_logits[row, 10 - n:], alone[0]) < 1e-5


def test_segment_ids_pack_independent_sequences():
  params = _params(GQA)
  a, b = _tokens(1, 6, GQA.vocab_size, 2), _tokens(1, 4, GQA.vocab_size, 3)
  packed = np.concatenate([a, b], axis=1)
  segments = np.array([[1] * 6 + [2] * 4], np.int32)
  positions = np.array([list(range(6)) + list(range(4))], np.int32)
  logits = llama.forward(GQA, params, packed, positions=positions, segment_ids=segments)
  assert _rel(logits[0, :6], llama.forward(GQA, params, a)[0]) < 1e-5
  assert _rel(logits[0, 6:], llama.forward(GQA, params, b)[0]) < 1e-5


def test_cache_prefill_then_decode_equals_full_forward():
  params = _params(GQA)
  tokens = _tokens(2, 9, GQA.vocab_size)
  model = llama.Llama(GQA)
  cache = llama.init_cache(GQA, 2, 16)
  kv_mask = np.zeros((2, 16), bool)
  kv_mask[:, :9] = True
  positions = np.broadcast_to(np.arange(9), (2, 9))
  prefill, cache = model.apply({'params': params}, tokens[:, :6], positions[:, :6], kv_mask,
                               cache=cache, cache_index=0)
  steps = [prefill]
  for t in range(6, 9):
    logits, cache = model.apply({'params': params}, tokens[:, t:t + 1], positions[:, t:t + 1],
                                kv_mask, cache=cache, cache_index=t)
    steps.append(logits)
  full = llama.forward(GQA, params, tokens)
  assert _rel(jnp.concatenate(steps, axis=1), full) < 1e-5


def test_bf16_compute_keeps_param_dtype_and_is_close():
  params = _params(GQA)
  tokens = _tokens(2, 8, GQA.vocab_size)
  bf16 = GQA.replace(dtype='bfloat16')
  logits = llama.forward(bf16, params, tokens)
  assert logits.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  assert _rel(logits, llama.forward(GQA, params, tokens)) < 3e-2
  bf16_params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
  assert llama.forward(bf16, bf16_params, tokens).dtype == jnp.float32


@pytest.mark.parametrize('tied', [True, False])
def test_param_tree_and_count(tied):
  config = GQA.replace(tie_embeddings=tied)
  params = _params(config)
  assert ('lm_head' in params) != tied
  assert sum(p.size for p in jax.tree.leaves(params)) == config.num_params


def test_llama3_rope_frequencies_match_transformers():
  from transformers import LlamaConfig as HfConfig  # pylint: disable=g-import-not-at-top
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # pylint: disable=g-import-not-at-top
  scaling = llama.RopeScaling('llama3', 8.0, 1.0, 4.0, 64)
  config = GQA.replace(rope_theta=500000.0, rope_scaling=scaling, head_dim=32)
  hf = HfConfig(hidden_size=128, num_attention_heads=4, head_dim=32, rope_theta=500000.0,
                max_position_embeddings=512,
                rope_scaling={'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
                              'high_freq_factor': 4.0, 'original_max_position_embeddings': 64})
  inv_freq, scale = ROPE_INIT_FUNCTIONS['llama3'](hf, 'cpu')
  assert scale == 1.0
  np.testing.assert_allclose(llama.rope_frequencies(config), inv_freq.numpy(), rtol=1e-6)


def test_config_validation():
  with pytest.raises(ValueError, match='n_kv_heads'):
    llama.LlamaConfig(vocab_size=8, dim=8, n_layers=1, n_heads=3, n_kv_heads=2, ffn_dim=8)
  with pytest.raises(ValueError, match='dtype'):
    GQA.replace(dtype='float64')


def test_sharded_forward_equals_one_device():
  mesh = sharding.make_mesh(2, 2, 2)
  config = GQA.replace(n_kv_heads=1)  # a kv width the tensor axis can still split
  params = _params(config)
  tokens = _tokens(4, 12, config.vocab_size)
  mask = np.ones_like(tokens)
  mask[1, :5] = 0
  expected = llama.forward(config, params, tokens, mask=mask)
  sharded = sharding.init_params(lambda r: llama.init_params(config, r), mesh, jax.random.key(0))
  specs = jax.tree.map(lambda p: p.sharding.spec, sharded)
  assert specs['layers']['attn']['q_proj']['kernel'] == jax.sharding.PartitionSpec(
      None, 'fsdp', 'tensor')
  assert len(sharded['embed']['embedding'].sharding.device_set) == 8
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  with jax.set_mesh(mesh):
    logits = llama.forward(config, sharded, sharding.shard_batch(mesh, tokens),
                           mask=sharding.shard_batch(mesh, mask))
  assert _rel(logits, expected) < 1e-5


def test_rule_table_rejects_unknown_params_and_fits_uneven_dims():
  with pytest.raises(ValueError, match='matches no sharding rule'):
    sharding.param_specs({'mystery': {'kernel': jnp.zeros((4, 4))}})
  mesh = sharding.make_mesh(2, 2, 2)
  spec = sharding.fit_spec(jax.sharding.PartitionSpec(None, 'fsdp', 'tensor'), (2, 64, 3), mesh)
  assert spec == jax.sharding.PartitionSpec(None, 'fsdp', None)
  with pytest.raises(ValueError, match='needs 16 devices'):
    sharding.make_mesh(2, 2, 4)
  assert sharding.make_mesh(1, 1, 1).devices.size == 1


def test_matmul_gradients_equal_autodiff_of_the_product():
  """llama.matmul's hand-written backward equals autodiff of x @ w (both operands, 3-D x)."""
  kx, kw, ky = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (3, 5, 7))
  w = jax.random.normal(kw, (7, 4))
  dy = jax.random.normal(ky, (3, 5, 4))
  ours = jax.vjp(llama.matmul, x, w)
  ref = jax.vjp(lambda a, b: a @ b, x, w)
  np.testing.assert_allclose(ours[0], ref[0], rtol=1e-6)
  for got, want in zip(ours[1](dy), ref[1](dy)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('tied', [False, True])
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_head_matmul_gradients_equal_autodiff_of_the_product(tied, dtype):
  """llama.head_matmul (float32 logits, tied [V, D] or untied [D, V] weight) equals autodiff of
  the mixed-precision einsum, in values and in both gradients."""
  kx, kw, ky = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (3, 5, 8)).astype(dtype)
  w = jax.random.normal(kw, (11, 8) if tied else (8, 11))  # float32 master weights
  dy = jax.random.normal(ky, (3, 5, 11))
  spec = 'btd,vd->btv' if tied else 'btd,dv->btv'
  ref = jax.vjp(lambda a, b: jnp.einsum(spec, a, b.astype(dtype),
                                        preferred_element_type=jnp.float32), x, w)
  ours = jax.vjp(lambda a, b: llama.head_matmul(a, b, tied), x, w)
  assert ours[0].dtype == jnp.float32
  np.testing.assert_allclose(ours[0], ref[0], rtol=1e-6)
  tol = 1e-5 if dtype == 'float32' else 2e-2
  for got, want in zip(ours[1](dy), ref[1](dy)):
    assert got.dtype == want.dtype
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               rtol=tol, atol=tol)


def test_causal_query_blocks_give_the_same_logits_and_grads():
  """Attention in query blocks (the blocks above the diagonal skipped) equals one block, with
  left and right padding and packed segments, in logits and in gradients. The layers are
  unrolled, as the training configs set them (the attention code is the same in the scan)."""
  cfg = llama.LlamaConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48,
                          unroll_layers=True)
  params = llama.init_params(cfg, jax.random.key(1))
  tokens = jax.random.randint(jax.random.key(2), (3, 48), 0, 64)
  mask = np.ones((3, 48), bool)
  mask[0, :9], mask[1, 35:] = False, False  # left padding, right padding
  segments = np.repeat(np.arange(3), 16)[None] * np.ones((3, 1), np.int32)
  segments[:2] = 0

  def logits(c):
    return jax.jit(llama.forward, static_argnums=0)(c, params, tokens, mask=mask,
                                                    segment_ids=segments)
  grad = jax.jit(jax.grad(lambda p, c: (llama.forward(c, p, tokens, mask=mask) * mask[..., None])
                          .std()), static_argnums=1)
  one = cfg.replace(query_block=0)
  for block in (16, 32):  # 4 and 2 blocks (query_block does not divide T: 12 and 24 each)
    c = cfg.replace(query_block=block)
    dots = lambda c: str(jax.make_jaxpr(llama.forward, static_argnums=0)(c, params, tokens)
                         ).count('dot_general')
    assert dots(c) > dots(one)  # the blocked path is the one under test
    # Real tokens only: a left-pad query sees no key, and its (unused) output differs.
    np.testing.assert_allclose(logits(c)[mask], logits(one)[mask], rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.tree.leaves(grad(params, c)), jax.tree.leaves(grad(params, one))):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_unrolled_layers_give_the_same_logits_and_grads():
  cfg = llama.LlamaConfig(vocab_size=64, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=48)
  params = llama.init_params(cfg, jax.random.key(1))
  tokens = jax.random.randint(jax.random.key(2), (2, 9), 0, 64)

  grad = jax.jit(jax.grad(lambda p, c: llama.forward(c, p, tokens).std()), static_argnums=1)
  for got, want in zip(jax.tree.leaves(grad(params, cfg.replace(unroll_layers=True))),
                       jax.tree.leaves(grad(params, cfg))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(llama.forward(cfg.replace(unroll_layers=True), params, tokens),
                             llama.forward(cfg, params, tokens), rtol=1e-5, atol=1e-5)
