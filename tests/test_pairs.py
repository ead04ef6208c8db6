"""Tests for srlm_jax.pairs: hand-built tables, jit and eager, and a pure-Python reference."""

import functools
import math

import jax
import numpy as np
import pytest

from srlm_jax.rewards import pairs

NAN = float('nan')
MODES = [pytest.param(lambda f: f, id='eager'), pytest.param(jax.jit, id='jit')]


def _reference(scores, valid, lengths=None, min_gap=0.0, length_margin=None):
  """Returns (chosen, rejected, reason) for one prompt, the rules written as plain Python."""
  idx = [i for i, (s, v) in enumerate(zip(scores, valid)) if v and not math.isnan(s)]
  if len(idx) < 2:
    return None, None, pairs.FEWER_THAN_TWO_VALID
  best = max(scores[i] for i in idx)
  worst = min(scores[i] for i in idx)
  chosen = min(i for i in idx if scores[i] == best)
  rejected = min(i for i in idx if scores[i] == worst)
  if best == worst:
    return chosen, rejected, pairs.TIE
  if length_margin is not None:
    near = [i for i in idx if scores[i] >= best - length_margin and scores[i] > worst]
    chosen = min(near, key=lambda i: (lengths[i], i))
  if scores[chosen] - scores[rejected] < min_gap:
    return chosen, rejected, pairs.GAP_BELOW_MIN
  return chosen, rejected, pairs.PAIR


def _check_row(out, p, want):
  chosen, rejected, reason = want
  assert int(out['reason'][p]) == reason, (p, out['reason'][p], reason)
  assert bool(out['has_pair'][p]) == (reason == pairs.PAIR)
  if chosen is not None:
    assert int(out['chosen'][p]) == chosen, p
    assert int(out['rejected'][p]) == rejected, p


@pytest.mark.parametrize('wrap', MODES)
def test_hand_built_table(wrap):
  scores = np.array([
      [1.0, 4.0, 2.0, 4.0],    # pair: first of the tied best, the lowest
      [3.0, 3.0, 3.0, 3.0],    # tie
      [5.0, NAN, 0.0, 2.0],    # NaN counts as invalid
      [NAN, NAN, NAN, NAN],    # nothing valid
      [2.0, 1.0, 1.0, 5.0],    # valid mask hides the 5
      [4.5, 4.5, 0.5, 0.5],    # ties at both ends: lowest indices
      [0.0, 9.0, 9.0, 9.0],    # one valid only
  ], np.float32)
  valid = np.ones_like(scores, bool)
  valid[4, 3] = False
  valid[6, 1:] = False
  out = wrap(pairs.select_pairs)(scores, valid)
  expect = [(1, 0, 0), (0, 0, 2), (0, 2, 0), (None, None, 1), (0, 1, 0), (0, 2, 0),
            (None, None, 1)]
  for p, want in enumerate(expect):
    _check_row(out, p, want)
  np.testing.assert_allclose(out['chosen_score'], [4, 3, 5, NAN, 2, 4.5, 0])
  np.testing.assert_allclose(out['rejected_score'], [1, 3, 0, NAN, 1, 0.5, 0])
  for k in ('chosen', 'rejected', 'reason'):
    assert out[k].dtype == np.int32 and out[k].shape == (7,)
  assert out['has_pair'].dtype == bool
  assert pairs.REASONS[int(out['reason'][1])] == 'tie'


@pytest.mark.parametrize('wrap', MODES)
def test_min_gap(wrap):
  scores = np.array([[4.0, 3.5, 3.0], [5.0, 1.0, 2.0], [2.0, 2.5, NAN]], np.float32)
  valid = np.ones_like(scores, bool)
  out = wrap(functools.partial(pairs.select_pairs, min_gap=1.0))(scores, valid)
  np.testing.assert_array_equal(out['reason'], [0, 0, 3])
  np.testing.assert_array_equal(out['has_pair'], [True, True, False])
  np.testing.assert_array_equal(out['chosen'], [0, 0, 1])
  np.testing.assert_array_equal(out['rejected'], [2, 1, 0])
  traced = jax.jit(pairs.select_pairs)(scores, valid, min_gap=1.0)  # min_gap as a jit argument
  np.testing.assert_array_equal(traced['reason'], out['reason'])


