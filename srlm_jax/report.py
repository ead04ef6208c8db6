"""An iteration's records summarised: report.json, report.md and PNG plots.

Everything here reads what the stages left (their records and the info in their DONE), so
a report can be rebuilt from a work directory at any time (`write_report(iter_dir, t)`).
"""

import json
import os
from typing import Optional, Sequence

import numpy as np

from srlm_jax import data_io
from srlm_jax import distributed
from srlm_jax import guards
from srlm_jax import judges
from srlm_jax import workdir


def _read(path: str) -> list:
  if not os.path.exists(path):
    return []
  workdir.verify_output(path)  # the loop's one reader: digests checked, bad lines named
  return [obj for _, _, obj in data_io.read_jsonl(path, allow_empty=True)]


def _stats(values: Sequence[float]) -> dict:
  if not len(values):
    return {'count': 0, 'mean': None, 'median': None, 'p90': None}
  v = np.asarray(values, np.float64)
  return {'count': int(v.size), 'mean': round(float(v.mean()), 2),
          'median': float(np.median(v)), 'p90': float(np.percentile(v, 90))}


def response_lengths(pair_records: Sequence[dict], candidate_records: Sequence[dict]) -> dict:
  """Returns token-length statistics of chosen, rejected and all candidate responses."""
  return {
      'chosen': _stats([p['chosen_length'] for p in pair_records]),
      'rejected': _stats([p['rejected_length'] for p in pair_records]),
      'all': _stats([n for c in candidate_records for n in c['lengths']]),
  }


def score_histogram(judgment_records: Sequence[dict]) -> dict:
  """Returns counts of valid judgment scores by nearest integer of the judge's scale (the
  score_values of the judge the records name), plus invalid ones."""
  kind = next((j['judge'] for j in judgment_records if 'judge' in j), 'additive')
  return judges.score_histogram(judgment_records, judges.get(kind).score_values)


def dpo_metrics(dpo_dir: str) -> dict:
  """Returns the last logged value of every DPO metric (metrics.jsonl), or {}."""
  last = {}
  for record in _read(os.path.join(dpo_dir, 'metrics.jsonl')):
    last.update(record)
  return last


def stage_info(iter_dir: str) -> dict:
  """Returns {stage: the info its DONE records (outputs left out)} of iteration's stages."""
  out = {}
  if not os.path.isdir(iter_dir):
    return out
  for name in sorted(os.listdir(iter_dir)):
    done = os.path.join(iter_dir, name, 'DONE')
    if name != 'timings' and os.path.exists(done):
      info = workdir.read_json(done)
      out[name] = {k: v for k, v in info.items() if k != 'outputs'} if isinstance(
          info, dict) else {}
  return out


def build_report(iter_dir: str, t: int, timings: Optional[dict] = None) -> dict:
  """Returns iteration t's counts, histograms, lengths, DPO metrics and stage timings."""
  prompts = _read(os.path.join(iter_dir, 'prompts', 'prompts.jsonl'))
  rejected = _read(os.path.join(iter_dir, 'prompts', 'rejected.jsonl'))
  candidates = _read(os.path.join(iter_dir, 'candidates', 'candidates.jsonl'))
  judgments = _read(os.path.join(iter_dir, 'judgments', 'judgments.jsonl'))
  pairs = _read(os.path.join(iter_dir, 'pairs', 'pairs.jsonl'))
  decisions = _read(os.path.join(iter_dir, 'pairs', 'decisions.jsonl'))
  reasons = {}
  for r in rejected:
    reasons[r['reason']] = reasons.get(r['reason'], 0) + 1
  n_judgments = sum(len(j['valid']) for j in judgments)
  n_valid = sum(sum(j['valid']) for j in judgments)
  decided = {}
  for d in decisions:
    decided[d['decision']] = decided.get(d['decision'], 0) + 1
  info = stage_info(iter_dir)
  eval_path = os.path.join(iter_dir, 'eval', 'eval.json')
  evaluation = json.load(open(eval_path, encoding='utf-8')) if os.path.exists(eval_path) else {}
  guard_path = os.path.join(iter_dir, 'guard', 'guard.json')  # stages/guard.py's decision
  guard = json.load(open(guard_path, encoding='utf-8')) if os.path.exists(guard_path) else {}
  return {
      'iteration': t,
      'model': f'M{t} -> M{t + 1}',
      'prompts': {'generated': len(prompts) + len(rejected), 'kept': len(prompts),
                  'rejected': reasons},
      'candidates': sum(len(c['candidates']) for c in candidates),
      'judgments': {'total': n_judgments, 'valid': n_valid,
                    'valid_fraction': round(n_valid / n_judgments, 4) if n_judgments else None},
      # forced fraction, tie rate, within- vs between-candidate variance: the judgments
      # stage's DONE (its stage module computes them)
      'judge_stats': info.get('judgments', {}),
      'score_histogram': score_histogram(judgments),
      # The padding share of each sampling stage's prefill (their DONE's `prefill`)
      'padded_fraction': {stage: info[stage]['prefill'].get('padded_fraction')
                          for stage in ('prompts', 'candidates', 'judgments')
                          if info.get(stage, {}).get('prefill')},
      'pairs': len(pairs),
      'no_pair': {k: v for k, v in decided.items() if k != 'pair'},
      'lengths': response_lengths(pairs, candidates),
      'dpo': dpo_metrics(os.path.join(iter_dir, 'dpo')),
      'evaluation': evaluation,
      'guard': guard,
      # An online-RL iteration (the grpo stage) trains on its own rollouts: no pairs
      'grpo': info.get('grpo', {}),
      'seconds': timings or {},
      'stages': info,
  }


