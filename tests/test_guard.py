"""The guard: its measurements against float64 numpy, its policy, and a tiny run that a person's
labels roll back and whose length growth stops it (issue 19)."""

import json
import os
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from srlm_jax import guards
from srlm_jax import judges
from srlm_jax import store
from srlm_jax.pipeline import runner
from srlm_jax.pipeline import seeds as seeds_lib
from srlm_jax.review import labels as labels_lib
from test_loop import ROOT, load_model, tiny_config


def test_score_length_correlation_is_pearson_over_scored_rows():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=40).astype(np.float32)
  lengths = rng.integers(1, 200, size=40).astype(np.int32)
  scores[[3, 7, 11]] = np.nan
  keep = ~np.isnan(scores)
  want = np.corrcoef(scores[keep].astype(np.float64), lengths[keep].astype(np.float64))[0, 1]
  got = guards.score_length_correlation(jax.numpy.asarray(scores), jax.numpy.asarray(lengths))
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  assert np.isnan(float(guards.score_length_correlation(
      jax.numpy.asarray([1.0, np.nan]), jax.numpy.asarray([3, 4]))))
  assert np.isnan(float(guards.score_length_correlation(  # constant length: undefined
      jax.numpy.asarray([1.0, 2.0, 3.0]), jax.numpy.asarray([5, 5, 5]))))


def test_judge_agreement_counts_every_pair_of_a_prompt_as_written_out():
  rng = np.random.default_rng(1)
  self_ = rng.integers(0, 4, size=(6, 4)).astype(np.float32)
  ref = rng.integers(0, 4, size=(6, 4)).astype(np.float32)
  self_[0, 1], ref[2, 3] = np.nan, np.nan
  agree = count = 0.0
  for p in range(6):
    for i in range(4):
      for j in range(i + 1, 4):
        s, r = self_[p, i] - self_[p, j], ref[p, i] - ref[p, j]
        if np.isnan(s) or np.isnan(r) or s == 0:
          continue
        count += 1
        agree += 0.5 if r == 0 else float(np.sign(s) == np.sign(r))
  got_agree, got_count = guards.judge_agreement(jax.numpy.asarray(self_), jax.numpy.asarray(ref))
  assert int(got_count) == count and float(got_agree) == pytest.approx(agree)
  chosen, rejected = np.array([0, 1, 2, 3, 0, 1]), np.array([1, 2, 3, 0, 2, 3])
  has = np.array([True, True, False, True, True, True])
  want = [0.5 if ref[p, c] == ref[p, r] else float(ref[p, c] > ref[p, r])
          for p, (c, r) in enumerate(zip(chosen, rejected))
          if has[p] and not np.isnan(ref[p, c]) and not np.isnan(ref[p, r])]
  a, n = guards.chosen_agreement(jax.numpy.asarray(ref), chosen, rejected, has)
  assert int(n) == len(want) and float(a) == pytest.approx(sum(want))


def _record(t, human, length, action='continue'):
  return {'iteration': t, 'model': f'iter_{t}/dpo/params',
          'measured': {'human_agreement': human, 'mean_length': length},
          'decision': {'action': action}}


def test_policy_decisions():
  policy = guards.Policy(max_human_drop=0.1, max_disagreement=0.4, max_length_growth=0.5)
  now = {'human_agreement': 0.7, 'disagreement': 0.2, 'mean_length': 100.0,
         'start_model': 'iter_2/dpo/params'}
  history = [_record(1, 0.75, 90.0), _record(2, 0.6, 95.0)]
  assert guards.decide(now, history, policy)['action'] == 'continue'
  # agreement 0.6 is 0.15 below the best kept (iteration 1's 0.75): back to its model
  out = guards.decide(dict(now, human_agreement=0.6), history, policy)
  assert out['action'] == 'rollback' and out['rollback_to'] == 'iter_1/dpo/params'
  assert out['triggered'][0]['rule'] == 'human_drop'
  assert out['triggered'][0]['value'] == pytest.approx(0.15)
  # a rolled-back iteration is no baseline: iteration 2 (0.9) was rolled back
  rolled = [_record(1, 0.75, 90.0), _record(2, 0.9, 95.0, 'rollback')]
  assert guards.decide(dict(now, human_agreement=0.7), rolled, policy)['action'] == 'continue'
  # length: 100 / 95 - 1 < 0.5; 150 / 95 - 1 > 0.5 stops, beating a rollback
  out = guards.decide(dict(now, mean_length=150.0, disagreement=0.5), history, policy)
  assert out['action'] == 'stop' and {t['rule'] for t in out['triggered']} == {
      'length_growth', 'disagreement'}
  # no history: nothing to fall from; a rollback goes back to where the iteration started
  out = guards.decide(dict(now, disagreement=0.9), [], policy)
  assert out['action'] == 'rollback' and out['rollback_to'] == 'iter_2/dpo/params'
  assert out['checked'] == ['disagreement']
  # nothing kept yet: the held-out agreement falls from the starting model's (M1's)
  first = dict(now, heldout_agreement=0.5, start_heldout_agreement=0.7)
  out = guards.decide(first, [], policy)
  assert out['action'] == 'rollback' and out['triggered'][0]['baseline'] == 0.7
  assert guards.decide(dict(first, heldout_agreement=0.65), [], policy)['action'] == 'continue'
  # once an iteration is kept, its agreement is the baseline, not the starting model's
  assert guards.decide(first, [_record(1, 0.55, 90.0)], policy)['action'] == 'continue'
  off = guards.Policy(max_disagreement=0.4, on_disagreement='warn')
  assert guards.decide(dict(now, disagreement=0.9), [], off)['action'] == 'warn'
  with pytest.raises(ValueError, match='on_length_growth'):
    guards.Policy(on_length_growth='explode')