@pytest.mark.parametrize('wrap', MODES)
def test_length_control(wrap):
  scores = np.array([
      [5.0, 4.5, 4.0, 1.0],  # shortest within 1.0 of the best is index 2
      [5.0, 4.5, 4.0, 1.0],  # equal shortest lengths: lowest index
      [5.0, 4.5, 4.5, 4.5],  # the worst-scored are left out, so the best stays chosen
      [3.0, 3.0, 3.0, 3.0],  # a tie stays a tie
      [5.0, 2.0, 4.8, 4.9],  # a gap below min_gap after the length choice
  ], np.float32)
  lengths = np.array([[300, 200, 100, 50], [300, 100, 100, 50], [900, 10, 10, 10],
                      [4, 3, 2, 1], [500, 1, 9, 400]], np.int32)
  valid = np.ones_like(scores, bool)
  select = functools.partial(pairs.select_pairs, length_margin=1.0, min_gap=2.9)
  out = wrap(select)(scores, valid, lengths)
  np.testing.assert_array_equal(out['chosen'], [2, 1, 0, 0, 2])
  np.testing.assert_array_equal(out['rejected'], [3, 3, 1, 0, 1])
  np.testing.assert_array_equal(out['reason'], [0, 0, 3, 2, 3])
  # The same without length control picks the best.
  plain = wrap(pairs.select_pairs)(scores, valid, lengths)
  np.testing.assert_array_equal(plain['chosen'], [0, 0, 0, 0, 0])


def test_length_margin_needs_lengths():
  with pytest.raises(ValueError, match='lengths_PxN'):
    pairs.select_pairs(np.zeros((1, 2)), np.ones((1, 2), bool), length_margin=1.0)


@pytest.mark.parametrize('wrap', MODES)
def test_mean_valid(wrap):
  scores = np.array([[[4.0, 5.0, 3.0], [1.0, NAN, 2.0], [0.0, 0.0, 0.0]]], np.float32)
  valid = np.array([[[True, True, False], [True, True, True], [False, False, False]]])
  mean, count = wrap(pairs.mean_valid)(scores, valid)
  np.testing.assert_allclose(mean, [[4.5, 1.5, NAN]])
  np.testing.assert_array_equal(count, [[2, 2, 0]])
  assert count.dtype == np.int32 and mean.dtype == np.float32


@pytest.mark.parametrize('use_lengths', [False, True])
@pytest.mark.parametrize('wrap', MODES)
def test_random_against_reference(wrap, use_lengths):
  rng = np.random.default_rng(0)
  num_p, num_n = 400, 5
  # Scores on a coarse grid so that ties are common; some NaNs and invalid entries.
  scores = (rng.integers(0, 11, (num_p, num_n)) / 2).astype(np.float32)
  scores[rng.random((num_p, num_n)) < 0.1] = NAN
  valid = rng.random((num_p, num_n)) < 0.8
  lengths = rng.integers(1, 6, (num_p, num_n)).astype(np.int32)
  kwargs = dict(min_gap=1.0)
  if use_lengths:
    kwargs['length_margin'] = 1.5
  out = wrap(functools.partial(pairs.select_pairs, **kwargs))(scores, valid, lengths)
  reasons = set()
  for p in range(num_p):
    want = _reference(list(scores[p]), list(valid[p]), list(lengths[p]), **kwargs)
    _check_row(out, p, want)
    reasons.add(want[2])
  assert reasons == {0, 1, 2, 3}  # every rule was exercised


