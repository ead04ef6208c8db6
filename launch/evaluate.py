r"""Evaluates judges against human rankings, and a loop's iterations against each other.

Judge agreement (the paper's pairwise accuracy, 5-best %, exact match %, Spearman, Kendall tau,
with bootstrap 95% intervals over prompts; see srlm_jax/evaluate.py for the definitions):

  python launch/build_data.py --out_dir=/tmp/srlm_data
  python launch/evaluate.py --judge=smollm2-135m-instruct \
      --pairs=/tmp/srlm_data/human_pairs.jsonl --out=/tmp/m0_judge.json

--out gets the metrics at its top level (`pairwise_accuracy`, `pairwise_accuracy_ci`, ...);
every judgment goes to <out>.judgments.jsonl, and as the run goes to shards under
<out>.judgments/<judge key>/ (srlm_jax/store.py), so an interrupted run resumes. Each distinct
response is judged k times once, however many pairs it is in. --pairs also takes
eft_eval.jsonl (rankings). --out also has `valid_fraction` (judgments with a score of their
own, before any meta filter) and `wall_seconds` (model load included) at its top level.

The judge and its options: --judge_kind (additive, spct, or any registered judge or module
path), --votes (k judgments per response), --verdict=sampled|forced|forced_always (forced: read
the score from the next-token distribution where a judgment has no verdict line), --aggregate
(mean, or sum: SPCT's vote; default sum for spct), --meta_filter=k_meta (the meta RM keeps
each response's top k_meta judgments; --out's `without_meta_filter` has the same judgments
voted unfiltered, what a run without the flag measures), --together (SPCT: a question's
responses in one request, shown in a seeded order per sample; on by default for spct),
--max_pairs with --subset_seed (a random subset of whole prompts), --chunk (responses per
device batch):

  python launch/evaluate.py --judge=smollm2-135m-instruct --judge_kind=spct --votes=8 \
      --meta_filter=4 --verdict=forced --pairs=/tmp/srlm_data/human_pairs.jsonl \
      --out=/tmp/m0_spct.json

The run table of a finished loop (`--workdir`): one row per model M0, M1, M2, ... from what
each iteration's eval stage measured (srlm_jax/evaluate/run_table.py), as JSON (`rows`),
markdown (<out>.md) and plots (<out>.png):

  python launch/evaluate.py --workdir=/w --out=/tmp/run_table.json

Iterations of a finished loop (`--mode=iterations`): give the models in order; every model the
loop wrote is a model directory (M1: /w/m1_sft/train/params, M_{t+1}: /w/iter_<t>/dpo/params):

  python launch/evaluate.py --mode=iterations --models=smollm2-135m-instruct,\
/w/m1_sft/train/params,/w/iter_1/dpo/params \
      --names=M0,M1,M2 --judge=smollm2-135m-instruct --pairs=/tmp/srlm_data/human_pairs.jsonl \
      --prompts=alpaca_eval --max_prompts=64 --out=/tmp/loop_eval.json

For each model: its judge agreement on --pairs (the model judges, as in self-rewarding), its
greedy responses to --prompts (alpaca_eval, mt_bench or a JSONL with "prompt") with their
lengths, and head-to-head against the first model, judged by the fixed --judge. Writes --out
(JSON), a markdown table (<out>.md) and plots (<out>.png, if matplotlib is installed).
"""

import json
import logging
import os
import shutil
import time

from absl import app
from absl import flags
import numpy as np

import srlm_jax
from srlm_jax import data
from srlm_jax import evaluate
from srlm_jax.evaluate import run_table
from srlm_jax import judges as judge_lib
from srlm_jax import validate
from srlm_jax.data_io import read_jsonl

_SHARED = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..',
                                        'shared', 'data'))

_MODE = flags.DEFINE_enum('mode', 'judge', ['judge', 'iterations'], 'What to evaluate.')
_JUDGE = flags.DEFINE_string('judge', 'smollm2-135m-instruct', 'Judge model path or name.')
_PAIRS = flags.DEFINE_string('pairs', None, 'Human pairs (or rankings) JSONL.')
_OUT = flags.DEFINE_string('out', None, 'Output JSON file.', required=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'A finished loop\'s work directory: write its '
                               'run table (one row per model) to --out and ignore --mode.')
_MAX_PAIRS = flags.DEFINE_integer('max_pairs', None,
                                  'Evaluate whole prompts up to this many pairs in all.')
