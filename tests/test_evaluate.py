"""Tests for srlm_jax.evaluate: metrics by hand and against scipy, grouping, head-to-head logic,
and one small judge-accuracy run with the real SmolLM2 model."""

import json
import math
import os

import numpy as np
import pytest
from scipy import stats

from srlm_jax import data
from srlm_jax import evaluate
from srlm_jax import judges as judge
from srlm_jax import rollout

NAN = float('nan')


@pytest.mark.parametrize('x', [[3, 1, 2], [1, 1, 2, 2, 2], [5.0, 5.0, 5.0], [0.5], [2, 1, 1, 3]])
def test_average_ranks_match_scipy(x):
  np.testing.assert_allclose(evaluate.average_ranks(x), stats.rankdata(x))


def test_correlations_match_scipy_with_ties():
  rng = np.random.default_rng(0)
  for _ in range(300):
    n = int(rng.integers(2, 7))
    x = rng.integers(0, 4, n).astype(float)  # small ranges: many ties
    y = rng.integers(0, 4, n).astype(float)
    rho, tau = evaluate.spearman(x, y), evaluate.kendall_tau_b(x, y)
    if len(set(x)) < 2 or len(set(y)) < 2:
      assert math.isnan(rho) and math.isnan(tau)
      continue
    assert rho == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert tau == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)


def test_all_pairs_orients_preferred_first_and_skips_human_ties():
  assert evaluate.all_pairs([2, 0, 1]).tolist() == [[1, 0], [2, 0], [1, 2]]
  assert evaluate.all_pairs([0, 0, 1]).tolist() == [[0, 2], [1, 2]]


def test_perfect_judge():
  st = evaluate.prompt_stats([0, 1, 2], [5, 3, 1])
  assert (st['pairs'], st['pairs_correct'], st['exact_match'], st['top1']) == (3, 3, 1, 1)
  assert st['spearman'] == pytest.approx(1) and st['kendall_tau'] == pytest.approx(1)
  assert (st['scored_5'], st['scored_5_best']) == (1, 1)


def test_ties_count_half_and_break_exact_match():
  # Human order 0 > 1 > 2; judge scores 2, 2, 4: (0,1) tie = 1/2, (0,2) and (1,2) wrong.
  st = evaluate.prompt_stats([0, 1, 2], [2, 2, 4])
  assert st['pairs_correct'] == 0.5 and st['pairs_strict'] == 0 and st['pairs_undecided'] == 1
  assert st['exact_match'] == 0 and st['top1'] == 0
  assert st['spearman'] == pytest.approx(stats.spearmanr([2, 2, 4], [0, -1, -2]).statistic)
  assert st['kendall_tau'] == pytest.approx(stats.kendalltau([2, 2, 4], [0, -1, -2]).statistic)
  # The judge's top score is shared by the human-best and another: top1 = 1/2.
  assert evaluate.prompt_stats([0, 1, 2], [5, 5, 1])['top1'] == 0.5


def test_invalid_scores():
  st = evaluate.prompt_stats([0, 1], [NAN, 3])
  assert st['pairs_correct'] == 0.5 and st['exact_match'] == 0 and st['top1'] == 0
  assert st['spearman'] == 0 and st['undefined_correlation'] == 1
  # Correlations use the valid responses only.
  st = evaluate.prompt_stats([0, 1, 2], [4, NAN, 1])
  assert st['spearman'] == pytest.approx(1) and st['undefined_correlation'] == 0
  assert st['pairs_correct'] == 1 + 0.5 + 0.5
  none = evaluate.prompt_stats([0, 1], [NAN, NAN])
  assert none['top1'] == 0 and none['valid_responses'] == 0


def test_explicit_pairs_are_used_as_given():
  st = evaluate.prompt_stats([0, 1, 1], [3, 4, 1], pairs=[[0, 2]])
  assert (st['pairs'], st['pairs_correct']) == (1, 1)


