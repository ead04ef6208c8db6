"""Tests of srlm_jax.sampler: exact decode logits, greedy parity with transformers, the sampling
filters' distributions (chi-square), stops, N samples from one prefill, and 1 vs 8 devices."""

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from srlm_jax import llama, rollout, sampler, sharding, token_draw

TINY = llama.LlamaConfig(vocab_size=96, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                         rope_theta=1e4)


@pytest.fixture(scope='module')
def tiny_params():
  params = jax.jit(llama.init_params, static_argnums=0)(TINY, jax.random.key(0))
  # A larger output projection makes the next-token distributions peaked, so that the filters
  # below cut something.
  params['lm_head']['kernel'] = params['lm_head']['kernel'] * 40.0
  return params


def _left_pad(rows, pad=0, p=None):
  p = p or max(len(r) for r in rows)
  tokens = np.full((len(rows), p), pad, np.int32)
  mask = np.zeros((len(rows), p), bool)
  for i, r in enumerate(rows):
    tokens[i, p - len(r):], mask[i, p - len(r):] = r, True
  return tokens, mask


def _prompts(lengths, seed=0, vocab=TINY.vocab_size):
  rng = np.random.default_rng(seed)
  return [list(rng.integers(3, vocab, n)) for n in lengths]


def test_prompt_buckets_step_by_quarters_above_128():
  assert [sampler.prompt_bucket(n) for n in (1, 33, 65, 128, 129, 161, 217, 225, 257, 1448)] == [
      32, 48, 96, 128, 160, 192, 224, 256, 320, 1536]
  padding = [1 - n / sampler.prompt_bucket(n) for n in range(sampler.FINE_BUCKET + 1, 5000)]
  assert max(padding) < 0.2


