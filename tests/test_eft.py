"""Model-written EFT (srlm_jax/eft.py): the agreement filter against hand-built cases and a
plain-Python reading of its rule, and the tiny loop with data.eft_source='model'."""

import json
import os

import numpy as np
import pytest

import srlm_jax
from srlm_jax import eft
from srlm_jax import judges
from srlm_jax import loop
from test_loop import tiny_config

NAN = float('nan')


def _agree(groups_scores, groups_valid, humans, scores, tolerance=0.5, ranked=False):
  """Runs agree_GxNxK over groups given as lists (padding built here)."""
  groups = [{'id': f'g{i}', 'prompt': 'p', 'responses': [
      dict({'id': f'{i}{j}', 'response': 'r', 'score': s}, **({'rank': -h} if ranked else {}))
      for j, (h, s) in enumerate(zip(hs, ss))]} for i, (hs, ss) in enumerate(zip(humans, scores))]
  lay = eft.layout(groups)
  g, n = lay['row_GxN'].shape
  k = len(groups_scores[0][0])
  stated = np.full((g, n, k), NAN, np.float32)
  valid = np.zeros((g, n, k), bool)
  for i, (ss, vs) in enumerate(zip(groups_scores, groups_valid)):
    stated[i, :len(ss)] = ss
    valid[i, :len(vs)] = vs
  if not ranked:
    lay['human_GxN'] = np.where(lay['present_GxN'], lay['human_GxN'], 0).astype(np.float32)
  out = eft.agree_GxNxK(stated, valid, lay['human_GxN'], lay['score_GxN'], lay['present_GxN'],
                        tolerance=tolerance)
  return [np.asarray(out)[i, :len(ss)].tolist() for i, ss in enumerate(groups_scores)]


def test_ranked_group_keeps_judgments_that_order_it_as_people_did():
  # Ranks 0, 1, 2 (A best). Means of the valid stated scores: A 3, B 3, C 1.
  # A:4 beats B's 3 and C's 1: agrees; A:2 is below B's mean: no.
  # B:3 ties A's mean (not strictly below it): no, both. C:1 below A 3 and B 3: agrees;
  # C's invalid judgment: no.
  got = _agree([[[4, 2], [3, 3], [1, NAN]]], [[[1, 1], [1, 1], [1, 0]]],
               humans=[[0, -1, -2]], scores=[[5, 4, 3]], ranked=True)
  assert got == [[[True, False], [False, False], [True, False]]]


def test_lone_responses_agree_within_the_tolerance():
  got = _agree([[[3, 3.5, 2]]], [[[1, 1, 1]]], humans=[[3]], scores=[[3]], tolerance=0.5)
  assert got == [[[True, True, False]]]
  got = _agree([[[3, 3.5, 2]]], [[[1, 1, 1]]], humans=[[3]], scores=[[3]], tolerance=0.4)
  assert got == [[[True, False, False]]]
  got = _agree([[[3, 3.5, 2]]], [[[0, 1, 1]]], humans=[[3]], scores=[[3]], tolerance=1.0)
  assert got == [[[False, True, True]]]  # invalid never agrees


def test_equal_human_labels_are_not_compared_and_an_uncomparable_judgment_is_dropped():
  # Human scores 4, 4, 2: the two 4s are only compared with the 2 (mean 2.5).
  got = _agree([[[3, 2], [5, 1], [2, 3]]], [[[1, 1], [1, 1], [1, 1]]],
               humans=[[4, 4, 2]], scores=[[4, 4, 2]])
  # 3 > 2.5 yes, 2 no; 5 yes, 1 no; the 2 (people: worse than both) vs means 2.5 and 3:
  # 2 < 2.5 and 2 < 3 yes; 3 < 2.5 no.
  assert got == [[[True, False], [True, False], [True, False]]]
  # The other response has no valid judgment: nothing to order against, so nothing kept.
  got = _agree([[[4, 4], [1, 1]]], [[[1, 1], [0, 0]]], humans=[[1, 0]], scores=[[4, 3]])
  assert got == [[[False, False], [False, False]]]


def test_groups_from_records():
  records = [{'id': 'a', 'prompt': 'Q  one', 'response': 'x', 'score': 5},
             {'id': 'b', 'prompt': 'q one', 'response': 'y', 'score': 2},
             {'id': 'c', 'prompt': 'Q two', 'response': 'z', 'score': 3, 'rank': 0}]
  groups = eft.groups_from_records(records)
  assert [[x['id'] for x in g['responses']] for g in groups] == [['a', 'b'], ['c']]
  assert groups[1]['responses'][0]['rank'] == 0
  with pytest.raises(ValueError, match='record 1.*score'):
    eft.groups_from_records([{'prompt': 'q', 'response': 'x'}])