def test_judge_agreement_pools_by_hand():
  groups = [([0, 1, 2], [5, 5, 1]),  # pairs: 1/2, 1, 1; two 5s, one is the best
            ([0, 1], [4, 5]),  # pair wrong; a 5 on the worse reply
            ([0, 1, 2, 3], [4, 3, 2, 1])]  # all 6 right
  out = evaluate.judge_agreement(groups, n_boot=200)
  assert out['pairwise_accuracy'] == pytest.approx((2.5 + 0 + 6) / 10)
  assert out['five_best'] == pytest.approx(1 / 3)
  assert out['exact_match'] == pytest.approx(1 / 3)
  assert out['top1'] == pytest.approx((0.5 + 0 + 1) / 3)
  rho = [stats.spearmanr(s, -np.array(r)).statistic for r, s in groups]
  tau = [stats.kendalltau(s, -np.array(r)).statistic for r, s in groups]
  assert out['spearman'] == pytest.approx(np.mean(rho))
  assert out['kendall_tau'] == pytest.approx(np.mean(tau))
  assert out['counts'] == {'prompts': 3, 'pairs': 10, 'responses': 9, 'valid_responses': 9,
                           'undecided_pairs': 1, 'scored_5': 3,
                           'undefined_correlation_prompts': 0}
  for key in evaluate.AGREEMENT_KEYS:
    lo, hi = out[f'{key}_ci']
    assert lo <= out[key] + 1e-12 and out[key] <= hi + 1e-12


def test_bootstrap_interval_narrows_with_more_prompts():
  rng = np.random.default_rng(1)
  def groups(n):
    return [([0, 1], [1, 0] if rng.random() < 0.7 else [0, 1]) for _ in range(n)]
  small = evaluate.judge_agreement(groups(20), n_boot=500)['pairwise_accuracy_ci']
  large = evaluate.judge_agreement(groups(2000), n_boot=500)['pairwise_accuracy_ci']
  assert large[1] - large[0] < (small[1] - small[0]) / 3
  same = evaluate.judge_agreement([([0, 1], [2, 1])] * 5, n_boot=100)
  assert same['pairwise_accuracy_ci'] == [1.0, 1.0]
  with pytest.raises(ValueError, match='no prompts'):
    evaluate.judge_agreement([])


def test_no_five_gives_nan_five_best():
  out = evaluate.judge_agreement([([0, 1], [3, 2])], n_boot=10)
  assert math.isnan(out['five_best']) and out['counts']['scored_5'] == 0


def test_win_rates_and_length_control_by_hand():
  out = evaluate.win_rates([1, 1, 0, -1], n_boot=100)
  assert (out['n'], out['win'], out['tie'], out['loss']) == (4, 0.5, 0.25, 0.25)
  assert out['win_rate'] == 0.625
  assert out['win_rate_ci'][0] <= 0.625 <= out['win_rate_ci'][1]
  lc = evaluate.length_controlled([1, 1, 0, -1], [100, 10, 50, 20], [90, 30, 50, 21],
                                  max_ratio=1.2, n_boot=100)
  assert lc['n'] == 3 and lc['win_rate'] == pytest.approx((1 + 0.5) / 3)
  assert lc['fraction_kept'] == 0.75 and lc['a_longer'] == 0.25
  assert evaluate.win_rates([])['n'] == 0


def test_length_stats():
  out = evaluate.length_stats([10, 40, 40, 3000])
  assert out['mean'] == 772.5 and out['median'] == 40 and out['max'] == 3000
  assert out['histogram']['counts'] == [1, 2, 0, 0, 0, 0, 0, 1]