class Labeller(threading.Thread):
  """Plays the person: labels each iteration's review sample as soon as the run exports it,
  choosing the judge's side (agree) or the other one (contradict)."""

  def __init__(self, workdir, plan):
    super().__init__(daemon=True)
    self.workdir, self.plan, self.done = workdir, plan, threading.Event()

  def run(self):
    pending = dict(self.plan)
    while pending and not self.done.is_set():
      for t, mode in list(pending.items()):
        path = os.path.join(self.workdir, f'iter_{t}', 'review', 'sample.jsonl')
        if os.path.exists(path):
          items = [json.loads(line) for line in open(path, encoding='utf-8')]
          labels = [labels_lib.label_record(
              item, item['judge_choice'] if mode == 'agree' else
              {'a': 'b', 'b': 'a'}[item['judge_choice']], 'tester') for item in items]
          labels_lib.import_labels(labels, self.workdir, t)
          del pending[t]
      time.sleep(0.1)


def guarded_config(**overrides):
  return tiny_config(**{
      'stages': ('prompts', 'candidates', 'judgments', 'pairs', 'human_pairs', 'dpo', 'eval',
                 'review', 'guard'),
      'creation.num_requests': 2,
      'eval.pairs': '', 'eval.prompts': '', 'eval.ifeval': '', 'eval.baselines': False,
      'review.wait': True, 'review.serve': False, 'review.poll_seconds': 0.1,
      'guard.on_disagreement': 'warn', 'guard.max_new_tokens': 4, **overrides})


@pytest.fixture(scope='module')
def guarded_run(tmp_path_factory):
  """Iteration 1: the person agrees with the self-judge; 2: contradicts it (rollback to M2);
  then resumed with twice the candidate length: iteration 3 starts from M2, grows, stops."""
  workdir = str(tmp_path_factory.mktemp('guarded'))
  person = Labeller(workdir, {1: 'agree', 2: 'contradict', 3: 'agree'})
  person.start()
  try:
    first = runner.Runner(guarded_config(iterations=2), workdir, load_model=load_model,
                          progress=False).run()
    longer = guarded_config(iterations=4, allow_config_change=True, **{
        'creation.max_new_tokens': 2 * tiny_config().creation.max_new_tokens})
    second = runner.Runner(longer, workdir, load_model=load_model, progress=False).run()
  finally:
    person.done.set()
  return workdir, first, second


def _guard(workdir, t):
  return json.load(open(os.path.join(workdir, f'iter_{t}', 'guard', 'guard.json')))


def test_contradicting_labels_roll_the_run_back(guarded_run):
  workdir, first, _ = guarded_run
  one, two = _guard(workdir, 1), _guard(workdir, 2)
  assert one['measured']['review_agreement'] == 1.0 and one['decision']['action'] == 'continue'
  assert one['measured']['review_labels'] >= 1
  assert two['measured']['review_agreement'] == 0.0
  decision = two['decision']
  assert decision['action'] == 'rollback' and decision['rollback_to'] == one['model']
  assert one['model'] == os.path.join('iter_1', 'dpo', 'params')
  assert [t['rule'] for t in decision['triggered'] if t['action'] == 'rollback'] == [
      'human_drop']
  assert store.done_info(os.path.join(workdir, 'iter_2', 'guard'))['rollback_to'] == one['model']
  report = open(os.path.join(workdir, 'iter_2', 'report.md')).read()
  assert '| guard decision | **rollback** (next iteration starts from iter_1/dpo/params)' in report
  assert 'human_drop 1.000 > 0.1 -> rollback' in report
  assert first[1]['guard']['decision']['action'] == 'rollback'