_K = flags.DEFINE_integer('k', 3, 'Judgments per response (their valid scores are averaged).')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.7, 'Judge sampling temperature (0: greedy).')
_TOP_P = flags.DEFINE_float('top_p', 0.9, 'Judge nucleus sampling.')
_MAX_NEW_TOKENS = flags.DEFINE_integer('max_new_tokens', 128, 'Tokens per judgment at most.')
_TEMPLATE = flags.DEFINE_string('template', '', "Judge rubric: a template of --judge_kind "
                                 "('additive', 'choice', ...) or a rubric text; '' its default.")
_JUDGE_KIND = flags.DEFINE_string('judge_kind', 'additive',
                                  'Judge: a registered name (additive, spct, ...) or a module '
                                  'path that registers one.')
_VOTES = flags.DEFINE_integer('votes', None, 'Judgments per response (k); overrides --k.')
_AGGREGATE = flags.DEFINE_enum('aggregate', None, ['mean', 'sum'],
                               "How a response's valid judgments reduce (default: 'sum' for "
                               "spct, the vote; 'mean' otherwise).")
_META_FILTER = flags.DEFINE_integer('meta_filter', 0, 'k_meta: vote only the top k_meta '
                                    'judgments by the meta RM (judges/meta_rm.py); 0: off.')
_VERDICT = flags.DEFINE_enum('verdict', 'sampled', list(judge_lib.VERDICTS),
                             'sampled: parse the judge\'s verdict line; forced: read the score '
                             'from the next-token distribution where it has none; '
                             'forced_always: for every judgment.')
_CHUNK = flags.DEFINE_integer('chunk', None, 'judge: responses (questions with --together) '
                              'judged per device batch and cache shard (default 64 / k).')
_TOGETHER = flags.DEFINE_bool('together', None, "Judge each question's responses in one "
                              'request per judgment, shown in a seeded order per sample (SPCT; '
                              'default: on for --judge_kind=spct, off otherwise).')
_MAX_PAIRS_SEED = flags.DEFINE_integer('subset_seed', None, 'With --max_pairs: keep a random '
                                       'subset of prompts (this seed) instead of the first.')
_N_BOOT = flags.DEFINE_integer('n_boot', 1000, 'Bootstrap resamples for the intervals.')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed (sampling and bootstrap).')
_MODELS = flags.DEFINE_list('models', [], 'iterations: model paths in iteration order.')
_NAMES = flags.DEFINE_list('names', [], 'iterations: display names (default M0, M1, ...).')
_PROMPTS = flags.DEFINE_string('prompts', 'alpaca_eval',
                               'iterations: alpaca_eval, mt_bench or a JSONL with "prompt".')
_MAX_PROMPTS = flags.DEFINE_integer('max_prompts', 64, 'iterations: prompts to use (the first).')
_RESPONSE_TOKENS = flags.DEFINE_integer('response_max_new_tokens', 256,
                                        'iterations: response length limit.')
_METHOD = flags.DEFINE_enum('method', 'pointwise', ['pointwise', 'pairwise'],
                            'iterations: head-to-head judging method.')
_RESUME = flags.DEFINE_bool('resume', True, 'judge: reuse the shards in <out>.judgments/ of '
                             'an interrupted run with the same judge and settings.')
_MAX_RATIO = flags.DEFINE_float('max_ratio', 1.25, 'Length-controlled view: longest/shortest.')


def _check_flags() -> None:
  """Raises validate.ConfigError naming each judge flag out of range, before any model loads."""
  validate.check_flags('launch/evaluate.py', {
      'judge.k': ('--k', _K.value), 'judge.temperature': ('--temperature', _TEMPERATURE.value),
      'judge.top_p': ('--top_p', _TOP_P.value),
      'judge.max_new_tokens': ('--max_new_tokens', _MAX_NEW_TOKENS.value),
      'judge.kind': ('--judge_kind', _JUDGE_KIND.value),
      'eval.max_pairs': ('--max_pairs', _MAX_PAIRS.value),
      **({'judge.template': ('--template', _TEMPLATE.value)} if _TEMPLATE.value else {}),
      **({'judge.k': ('--votes', _VOTES.value)} if _VOTES.value is not None else {}),
      'judge.meta_filter': ('--meta_filter', _META_FILTER.value)})
  k = _k()
  if _META_FILTER.value > k:
    raise validate.ConfigError(f'launch/evaluate.py: --meta_filter={_META_FILTER.value}: '
                               f'expected at most the votes per response (k={k})')


def _k() -> int:
  return _K.value if _VOTES.value is None else _VOTES.value


def _aggregate() -> str:
  if _AGGREGATE.value:
    return _AGGREGATE.value
  return 'sum' if judge_lib.get(_JUDGE_KIND.value).name == 'spct' else 'mean'


