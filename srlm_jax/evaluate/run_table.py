"""The paper's table for a finished run: one row per model (M0, M1, M2, ...), from eval.json.

Reads what each iteration's eval stage wrote (srlm_jax/pipeline/stages/eval.py): M_{t+1} from
iter_<t>/eval/eval.json, M0 and M1 from iteration 1's `baselines`. Columns: the judge metrics
(the model judging the held-out human pairs), the win rate against the previous model (judged
by the run's fixed judge, with the length-controlled view), response lengths and instruction
following. `build(workdir, out)` writes the rows as JSON (`rows`), markdown (<out>.md) and a
plot (<out>.png, when matplotlib is installed).
"""

import glob
import json
import os
import re
from typing import Optional

import numpy as np

JUDGE_KEYS = ('pairwise_accuracy', 'five_best', 'exact_match', 'spearman', 'kendall_tau')


def _read(path: str) -> dict:
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _row(name: str, iteration: int, result: dict) -> dict:
  """Returns a table row from one model's part of an eval.json."""
  agreement = result.get('judge_agreement') or {}
  h2h = result.get('head_to_head') or {}
  row = {'model': name, 'iteration': iteration, 'params': result.get('params')}
  row['judge'] = {k: agreement[k] for k in agreement
                  if k.split('_ci')[0] in JUDGE_KEYS + ('valid_fraction',)}
  if 'counts' in agreement:
    row['judge']['pairs'] = agreement['counts'].get('pairs')
  if h2h:
    lc = h2h.get('length_controlled', {})
    row['vs_previous'] = {'opponent': h2h.get('b'), 'judge': h2h.get('judge'),
                          'method': h2h.get('method'), 'n': h2h.get('n'),
                          'win_rate': h2h.get('win_rate'), 'win_rate_ci': h2h.get('win_rate_ci'),
                          'win': h2h.get('win'), 'tie': h2h.get('tie'), 'loss': h2h.get('loss'),
                          'length_controlled_win_rate': lc.get('win_rate'),
                          'length_controlled_win_rate_ci': lc.get('win_rate_ci'),
                          'length_controlled_n': lc.get('n')}
  responses = (result.get('lengths') or {}).get('responses') or {}
  row['length'] = {k: responses.get(k) for k in ('n', 'mean', 'median') if k in responses}
  follow = result.get('instruction_following') or {}
  row['instruction_following'] = {k: v for k, v in follow.items()
                                  if k.startswith(('prompt_', 'instruction_', 'n_'))}
  if result.get('dpo_after'):
    row['dpo_after'] = result['dpo_after']
  return row


def rows(workdir: str) -> list[dict]:
  """Returns the run's rows in model order; ValueError when no iteration has an eval.json."""
  found = []
  for path in glob.glob(os.path.join(workdir, 'iter_*', 'eval', 'eval.json')):
    match = re.fullmatch(r'iter_(\d+)', os.path.basename(os.path.dirname(os.path.dirname(path))))
    if match:
      found.append((int(match.group(1)), path))
  if not found:
    raise ValueError(f'{workdir}: no iter_<t>/eval/eval.json (the eval stage has not run; is '
                     '`eval` in config.stages?)')
  out = []
  for t, path in sorted(found):
    result = _read(path)
    if t == 1:
      for name, base in sorted((result.get('baselines') or {}).items()):
        out.append(_row(name, 0, base))
    out.append(_row(result.get('model', f'M{t + 1}'), t, result))
  return out


def _cell(block: dict, key: str, pct: bool = True) -> str:
  value = block.get(key)
  if value is None or (isinstance(value, float) and np.isnan(value)):
    return '-'
  ci = block.get(f'{key}_ci')
  if pct:
    text = f'{100 * value:.1f}'
    return text + (f' [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]' if ci else '')
  return f'{value:.3f}' + (f' [{ci[0]:.3f}, {ci[1]:.3f}]' if ci else '')


def markdown(table: list[dict]) -> str:
  """Returns the rows as a markdown table (percentages with their 95% intervals)."""
  head = ['model', 'pairwise acc. %', '5-best %', 'exact match %', 'Spearman', 'Kendall tau',
          'judgments valid %', 'win rate vs previous %', 'length-controlled %',
          'mean length (tokens)', 'IFEval prompt strict %', 'IFEval instr. loose %']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in table:
    j, v = r['judge'], r.get('vs_previous') or {}
    cells = [r['model'], _cell(j, 'pairwise_accuracy'), _cell(j, 'five_best'),
             _cell(j, 'exact_match'), _cell(j, 'spearman', False),
             _cell(j, 'kendall_tau', False), _cell(j, 'valid_fraction'),
             _cell(v, 'win_rate') + (f' vs {v["opponent"]}' if v else ''),
             _cell(v, 'length_controlled_win_rate'),
             '-' if r['length'].get('mean') is None else f'{r["length"]["mean"]:.1f}',
             _cell(r['instruction_following'], 'prompt_strict'),
             _cell(r['instruction_following'], 'instruction_loose')]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def plot(table: list[dict], path: str) -> bool:
  """Plots judge accuracy, win rate, length and IFEval per model; returns whether it could."""
  try:  # Figure objects, not pyplot: the caller's backend stays
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  names = [r['model'] for r in table]
  x = np.arange(len(table))
  fig = Figure(figsize=(14, 3.4))
  axes = fig.subplots(1, 4)
  for ax, (title, get) in zip(axes, [
      ('judge pairwise accuracy', lambda r: (r['judge'], 'pairwise_accuracy')),
      ('win rate vs previous', lambda r: (r.get('vs_previous') or {}, 'win_rate')),
      ('IFEval prompt strict', lambda r: (r['instruction_following'], 'prompt_strict'))]):
    has = [i for i, r in enumerate(table) if get(r)[0].get(get(r)[1]) is not None]
    vals = np.array([get(table[i])[0][get(table[i])[1]] for i in has], float)
    cis = np.array([get(table[i])[0].get(f'{get(table[i])[1]}_ci') or [v, v]
                    for i, v in zip(has, vals)], float).reshape(-1, 2)
    # a marker at every point: one model alone is still drawn
    ax.errorbar(x[has], vals, yerr=np.nan_to_num(np.abs(cis.T - vals)), fmt='o-', capsize=4)
    ax.axhline(0.5, color='grey', lw=0.5)
    ax.set(title=title, xticks=x, xticklabels=names, ylim=(0, 1), xlim=(-0.5, len(table) - 0.5))
  axes[3].bar(x, [r['length'].get('mean') or 0 for r in table])
  axes[3].set(title='mean response length (tokens)', xticks=x, xticklabels=names)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return True


def build(workdir: str, out: str, config: Optional[dict] = None) -> dict:
  """Returns the table {'workdir', 'rows', ...} after writing out (JSON), <out>.md and .png."""
  table = rows(workdir)
  config = config or (_read(os.path.join(workdir, 'config.json'))
                      if os.path.exists(os.path.join(workdir, 'config.json')) else {})
  result = {'workdir': os.path.abspath(workdir), 'rows': table,
            'model': config.get('model'), 'eval': config.get('eval')}
  stem = os.path.splitext(out)[0]
  os.makedirs(os.path.dirname(os.path.abspath(out)) or '.', exist_ok=True)
  _dump(out, result)
  with open(stem + '.md', 'w', encoding='utf-8') as f:
    f.write(markdown(table))
  result['plot'] = stem + '.png' if plot(table, stem + '.png') else None
  return result


def _dump(path: str, obj: dict) -> None:
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=2)
