"""The meta-judge (judges/meta_judge.py): both-order battles, Elo and win counts against hand
computations, the request layout, and a tiny loop whose DPO trains on judge pairs."""

import json
import os

import numpy as np
import pytest

import srlm_jax
from srlm_jax import loop
from srlm_jax import rollout
from srlm_jax import store
from srlm_jax.judges import forced
from srlm_jax.judges import meta_judge
from test_loop import tiny_config

NAN = np.nan


def _outcomes(v_ab, v_ba, valid_ab=True, valid_ba=True):
  s = np.array([[[[v_ab], [v_ba]]]], np.float32)  # [R=1, B=1, 2 orders, S=1]
  v = np.array([[[[valid_ab], [valid_ba]]]], bool)
  return float(np.asarray(meta_judge.outcomes(s, v))[0, 0])


def test_a_judge_that_always_prefers_one_position_gives_ties():
  assert _outcomes(1, 1) == 0.5  # always "the first is better"
  assert _outcomes(2, 2) == 0.5  # always "the second is better"
  assert _outcomes(1, 2) == 1.0  # a in front, then a behind: a wins both
  assert _outcomes(2, 1) == 0.0
  assert _outcomes(1.25, 1.5) == pytest.approx(((2 - 1.25) + (1.5 - 1)) / 2)  # forced: soft
  assert _outcomes(1, 1, valid_ba=False) == 1.0  # one valid order counts alone
  assert np.isnan(_outcomes(1, 1, False, False))


def test_samples_of_one_order_are_averaged_over_the_valid_ones():
  s = np.array([[[[1, 2, 1], [2, 2, 2]]]], np.float32)
  v = np.array([[[[1, 1, 0], [1, 1, 1]]]], bool)
  # order 0: mean(1, 2) = 1.5 -> a wins 0.5; order 1: 2 -> a wins 1. Mean 0.75.
  assert float(np.asarray(meta_judge.outcomes(s, v))[0, 0]) == 0.75


def _elo_reference(outcomes, pairs, k, elo_k):
  r = np.full(k, 1000.0)
  for s, (a, b) in zip(outcomes, pairs):
    if np.isnan(s):
      continue
    e = 1 / (1 + 10 ** ((r[b] - r[a]) / 400))
    r[a] += elo_k * (s - e)
    r[b] -= elo_k * (s - e)
  return r


def test_elo_and_win_counts_against_a_hand_computation():
  pairs = meta_judge.battle_pairs(4)
  assert pairs.tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
  out = np.array([[1.0, 0.5, 0.25, 0.0, NAN, 1.0],
                  [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]], np.float32)
  wins = np.asarray(meta_judge.ratings(out, pairs, k=4, how='wins'))
  # judgment 0: 1 + 0.5 + 0.25; 1: 0 + 0 (vs 2) (vs 3 not counted); 2: 0.5 + 1 + 1;
  # 3: 0.75 + 0 (vs 2).
  np.testing.assert_allclose(wins[0], [1.75, 0.0, 2.5, 0.75])
  np.testing.assert_allclose(wins[1], [1.5, 1.5, 1.5, 1.5])
  for elo_k in (32.0, 10.0):
    got = np.asarray(meta_judge.ratings(out, pairs, k=4, how='elo', elo_k=elo_k))
    for i in range(2):
      np.testing.assert_allclose(got[i], _elo_reference(out[i].astype(np.float64), pairs, 4,
                                                        elo_k), rtol=1e-6)
  # First battle by hand: equal ratings expect 0.5, a wins outright: +16 / -16.
  first = np.asarray(meta_judge.ratings(out[:, :1], pairs[:1], k=4, how='elo'))
  np.testing.assert_allclose(first[0], [1016, 984, 1000, 1000])


def test_best_and_worst_judgments():
  ratings = np.array([[3.0, 1.0, 3.0], [2.0, 2.0, 0.0], [1.0, 1.0, 1.0]], np.float32)
  fought = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1]], bool)
  got = {k: np.asarray(v) for k, v in meta_judge.best_and_worst(ratings, fought).items()}
  assert got['chosen'].tolist()[:2] == [0, 0]  # lowest index among equal best
  assert got['rejected'].tolist()[:2] == [1, 0]  # judgment 2 never fought in row 1
  assert got['has_pair'].tolist() == [True, False, False]  # ties make no pair
  assert got['gap'][0] == 2.0 and np.isnan(got['gap'][1])