def test_prefill_groups_halve_while_they_pay():
  # Four lengths, four rows each, longest first: two groups of 8 cut 2032 slots to 1520; four
  # groups would have 4 rows, under MIN_GROUP_ROWS. With eight rows each: 4064 -> 3040 (-25%),
  # and four groups would only cut 17% more (2528), under GROUP_GAIN.
  lengths = [126] * 4 + [90] * 4 + [50] * 4 + [30] * 4
  assert sampler.prefill_groups(lengths) == (128, 64)
  assert sampler.prefill_groups(sorted(lengths * 2, reverse=True)) == (128, 64)
  assert sampler.prefill_groups([126] * 8 + [60] * 8 + [30] * 16) == (128, 64, 32, 32)
  assert sampler.prefill_groups([40] * 16) == ()  # nothing to gain
  assert sampler.prefill_groups([126, 120] * 8) == ()  # under GROUP_GAIN: 2032 -> 2032
  assert sampler.prefill_groups(lengths, multiple=16) == ()  # groups must fill the shards
  rng = np.random.default_rng(0)
  for _ in range(50):  # any order: every row fits its group's width
    lengths = rng.integers(1, 300, 64)
    widths = sampler.prefill_groups(lengths) or (sampler.prompt_bucket(lengths.max()),)
    size = 64 // len(widths)
    assert all(n <= widths[i // size] for i, n in enumerate(lengths))


def test_grouped_prefill_gives_the_rows_their_ungrouped_tokens(tiny_params, monkeypatch):
  lengths = [5, 60, 12, 33, 3, 47, 20, 58, 9, 40, 26, 2, 51, 15, 37, 7]
  rows = _prompts(lengths, seed=3)
  tokens, mask = _left_pad(rows)
  assert sampler.prefill_groups(sorted(lengths, reverse=True)) == (64, 32)
  kw = dict(max_new_tokens=12, eos_ids=(5,))
  ran = []  # the groups each prefill ran with: the automatic ones must be taken
  prefill = sampler.prefill
  monkeypatch.setattr(sampler, 'prefill', lambda *a, **k: ran.append(k['groups']) or prefill(
      *a, **k))
  for extra in (dict(), dict(n=2, temperature=1.0, top_p=0.9)):
    grouped = jax.device_get(sampler.sample(TINY, tiny_params, tokens, mask, 4, packing=False,
                                            **kw, **extra))
    whole = jax.device_get(sampler.sample(TINY, tiny_params, tokens, mask, 4, groups=(),
                                          **kw, **extra))
    np.testing.assert_array_equal(grouped.tokens, whole.tokens)
    np.testing.assert_array_equal(grouped.lengths, whole.lengths)
    np.testing.assert_allclose(grouped.logprobs, whole.logprobs, atol=1e-5)
  assert ran == [(64, 32), (), (64, 32), ()]
  # The rows sorted longest first, grouped on 8 devices (groups of 8 rows over 4 batch shards),
  # on sharded device arrays: the same tokens again.
  order = np.argsort([-n for n in lengths], kind='stable')
  mesh = sharding.make_mesh(2, 2, 2)
  params = jax.device_put(tiny_params, sharding.param_shardings(mesh, tiny_params))
  with jax.set_mesh(mesh):
    assert sharding.batch_multiple() == 4
    t, m, ids = sharding.shard_batch(mesh, tokens[order], mask[order], order.astype(np.int32))
    out = jax.device_get(sampler.sample(TINY, params, t, m, 4, prompt_ids_B=ids, groups=(64, 32),
                                        **kw))
  single = jax.device_get(sampler.sample(TINY, tiny_params, tokens, mask, 4, groups=(), **kw))
  np.testing.assert_array_equal(out.tokens, single.tokens[order])
  np.testing.assert_allclose(out.logprobs, single.logprobs[order], atol=1e-4)
  # Groups the rows do not fit are refused, naming the row.
  with pytest.raises(ValueError, match='prompt row 9 is longer'):
    sampler.sample(TINY, tiny_params, tokens, mask, 4, groups=(64, 32), **kw)
  with pytest.raises(ValueError, match='divides the 16 rows'):
    sampler.sample(TINY, tiny_params, tokens, mask, 4, groups=(64, 64, 64), **kw)


def test_pack_plan_lays_each_prompt_out_once_in_order():
  rng = np.random.default_rng(1)
  for b, width, shards in [(16, 63, 1), (64, 127, 1), (64, 127, 4), (24, 95, 3)]:
    lengths = rng.integers(1, width + 2, b) // rng.choice([1, 4], b)  # long and short prompts
    plan = sampler.pack_plan(lengths, width, shards)
    assert plan.shape[0] == shards and plan.shape[2] == width
    size = b // shards
    for s, block in enumerate(plan):  # block s: rows s * size ... (s + 1) * size - 1
      own = lengths[s * size:(s + 1) * size]
      rows, cols = np.divmod(block[block >= 0], width)
      # Every prefill token (a prompt's all but its last, right-aligned in the block's [B/S, Q]
      # layout) appears exactly once.
      want = sorted((r, c) for r in range(size) for c in range(width - own[r] + 1, width))
      assert sorted(zip(rows.tolist(), cols.tolist())) == want
      for r in range(size):  # contiguous and in order, in one packed row
        hits = np.argwhere((block // width == r) & (block >= 0))
        if len(hits):
          assert len(set(hits[:, 0])) == 1 and (np.diff(hits[:, 1]) == 1).all()
          assert (np.diff(block[tuple(hits.T)]) == 1).all()
    assert plan.shape[1] == sampler.pack_rows(plan.shape[1])
    assert plan.size <= (1 - sampler.GROUP_GAIN) * b * width
  # bench_sampler's MT-Bench mix: 38 rows of 127 slots, rounded to 40.
  assert [sampler.pack_rows(n) for n in (1, 5, 7, 8, 9, 18, 38, 64)] == [1, 5, 7, 8, 10, 20, 40,
                                                                      64]
  assert sampler.pack_plan([100, 120, 110, 128], 127) is None  # one prompt a row: no gain
  assert sampler.pack_plan([20] * 8, 63).shape == (1, 3, 63)  # 3 prompts of 19 tokens a row
  # A longest-first batch in 4 shards: in consecutive blocks, the first shard's long prompts
  # need more rows than the others and packing does not pay; dealt, every shard packs alike.
  lengths = sorted([120, 110, 100, 90, 60, 50, 40, 30] * 4 + [20, 15, 10, 5] * 8, reverse=True)
  assert sampler.pack_plan(lengths, 127, 4) is None
  dealt = sampler.deal(range(64), 4)
  assert dealt[:4] == [0, 4, 8, 12] and sorted(dealt) == list(range(64))
  assert sampler.pack_plan([lengths[i] for i in dealt], 127, 4).shape == (4, 6, 127)  # 684 each
  with pytest.raises(ValueError, match='prompt row 2 has 70 tokens'):
    sampler.pack_plan([20, 30, 70], 63)
  with pytest.raises(ValueError, match='3 prompt rows do not split into 2 batch shards'):
    sampler.pack_plan([20, 30, 40], 63, 2)
  with pytest.raises(ValueError, match='6 rows do not split into 4 batch shards'):
    sampler.deal(range(6), 4)


def test_packed_prefill_gives_the_rows_their_unpacked_tokens(tiny_params, monkeypatch):
  lengths = [5, 60, 12, 33, 3, 47, 20, 58, 9, 40, 26, 2, 51, 15, 37, 7]
  tokens, mask = _left_pad(_prompts(lengths, seed=3))
  plan = sampler.pack_plan(lengths, 63)
  assert plan.shape == (1, 7, 63) and (plan >= 0).sum() == sum(lengths) - len(lengths)
  kw = dict(max_new_tokens=12, eos_ids=(5,))
  ran = []  # each prefill's packed rows: the automatic packing must be taken
  prefill = sampler.prefill
  monkeypatch.setattr(sampler, 'prefill', lambda *a, **k: ran.append(
      None if k['packing'] is None else k['packing'].shape) or prefill(*a, **k))
  for extra in (dict(), dict(n=2, temperature=1.0, top_p=0.9)):
    packed = jax.device_get(sampler.sample(TINY, tiny_params, tokens, mask, 4, **kw, **extra))
    whole = jax.device_get(sampler.sample(TINY, tiny_params, tokens, mask, 4, groups=(),
                                          **kw, **extra))
    np.testing.assert_array_equal(packed.tokens, whole.tokens)
    np.testing.assert_array_equal(packed.lengths, whole.lengths)
    np.testing.assert_allclose(packed.logprobs, whole.logprobs, atol=1e-5)
    greedy = whole if not extra else greedy
  assert ran == [(1, 7, 63), None, (1, 7, 63), None]
  # The prompt cache, gathered back from the packed rows: the unpacked one at every real slot,
  # zeros in the padding.
  bucket = np.pad(tokens, ((0, 0), (4, 0))), np.pad(mask, ((0, 0), (4, 0)))
  args = (TINY, tiny_params, *map(jnp.asarray, bucket), jax.random.key(0),
          jnp.arange(16, dtype=jnp.int32))
  a = prefill(*args, n=1, max_new_bucket=32, packing=jnp.asarray(plan)).cache['prompt']
  b = prefill(*args, n=1, max_new_bucket=32).cache['prompt']
  real = bucket[1][:, :-1]
  for la, lb in zip(a, b):
    np.testing.assert_allclose(la['k'] * real[:, None, None], lb['k'] * real[:, None, None],
                               atol=1e-6)
    np.testing.assert_allclose(la['v'] * real[:, None, :, None],
                               lb['v'] * real[:, None, :, None], atol=1e-6)
    assert not np.asarray(la['k'])[~np.broadcast_to(real[:, None, None], la['k'].shape)].any()
  # On 8 devices, each of the 4 batch shards' rows packed on their own: the same tokens, from
  # sharded device arrays (the rows dealt to the shards) and from host prompts (dealt by
  # `sample`, the output in the prompts' order).
  mesh = sharding.make_mesh(2, 2, 2)
  params = jax.device_put(tiny_params, sharding.param_shardings(mesh, tiny_params))
  dealt = sampler.deal(np.argsort(-np.asarray(lengths), kind='stable'), 4)  # as `sample` deals
  ran.clear()
  with jax.set_mesh(mesh):
    plan4 = sampler.pack_plan([lengths[i] for i in dealt], 63, sharding.batch_multiple())
    assert plan4.shape == (4, 3, 63)
    t, m, p4 = sharding.shard_batch(mesh, tokens[dealt], mask[dealt], plan4)
    out = jax.device_get(sampler.sample(TINY, params, t, m, 4, packing=p4, **kw))
    auto = jax.device_get(sampler.sample(TINY, params, tokens, mask, 4, **kw))
    # The gathers into the packed rows and back need no communication: the packed prefill has
    # the collectives of the unpacked one (a gather over the whole batch's slots: 6 more
    # all-gathers, 2 more collective-permutes and an all-reduce).
    args = (TINY, params, *sharding.shard_batch(mesh, *bucket), jax.random.key(0),
            sharding.shard_batch(mesh, np.arange(16, dtype=np.int32)))
    texts = [prefill.lower(*args, n=1, max_new_bucket=32, packing=packing).compile().as_text()
             for packing in (sharding.shard_batch(mesh, plan4), None)]
  np.testing.assert_array_equal(out.tokens, greedy.tokens[dealt])
  np.testing.assert_allclose(out.logprobs, greedy.logprobs[dealt], atol=1e-4)
  np.testing.assert_array_equal(auto.tokens, greedy.tokens)
  assert ran == [(4, 3, 63), (4, 3, 63)]
  collectives = [{op: t.count(f'{op}(') + t.count(f'{op}-start(') for op in
                  ('all-gather', 'all-to-all', 'collective-permute', 'all-reduce')} for t in texts]
  assert collectives[0] == collectives[1], collectives
  with pytest.raises(ValueError, match='a packed prefill has no groups'):
    sampler.sample(TINY, tiny_params, tokens, mask, 4, packing=plan[:, :, :40], **kw)


def test_decode_step_logits_equal_full_forward(tiny_params):
  rows = _prompts([5, 17, 1, 40])
  tokens, mask = _left_pad(rows, p=64)  # the prompt bucket `sample` would use
  mode = token_draw.make_mode()
  steps = 12
  state = sampler.prefill(TINY, tiny_params, jnp.asarray(tokens), jnp.asarray(mask),
                          jax.random.key(0), jnp.arange(4), n=1, max_new_bucket=32)
  knobs = token_draw.make_knobs(max_new_tokens=steps)
  dparams = sampler.split_layers(tiny_params)
  step_fn = jax.jit(sampler.decode_step, static_argnames=('config', 'mode'))
  step_logits, seqs = [], [list(r) for r in rows]
  for t in range(steps):
    fn = sampler.decode_step if t == 0 else step_fn  # the first step also runs without jit
    state, logits = fn(TINY, dparams, state, knobs, mode)
    step_logits.append(logits)
    for i, seq in enumerate(seqs):
      seq.append(int(state.token_R[i]))
  # One causal forward over each full sequence gives the logits of every prefix (right padding
  # leaves earlier positions alone).
  full, _ = _left_pad([s[::-1] for s in seqs])
  full_logits = llama.forward(TINY, tiny_params, jnp.asarray(full[:, ::-1]))
  for t in range(steps):
    for i, r in enumerate(rows):
      np.testing.assert_allclose(step_logits[t][i], full_logits[i, len(r) - 1 + t], atol=1e-4,
                                 rtol=1e-4)
  out = sampler.sample(TINY, tiny_params, tokens, mask, 0, max_new_tokens=steps)
  np.testing.assert_array_equal(out.tokens, [s[len(r):] for s, r in zip(seqs, rows)])
  np.testing.assert_array_equal(out.lengths, steps)
  assert (np.asarray(out.stop_reason) == sampler.StopReason.MAX_TOKENS).all()
  # The log-probs are log-softmax of the raw logits.
  logp = jax.nn.log_softmax(full_logits, axis=-1)
  for i, (s, r) in enumerate(zip(seqs, rows)):
    want = [logp[i, len(r) - 1 + t, s[len(r) + t]] for t in range(steps)]
    np.testing.assert_allclose(out.logprobs[i], want, atol=1e-4)


def test_decode_logits_equal_forward_over_the_growing_sequence(tiny_params):
  """One decoder: each decode step's logits (shared prompt block, N = 3 sampled rows per prompt,
  `llama.layer` per token) equal `llama.forward` over the row's sequence so far, and prefill
  hands decode the cache layout of `llama.init_cache`."""
  n, steps, p = 3, 6, 32
  rows = _prompts([9, 20], seed=11)
  tokens, mask = _left_pad(rows, p=p)
  state = sampler.prefill(TINY, tiny_params, jnp.asarray(tokens), jnp.asarray(mask),
                          jax.random.key(2), jnp.arange(2), n=n, max_new_bucket=32)
  for name, batch, slots in (('prompt', 2, p - 1), ('rows', 2 * n, 32)):
    want = llama.init_cache(TINY, batch, slots)
    assert jax.tree.structure(state.cache[name]) == jax.tree.structure(want)
    assert [x.shape for x in jax.tree.leaves(state.cache[name])] == [
        x.shape for x in jax.tree.leaves(want)]
  mode = token_draw.make_mode(temperature=1.0)
  knobs = token_draw.make_knobs(max_new_tokens=steps, temperature=1.0)
  step_fn = jax.jit(sampler.decode_step, static_argnames=('config', 'mode'))
  dparams = sampler.split_layers(tiny_params)
  forward = jax.jit(llama.forward, static_argnums=0)
  seqs = [list(rows[r // n]) for r in range(2 * n)]
  for t in range(steps):
    # The rows' sequences so far (prompt, then the tokens fed at steps 0..t-1, the last prompt
    # token first), left-padded to one width so that one forward compiles for all steps.
    seq_tokens, seq_mask = _left_pad(seqs, p=p + steps)
    want = forward(TINY, tiny_params, jnp.asarray(seq_tokens), mask=jnp.asarray(seq_mask))[:, -1]
    state, logits = step_fn(TINY, dparams, state, knobs, mode)
    np.testing.assert_allclose(logits, want, atol=1e-4, rtol=1e-4)
    for r, seq in enumerate(seqs):
      seq.append(int(state.token_R[r]))
  assert len({tuple(s) for s in seqs}) > 2  # the sampled rows went their own ways


@pytest.mark.parametrize('share', [False, True])
def test_continue_rows_equals_forward_over_the_continued_sequence(tiny_params, share):
  """After a sampled decode (N = 2 rows per prompt, eos ends some rows early), feeding T tokens
  at each row's slot `start` (0 .. its length) reads as a forward over [prompt, its first
  start - 1 generated tokens, the T tokens]; with a shared prefix, that prefix comes first."""
  n, t, steps = 2, 3, 10
  head = _prompts([40], seed=5)[0] if share else []
  rows = _prompts([6, 19, 2], seed=7)
  tokens, mask = _left_pad(rows, p=32)
  shared = (sampler.prefill_prefix(TINY, tiny_params, jnp.asarray([head], jnp.int32))
            if share else None)
  out, state = sampler.sample(TINY, tiny_params, tokens, mask, 4, max_new_tokens=steps, n=n,
                              temperature=1.0, eos_ids=(5, 6, 7), shared=shared,
                              return_state=True)
  lengths = np.asarray(out.lengths)
  assert lengths.min() < steps  # some rows stopped early: slots past them hold padding
  rng = np.random.default_rng(0)
  start = np.array([rng.integers(0, n_ + 1) for n_ in lengths], np.int32)
  start[:2] = 0, lengths[1]  # both ends
  fed = rng.integers(3, TINY.vocab_size, (len(lengths), t)).astype(np.int32)
  hidden = sampler.continue_rows(TINY, tiny_params, state, jnp.asarray(fed), jnp.asarray(start))
  got = llama.logits(TINY, tiny_params, hidden.reshape(-1, TINY.dim)).reshape(len(lengths), t, -1)
  gen = np.asarray(out.tokens)
  seqs = [head + rows[r // n] + list(gen[r, :max(start[r] - 1, 0)]) + list(fed[r])
          if start[r] else head + rows[r // n][:-1] + list(fed[r]) for r in range(len(lengths))]
  seq_tokens, seq_mask = _left_pad(seqs)
  want = llama.forward(TINY, tiny_params, jnp.asarray(seq_tokens), mask=jnp.asarray(seq_mask))
  np.testing.assert_allclose(got, want[:, -t:], atol=1e-4, rtol=1e-4)


def test_bfloat16_compute_samples_close_to_float32(tiny_params):
  """llama.for_compute: bfloat16 params and compute run the sampler, its step logits stay close
  to the float32 model's on the same tokens, and 'auto' on a CPU is float32 (params untouched)."""
  config, params = llama.for_compute(TINY, tiny_params, 'bfloat16')
  assert config.dtype == 'bfloat16' and TINY.dtype == 'float32'
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(tiny_params))  # masters kept
  rows = _prompts([5, 17, 30], seed=13)
  tokens, mask = _left_pad(rows, p=32)
  out = sampler.sample(config, params, tokens, mask, 0, max_new_tokens=8, temperature=1.0, n=2)
  assert out.logprobs.dtype == jnp.float32 and (np.asarray(out.logprobs) <= 0).all()
  # The bfloat16 decode step against the float32 forward over the same sequences (the bfloat16
  # greedy tokens). bfloat16 keeps 8 significant bits (rounding error up to 2^-9 = 0.2%);
  # every projection, norm and residual add of the two layers rounds again, so the logits (up
  # to about +-14 here) move by about 0.5% of their norm (measured 0.43-0.50%); 3e-2 is the
  # bound test_llama holds a bfloat16 forward to, with room for other seeds.
  state = sampler.prefill(config, params, jnp.asarray(tokens), jnp.asarray(mask),
                          jax.random.key(0), jnp.arange(3), n=1, max_new_bucket=32)
  knobs, mode = token_draw.make_knobs(max_new_tokens=8), token_draw.make_mode()
  seqs, dparams = [list(r) for r in rows], sampler.split_layers(params)
  step_fn = jax.jit(sampler.decode_step, static_argnames=('config', 'mode'))
  for _ in range(4):
    seq_tokens, seq_mask = _left_pad(seqs, p=36)
    want = llama.forward(TINY, tiny_params, seq_tokens, mask=seq_mask)[:, -1]
    state, logits = step_fn(config, dparams, state, knobs, mode)
    assert state.cache['rows'][0]['k'].dtype == jnp.bfloat16
    err = np.linalg.norm(np.asarray(logits) - want) / np.linalg.norm(want)
    assert err < 3e-2, err
    for r, seq in enumerate(seqs):
      seq.append(int(state.token_R[r]))
  auto_config, auto_params = llama.for_compute(TINY, tiny_params, 'auto')
  assert auto_config.dtype == 'float32'
  assert all(a is b for a, b in zip(jax.tree.leaves(auto_params), jax.tree.leaves(tiny_params)))
  with pytest.raises(ValueError, match='compute dtype'):
    llama.for_compute(TINY, tiny_params, 'float16')


def test_sample_makes_no_implicit_transfers(tiny_params):
  """sample() from device arrays runs under jax.transfer_guard('disallow') (the rollout path):
  its own host values go to the device by explicit transfers only."""
  tokens, mask = _left_pad(_prompts([4, 11], seed=17))  # 11 wide: padded to 32 in prefill
  want = sampler.sample(TINY, tiny_params, tokens, mask, 3, max_new_tokens=5, temperature=1.0)
  tokens, mask, params = jax.device_put((tokens, mask, tiny_params))
  with jax.transfer_guard('disallow'):
    got = sampler.sample(TINY, params, tokens, mask, 3, max_new_tokens=5, temperature=1.0)
    got = jax.block_until_ready(got)
  np.testing.assert_array_equal(jax.device_get(got.tokens), want.tokens)


def _reference_filter(logits, temperature, top_k, top_p, min_p):
  """Hugging Face's warpers, written with a sort: returns the filtered distribution [V]."""
  x = np.asarray(logits, np.float64) / temperature
  if top_k:
    x = np.where(x >= np.sort(x)[-top_k], x, -np.inf)
  p = np.exp(x - x.max())
  p /= p.sum()
  if top_p < 1:
    order = np.argsort(-p, kind='stable')
    before = np.cumsum(p[order]) - p[order]
    keep = np.zeros_like(p, bool)
    keep[order] = before < top_p
    p = np.where(keep, p, 0)
  if min_p > 0:
    p = np.where(p >= min_p * p.max(), p, 0)
  return p / p.sum()


def _chi2_pvalue(counts, probs):
  """Returns the chi-square p-value of counts against probs, bins with few expected merged."""
  probs = np.asarray(probs, np.float64) / np.sum(probs, dtype=np.float64)
  expected = probs * counts.sum()
  big = expected >= 5
  obs = np.append(counts[big], counts[~big].sum())
  exp = np.append(expected[big], expected[~big].sum())
  exp *= obs.sum() / exp.sum()
  if exp[-1] == 0:
    obs, exp = obs[:-1], exp[:-1]
  return stats.chisquare(obs, exp).pvalue


@pytest.mark.parametrize('temperature,top_k,top_p,min_p', [
    (0.7, 0, 1.0, 0.0),
    (1.0, 8, 1.0, 0.0),
    (1.0, 0, 0.8, 0.0),
    (1.0, 0, 0.9, 0.01),
    (1.3, 0, 1.0, 0.05),
    (0.9, 20, 0.9, 0.02),
])
def test_filtered_distribution(tiny_params, temperature, top_k, top_p, min_p):
  n = 4000
  prompt = _prompts([7], seed=3)
  tokens, mask = _left_pad(prompt, p=32)
  logits = llama.forward(TINY, tiny_params, jnp.asarray(prompt))[0, -1]
  want = _reference_filter(logits, temperature, top_k, top_p, min_p)
  kept = (want > 0).sum()
  assert kept > 3 and (kept < TINY.vocab_size or not (top_k or top_p < 1 or min_p))
  mode = token_draw.make_mode(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
  state = sampler.prefill(TINY, tiny_params, jnp.asarray(tokens), jnp.asarray(mask),
                          jax.random.key(1), jnp.arange(1), n=n, max_new_bucket=32)
  knobs = token_draw.make_knobs(max_new_tokens=1, temperature=temperature, top_p=top_p,
                                min_p=min_p)
  state = sampler.decode(TINY, tiny_params, state, knobs, mode)
  first = np.asarray(state.tokens_RM[:, 0])
  counts = np.bincount(first, minlength=TINY.vocab_size)
  assert counts[want == 0].sum() == 0, np.nonzero(counts * (want == 0))
  assert _chi2_pvalue(counts, want) > 1e-3
  logp = np.asarray(jax.nn.log_softmax(logits))
  np.testing.assert_allclose(state.logprobs_RM[:, 0], logp[first], atol=1e-5)


def test_inverse_cdf_two_levels():
  v, n = 3000, 8000  # more than 1024 entries: drawn block first, then within the block
  rng = np.random.default_rng(0)
  w = np.zeros(v, np.float32)
  w[rng.choice(v, 40, replace=False)] = rng.uniform(0.1, 1, 40)
  u = jnp.asarray(rng.random(n), jnp.float32)
  draws = token_draw.inverse_cdf(jnp.tile(jnp.asarray(w), (n, 1)), u)
  counts = np.bincount(np.asarray(draws), minlength=v)
  assert counts[w == 0].sum() == 0
  assert _chi2_pvalue(counts, w) > 1e-3


def _large_vocab_logits(v, seed, flat):
  """Logits over v ids: two dozen likely ones (a nucleus in a few blocks), or nearly flat ones
  (a nucleus spanning most blocks)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=v).astype(np.float32) * (0.3 if flat else 1.0)
  if not flat:
    x[rng.choice(v, 24, replace=False)] += rng.uniform(8, 12, 24).astype(np.float32)
  return x


def _uniforms(keys, step):
  """next_token's per-row uniforms."""
  return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, step)))(keys)


@pytest.mark.parametrize('top_p,min_p', [(0.9, 0.0), (0.8, 0.02)])
@pytest.mark.parametrize('flat', [False, True])
def test_top_p_over_a_large_vocabulary_draws_the_exact_filter(top_p, min_p, flat):
  """Top-p over twice the blocks the block search reads: a peaked row fits its blocks, a flat
  one spills to the search over all of V, and both draw from the sort-based filter."""
  v, n = 8192, 2000
  assert v // token_draw.NUCLEUS_BLOCK > token_draw.NUCLEUS_BLOCKS
  x = _large_vocab_logits(v, 1, flat)
  mode = token_draw.make_mode(temperature=1.0, top_p=top_p, min_p=min_p)
  knobs = token_draw.make_knobs(max_new_tokens=1, temperature=1.0, top_p=top_p, min_p=min_p)
  fits = token_draw.block_nucleus(jnp.asarray(x[None]), knobs['top_p'], knobs['min_p'], mode)[2]
  assert bool(fits[0]) is not flat
  draw = jax.jit(token_draw.next_token, static_argnames='mode')
  tokens, _ = draw(jnp.tile(x, (n, 1)), jax.random.split(jax.random.key(2), n), 0, knobs,
                   mode=mode)
  want = _reference_filter(x, 1.0, 0, top_p, min_p)
  counts = np.bincount(np.asarray(tokens), minlength=v)
  assert counts[want == 0].sum() == 0, np.nonzero(counts * (want == 0))
  if flat:  # thousands of ids in the nucleus: the counts of 64 groups of ids
    counts, want = counts.reshape(64, -1).sum(1), want.reshape(64, -1).sum(1)
  assert _chi2_pvalue(counts, want) > 1e-3


def test_top_p_draw_of_a_row_does_not_depend_on_how_many_rows_spill():
  """A row draws the same token whether no row, a few (gathered) or many of its batch spill
  out of the block search, the same token as the search over all of V, and the same with its
  logits sharded over 8 devices (rows and vocabulary)."""
  v, r, step = 16384, 16, 5
  peaked = np.stack([_large_vocab_logits(v, 10 + i, False) for i in range(r)])
  flat = np.stack([_large_vocab_logits(v, 40 + i, True) for i in range(r)])
  keys = jax.random.split(jax.random.key(3), r)
  mode = token_draw.make_mode(temperature=1.0, top_p=0.9)
  knobs = token_draw.make_knobs(max_new_tokens=8, temperature=1.0, top_p=0.9)
  draw = jax.jit(lambda x: token_draw.next_token(x, keys, step, knobs, mode)[0])
  over_vocab = jax.jit(lambda x: token_draw._nucleus_over_vocab(  # pylint: disable=protected-access
      x, _uniforms(keys, step), knobs['top_p'], knobs['min_p'], mode))
  assert 3 <= token_draw.NUCLEUS_SPILL < 12
  mesh = sharding.make_mesh(2, 2, 2)
  got = {}
  for k in (0, 3, 12):  # none, a few, more than NUCLEUS_SPILL rows spill
    x = jnp.asarray(np.concatenate([flat[:k], peaked[k:]]))
    fits = np.asarray(token_draw.block_nucleus(x, knobs['top_p'], knobs['min_p'], mode)[2])
    np.testing.assert_array_equal(fits, np.arange(r) >= k)
    got[k] = np.asarray(draw(x))
    np.testing.assert_array_equal(got[k], np.asarray(over_vocab(x)))
    with jax.set_mesh(mesh):
      spread = jax.device_put(x, jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec(sharding.BATCH, 'tensor')))
      np.testing.assert_array_equal(np.asarray(draw(spread)), got[k])
    for i, t in enumerate(got[k]):
      assert _reference_filter(x[i], 1.0, 0, 0.9, 0.0)[t] > 0, (k, i)
  np.testing.assert_array_equal(got[0][12:], got[3][12:])
  np.testing.assert_array_equal(got[0][12:], got[12][12:])
  np.testing.assert_array_equal(got[3][:3], got[12][:3])


def test_stop_sequences_and_eos_end_rows_on_their_own(tiny_params):
  rows = _prompts([4, 9, 13], seed=5)
  tokens, mask = _left_pad(rows)
  free = np.asarray(sampler.sample(TINY, tiny_params, tokens, mask, 0, max_new_tokens=20).tokens)
  stop = tuple(free[0, 3:5])  # occurs in row 0 (maybe earlier than position 3)
  eos = int(free[1, 6])

  def first_end(row, seq):
    for t in range(len(seq) - 1, len(row)):
      if tuple(row[t - len(seq) + 1:t + 1]) == tuple(seq):
        return t + 1
    return None

  out = sampler.sample(TINY, tiny_params, tokens, mask, 0, max_new_tokens=20, eos_ids=(eos,),
                       stop_seqs=(stop, (95, 94, 93)), pad_id=0)
  for i in range(3):
    ends = {sampler.StopReason.EOS: first_end(free[i], (eos,)),
            sampler.StopReason.STOP_SEQUENCE: first_end(free[i], stop)}
    ends = {k: v for k, v in ends.items() if v is not None}
    reason = min(ends, key=lambda k: (ends[k], k)) if ends else sampler.StopReason.MAX_TOKENS
    length = ends.get(reason, 20)
    assert int(out.stop_reason[i]) == reason, (i, ends)
    assert int(out.lengths[i]) == length
    np.testing.assert_array_equal(out.tokens[i, :length], free[i, :length])
    assert (np.asarray(out.tokens[i, length:]) == 0).all()
    assert (np.asarray(out.logprobs[i, length:]) == 0).all()
  assert len(set(np.asarray(out.lengths).tolist())) > 1  # the rows ended at different steps


def test_n_samples_share_one_prefill(tiny_params):
  rows = _prompts([6, 11], seed=7)
  tokens, mask = _left_pad(rows)
  greedy1 = sampler.sample(TINY, tiny_params, tokens, mask, 0, max_new_tokens=8)
  greedy4 = sampler.sample(TINY, tiny_params, tokens, mask, 0, max_new_tokens=8, n=4)
  np.testing.assert_array_equal(greedy4.tokens, np.repeat(greedy1.tokens, 4, axis=0))
  # The prefill's cost does not grow with n: the prompts go through the model once.
  def prefill_flops(n):
    lowered = sampler.prefill.lower(TINY, tiny_params, jnp.asarray(tokens), jnp.asarray(mask),
                                    jax.random.key(0), jnp.arange(2), n=n, max_new_bucket=32)
    return lowered.cost_analysis()['flops']
  assert prefill_flops(16) < 1.2 * prefill_flops(1)
  # Sampled rows of one prompt differ, and a row's sample does not depend on its place in the
  # batch: swapping the prompts (with their ids) swaps the rows.
  kw = dict(max_new_tokens=8, temperature=1.0, n=4)
  both = sampler.sample(TINY, tiny_params, tokens, mask, 11, **kw)
  assert len({tuple(t) for t in np.asarray(both.tokens[:4]).tolist()}) > 1
  swapped = sampler.sample(TINY, tiny_params, *_left_pad(rows[::-1]), 11, prompt_ids_B=[1, 0],
                           **kw)
  np.testing.assert_array_equal(swapped.tokens, np.roll(both.tokens, 4, axis=0))


def test_same_greedy_tokens_on_one_and_eight_devices(tiny_params):
  rows = _prompts([3, 8, 21, 5, 9, 2, 30, 12], seed=9)
  tokens, mask = _left_pad(rows)
  kw = dict(max_new_tokens=16, eos_ids=(5,))
  single = jax.device_get(sampler.sample(TINY, tiny_params, tokens, mask, 0, **kw))
  mesh = sharding.make_mesh(2, 2, 2)
  params = jax.device_put(tiny_params, sharding.param_shardings(mesh, tiny_params))
  with jax.set_mesh(mesh):
    t, m = sharding.shard_batch(mesh, tokens, mask)
    out = sampler.sample(TINY, params, t, m, 0, **kw)
    assert len(out.tokens.sharding.device_set) == 8
    out = jax.device_get(out)
  np.testing.assert_array_equal(out.tokens, single.tokens)
  np.testing.assert_array_equal(out.lengths, single.lengths)
  np.testing.assert_allclose(out.logprobs, single.logprobs, atol=1e-4)


class _CharTokenizer:
  """Printable ASCII as ids 3..97 (0 pad, 1 eos, 2 bos), a minimal chat format."""
  eos_id, eos_ids, pad_id = 1, (1,), 0

  def encode(self, text, add_bos=False):
    return [2] * add_bos + [min(max(ord(c) - 29, 3), 95) for c in text]

  def decode(self, ids, skip_special=True):
    return ''.join(chr(i + 29) for i in ids if i >= 3 or not skip_special)

  def encode_chat(self, messages, add_generation_prompt=True):
    text = ''.join(f'{m["role"][0]}:{m["content"]}|' for m in messages)
    return self.encode(text + ('a:' if add_generation_prompt else ''), add_bos=True)


def test_generate_batches_sorts_and_restores_order(tiny_params):
  model = types.SimpleNamespace(config=TINY, params=tiny_params, tokenizer=_CharTokenizer())
  prompts = ['hi', [{'role': 'user', 'content': 'a longer question'}], 'x' * 25, 'medium one',
             [{'role': 'system', 'content': 'be brief'}, {'role': 'user', 'content': 'ok?'}]]
  kw = dict(max_new_tokens=10, progress=False)
  whole = rollout.generate(model, prompts, **kw)
  assert all(len(c) == 1 for c in whole)
  # Batches of two (sorted by length) give every prompt the same greedy text, in input order.
  assert rollout.generate(model, prompts, batch_size=2, **kw) == whole
  # Sampling: n completions per prompt, not all the same, with raw log-probs.
  sampled = rollout.generate_tokens(model, prompts, n=3, temperature=1.0, seed=4, **kw)
  texts = [[c.text for c in cs] for cs in sampled]
  assert all(len(t) == 3 for t in texts) and any(len(set(t)) > 1 for t in texts)
  for p, cs in zip(prompts, sampled):
    for c in cs:
      assert len(c.tokens) == len(c.logprobs) <= 10 and (c.logprobs <= 0).all()
      want = model.tokenizer.encode_chat([{'role': 'user', 'content': p}] if isinstance(p, str)
                                         else p)
      assert c.prompt_tokens.tolist() == want
  # A stop string is cut from the text where it first appears.
  text = whole[2][0]
  assert len(text) > 4
  cut = rollout.generate(model, [prompts[2]], stop=[text[2:4]], **kw)[0][0]
  assert cut == text[:text.find(text[2:4])]


def _mt_bench_first_turns(shared_data, k=8):
  with open(os.path.join(shared_data, 'mt_bench', 'question.jsonl')) as f:
    turns = [json.loads(line)['turns'][0] for line in f if line.strip()]
  turns.sort(key=len)
  # Spread over the shorter three quarters: chat-formatted, they fit one 128-token bucket.
  return [turns[i] for i in np.linspace(0, 62, k).astype(int)]


def test_greedy_equals_transformers_on_smollm2(smollm2_gguf, shared_data):
  import torch  # pylint: disable=g-import-not-at-top
  import reference  # pylint: disable=g-import-not-at-top
  import srlm_jax  # pylint: disable=g-import-not-at-top
  model = srlm_jax.load(smollm2_gguf)
  tok = model.tokenizer
  prompts = _mt_bench_first_turns(shared_data)
  got = rollout.generate_tokens(model, prompts, max_new_tokens=64, progress=False)
  ids = [c[0].prompt_tokens for c in got]
  assert len({len(i) for i in ids}) == len(ids)  # different lengths, so left padding is used
  tokens, mask = _left_pad(ids, pad=tok.pad_id)
  with torch.no_grad():
    out = reference.torch_smollm2().generate(
        input_ids=torch.as_tensor(tokens, dtype=torch.long),
        attention_mask=torch.as_tensor(mask, dtype=torch.long), max_new_tokens=64,
        do_sample=False, eos_token_id=list(tok.eos_ids), pad_token_id=tok.pad_id)
  for i, comps in enumerate(got):
    want = out[i, tokens.shape[1]:].tolist()
    ends = [t for t, x in enumerate(want) if x in tok.eos_ids]
    want = want[:ends[0] + 1] if ends else want
    assert comps[0].tokens.tolist() == want, (i, tok.decode(want), comps[0].text)
    assert (comps[0].stop_reason == sampler.StopReason.EOS) == bool(ends)