def test_forced_target_states_the_argmax_after_the_reasons():
  judge = judges.get('additive')
  assert eft.reasons_text('Good answer.\nScore: 4\n') == 'Good answer.'
  assert eft.target_text(judge, 'Good answer.\nScore: 4', True, True, 2.0,
                         '\nScore: ') == 'Good answer.\nScore: 2'
  assert eft.target_text(judge, 'Good answer, but', True, False, 3.0,
                         '\nScore: ') == 'Good answer, but\nScore: 3'
  assert eft.target_text(judge, 'Fine.\nScore: 4', False, True, 4.0, '\nScore: ') == (
      'Fine.\nScore: 4')


def _host_rule(records, tolerance):
  """The agreement rule read off the module docstring, in plain Python over the records."""
  by_group = {}
  for r in records:
    by_group.setdefault(r['group'], {}).setdefault(r['response'], []).append(r)
  want = {}
  for responses in by_group.values():
    means = {resp: np.mean([r['score'] for r in rs if r['valid']])
             for resp, rs in responses.items() if any(r['valid'] for r in rs)}
    for resp, rs in responses.items():
      for r in rs:
        if not r['valid']:
          ok = False
        elif len(responses) == 1:
          ok = abs(r['score'] - r['human_score']) <= tolerance
        else:
          others = [(o, rs2[0]['human_score']) for o, rs2 in responses.items()
                    if o != resp and o in means and rs2[0]['human_score'] != r['human_score']]
          ok = bool(others) and all(
              (r['score'] > means[o]) if h < r['human_score'] else (r['score'] < means[o])
              for o, h in others)
        want[r['id']] = ok
  return want


def test_model_written_keeps_exactly_the_agreeing_judgments():
  model = srlm_jax.load('tiny:0')
  groups = eft.groups_from_records(
      [{'id': f'r{i}', 'prompt': f'question {i // 2 if i < 6 else i}', 'response': f'answer {i}',
        'score': s} for i, s in enumerate([5, 1, 4, 4, 0, 3, 2, 3, 1, 5])])
  settings = judges.JudgeSettings(k=4, max_new_tokens=6, verdict='forced',
                                  template=judges.get_template('compact'))
  records, report = eft.model_written(model, 'additive', groups, settings, seed=3,
                                      tolerance=1.0, progress=False)
  assert len(records) == 40 and report['judgments'] == 40
  assert all(r['valid'] for r in records)  # forced verdicts
  want = _host_rule(records, 1.0)
  assert {r['id']: r['kept'] for r in records} == want
  assert report['kept'] == sum(want.values())
  assert report['keep_rate'] == pytest.approx(report['kept'] / 40, abs=1e-4)
  for r in records:  # every target ends with the score it was judged on
    assert judges.get('additive').parse_host(r['judgment']) == r['score']


def test_tiny_loop_with_model_written_eft(tmp_path):
  config = tiny_config(**{'iterations': 1, 'data.eft_source': 'model',
                           'data.eft_tolerance': 1.0, 'data.eft_k': 2,
                           'stages': ('prompts',)})
  workdir = str(tmp_path / 'w')
  load = loop.default_loader(config)
  loop.Loop(config, workdir, load_model=load, progress=False).run()
  eft_dir = os.path.join(workdir, 'm1_eft')
  done = json.load(open(os.path.join(eft_dir, 'DONE')))
  judged = loop.read_records(os.path.join(eft_dir, 'judgments.jsonl'))
  kept = loop.read_records(os.path.join(eft_dir, 'eft.jsonl'))
  assert done['judgments'] == len(judged) == 2 * 16
  assert done['kept'] == len(kept) == sum(r['kept'] for r in judged)
  assert done['keep_rate'] == pytest.approx(len(kept) / len(judged), abs=1e-4)
  # M1's SFT data holds the IFT examples and exactly the kept judgments.
  sft = loop.read_records(os.path.join(workdir, 'm1_sft', 'data.jsonl'))
  assert len(sft) == 16 + len(kept)
  assert [r['response'] for r in sft[16:]] == [
      'Score: ' + r['judgment'].rsplit('Score: ', 1)[1] for r in kept]  # score_only targets
  # A resumed run reuses them: nothing is judged again.
  before = os.path.getmtime(os.path.join(eft_dir, 'eft.jsonl'))
  loop.Loop(config, workdir, load_model=load, progress=False).run()
  assert os.path.getmtime(os.path.join(eft_dir, 'eft.jsonl')) == before