def to_markdown(report: dict) -> str:
  """Returns the report as a short markdown page."""
  j, lengths, stats = report['judgments'], report['lengths'], report['judge_stats']
  lines = [f"# Iteration {report['iteration']} ({report['model']})", '',
           '| what | value |', '|---|---|',
           f"| prompts generated / kept | {report['prompts']['generated']} / "
           f"{report['prompts']['kept']} |",
           f"| prompts rejected | {report['prompts']['rejected']} |",
           f"| candidates | {report['candidates']} |",
           f"| judgments valid / total | {j['valid']} / {j['total']} |",
           f"| score histogram | {report['score_histogram']} |",
           "| judge: forced fraction / tie rate / within- vs between-candidate variance | "
           f"{stats.get('forced_fraction')} / {stats.get('tie_rate')} / "
           f"{stats.get('within_candidate_var')} vs {stats.get('between_candidate_var')} |",
           f"| pairs | {report['pairs']} |",
           f"| prompts without a pair | {report['no_pair']} |",
           f"| mean length chosen / rejected / all (tokens) | {lengths['chosen']['mean']} / "
           f"{lengths['rejected']['mean']} / {lengths['all']['mean']} |"]
  padded = report.get('padded_fraction') or {}
  if padded:
    lines.append(f"| prefill padded fraction: {' / '.join(padded)} | "
                 f"{' / '.join(str(v) for v in padded.values())} |")
  after = report['evaluation'].get('dpo_after') or {}
  for key in ('loss', 'rewards/accuracies', 'rewards/margins'):
    if key in report['dpo'] or key in after:
      logged = f"{report['dpo'][key]:.4f}" if key in report['dpo'] else '-'
      final = f'{after[key]:.4f}' if key in after else '-'
      lines.append(f'| DPO {key}: last logged step (before its update) / after the last update, '
                   f'all pairs | {logged} / {final} |')
  grpo = report.get('grpo') or {}
  if grpo:
    lines.append(f"| GRPO steps / prompts | {grpo.get('steps')} / {grpo.get('prompts')} |")
    lines += [f'| GRPO {key}, last step | {grpo[key]} |' for key in
              ('reward', 'self_reward', 'true_reward', 'agreement', 'kl') if key in grpo]
  lines += eval_lines(report['evaluation'])
  if report.get('guard'):
    lines += guards.markdown_lines(report['guard'])
  for stage, seconds in report['seconds'].items():
    lines.append(f'| seconds: {stage} | {seconds} |')
  return '\n'.join(lines) + '\n'


def _ci(block: dict, key: str) -> str:
  value, ci = block.get(key), block.get(f'{key}_ci')
  if value is None or (isinstance(value, float) and np.isnan(value)):
    return '-'
  return f'{value:.3f}' + (f' ({ci[0]:.3f}, {ci[1]:.3f})' if ci else '')


