"""Process-based self-rewarding: step splitting, pairwise scores, truth labels, the step
search's DPO rows (against a full forward pass), and the tiny loops to step_dpo and rpo."""

import json
import os

import jax
import numpy as np
import pytest

import srlm_jax
from srlm_jax import judges
from srlm_jax import loop
from srlm_jax import rollout
from srlm_jax import tasks
from srlm_jax import train
from srlm_jax.pipeline.stages import verified as verified_stage
from srlm_jax.process import search
from srlm_jax.process import steps
from srlm_jax.process import truth
from test_loop import loop_config


@pytest.mark.parametrize('kind,marker,text,want', [
    ('lines', '', 'a = 1\n\n  b = 2  \nAnswer: 3\n', ['a = 1', 'b = 2', 'Answer: 3']),
    ('step', '', 'Step 1: 12 + 5 = 17\nso far so good\nStep 2: 17 * 2 = 34\nAnswer: 34',
     ['Step 1: 12 + 5 = 17\nso far so good', 'Step 2: 17 * 2 = 34\nAnswer: 34']),
    ('step', '', 'First, read.\n**Step 1.** add\nstep 2: done', ['First, read.',
                                                                '**Step 1.** add',
                                                                'step 2: done']),
    ('step', '', 'no heads at all\nsecond line', ['no heads at all\nsecond line']),
    ('marker', '<s>', 'one<s> two <s><s>three', ['one', 'two', 'three']),
    ('lines', '', '', []),
])
def test_split(kind, marker, text, want):
  rule = steps.SplitRule(kind, marker)
  assert steps.split(text, rule) == want
  assert steps.split(steps.render(want, rule), rule) == want


def test_split_rule_errors():
  with pytest.raises(ValueError, match='expected one of'):
    steps.SplitRule('sentences')
  with pytest.raises(ValueError, match='non-empty marker'):
    steps.SplitRule('marker')


def test_stop_strings_are_the_newline_tokens():
  tok = srlm_jax.load('tiny:0').tokenizer
  stop = steps.stop_strings(steps.SplitRule(), tok)
  assert '\n' in stop and '\n\n' in stop
  for s in stop:
    assert '\n' in s and len(tok.encode(s, add_bos=False)) == 1
  assert steps.stop_strings(steps.SplitRule('marker', '<step>'), tok) == ['<step>']


def test_pairwise_scores_against_host_counting():
  first, second = search.comparisons(2, 3)
  assert len(first) == 2 * 3 * 2
  rng = np.random.default_rng(0)
  value = rng.uniform(1, 2, len(first)).astype(np.float32)
  value[3] = np.nan  # an invalid verdict counts for neither side
  got, count = search.pairwise_scores(jax.device_put(value), jax.device_put(first),
                                      jax.device_put(second), num_rows=6)
  wins, seen = np.zeros(6), np.zeros(6)
  for v, i, j in zip(value, first, second):
    if not np.isnan(v):
      wins[i] += 2.0 - v
      wins[j] += v - 1.0
      seen[i] += 1
      seen[j] += 1
  np.testing.assert_allclose(np.asarray(got), wins / seen, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(count), seen)


def test_truth_labels_and_judge_agreement():
  task = tasks.generate('arithmetic', 1, seed=0, difficulty=1)[0]
  a, b = task['program'].strip('()').split(' + ') if ' + ' in task['program'] else (None, None)
  answer = task['answer']
  assert truth.label(task, [], 'I will add them.') is None
  assert truth.label(task, [], '3 + 4 = 7') == 'right'
  assert truth.label(task, [], '3 + 4 = 8') == 'wrong'
  assert truth.label(task, ['3 + 4 = 7'], f'Answer: {answer}') == 'right'
  assert truth.label(task, [], f'Answer: {int(answer) + 1}') == 'wrong'
  del a, b
  records = [{'steps': [
      {'truth': ['right', 'wrong', None], 'scores': [4.0, 1.0, 5.0], 'pair': True,
       'chosen': 0, 'rejected': 1},
      {'truth': ['wrong', 'right', 'right'], 'scores': [2.0, 2.0, 1.0], 'pair': True,
       'chosen': 0, 'rejected': 2},
  ]}]
  got = truth.judge_agreement(records)
  # Comparisons (right, wrong): step 0 (0 vs 1) hit; step 1 (1 vs 0) tie, (2 vs 0) miss.
  assert got['comparisons'] == 3 and got['pairwise_accuracy'] == pytest.approx(1.5 / 3)
  assert got['step_pairs_with_truth'] == 2 and got['step_pairs_agreeing'] == 0.5
  assert got['labelled_candidates'] == 5


@pytest.fixture(scope='module')
def tiny():
  return srlm_jax.load('tiny:0')


SETTINGS = search.SearchSettings(
    n=2, max_steps=2, max_new_tokens=6, pair_truncated=True,
    judge=judges.JudgeSettings(kind='step', template=judges.get('step').template('compact'),
                               k=1, max_new_tokens=4, verdict='forced'))