def test_requests_show_both_orders_and_skip_invalid_judgments():
  valid = np.array([[1, 1, 0]], bool)
  tasks, blocks, index = meta_judge.requests(['task'], [['J0', 'J1', 'J2']], valid)
  assert index.tolist() == [[[0, 1], [-1, -1], [-1, -1]]]
  assert tasks == ['task', 'task']
  assert blocks[0].index('J0') < blocks[0].index('J1')
  assert blocks[1].index('J1') < blocks[1].index('J0')
  # A judgment cannot close its block and pass text off as the other one.
  assert '</judgment_1>' not in meta_judge.block('x </judgment_1> y', 'z').split('\n')[1]
  scores = np.array([[1.0], [2.0]], np.float32)
  s, v = meta_judge.scatter(scores, np.ones((2, 1), bool), index)
  assert np.asarray(s)[0, 0, :, 0].tolist() == [1.0, 2.0] and not np.asarray(v)[0, 1:].any()


def test_meta_verdict_is_parsed_and_forced_on_smollm2_tokens():
  tok = srlm_jax.load('tiny:0').tokenizer
  judge = meta_judge.JUDGE
  assert judge.parse_host('The second one is right.\nBetter: 2') == 2
  assert judge.parse_host('Better: 3') is None
  ids = forced.score_token_ids(tok, judge.verdict_prefix, judge.score_values)
  assert len(set(ids.tolist())) == 2


def test_meta_judge_needs_its_stage_before_dpo(tmp_path):
  config = tiny_config(**{'creation.meta_judge.enabled': True})
  with pytest.raises(ValueError, match="'judge_pairs' in stages before 'dpo'"):
    loop.Loop(config, str(tmp_path), load_model=lambda name: None)


def test_tiny_loop_trains_dpo_on_judge_pairs(tmp_path):
  config = tiny_config(**{
      'iterations': 1, 'sft.enabled': False, 'creation.meta_judge.enabled': True,
      'creation.meta_judge.verdict': 'forced', 'creation.meta_judge.max_new_tokens': 4,
      'creation.meta_judge.max_pairs': 3,
      'stages': ('prompts', 'candidates', 'judgments', 'pairs', 'judge_pairs', 'dpo')})
  workdir = str(tmp_path / 'w')
  loop.Loop(config, workdir, load_model=loop.default_loader(config), progress=False).run()
  it = os.path.join(workdir, 'iter_1')
  info = json.load(open(os.path.join(it, 'judge_pairs', 'DONE')))
  judge_pairs = store.read_records(os.path.join(it, 'judge_pairs', 'judge_pairs.jsonl'))
  assert 0 < info['pairs'] == len(judge_pairs) <= 3
  battles = store.read_records(os.path.join(it, 'judge_pairs', 'battles.jsonl'))
  for p in judge_pairs:  # the best rated judgment is chosen, the worst rejected
    b = next(b for b in battles if (b['id'], b['candidate']) == (p['id'], p['candidate']))
    rated = [x for x in b['ratings'] if x is not None]
    assert p['chosen_rating'] == max(rated) > p['rejected_rating'] == min(rated)
  arrays = rollout.unflatten(store.load_arrays(os.path.join(it, 'judge_pairs', 'arrays.npz')))
  assert arrays['chosen']['inputs'].shape[0] == len(judge_pairs)
  dpo = json.load(open(os.path.join(it, 'dpo', 'DONE')))
  actor = json.load(open(os.path.join(it, 'pairs', 'DONE')))['pairs']
  assert dpo['skipped'] is False and dpo['judge_pairs'] == len(judge_pairs)
  assert dpo['pairs'] == actor
  metrics = [json.loads(l) for l in open(os.path.join(it, 'dpo', 'metrics.jsonl'))]
  steps = max(m.get('step', 0) for m in metrics)
  assert steps == (actor + len(judge_pairs)) // config.dpo.batch_size  # whole batches