def test_parse_verdict():
  assert evaluate.parse_verdict('Response 1 is clearer.\nVerdict: 1') == 1
  assert evaluate.parse_verdict('**Verdict:** 2') == -1
  assert evaluate.parse_verdict('verdict: TIE') == 0
  assert evaluate.parse_verdict('Verdict: 2\n\n') == -1
  # Only the final non-blank line is the judge's verdict; its first verdict counts.
  assert evaluate.parse_verdict('Verdict: 1 ... on reflection, Verdict: 2') == 1
  assert evaluate.parse_verdict('Verdict: 2\nResponse 1 is better.') is None
  assert evaluate.parse_verdict('Verdict: 1\n> Verdict: 2') is None  # a quoted echo
  for bad in ('I prefer 1.', 'Verdict: 12', 'Verdict: 3', 'Preverdict: 1', 'A. Verdict: 1', ''):
    assert evaluate.parse_verdict(bad) is None, bad


def test_pairwise_comparison_cancels_position_bias(monkeypatch):
  def fake_generate(model, requests, n, **kwargs):
    del model, kwargs
    out = []
    for [msg] in requests:
      first = msg['content'].split('Response 1:')[1].split('Response 2:')[0]
      if 'always first' in msg['content']:
        out.append(['Verdict: 1'] * n)  # a judge with pure position bias
      else:
        out.append(['Verdict: 1' if 'good' in first else 'Verdict: 2'] * n)
    return out
  monkeypatch.setattr(rollout, 'generate', fake_generate)  # what head_to_head calls
  settings = judge.JudgeSettings(k=2)
  prompts = ['q1', 'q2', 'q3 always first']
  outcomes, position = evaluate.compare_pairwise(None, prompts, ['good', 'bad', 'good'],
                                                 ['bad', 'good', 'bad'], settings)
  assert outcomes.tolist() == [1, -1, 0]
  assert position['valid_verdicts'] == 1.0 and position['orders_agree'] == pytest.approx(2 / 3)


def test_pointwise_comparison_and_head_to_head(monkeypatch):
  def fake_judge(model, prompts, responses, settings, **kwargs):
    del model, prompts, settings, kwargs
    mean = np.array([{'a': 4.0, 'b': 2.0, 'x': NAN}[r[0]] for r in responses], np.float32)
    return judge.Judgments([], mean[:, None], ~np.isnan(mean)[:, None], mean,
                           (~np.isnan(mean)).astype(np.int32))
  monkeypatch.setattr(judge, 'judge_responses', fake_judge)  # the judges package
  out = evaluate.head_to_head(None, ['p'] * 4, ['a', 'b', 'a', 'x'], ['b', 'a', 'a', 'a'],
                              [10, 10, 10, 10], [10, 30, 11, 10], judge.JudgeSettings(k=1),
                              n_boot=50)
  assert out['outcomes'] == [1, -1, 0, 0]
  assert out['win_rate'] == 0.5 and out['length_controlled']['n'] == 3
  assert out['lengths_b']['mean'] == 15.25
  with pytest.raises(ValueError, match='method'):
    evaluate.head_to_head(None, ['p'], ['a'], ['b'], [1], [1], judge.JudgeSettings(), method='x')


def _write(path, rows):
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  return str(path)


def test_load_judge_groups_from_pairs_and_rankings(tmp_path):
  pairs = _write(tmp_path / 'pairs.jsonl', [
      {'prompt': 'p1', 'chosen': 'a', 'rejected': 'b'},
      {'prompt': 'p1', 'chosen': 'a', 'rejected': 'c'},
      {'prompt': 'p1', 'chosen': 'b', 'rejected': 'c'},
      {'prompt': 'p2', 'chosen': 'x', 'rejected': 'y'}])
  groups = evaluate.load_judge_groups(pairs)
  assert [g['responses'] for g in groups] == [['a', 'b', 'c'], ['x', 'y']]
  assert groups[0]['ranks'] == [0, 1, 2] and groups[0]['pairs'] == [[0, 1], [0, 2], [1, 2]]
  assert len(evaluate.load_judge_groups(pairs, max_pairs=2)) == 1  # p1 (3 pairs) always kept
  assert len(evaluate.load_judge_groups(pairs, max_pairs=4)) == 2
  ranked = _write(tmp_path / 'ranked.jsonl', [{'id': 'g', 'prompt': 'p', 'responses': [
      {'id': 'r1', 'response': 'same', 'rank': 1}, {'id': 'r0', 'response': 'same', 'rank': 0}]}])
  [g] = evaluate.load_judge_groups(ranked)
  assert g['ranks'] == [1, 0] and g['pairs'] == [[1, 0]]
  bad = _write(tmp_path / 'bad.jsonl', [{'prompt': 'p', 'chosen': 'a', 'rejected': 'b'},
                                        {'prompt': 'p', 'chosen': 'a'}])
  with pytest.raises(ValueError, match=r'bad\.jsonl:2: field .rejected.'):
    evaluate.load_judge_groups(bad)


