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
  from srlm_jax import creation  # pylint: disable=g-import-not-at-top
  settings = creation.CreationSettings(n_candidates=3)
  candidates = [{'id': 'p0', 'prompt': 'Q?', 'candidates': ['  ', 'good', 'bad'],
                 'lengths': [1, 5, 4]},
                {'id': 'p1', 'prompt': 'R?', 'candidates': ['', 'ok', 'fine'],
                 'lengths': [1, 3, 3]}]
  judged = [{'id': 'p0', 'candidate': 0, 'mean': 5.0}, {'id': 'p0', 'candidate': 1, 'mean': 4.0},
            {'id': 'p0', 'candidate': 2, 'mean': 1.0}, {'id': 'p1', 'candidate': 0, 'mean': 0.0},
            {'id': 'p1', 'candidate': 1, 'mean': 3.0}, {'id': 'p1', 'candidate': 2, 'mean': None}]
  pair_records, decisions = creation.make_pairs(candidates, judged, settings)
  assert [(p['id'], p['chosen'], p['rejected']) for p in pair_records] == [('p0', 'good', 'bad')]
  assert decisions[0]['scores'] == [5.0, 4.0, 1.0]
  assert decisions[1]['decision'] == pairs.REASONS[pairs.FEWER_THAN_TWO_VALID]