def test_rolled_back_run_continues_from_the_kept_model_and_length_growth_stops_it(guarded_run):
  workdir, _, second = guarded_run
  three = _guard(workdir, 3)
  assert three['start_model'] == os.path.join('iter_1', 'dpo', 'params')  # M2, not M3
  assert three['measured']['mean_length'] == pytest.approx(
      2 * _guard(workdir, 1)['measured']['mean_length'])
  decision = three['decision']
  assert decision['action'] == 'stop'
  assert [t['rule'] for t in decision['triggered'] if t['action'] == 'stop'] == ['length_growth']
  assert not os.path.exists(os.path.join(workdir, 'iter_4'))  # the run stopped
  assert [r['iteration'] for r in second] == [1, 2, 3]
  history = [json.loads(line) for line in open(os.path.join(workdir, 'guard_history.jsonl'))]
  assert [h['decision']['action'] for h in history] == ['continue', 'rollback', 'stop']
  assert '| guard decision | **stop**' in open(os.path.join(workdir, 'iter_3', 'report.md')).read()


def test_labels_become_the_next_iterations_eft_data(guarded_run):
  workdir, _, _ = guarded_run
  config = guarded_config()
  labels = labels_lib.read_labels(labels_lib.labels_path(workdir, 1))
  seeds = {'ift': [], 'eft': [('p', 'r', 'Score: 3')], 'seed_prompts': []}
  eft2 = seeds_lib.with_human_eft(seeds, config, workdir, 2)['eft']
  assert eft2[0] == ('p', 'r', 'Score: 3') and len(eft2) == 1 + 2 * len(labels)
  judge = judges.get(config.creation.judge.kind)
  for label in labels:  # the person's choice scored above the other
    assert (label['prompt'], label['chosen'], judge.eft_judgment(5)) in eft2
    assert (label['prompt'], label['rejected'], judge.eft_judgment(4)) in eft2
  assert seeds_lib.with_human_eft(seeds, config, workdir, 1) is seeds  # none before iteration 1
  # ... which the next iterations train on, as judge-preference pairs beside the actor pairs
  n1 = len(labels)
  n2 = len(labels_lib.read_labels(labels_lib.labels_path(workdir, 2)))
  for t, want in ((1, 0), (2, 2 * n1), (3, 2 * (n1 + n2))):
    assert store.done_info(os.path.join(workdir, f'iter_{t}', 'human_pairs'))['pairs'] == want
    assert store.done_info(os.path.join(workdir, f'iter_{t}', 'dpo'))['human_pairs'] == want
  trained = store.read_records(os.path.join(workdir, 'iter_2', 'human_pairs', 'human_pairs.jsonl'))
  for label in labels:
    mine = [r for r in trained if r['response'] == label['chosen'] and r['label'] == 'preferred']
    assert mine and mine[0]['chosen'] == judge.eft_target(judge.eft_judgment(5),
                                                          config.data.eft_target)
    assert label['prompt'] in mine[0]['prompt'] or judges.quote(label['prompt']) in mine[0]['prompt']


def test_launch_review_exports_and_imports_a_finished_iteration(guarded_run, tmp_path):
  workdir, _, _ = guarded_run
  items = labels_lib.sample_from_workdir(workdir, 2, 16)
  stage_sample = store.read_records(os.path.join(workdir, 'iter_2', 'review', 'sample.jsonl'))
  assert items == stage_sample  # the same frozen scores (review/arrays.npz), order and sides
  env = dict(os.environ, PYTHONPATH=ROOT)
  launch = [sys.executable, os.path.join(ROOT, 'launch', 'review.py'), f'--workdir={workdir}',
            '--iteration=2']
  subprocess.run(launch + ['--mode=export', '--n=1'], check=True, env=env, capture_output=True)
  exported = os.path.join(workdir, 'human_labels', 'iter_2.sample.jsonl')
  assert [json.loads(line) for line in open(exported)] == items[:1]
  tasks = json.load(open(os.path.join(workdir, 'human_labels', 'iter_2.sample.label_studio',
                                      'tasks.json')))
  tasks[0]['annotations'] = [{'completed_by': 'bo', 'result': [
      {'from_name': 'comparison', 'value': {'selected': 'left'}}]}]
  export = tmp_path / 'ls_export.json'
  export.write_text(json.dumps(tasks))
  subprocess.run(launch + ['--mode=import', f'--label_studio={export}'], check=True, env=env,
                 capture_output=True)
  labels = labels_lib.read_labels(labels_lib.labels_path(workdir, 2))
  mine = [l for l in labels if l['pair_id'] == items[0]['pair_id']]
  assert len(mine) == 1 and mine[0]['choice'] == 'a' and mine[0]['reviewer'] == 'label-studio:bo'
  bad = subprocess.run(launch + ['--mode=import', '--labels=/nonexistent.jsonl'], env=env,
                       capture_output=True, text=True)
  assert bad.returncode != 0 and 'no such file: /nonexistent.jsonl' in bad.stderr