def _together() -> bool:
  is_spct = judge_lib.get(_JUDGE_KIND.value).name == 'spct'
  if _TOGETHER.value and not is_spct:
    raise app.UsageError(f'--together is SPCT\'s (--judge_kind=spct), not '
                         f'--judge_kind={_JUDGE_KIND.value}')
  return is_spct if _TOGETHER.value is None else _TOGETHER.value


def _settings() -> judge_lib.JudgeSettings:
  """Returns the judge settings the flags describe."""
  kind = _JUDGE_KIND.value
  return judge_lib.JudgeSettings(
      kind=kind, k=_k(), temperature=_TEMPERATURE.value, top_p=_TOP_P.value,
      max_new_tokens=_MAX_NEW_TOKENS.value,
      template=judge_lib.get_template(_TEMPLATE.value, kind=kind) if _TEMPLATE.value else None,
      verdict=_VERDICT.value, aggregate=_aggregate(), meta_filter=_META_FILTER.value)


def _dump(path: str, obj) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=2)


def _agreement(model, groups, cache_dir=None, judge_id=None) -> tuple[dict, list]:
  start = time.perf_counter()
  metrics, records = evaluate.evaluate_judge(model, groups, _settings(), n_boot=_N_BOOT.value,
                                             seed=_SEED.value, cache_dir=cache_dir,
                                             judge_id=judge_id, together=_together(),
                                             chunk=_CHUNK.value)
  metrics['seconds'] = round(time.perf_counter() - start, 1)
  return metrics, records


def run_judge() -> dict:
  """Judges the human pairs with --judge and writes the agreement metrics to --out."""
  start = time.perf_counter()
  groups = evaluate.load_judge_groups(_PAIRS.value, _MAX_PAIRS.value,
                                      subset_seed=_MAX_PAIRS_SEED.value)
  model = srlm_jax.load(_JUDGE.value)
  cache = _OUT.value + '.judgments'  # shards per judge key (srlm_jax/store.py), resumable
  if not _RESUME.value and os.path.exists(cache):
    shutil.rmtree(cache)
  metrics, records = _agreement(model, groups, cache, judge_id=_JUDGE.value)
  settings = _settings()
  out = dict(metrics, judge=_JUDGE.value, pairs_file=os.path.abspath(_PAIRS.value),
             valid_fraction=metrics['counts']['valid_judgment_fraction'],
             settings={'judge_kind': settings.kind, 'k': settings.k,
                       'verdict': settings.verdict, 'aggregate': settings.aggregate,
                       'meta_filter': settings.meta_filter, 'together': _together(),
                       'temperature': _TEMPERATURE.value,
                       'top_p': _TOP_P.value, 'max_new_tokens': _MAX_NEW_TOKENS.value,
                       'template': _TEMPLATE.value or None, 'max_pairs': _MAX_PAIRS.value,
                       'subset_seed': _MAX_PAIRS_SEED.value, 'seed': _SEED.value})
  out['wall_seconds'] = round(time.perf_counter() - start, 1)  # model load included
  data.write_jsonl(cache + '.jsonl', records)  # in group order
  _dump(_OUT.value, out)
  return out


def _prompt_set() -> list[str]:
  if _PROMPTS.value == 'alpaca_eval':
    rows = data.alpaca_eval_prompts(
        os.path.join(_SHARED, 'alpaca_eval', 'gpt4_1106_preview', 'model_outputs.json'))
  elif _PROMPTS.value == 'mt_bench':
    rows = data.mt_bench_prompts(os.path.join(_SHARED, 'mt_bench', 'question.jsonl'))
  else:
    rows = [{'prompt': r[2]['prompt']} for r in read_jsonl(_PROMPTS.value)]
  return [r['prompt'] for r in rows][:_MAX_PROMPTS.value]


def _fmt(metrics: dict, key: str, pct: bool = True) -> str:
  if key not in metrics or np.isnan(metrics[key]):
    return '-'
  scale, unit = (100, '%') if pct else (1, '')
  lo, hi = metrics.get(f'{key}_ci', [float('nan')] * 2)
  return f'{scale * metrics[key]:.1f}{unit} [{scale * lo:.1f}, {scale * hi:.1f}]' if pct else \
      f'{metrics[key]:.3f} [{lo:.3f}, {hi:.3f}]'


def markdown_table(rows: list[dict]) -> str:
  """Returns the per-iteration table in markdown."""
  head = ('| model | pairwise acc. | 5-best | exact match | Spearman | Kendall tau | '
          'win rate vs first | length-controlled | mean length |')
  lines = [head, '|' + '---|' * 9]
  for r in rows:
    j, h = r.get('judge_agreement', {}), r.get('head_to_head_vs_first', {})
    lines.append(' | '.join([
        f'| {r["name"]}', _fmt(j, 'pairwise_accuracy'), _fmt(j, 'five_best'),
        _fmt(j, 'exact_match'), _fmt(j, 'spearman', False), _fmt(j, 'kendall_tau', False),
        _fmt(h, 'win_rate'), _fmt(h.get('length_controlled', {}), 'win_rate'),
        f'{r["lengths"]["mean"]:.1f}']) + ' |')
  return '\n'.join(lines) + '\n'