def eval_lines(evaluation: dict) -> list:
  """Returns the report.md rows of eval.json: M_{t+1}'s (and baselines') measurements."""
  lines = []
  for result in [evaluation] + list((evaluation.get('baselines') or {}).values()):
    if not result:
      continue
    name = result.get('model', 'M_{t+1}')
    agreement = result.get('judge_agreement')
    if agreement:
      n = agreement['counts']
      valid = agreement.get('valid_fraction', n['valid_judgment_fraction'])
      lines.append(f"| {name} judge vs humans | {n['pairs']} pairs, {n['prompts']} prompts, "
                   f'valid judgments {valid:.2f} |')
      for key in ('pairwise_accuracy', 'five_best', 'exact_match', 'spearman', 'kendall_tau'):
        lines.append(f'| {name} {key} (95% CI) | {_ci(agreement, key)} |')
    h2h = result.get('head_to_head')
    if h2h:
      lc = h2h.get('length_controlled', {})
      lines.append(f"| {name} vs {h2h['b']} win rate ({h2h['method']}, judge {h2h['judge']}, "
                   f"{h2h.get('n', 0)} prompts; length-controlled: {lc.get('n', 0)}) | "
                   f"{_ci(h2h, 'win_rate')}; {_ci(lc, 'win_rate')} |")
    responses = (result.get('lengths') or {}).get('responses') or {}
    if responses.get('n'):
      lines.append(f"| {name} held-out response length mean / median (tokens) | "
                   f"{responses['mean']:.1f} / {responses['median']:.1f} |")
    follow = result.get('instruction_following')
    if follow:
      lines.append(f"| {name} instruction following, {follow['n_prompts']} prompts: prompt strict "
                   f"/ loose, instruction strict / loose | {_ci(follow, 'prompt_strict')} / "
                   f"{_ci(follow, 'prompt_loose')}, {follow['instruction_strict']:.3f} / "
                   f"{follow['instruction_loose']:.3f} |")
  return lines


def plot(report: dict, iter_dir: str) -> list:
  """Writes the score histogram and DPO curves as PNG (when matplotlib is installed)."""
  try:  # Figure objects, not pyplot: the caller's backend (a notebook's inline one) stays
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  except ImportError:
    return []
  written = []
  hist = report['score_histogram']
  fig = Figure(figsize=(5, 3))
  ax = fig.subplots()
  ax.bar(list(hist), list(hist.values()))
  ax.set_title(f"Judge scores, iteration {report['iteration']}")
  ax.set_xlabel('score')
  ax.set_ylabel('judgments')
  fig.tight_layout()
  written.append(os.path.join(iter_dir, 'scores.png'))
  fig.savefig(written[-1], dpi=80)
  metrics = _read(os.path.join(iter_dir, 'dpo', 'metrics.jsonl'))
  curves = [m for m in metrics if 'loss' in m and 'step' in m]
  if curves:
    fig = Figure(figsize=(8, 3))
    axes = fig.subplots(1, 2)
    steps = [m['step'] for m in curves]
    # markers: a one-step run's single point is drawn (a line needs two)
    axes[0].plot(steps, [m['loss'] for m in curves], 'o-')
    axes[0].set_title('DPO loss')
    if 'rewards/accuracies' in curves[0]:
      axes[1].plot(steps, [m['rewards/accuracies'] for m in curves], 'o-')
    axes[1].set_title('reward accuracy')
    for ax in axes:
      ax.set_xlabel('step')
    fig.tight_layout()
    written.append(os.path.join(iter_dir, 'dpo.png'))
    fig.savefig(written[-1], dpi=80)
  return written


def write_report(iter_dir: str, t: int, timings: Optional[dict] = None) -> dict:
  """Writes report.json, report.md and plots for iteration t; returns the report.

  In a multi-host run process 0 writes them and the others read report.json back.
  """
  if not distributed.is_writer():
    distributed.barrier(f'report {iter_dir}')
    with open(os.path.join(iter_dir, 'report.json'), encoding='utf-8') as f:
      return json.load(f)
  report = build_report(iter_dir, t, timings)
  report['plots'] = [os.path.basename(p) for p in plot(report, iter_dir)]
  with open(os.path.join(iter_dir, 'report.json'), 'w', encoding='utf-8') as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(iter_dir, 'report.md'), 'w', encoding='utf-8') as f:
    f.write(to_markdown(report))
  distributed.barrier(f'report {iter_dir}')
  return report