def test_make_pairs_never_pairs_an_empty_response():
  """An empty candidate (eos first) keeps its judgments on record but cannot be chosen/rejected."""
  # pylint: disable=g-import-not-at-top
  from srlm_jax import rollout, sampler
  from srlm_jax.pipeline import settings as settings_lib
  from srlm_jax.pipeline.stages import pairs as pairs_stage
  settings = settings_lib.CreationSettings(n_candidates=3)
  eos = sampler.StopReason.EOS.name.lower()
  candidates = [{'id': 'p0', 'prompt': 'Q?', 'candidates': ['  ', 'good', 'bad'],
                 'lengths': [1, 5, 4], 'stop_reasons': [eos] * 3},
                {'id': 'p1', 'prompt': 'R?', 'candidates': ['', 'ok', 'fine'],
                 'lengths': [1, 3, 3], 'stop_reasons': [eos] * 3}]
  cand = rollout.Rollout(
      prompt_tokens=np.full((2, 2), 7, np.int32), prompt_mask=np.ones((2, 2), bool),
      tokens=np.full((6, 5), 9, np.int32), logprobs=np.full((6, 5), -1.0, np.float32),
      lengths=np.array([1, 5, 4, 1, 3, 3], np.int32),
      stop_reason=np.full(6, int(sampler.StopReason.EOS), np.int32), n=3)
  scores = np.array([[5.0], [4.0], [1.0], [0.0], [3.0], [NAN]], np.float32)
  valid = ~np.isnan(scores)
  pair_records, decisions, dataset = pairs_stage.make_pairs(candidates, cand, scores, valid,
                                                            settings)
  assert [(p['id'], p['chosen'], p['rejected']) for p in pair_records] == [('p0', 'good', 'bad')]
  assert decisions[0]['scores'] == [5.0, 4.0, 1.0]
  assert decisions[0]['excluded'] == ['empty', None, None]
  assert decisions[1]['decision'] == pairs.REASONS[pairs.FEWER_THAN_TWO_USABLE]
  assert dataset['chosen']['inputs'].shape == (1, 7)
  np.testing.assert_allclose(dataset['ref_chosen_logps'], [-5.0])
  np.testing.assert_allclose(dataset['ref_rejected_logps'], [-4.0])


def _mean_reference(scores, valid):
  counted = valid & ~np.isnan(scores)
  count = counted.sum(-1)
  total = np.where(counted, scores, 0).sum(-1, dtype=np.float32)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32), count


def test_choose_pairs_against_reference():
  """choose_pairs = the mean over valid K, then the reference rules over usable candidates."""
  rng = np.random.default_rng(1)
  num_p, num_n, num_k = 300, 4, 3
  scores = rng.integers(0, 6, (num_p, num_n, num_k)).astype(np.float32)
  scores[rng.random(scores.shape) < 0.1] = NAN
  valid = rng.random(scores.shape) < 0.7
  usable = rng.random((num_p, num_n)) < 0.8
  lengths = rng.integers(1, 9, (num_p, num_n)).astype(np.int32)
  kwargs = dict(min_gap=0.5, length_margin=1.0)
  out = jax.device_get(pairs.choose_pairs(scores, valid, lengths, usable, **kwargs))
  mean, count = _mean_reference(scores, valid)
  np.testing.assert_allclose(out['mean_PxN'], mean, rtol=1e-6)
  np.testing.assert_array_equal(out['count_PxN'], count)
  reasons = set()
  for p in range(num_p):
    chosen, rejected, reason = _reference(list(mean[p]), list((count[p] > 0) & usable[p]),
                                          list(lengths[p]), **kwargs)
    if reason == pairs.FEWER_THAN_TWO_VALID and (count[p] > 0).sum() >= 2:
      reason = pairs.FEWER_THAN_TWO_USABLE
    _check_row(out, p, (chosen, rejected, reason))
    reasons.add(reason)
  assert reasons == set(range(len(pairs.REASONS)))  # every rule was exercised