def plot(rows: list[dict], path: str) -> bool:
  """Plots judge accuracy, win rate and mean length per iteration; returns whether it could."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning('matplotlib is not installed: no plots (pip install matplotlib)')
    return False
  names = [r['name'] for r in rows]
  x = np.arange(len(rows))
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  for ax, (title, part, key) in zip(axes, [
      ('judge pairwise accuracy', 'judge_agreement', 'pairwise_accuracy'),
      ('win rate vs first (judged)', 'head_to_head_vs_first', 'win_rate')]):
    get = lambda r, part=part: r.get(part, {})
    has = [i for i, r in enumerate(rows) if key in get(r)]
    vals = np.array([get(rows[i])[key] for i in has], float)
    cis = np.array([get(rows[i])[f'{key}_ci'] for i in has], float).reshape(-1, 2)
    ax.errorbar(x[has], vals, yerr=np.nan_to_num(np.abs(cis.T - vals)), fmt='o-', capsize=4)
    ax.axhline(0.5, color='grey', lw=0.5)
    ax.set(title=title, xticks=x, xticklabels=names, ylim=(0, 1), xlim=(-0.5, len(rows) - 0.5))
  axes[2].bar(x, [r['lengths']['mean'] for r in rows])
  axes[2].set(title='mean response length (tokens)', xticks=x, xticklabels=names)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def run_iterations() -> dict:
  """Evaluates each model of --models; writes the table as JSON, markdown and a plot."""
  if not _MODELS.value:
    raise app.UsageError('--mode=iterations needs --models=path0,path1,...')
  names = _NAMES.value or [f'M{t}' for t in range(len(_MODELS.value))]
  if len(names) != len(_MODELS.value):
    raise app.UsageError(f'{len(names)} --names for {len(_MODELS.value)} --models')
  prompts = _prompt_set()
  groups = evaluate.load_judge_groups(_PAIRS.value, _MAX_PAIRS.value) if _PAIRS.value else None
  fixed_judge = srlm_jax.load(_JUDGE.value)
  rows, first = [], None
  for name, path in zip(names, _MODELS.value):
    model = srlm_jax.load(path)
    row = {'name': name, 'path': path}
    if groups:
      row['judge_agreement'], _ = _agreement(model, groups)
    texts, lengths = evaluate.respond(model, prompts, max_new_tokens=_RESPONSE_TOKENS.value,
                                      seed=_SEED.value)
    row['lengths'] = evaluate.length_stats(lengths)
    if first is None:
      first = (texts, lengths)
    else:
      row['head_to_head_vs_first'] = evaluate.head_to_head(
          fixed_judge, prompts, texts, first[0], lengths, first[1], _settings(),
          method=_METHOD.value, max_ratio=_MAX_RATIO.value, n_boot=_N_BOOT.value,
          seed=_SEED.value)
    data.write_jsonl(f'{_OUT.value}.{name}.responses.jsonl',
                     [{'prompt': p, 'response': t, 'length': n}
                      for p, t, n in zip(prompts, texts, lengths)])
    rows.append(row)
    del model
  out = {'iterations': rows, 'judge': _JUDGE.value, 'prompts': _PROMPTS.value,
         'num_prompts': len(prompts), 'method': _METHOD.value}
  _dump(_OUT.value, out)
  with open(os.path.splitext(_OUT.value)[0] + '.md', 'w', encoding='utf-8') as f:
    f.write(markdown_table(rows))
  plot(rows, os.path.splitext(_OUT.value)[0] + '.png')
  return out


def main(argv):
  del argv
  if _WORKDIR.value:  # no model loads: the table is read from the eval stages' files
    print(run_table.markdown(run_table.build(_WORKDIR.value, _OUT.value)['rows']))
    return
  _check_flags()
  if _MODE.value == 'judge':
    if not _PAIRS.value:
      raise app.UsageError('--mode=judge needs --pairs')
    out = run_judge()
    print(json.dumps({k: v for k, v in out.items() if k in evaluate.AGREEMENT_KEYS
                      or k.endswith('_ci') or k in ('counts', 'valid_fraction', 'wall_seconds')},
                     indent=2))
  else:
    print(markdown_table(run_iterations()['iterations']))


if __name__ == '__main__':
  app.run(main)