def test_load_judge_groups_real_pairs_keep_replies_with_equal_text(shared_data, tmp_path):
  rankings, _ = data.eft_eval_from_trees(os.path.join(shared_data, 'oasst1',
                                                      'en-validation.jsonl'))
  path = data.write_jsonl(str(tmp_path / 'pairs.jsonl'), data.pairs_from_rankings(rankings))
  groups = evaluate.load_judge_groups(path)
  assert len(groups) == 186
  assert sum(len(g['responses']) for g in groups) == 541
  assert sum(len(g['pairs']) for g in groups) == 531
  for g, r in zip(groups, rankings):
    assert g['ranks'] == [x['rank'] for x in r['responses']]


def test_small_judge_accuracy_run_with_smollm2(shared_data, tmp_path):
  """End to end on real data and the real model: 6 human pairs, k=1, a few greedy tokens."""
  import srlm_jax  # pylint: disable=g-import-not-at-top
  rankings, _ = data.eft_eval_from_trees(os.path.join(shared_data, 'oasst1',
                                                      'en-validation.jsonl'))
  # The shortest prompts keep the judge prompts (and this test) short.
  rankings.sort(key=lambda g: len(g['prompt']) + sum(len(r['response']) for r in g['responses']))
  path = data.write_jsonl(str(tmp_path / 'pairs.jsonl'), data.pairs_from_rankings(rankings))
  groups = evaluate.load_judge_groups(path, max_pairs=6)  # 2 prompts, 6 responses: one batch
  assert sum(len(g['pairs']) for g in groups) == 6
  model = srlm_jax.load('smollm2-135m-instruct')
  settings = judge.JudgeSettings(k=1, temperature=0.0, max_new_tokens=8)
  cache = str(tmp_path / 'judgments')
  metrics, records = evaluate.evaluate_judge(model, groups, settings, n_boot=100,
                                             cache_dir=cache, progress=False)
  assert metrics['counts']['pairs'] == 6
  assert len(records) == sum(len(g['responses']) for g in groups)
  assert 0 <= metrics['pairwise_accuracy'] <= 1
  assert all(len(r['judgments']) == 1 and isinstance(r['judgments'][0], str) for r in records)
  # A second run finds every judgment in the cache and gives the same numbers.
  again, _ = evaluate.evaluate_judge(model, groups, settings, n_boot=100, cache_dir=cache)
  assert again['pairwise_accuracy'] == metrics['pairwise_accuracy']