def test_choose_pairs_reduces_judgments_by_the_judge_aggregate():
  """aggregate='sum' (SPCT's vote) ranks by the summed valid judgments, 'mean' by their mean;
  length control applies to the reduced scores."""
  scores = np.array([[[5, 0, 0], [4, 4, 4], [1, 1, 1], [4, 4, 3.5]]], np.float32)
  valid = np.array([[[1, 0, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]]], bool)
  lengths = np.array([[10, 50, 5, 20]], np.int32)
  usable = np.ones((1, 4), bool)
  mean = jax.device_get(pairs.choose_pairs(scores, valid, lengths, usable))
  total = jax.device_get(pairs.choose_pairs(scores, valid, lengths, usable, aggregate='sum'))
  np.testing.assert_allclose(mean['mean_PxN'][0], [5, 4, 1, 11.5 / 3], rtol=1e-6)
  np.testing.assert_allclose(total['mean_PxN'][0], [5, 12, 3, 11.5])
  assert (int(mean['chosen'][0]), int(mean['rejected'][0])) == (0, 2)
  assert (int(total['chosen'][0]), int(total['rejected'][0])) == (1, 2)
  # Sum scores within 1.0 of the best (12): 12 and 11.5; the shorter (20 tokens) is chosen.
  tier = jax.device_get(pairs.choose_pairs(scores, valid, lengths, usable, aggregate='sum',
                                           length_margin=1.0))
  assert (int(tier['chosen'][0]), int(tier['rejected'][0])) == (3, 2)


def test_truncated_candidates_are_excluded_unless_asked():
  from srlm_jax import sampler  # pylint: disable=g-import-not-at-top
  eos, cut = int(sampler.StopReason.EOS), int(sampler.StopReason.MAX_TOKENS)
  stop_reason = np.array([eos, cut, eos, eos, cut, cut], np.int32)  # P = 2, N = 3
  nonempty = np.array([True, True, False, True, True, True])
  np.testing.assert_array_equal(pairs.usable(stop_reason, nonempty, n=3),
                                [[True, False, False], [True, False, False]])
  np.testing.assert_array_equal(pairs.usable(stop_reason, nonempty, n=3, pair_truncated=True),
                                [[True, True, False], [True, True, True]])
  scores = np.array([[[5.0], [1.0], [3.0]], [[2.0], [4.0], [0.0]]], np.float32)
  valid = np.ones(scores.shape, bool)
  lengths = np.full((2, 3), 8, np.int32)
  out = pairs.choose_pairs(scores, valid, lengths, pairs.usable(stop_reason, nonempty, n=3))
  assert [pairs.REASONS[r] for r in out['reason']] == ['fewer_than_two_usable'] * 2
  assert not out['has_pair'].any()
  out = pairs.choose_pairs(scores, valid, lengths,
                           pairs.usable(stop_reason, nonempty, n=3, pair_truncated=True))
  np.testing.assert_array_equal(out['chosen'], [0, 1])
  np.testing.assert_array_equal(out['rejected'], [1, 2])
  assert out['has_pair'].all()


@pytest.fixture(scope='module')
def tiny():
  import srlm_jax  # pylint: disable=g-import-not-at-top
  return srlm_jax.load('tiny')