def test_search_builds_step_rows_on_the_same_prefix(tiny):
  problems = tasks.generate('arithmetic', 2, seed=1, difficulty=1)
  records, dataset = search.search(tiny, problems, SETTINGS, seed=3)
  assert [len(r['steps']) for r in records] == [2, 2]
  # Dataset rows: step 0's pairs (by problem), then step 1's.
  pairs = sorted(((i, s) for i, r in enumerate(records) for s in r['steps'] if s['pair']),
                 key=lambda x: (x[1]['step'], x[0]))
  assert dataset is not None and dataset['chosen']['inputs'].shape[0] == len(pairs) > 0
  host = jax.device_get(dataset)
  prompt_ids, _ = rollout.encode_prompts(tiny, [p['prompt'] for p in problems],
                                         max_new_tokens=12)
  for q, (i, s) in enumerate(pairs):
    for side in ('chosen', 'rejected'):
      row = host[side]
      n_loss = int(row['loss_mask'][q].sum())
      start = int(np.argmax(row['loss_mask'][q]))
      # The loss covers exactly the step: its targets follow the whole prefix.
      assert n_loss == 6  # pair_truncated: every candidate ran the 6-token limit
      prefix = row['inputs'][q, :start + 1]
      np.testing.assert_array_equal(prefix[:len(prompt_ids[i])], prompt_ids[i])
      if s['step'] == 1:  # the prefix holds step 0's chosen tokens after the prompt
        assert len(prefix) == len(prompt_ids[i]) + 6
  # The reference log-probs (the Rollout's, sampled by this model) equal a forward pass.
  for side in ('chosen', 'rejected'):
    seq = {k: jax.device_put(v) for k, v in host[side].items()}
    logps, _ = train.sequence_logps(tiny.config, tiny.params, seq)
    np.testing.assert_allclose(np.asarray(logps), host[f'ref_{side}_logps'], rtol=2e-4,
                               atol=2e-4)


def test_pairwise_step_judge_search(tiny):
  problems = tasks.generate('arithmetic', 1, seed=2, difficulty=1)
  settings = search.SearchSettings(
      n=2, max_steps=1, max_new_tokens=4, pair_truncated=True,
      judge=judges.JudgeSettings(kind='step_pair', k=1, max_new_tokens=2, verdict='forced'))
  records, _ = search.search(tiny, problems, settings, seed=0)
  scores = records[0]['steps'][0]['scores']
  # Forced 'Better: 1|2' verdicts in both orders: the two win probabilities sum to 1.
  assert all(0.0 <= x <= 1.0 for x in scores) and sum(scores) == pytest.approx(1.0, abs=1e-5)


def test_tiny_process_loop_reaches_step_dpo_with_pairs(tmp_path):
  config = loop_config('tiny_process', **{'iterations': 1, 'sft.enabled': False})
  workdir = str(tmp_path / 'run')
  load = loop.default_loader(config)
  loop.Loop(config, workdir, load_model=load, progress=False).run()
  steps_done = json.load(open(os.path.join(workdir, 'iter_1', 'steps', 'DONE')))
  assert steps_done['pairs'] > 0 and steps_done['solutions'] == 2
  trained = json.load(open(os.path.join(workdir, 'iter_1', 'step_dpo', 'DONE')))
  assert trained['skipped'] is False and trained['pairs'] == steps_done['pairs']
  metrics = [json.loads(l) for l in open(os.path.join(workdir, 'iter_1', 'step_dpo',
                                                      'metrics.jsonl'))]
  assert 'step_tokens/chosen' in metrics[-1]
  assert srlm_jax.load(os.path.join(workdir, 'iter_1', 'step_dpo', 'params')) is not None
  solutions = [json.loads(l) for l in open(os.path.join(workdir, 'iter_1', 'steps',
                                                        'solutions.jsonl'))]
  assert all('truth' in s for r in solutions for s in r['steps'])
  # A finished run resumes to the same records without recomputing.
  before = open(os.path.join(workdir, 'iter_1', 'steps', 'step_pairs.jsonl')).read()
  loop.Loop(config, workdir, load_model=load, progress=False).run()
  assert open(os.path.join(workdir, 'iter_1', 'steps', 'step_pairs.jsonl')).read() == before


def test_tiny_irpo_loop_pairs_correct_against_incorrect(tmp_path, monkeypatch):
  # A random model never answers right; here the checker calls a task's first candidate
  # correct (its text must be the one checked), so the stages between run as they would.
  first = {}
  real_check = tasks.check

  def check(task, text):
    first.setdefault(task['id'], text)
    return text == first[task['id']] or real_check(task, text)

  monkeypatch.setattr(verified_stage.tasks_lib, 'check', check)
  config = loop_config('tiny_irpo', **{'iterations': 1, 'sft.enabled': False})
  workdir = str(tmp_path / 'run')
  loop.Loop(config, workdir, load_model=loop.default_loader(config), progress=False).run()
  done = json.load(open(os.path.join(workdir, 'iter_1', 'verified', 'DONE')))
  pairs = [json.loads(l) for l in open(os.path.join(workdir, 'iter_1', 'verified',
                                                    'pairs.jsonl'))]
  assert done['pairs'] == len(pairs) == config.tasks.n
  assert all(p['chosen_index'] == 0 and p['chosen_score'] == 1.0 and p['rejected_score'] == 0.0
             for p in pairs)
  trained = json.load(open(os.path.join(workdir, 'iter_1', 'rpo', 'DONE')))
  assert trained['skipped'] is False
  metrics = [json.loads(l) for l in open(os.path.join(workdir, 'iter_1', 'rpo',
                                                      'metrics.jsonl'))]
  assert 'nll_loss' in metrics[-1]