def _launch():
  """Returns launch/evaluate.py as a module, imported once (its absl flags are global)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  if 'launch_evaluate' not in sys.modules:
    spec = importlib.util.spec_from_file_location(
        'launch_evaluate', os.path.join(os.path.dirname(__file__), '..', 'launch',
                                        'evaluate.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules['launch_evaluate'] = module
  return sys.modules['launch_evaluate']


def test_launch_judge_flags_end_to_end(tmp_path, capsys):
  """launch/evaluate.py's judge mode with --judge_kind, --votes, --meta_filter, --verdict on a
  few pairs of the tiny model: forced verdicts are all valid, SPCT votes are sums, the meta
  filter keeps k_meta judgments per response, and --out has the top-level numbers."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
  launch = _launch()
  pairs = [{'prompt_id': f'p{i}', 'prompt': f'Question {i}?', 'chosen': f'Good answer {i}.',
            'rejected': f'bad {i}', 'chosen_id': f'c{i}', 'rejected_id': f'r{i}'}
           for i in range(3)]
  path = data.write_jsonl(str(tmp_path / 'pairs.jsonl'), pairs)
  out = tmp_path / 'spct.json'
  argv = ['evaluate.py', '--judge=tiny', f'--pairs={path}', f'--out={out}',
          '--judge_kind=spct', '--votes=3', '--meta_filter=2', '--verdict=forced',
          '--max_new_tokens=4', '--n_boot=50']
  with flagsaver.flagsaver():
    flags.FLAGS(argv)
    launch.main([])
  got = json.loads(out.read_text())
  assert got['valid_fraction'] == 1.0 and got['counts']['pairs'] == 3
  for key in evaluate.AGREEMENT_KEYS[:5]:
    assert key in got and len(got[f'{key}_ci']) == 2
  assert got['wall_seconds'] > 0 and got['settings']['aggregate'] == 'sum'
  assert got['settings']['together'] and got['settings']['meta_filter'] == 2
  records = [json.loads(line) for line in open(f'{out}.judgments.jsonl')]
  assert len(records) == 6
  for r in records:
    assert sum(r['kept']) == 2 and r['valid'] == r['kept']
    assert math.isclose(r['value'], sum(s for s, k in zip(r['scores'], r['kept']) if k),
                        rel_tol=1e-5)
  assert '"valid_fraction": 1.0' in capsys.readouterr().out
  # The same judgments voted without the filter: what a run without --meta_filter measures.
  plain = tmp_path / 'plain.json'
  with flagsaver.flagsaver():
    flags.FLAGS([a for a in argv if not a.startswith(('--meta_filter', '--out'))]
                + [f'--out={plain}'])
    launch.main([])
  plain = json.loads(plain.read_text())
  assert 'without_meta_filter' not in plain
  for key in evaluate.AGREEMENT_KEYS[:5]:
    assert got['without_meta_filter'][key] == pytest.approx(plain[key], nan_ok=True), key
    assert got['without_meta_filter'][f'{key}_ci'] == pytest.approx(plain[f'{key}_ci'],
                                                                     nan_ok=True), key
  plain_records = [json.loads(line) for line in open(f'{tmp_path}/plain.json.judgments.jsonl')]
  assert [r['scores'] for r in plain_records] == [r['scores'] for r in records]
  # Bad flags are refused before any model loads.
  with flagsaver.flagsaver():
    flags.FLAGS(argv[:5] + ['--votes=2', '--meta_filter=3'])
    with pytest.raises(Exception, match='--meta_filter=3'):
      launch.main([])


def test_launch_table_and_plot(tmp_path):
  launch = _launch()
  agreement = evaluate.judge_agreement([([0, 1], [3, 1]), ([0, 1, 2], [2, 2, 1])], n_boot=20)
  h2h = dict(evaluate.win_rates([1, 0, -1, 1], n_boot=20),
             length_controlled=evaluate.length_controlled([1, 0, -1, 1], [1, 2, 3, 4],
                                                          [1, 2, 3, 9], n_boot=20))
  rows = [{'name': 'M0', 'judge_agreement': agreement, 'lengths': evaluate.length_stats([5, 7])},
          {'name': 'M1', 'judge_agreement': agreement, 'head_to_head_vs_first': h2h,
           'lengths': evaluate.length_stats([9, 11])}]
  table = launch.markdown_table(rows).splitlines()
  assert len(table) == 4 and table[0].count('|') == table[2].count('|') == 10
  assert table[3].startswith('| M1 | 87.5% [') and table[3].endswith('| 10.0 |')  # 3.5 of 4
  assert '| - |' in table[3]  # no 5 given: 5-best % is undefined
  if launch.plot(rows, str(tmp_path / 'plot.png')):
    assert (tmp_path / 'plot.png').stat().st_size > 1000