def test_preference_dataset_is_the_sampled_ids_with_the_rollouts_logps(tiny):
  """Rows = prompt + sampled completion; loss on the completion only; the reference log-probs
  equal a full forward of the policy that sampled them."""
  from srlm_jax import llama, rollout  # pylint: disable=g-import-not-at-top
  prompts = ['Hi.', 'Why is the sky blue?', 'Name a colour.', 'A short poem about rain, please.']
  ids, _ = rollout.encode_prompts(tiny, prompts, max_new_tokens=10)
  cand = rollout.sample(tiny, ids, n=3, max_new_tokens=10, temperature=0.7, top_p=0.9, seed=2,
                        progress=False)
  chosen, rejected = np.array([2, 0, 1, 1], np.int32), np.array([0, 1, 2, 0], np.int32)
  rows = np.array([3, 0, 2], np.int32)  # prompt 1 has no pair
  data = jax.device_get(pairs.preference_dataset(cand, chosen, rejected, rows,
                                                 pad_id=tiny.tokenizer.pad_id))
  host = rollout.to_host(cand)
  for side, index in (('chosen', chosen), ('rejected', rejected)):
    seq = data[side]
    width = seq['inputs'].shape[1]
    assert width == host['prompt_tokens'].shape[1] + host['tokens'].shape[1]
    for q, p in enumerate(rows):
      r = p * 3 + index[p]
      completion = host['tokens'][r, :host['lengths'][r]]
      full = np.concatenate([ids[p], completion])
      k = len(full) - 1
      np.testing.assert_array_equal(seq['inputs'][q, :k], full[:-1])
      np.testing.assert_array_equal(seq['targets'][q, :k], full[1:])
      assert (seq['inputs'][q, k:] == tiny.tokenizer.pad_id).all()
      np.testing.assert_array_equal(seq['mask'][q], np.arange(width) < k)
      # The loss covers exactly the targets that are completion tokens.
      want = (np.arange(width) >= len(ids[p]) - 1) & (np.arange(width) < k)
      np.testing.assert_array_equal(seq['loss_mask'][q], want)
      np.testing.assert_array_equal(seq['targets'][q][want], completion)
    logits = llama.forward(tiny.config, tiny.params, seq['inputs'], mask=seq['mask'])
    logps = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    at_targets = np.take_along_axis(logps, seq['targets'][..., None], axis=-1)[..., 0]
    at_targets = np.where(seq['loss_mask'], at_targets, 0.0)
    np.testing.assert_allclose(data[f'ref_{side}_token_logps'], at_targets, atol=1e-4, rtol=0)
    np.testing.assert_allclose(data[f'ref_{side}_logps'], at_targets.sum(-1), atol=1e-4,
                               rtol=0)
    assert (data[f'ref_{side}_logps'] < 0).all()


def test_bf16_sampled_candidates_get_a_float32_reference(tiny):
  """Candidates sampled in bf16: the reference log-probs come from one float32 forward pass."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from srlm_jax import llama, rollout  # pylint: disable=g-import-not-at-top
  from srlm_jax.pipeline.stages import pairs as pairs_stage  # pylint: disable=g-import-not-at-top
  config, params = llama.for_compute(tiny.config, tiny.params, 'bfloat16')
  low = dataclasses.replace(tiny, config=config, params=params)
  ids, _ = rollout.encode_prompts(low, ['Hi.', 'Why is the sky blue?'], max_new_tokens=8)
  cand = rollout.sample(low, ids, n=2, max_new_tokens=8, temperature=0.7, top_p=0.9, seed=3,
                        progress=False)
  data = pairs.preference_dataset(cand, np.array([0, 1], np.int32), np.array([1, 0], np.int32),
                                  np.array([0, 1], np.int32), pad_id=tiny.tokenizer.pad_id)
  assert pairs_stage.float32_reference(tiny, tiny, data) is data  # float32 sampler: kept
  fixed = jax.device_get(pairs_stage.float32_reference(low, tiny, data))
  data = jax.device_get(data)
  for side in ('chosen', 'rejected'):
    seq = fixed[side]
    logits = llama.forward(tiny.config, tiny.params, seq['inputs'], mask=seq['mask'])
    logps = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    want = np.take_along_axis(logps, seq['targets'][..., None], axis=-1)[..., 0]
    want = np.where(seq['loss_mask'], want, 0.0)
    np.testing.assert_allclose(fixed[f'ref_{side}_token_logps'], want, atol=1e-4, rtol=0)
    np.testing.assert_allclose(fixed[f'ref_{side}_logps'], want.sum(-1), atol=1e-4, rtol=0)
    # What bf16 sampling recorded is further off than float32 rounding.
    assert np.abs(data[f'ref_{side}_logps'] - want.sum(-1)).max() > 1e-3
