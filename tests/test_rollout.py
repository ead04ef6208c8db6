"""Tests for srlm_jax.rollout: the Rollout's log-probs against a full forward pass, rows in input
order whatever the batching, and the host edge (texts, npz files, concat)."""

import jax
import numpy as np
import pytest

import srlm_jax
from srlm_jax import llama, rollout, sampler

PROMPTS = ['Hi.', 'Name three colours of the rainbow, briefly.', 'Why is the sky blue?',
           [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': '2 + 2?'}],
           'Tell me a short story about a cat who learns to sail across the sea.']


@pytest.fixture(scope='module')
def tiny():
  return srlm_jax.load('tiny')


def _sample(model, n=3, max_new_tokens=12, **kw):
  ids, _ = rollout.encode_prompts(model, PROMPTS, max_new_tokens=max_new_tokens)
  kw = dict(n=n, max_new_tokens=max_new_tokens, temperature=0.7, top_p=0.9, seed=5,
            progress=False, **kw)
  return ids, rollout.sample(model, ids, **kw)


def _full_forward_logps(model, ids, host):
  """Returns per row the log-softmax of llama.forward over prompt + completion at the
  completion's ids (float32 [R, M], 0 after the row's length)."""
  n = len(host['tokens']) // len(ids)
  lengths = host['lengths']
  rows = [np.concatenate([ids[r // n], host['tokens'][r, :lengths[r]]])
          for r in range(len(lengths))]
  width = max(len(x) for x in rows)
  tokens = np.zeros((len(rows), width), np.int32)
  mask = np.zeros((len(rows), width), bool)
  for r, x in enumerate(rows):  # right-padded: causal attention never reads the padding
    tokens[r, :len(x)], mask[r, :len(x)] = x, True
  logits = llama.forward(model.config, model.params, tokens, mask=mask)
  logps = np.asarray(jax.nn.log_softmax(logits.astype(np.float32), axis=-1))
  want = np.zeros(host['logprobs'].shape, np.float32)
  for r, x in enumerate(rows):
    start = len(ids[r // n])
    for j in range(lengths[r]):  # token j sits at start + j, predicted at start + j - 1
      want[r, j] = logps[r, start + j - 1, x[start + j]]
  return want


def _check_logprobs(model, n, max_new_tokens):
  ids, out = _sample(model, n=n, max_new_tokens=max_new_tokens)
  host = rollout.to_host(out)
  assert out.num_prompts == len(PROMPTS) and out.num_rows == len(PROMPTS) * n
  assert host['tokens'].shape == host['logprobs'].shape == (len(PROMPTS) * n, max_new_tokens)
  assert (host['lengths'] >= 1).all() and (host['lengths'] <= max_new_tokens).all()
  want = _full_forward_logps(model, ids, host)
  np.testing.assert_allclose(host['logprobs'], want, atol=1e-4, rtol=0)
  assert (host['logprobs'] < 0).sum() > 0.9 * host['lengths'].sum()  # not all zeros
  return ids, host


def test_logprobs_equal_a_full_forward_tiny(tiny):
  ids, host = _check_logprobs(tiny, n=3, max_new_tokens=12)
  # The prompts are left-padded to the longest one, their mask marking the real ids.
  for i, x in enumerate(ids):
    width = host['prompt_tokens'].shape[1]
    assert host['prompt_mask'][i].sum() == len(x) and host['prompt_mask'][i, width - len(x):].all()
    np.testing.assert_array_equal(host['prompt_tokens'][i, width - len(x):], x)


def test_logprobs_equal_a_full_forward_smollm2():
  model = srlm_jax.load('smollm2-135m-instruct')
  _, host = _check_logprobs(model, n=2, max_new_tokens=16)
  # A trained model stops: eos rows end with an eos id, the others ran to the limit.
  for r, length in enumerate(host['lengths']):
    reason = sampler.StopReason(int(host['stop_reason'][r]))
    if reason == sampler.StopReason.EOS:
      assert host['tokens'][r, length - 1] in model.tokenizer.eos_ids
    else:
      assert reason == sampler.StopReason.MAX_TOKENS and length == 16


def test_rows_in_input_order_whatever_the_batching(tiny):
  _, whole = _sample(tiny)
  _, ones = _sample(tiny, batch_size=1)
  _, twos = _sample(tiny, batch_size=2)
  a, b, c = (rollout.to_host(x) for x in (whole, ones, twos))
  for k in rollout.FIELDS:
    if k == 'logprobs':  # another batch shape compiles other kernels: float32 rounding differs
      np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=0)
      np.testing.assert_allclose(a[k], c[k], atol=1e-5, rtol=0)
    else:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
      np.testing.assert_array_equal(a[k], c[k], err_msg=k)
  assert len({tuple(a['tokens'][r]) for r in range(len(a['tokens']))}) > len(PROMPTS)


def test_long_prompts_go_in_smaller_batches(tiny, monkeypatch):
  # The default batch: DEFAULT_ROWS // n prompts, and at most PREFILL_SCORES / longest^2 ...
  assert rollout.DEFAULT_ROWS == 192  # rounded down to a power of two:
  assert rollout.default_batch_size(1, 200) == 128
  assert rollout.default_batch_size(3, 200) == 64
  assert rollout.default_batch_size(4, 200) == 32
  assert rollout.default_batch_size(1, 1448) == 16  # 2^25 / 1448^2 = 16.0
  assert rollout.default_batch_size(1, 1449) == 8
  assert rollout.default_batch_size(1, 100_000) == 1
  # ... and at most DECODE_CACHE_BYTES of generation cache.
  assert rollout.default_batch_size(1, 200, rollout.DECODE_CACHE_BYTES // 8) == 8
  assert rollout.default_batch_size(4, 200, rollout.DECODE_CACHE_BYTES // 8) == 2
  assert rollout.default_batch_size(4, 200, rollout.DECODE_CACHE_BYTES) == 1
  # A budget that fits two of these prompts per batch: the call runs in batches of two, and
  # its rows are the one-batch call's.
  _, whole = _sample(tiny, share_prefix=False)
  longest = max(len(x) for x in rollout.encode_prompts(tiny, PROMPTS, max_new_tokens=12)[0])
  monkeypatch.setattr(rollout.rollout, 'PREFILL_SCORES', 2 * longest ** 2)
  seen = []
  _, (small, _) = _sample(tiny, share_prefix=False, on_batch=lambda out, state, prompts: (
      seen.append(prompts.shape[0]) or {'r': out.tokens[:, 0]}))
  assert seen and max(seen) == 2 and len(seen) == -(-len(PROMPTS) // 2)
  a, b = rollout.to_host(whole), rollout.to_host(small)
  np.testing.assert_array_equal(a['tokens'], b['tokens'])
  # A generation-cache budget of two prompts' rows (n=3, 12 new tokens in a 32-slot bucket of
  # keys and values in every layer): batches of two again.
  monkeypatch.setattr(rollout.rollout, 'PREFILL_SCORES', 1 << 25)
  cfg = tiny.config
  row_bytes = sampler.bucket(12) * 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * (
      jax.numpy.dtype(cfg.dtype).itemsize)
  monkeypatch.setattr(rollout.rollout, 'DECODE_CACHE_BYTES', 2 * 3 * row_bytes)
  seen.clear()
  _, (budget, _) = _sample(tiny, share_prefix=False, on_batch=lambda out, state, prompts: (
      seen.append(prompts.shape[0]) or {'r': out.tokens[:, 0]}))
  assert max(seen) == 2 and len(seen) == -(-len(PROMPTS) // 2)
  np.testing.assert_array_equal(a['tokens'], rollout.to_host(budget)['tokens'])


def test_generate_tokens_is_the_rollout_on_the_host(tiny):
  ids, out = _sample(tiny)
  host = rollout.to_host(out)
  comps = rollout.generate_tokens(tiny, PROMPTS, n=3, max_new_tokens=12, temperature=0.7,
                                  top_p=0.9, seed=5, progress=False)
  texts = rollout.texts(out, tiny.tokenizer)
  for i, cs in enumerate(comps):
    for j, c in enumerate(cs):
      r = i * 3 + j
      np.testing.assert_array_equal(c.tokens, host['tokens'][r, :host['lengths'][r]])
      np.testing.assert_array_equal(c.logprobs, host['logprobs'][r, :host['lengths'][r]])
      assert c.stop_reason == host['stop_reason'][r] and c.text == texts[i][j]
      np.testing.assert_array_equal(c.prompt_tokens, ids[i])


def test_texts_cut_eos_and_stop_strings():
  class Tok:
    eos_ids = (1,)

    def decode(self, ids, skip_special=True):
      return ''.join(chr(96 + i) for i in ids if i >= 3 or not skip_special)

  out = rollout.Rollout(
      prompt_tokens=np.full((1, 2), 5, np.int32), prompt_mask=np.ones((1, 2), bool),
      tokens=np.array([[3, 4, 1, 0], [5, 6, 7, 8]], np.int32),
      logprobs=np.zeros((2, 4), np.float32), lengths=np.array([3, 4], np.int32),
      stop_reason=np.array([sampler.StopReason.EOS, sampler.StopReason.MAX_TOKENS], np.int32),
      n=2)
  assert rollout.texts(out, Tok()) == [['cd', 'efgh']]
  assert rollout.texts(out, Tok(), stop=('g',)) == [['cd', 'ef']]


def test_save_load_concat_and_flatten(tiny, tmp_path):
  _, a = _sample(tiny, n=2, max_new_tokens=8)
  ids, _ = rollout.encode_prompts(tiny, ['Hi.'], max_new_tokens=4)
  b = rollout.sample(tiny, ids, n=2, max_new_tokens=4, seed=1, progress=False)
  both = rollout.concat([a, b], pad_id=tiny.tokenizer.pad_id)
  host, ha, hb = rollout.to_host(both), rollout.to_host(a), rollout.to_host(b)
  assert host['tokens'].shape == (2 * len(PROMPTS) + 2, 8)
  np.testing.assert_array_equal(host['tokens'][:len(ha['tokens'])], ha['tokens'])
  np.testing.assert_array_equal(host['tokens'][len(ha['tokens']):, :4], hb['tokens'])
  assert (host['logprobs'][len(ha['tokens']):, 4:] == 0).all()
  # b's one short prompt is left-padded to a's width: its real ids stay at the right end.
  p = ha['prompt_tokens'].shape[1]
  np.testing.assert_array_equal(host['prompt_tokens'][-1, p - len(ids[0]):], ids[0])
  assert host['prompt_mask'][-1].sum() == len(ids[0])
  path = rollout.save(str(tmp_path / 'x.npz'), both.arrays())
  back = rollout.load(path)
  for k in rollout.FIELDS:
    np.testing.assert_array_equal(back[k], host[k])
    assert back[k].dtype == host[k].dtype
  again = rollout.from_arrays(back, n=2)
  assert again.num_rows == both.num_rows and again.n == 2
  with pytest.raises(ValueError, match='n=3'):
    rollout.from_arrays(back, n=3)
  nested = {'chosen': {'inputs': np.ones(2)}, 'ref': np.zeros(1)}
  assert rollout.unflatten(rollout.flatten(nested)) == nested
  assert sorted(rollout.flatten(nested)) == ['chosen/inputs', 'ref']
  (tmp_path / 'bad.npz').write_text('not an npz')
  with pytest.raises(ValueError, match='bad.npz: not a readable .npz'):
    rollout.load(str(tmp_path / 'bad.npz'))


def test_sharded_rollout_equals_the_single_device_one(tiny):
  """On a 4-device mesh (batches padded to a multiple of the data-parallel size) the Rollout
  holds the same samples as on one device."""
  from srlm_jax import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(2, 2, 1, devices=jax.devices()[:4])
  sharded = srlm_jax.load('tiny', mesh=mesh)
  _, one = _sample(tiny, batch_size=2)
  _, four = _sample(sharded, batch_size=2)
  a, b = rollout.to_host(one), rollout.to_host(four)
  for k in rollout.FIELDS:
    if k == 'logprobs':
      np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=0)
    else:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert rollout.texts(four, tiny.tokenizer) == rollout.texts(one, tiny.tokenizer)


def test_sharded_rollout_packs_each_shards_rows(tiny, monkeypatch):
  """On a 4-device mesh a batch of prompts of many lengths is packed, each batch shard's rows on
  their own, the rows dealt to the shards: the single-device rollout's tokens, and on_batch's
  rows in the prompts' order."""
  from srlm_jax import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(2, 2, 1, devices=jax.devices()[:4])
  sharded = srlm_jax.load('tiny', mesh=mesh)
  prompts = [' '.join(['colour'] * k) for k in (3, 60, 9, 25, 1, 33, 14, 50, 41, 6, 19, 28)]
  ids, _ = rollout.encode_prompts(tiny, prompts, max_new_tokens=8)
  plans = []
  pack_plan = sampler.pack_plan
  monkeypatch.setattr(sampler, 'pack_plan', lambda *a: plans.append(pack_plan(*a)) or plans[-1])
  kw = dict(n=2, max_new_tokens=8, progress=False, share_prefix=False, batch_size=12,
            on_batch=lambda out, state, prompts: {
                'length': jax.numpy.repeat(state.prompt_mask_BQ.sum(axis=1) + 1, 2)})
  one, one_extras = rollout.sample(tiny, ids, **kw)
  four, four_extras = rollout.sample(sharded, ids, **kw)
  assert [None if p is None else p.shape[:2] for p in plans] == [(1, 8), (4, 2)]
  a, b = rollout.to_host(one), rollout.to_host(four)
  np.testing.assert_array_equal(a['tokens'], b['tokens'])
  np.testing.assert_allclose(a['logprobs'], b['logprobs'], atol=1e-5, rtol=0)
  want = np.repeat([len(x) for x in ids], 2)
  np.testing.assert_array_equal(jax.device_get(one_extras['length']), want)
  np.testing.assert_array_equal(jax.device_get(four_extras['length']), want)


RUBRIC = ('Review the response to the question below with the points of this rubric, one by '
          'one: relevance, coverage, directness, expertise and clarity. Add a point for each '
          'one the response earns, explain each decision in a sentence, then end with a line '
          '"Score: N". ')
JUDGE_PROMPTS = [RUBRIC + f'Question: {q}\nResponse: {a}' for q, a in [
    ('Why is the sky blue?', 'Rayleigh scattering of sunlight by air molecules.'),
    ('2 + 2?', '5'),
    ('Name a prime.', 'Seven is prime, and so is eleven.'),
    ('What is the capital of France?', 'Paris, on the Seine, is the capital of France.'),
    ('Say hi.', 'Hello!')]]


def test_shared_prefix_length():
  ids = [np.arange(100), np.r_[np.arange(70), [5, 6]], np.arange(90)]
  assert rollout.shared_prefix_length(ids) == 64  # 70 common tokens, down to a multiple of 8
  assert rollout.shared_prefix_length(ids, minimum=80) == 0
  assert rollout.shared_prefix_length(ids[:1]) == 0  # one prompt: nothing to share
  # Every prompt keeps its last token (decode's first input) out of the prefix.
  assert rollout.shared_prefix_length([np.arange(48), np.arange(48)]) == 40
  assert rollout.shared_prefix_length([np.arange(20), np.arange(15)]) == 0  # 14 < SHARE_MIN


@pytest.mark.parametrize('temperature', [0.0, 0.7])
def test_shared_prefix_gives_the_unshared_samples(tiny, temperature):
  """The rubric every judge prompt starts with is prefilled once; the samples are the ones the
  unshared path draws (tokens equal, log-probs to float32 rounding) and equal a full forward."""
  ids, _ = rollout.encode_prompts(tiny, JUDGE_PROMPTS, max_new_tokens=12)
  kw = dict(n=3, max_new_tokens=12, temperature=temperature, top_p=0.9, seed=3, progress=False,
            batch_size=2)
  stats, plain_stats = {}, {}
  shared = rollout.to_host(rollout.sample(tiny, ids, stats=stats, **kw))
  plain = rollout.to_host(rollout.sample(tiny, ids, share_prefix=False, stats=plain_stats, **kw))
  assert stats['shared_prefix_tokens'] >= 48 and plain_stats['shared_prefix_tokens'] == 0
  assert stats['prompt_tokens'] == plain_stats['prompt_tokens'] - len(ids) * stats[
      'shared_prefix_tokens']
  assert stats['prefill_slots'] < plain_stats['prefill_slots']
  # By hand: each prompt's tokens after the shared prefix but its last; the slots, per batch of
  # 2 prompts taken longest first, 2 rows of the bucketed width of its longest prompt.
  s0 = stats['shared_prefix_tokens']
  lengths = sorted((len(x) - s0 for x in ids), reverse=True)
  assert stats['prompt_tokens'] == sum(n - 1 for n in lengths)
  assert stats['prefill_slots'] == sum(
      len(lengths[i:i + 2]) * (sampler.prompt_bucket(lengths[i]) - 1)
      for i in range(0, len(lengths), 2))
  assert stats['padded_fraction'] == round(1 - stats['prompt_tokens'] / stats['prefill_slots'],
                                           4)
  both = rollout.prefill_summary([stats, plain_stats])
  assert both['prompt_tokens'] == stats['prompt_tokens'] + plain_stats['prompt_tokens']
  assert both['padded_fraction'] == round(1 - both['prompt_tokens'] / both['prefill_slots'], 4)
  for k in rollout.FIELDS:
    if k == 'logprobs':
      np.testing.assert_allclose(shared[k], plain[k], atol=1e-5, rtol=0)
    else:
      np.testing.assert_array_equal(shared[k], plain[k], err_msg=k)
  np.testing.assert_allclose(shared['logprobs'], _full_forward_logps(tiny, ids, shared),
                             atol=1e-4, rtol=0)


def test_shared_prefix_greedy_judgments_smollm2():
  """SmolLM2's greedy judgments of rubric prompts are the same with the rubric shared."""
  model = srlm_jax.load('smollm2-135m-instruct')
  ids, _ = rollout.encode_prompts(model, JUDGE_PROMPTS, max_new_tokens=24)
  kw = dict(n=1, max_new_tokens=24, progress=False)
  stats = {}
  shared = rollout.to_host(rollout.sample(model, ids, stats=stats, **kw))
  plain = rollout.to_host(rollout.sample(model, ids, share_prefix=False, **kw))
  assert stats['shared_prefix_tokens'] >= 64
  np.testing.assert_array_equal(shared['tokens'], plain['tokens'])
  np.testing.assert_allclose(shared['logprobs'], plain['logprobs'], atol=1e-4, rtol=0)


def test_shared_prefix_on_a_mesh(tiny):
  """On a 4-device mesh the shared prefix's cache is replicated: the same greedy tokens.

  (Sampled draws of the random tiny model, nearly uniform over 49k tokens, can flip at float32
  rounding: the shared block's matmuls have other shapes per device than on one device.)"""
  from srlm_jax import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(2, 2, 1, devices=jax.devices()[:4])
  sharded = srlm_jax.load('tiny', mesh=mesh)
  ids, _ = rollout.encode_prompts(tiny, JUDGE_PROMPTS, max_new_tokens=8)
  kw = dict(n=2, max_new_tokens=8, progress=False, batch_size=2)
  a = rollout.to_host(rollout.sample(tiny, ids, **kw))
  b = rollout.to_host(rollout.sample(sharded, ids, **kw))
  np.testing.assert_array_equal(a['tokens'], b['tokens'])
  np.testing.assert_allclose(a['logprobs'], b['logprobs'], atol=1e-5, rtol=0)
