"""The run table (evaluate/run_table.py) from eval.json files: one row per model, in order."""

import json
import os

import pytest

from srlm_jax.evaluate import run_table


def _result(name, acc, win=None, opponent=None, mean_len=10.0, strict=0.5):
  out = {'model': name, 'params': f'/w/{name}',
         'judge_agreement': {'pairwise_accuracy': acc, 'pairwise_accuracy_ci': [acc - 0.1, acc],
                             'spearman': 0.2, 'spearman_ci': [0.0, 0.4], 'valid_fraction': 0.9,
                             'counts': {'pairs': 24}},
         'lengths': {'responses': {'n': 12, 'mean': mean_len, 'median': mean_len},
                     'all': {'mean': 99.0}},
         'instruction_following': {'n_prompts': 18, 'prompt_strict': strict,
                                   'prompt_strict_ci': [0.2, 0.8], 'instruction_loose': 0.6}}
  if win is not None:
    out['head_to_head'] = {'a': name, 'b': opponent, 'judge': 'M0', 'method': 'pairwise',
                           'n': 12, 'win_rate': win, 'win_rate_ci': [win - 0.2, win + 0.1],
                           'length_controlled': {'n': 5, 'win_rate': 0.5,
                                                 'win_rate_ci': [0.3, 0.7]}}
  return out


@pytest.fixture
def workdir(tmp_path):
  first = _result('M2', 0.6, 0.7, 'M1', mean_len=30.0)
  first['baselines'] = {'M0': _result('M0', 0.4), 'M1': _result('M1', 0.5, 0.55, 'M0')}
  first['dpo_after'] = {'loss': 0.6}
  for t, result in ((1, first), (2, _result('M3', 0.65, 0.52, 'M2', strict=0.25))):
    os.makedirs(tmp_path / f'iter_{t}' / 'eval')
    (tmp_path / f'iter_{t}' / 'eval' / 'eval.json').write_text(json.dumps(result))
  (tmp_path / 'config.json').write_text(json.dumps({'model': 'tiny:0', 'eval': {'k': 1}}))
  return tmp_path


def test_rows_in_model_order_with_each_models_numbers(workdir, tmp_path):
  out = tmp_path / 'out' / 'table.json'
  table = run_table.build(str(workdir), str(out))
  assert [r['model'] for r in table['rows']] == ['M0', 'M1', 'M2', 'M3']
  saved = json.load(open(out))
  assert saved['rows'] == table['rows'] and saved['model'] == 'tiny:0'
  m0, m1, m2, m3 = saved['rows']
  assert m0['judge']['pairwise_accuracy'] == 0.4 and 'vs_previous' not in m0
  assert m1['vs_previous']['opponent'] == 'M0' and m1['vs_previous']['win_rate'] == 0.55
  assert m2['vs_previous']['length_controlled_win_rate'] == 0.5
  assert m2['length']['mean'] == 30.0 and m2['dpo_after'] == {'loss': 0.6}
  assert m3['instruction_following']['prompt_strict'] == 0.25
  md = open(tmp_path / 'out' / 'table.md').read().splitlines()
  assert len(md) == 2 + 4 and md[4].startswith('| M2 | 60.0 [50.0, 60.0] |')
  assert '70.0 [50.0, 80.0] vs M1' in md[4] and '| 30.0 |' in md[4]
  if table['plot']:
    assert os.path.getsize(table['plot']) > 0


def test_a_workdir_without_eval_is_an_error(tmp_path):
  with pytest.raises(ValueError, match='no iter_<t>/eval/eval.json'):
    run_table.rows(str(tmp_path))
