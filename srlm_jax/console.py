"""What a run prints: a config summary, one labelled bar per stage with the whole run's ETA,
a line for each stage done, skipped or resumed, and an end table.

The loop calls a `Console` at a few points (`start`, `stage_start`, `stage_end`,
`stage_skipped`, `finish`) and passes `console.progress` wherever the stages take a
`progress` argument: the sampler and the training loop ask it for their bar
(`progress_bar`), so every shard of a stage advances one bar labelled with the stage's name.
Only process 0 of a multi-host run prints. Stage ends are also logged to TensorBoard / W&B
through `metrics_log.RunLog`.

Third-party INFO logging (Orbax, absl, jax) is off unless --verbosity is given
(`quiet_third_party`).
"""

import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Optional, Sequence

import tqdm

from srlm_jax import config_help
from srlm_jax import data_io
from srlm_jax import distributed
from srlm_jax import metrics_log
from srlm_jax import workdir as workdir_lib

# The loop's stages in run order: M1's SFT once, then these per iteration (loop.STAGES).
ITERATION_STAGES = ('prompts', 'candidates', 'judgments', 'pairs', 'ref_logps', 'dpo', 'eval')
# Each sampling stage's records file, summarised in its "done" lines.
RECORDS = {'prompts': 'prompts.jsonl', 'candidates': 'candidates.jsonl',
           'judgments': 'judgments.jsonl', 'pairs': 'pairs.jsonl'}
# Relative cost of one work unit of each kind, used for the run's ETA only until a stage of
# that kind has been timed: a training token (forward + backward, about 3 forwards), a scored
# token (one forward) and a sampled token (a decode step: memory-bound, a few forwards' worth
# per token at the batch sizes used here). Measured rates replace these as soon as they exist.
PRIOR_COST = {'train': 3.0, 'score': 1.0, 'sample': 4.0}


def quiet_third_party(verbosity_given: Optional[bool] = None) -> None:
  """Sets logging to WARNING unless --verbosity was given (absl otherwise turns INFO on)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  if verbosity_given is None:
    verbosity_given = flags.FLAGS.is_parsed() and flags.FLAGS['verbosity'].present > 0
  if not verbosity_given:
    # Orbax logs through absl's logger, jax and the loop through the root logger; under
    # app.run absl's verbosity sets the root's level (absl's logger inherits it), elsewhere
    # only absl's own, so both are set.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)


def format_seconds(seconds: Optional[float]) -> str:
  """Returns a duration as '42s', '3m05s' or '1h02m' ('?' when unknown)."""
  if seconds is None:
    return '?'
  s = int(round(max(seconds, 0.0)))
  if s < 60:
    return f'{s}s'
  if s < 3600:
    return f'{s // 60}m{s % 60:02d}s'
  return f'{s // 3600}h{s % 3600 // 60:02d}m'


def stage_label(t: int, name: str, iterations: int) -> str:
  """Returns the name a stage is shown under: 'sft', 'candidates', or 'candidates #2'."""
  return name if t == 0 or iterations == 1 else f'{name} #{t}'


def _train_steps(cfg, examples: int) -> int:
  return cfg.num_steps or max(1, int(cfg.num_epochs * examples) // cfg.batch_size)


@dataclasses.dataclass
class StagePlan:
  """One stage of the run: its work units (for the ETA) and how far it has got."""
  t: int  # iteration (0: M1's SFT)
  name: str
  kind: str  # a PRIOR_COST key
  units: float  # estimated work: tokens trained, scored or sampled
  frac: float = 0.0  # fraction done
  done: bool = False


def plan_run(config, n_sft_examples: int) -> list:
  """Returns the StagePlans of a whole run, sized from the config.

  Work units are tokens: trained (steps x batch x max_len, a pair counting twice), scored
  (the reference log-probs) or sampled (rows x max_new_tokens, an upper bound: rows may stop
  early). Counts that depend on earlier stages assume every request keeps its prompt and every
  prompt makes a pair; `refine` corrects them from the records as stages finish.
  """
  plans = []
  if config.sft.enabled:
    steps = _train_steps(config.sft, n_sft_examples)
    plans.append(StagePlan(0, 'sft', 'train', steps * config.sft.batch_size * config.sft.max_len))
  for t in range(1, config.iterations + 1):
    plans += _iteration_plan(config, t, config.creation.num_requests, config.creation.num_requests)
  return plans


def _iteration_plan(config, t: int, prompts: int, pairs: int) -> list:
  c, dpo = config.creation, config.dpo
  responses = prompts * c.n_candidates
  eval_units = 0
  if config.eval.pairs:
    eval_units = (config.eval.max_pairs or 64) * 2 * config.eval.k * c.judge.max_new_tokens
  units = {'prompts': ('sample', c.num_requests * c.prompt_max_new_tokens),
           'candidates': ('sample', responses * c.max_new_tokens),
           'judgments': ('sample', responses * c.judge.k * c.judge.max_new_tokens),
           'pairs': ('score', 0),
           'ref_logps': ('score', pairs * 2 * dpo.max_len),
           'dpo': ('train', (_train_steps(dpo, pairs) if pairs else 0) * dpo.batch_size * 2
                   * dpo.max_len),
           'eval': ('sample', eval_units)}
  return [StagePlan(t, name, *units[name]) for name in ITERATION_STAGES]


def run_eta(plans: Sequence[StagePlan], seconds: dict, units: dict) -> Optional[float]:
  """Returns the estimated seconds left in the run (None until some work has been timed).

  Each unfinished stage's remaining units cost the measured seconds per unit of its kind
  (`seconds[kind] / units[kind]`, this session's work only); a kind not yet measured costs a
  measured kind's rate scaled by PRIOR_COST.
  """
  rates = {k: seconds[k] / units[k] for k in units if units[k] > 0 and k in seconds}
  if not rates:
    return None
  ref = max(rates, key=lambda k: units[k])
  left = 0.0
  for p in plans:
    if p.done:
      continue
    rate = rates.get(p.kind, rates[ref] * PRIOR_COST[p.kind] / PRIOR_COST[ref])
    left += p.units * (1.0 - p.frac) * rate
  return left


def count_lines(path: str) -> int:
  """Returns the number of non-empty lines of a file (0 when it is missing)."""
  if not os.path.exists(path):
    return 0
  with open(path, encoding='utf-8') as f:
    return sum(1 for line in f if line.strip())


def _read_jsonl(path: str) -> list:
  """Returns the objects of a JSONL file through data_io's reader ([] when it is missing)."""
  if not os.path.exists(path):
    return []
  return [obj for _, _, obj in data_io.read_jsonl(path, allow_empty=True)]


def _read_json(path: str) -> dict:
  """Returns a JSON file through data_io's reader ({} when it is missing)."""
  return data_io.read_json(path) if os.path.exists(path) else {}


def _last_metrics(train_dir: str) -> dict:
  """Returns the last value of every metric in train_dir/metrics.jsonl."""
  last = {}
  path = os.path.join(train_dir, 'metrics.jsonl')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      for line in f:
        if line.strip():
          last.update(json.loads(line))
  return last


def stage_result(stage_dir: str, name: str, info: Optional[dict] = None) -> str:
  """Returns what a finished stage made: '16 prompts, 64 candidates', '12 steps, loss 0.6'."""
  info = info if info is not None else _read_json(os.path.join(stage_dir, 'DONE'))
  if name in RECORDS:
    records = _read_jsonl(os.path.join(stage_dir, RECORDS[name]))
    if name == 'prompts':
      return f'{len(records)} prompts kept, {info.get("rejected", 0)} rejected'
    if name == 'candidates':
      return f'{len(records)} prompts, {sum(len(r["candidates"]) for r in records)} candidates'
    if name == 'judgments':
      valid = sum(sum(r['valid']) for r in records)
      return (f'{len(records)} responses judged, {valid}/{sum(len(r["valid"]) for r in records)}'
              ' judgments valid')
    return f'{len(records)} pairs'
  if name in ('sft', 'dpo'):
    if info.get('skipped'):
      return 'no pairs to train on: the next model is this one'
    m = _last_metrics(os.path.join(stage_dir, 'train') if name == 'sft' else stage_dir)
    text = f'{int(m.get("step", 0))} steps'
    if 'loss' in m:
      text += f', loss {m["loss"]:.4f}'
    if 'rewards/accuracies' in m:
      text += f', reward acc {m["rewards/accuracies"]:.2f}'
    if name == 'sft' and 'examples' in info:
      text = f'{info["examples"]} examples, ' + text
    return text
  if name == 'ref_logps':
    return 'no pairs' if info.get('skipped') else f'{info.get("pairs", 0)} pairs scored'
  if name == 'eval':
    result = _read_json(os.path.join(stage_dir, 'eval.json'))
    agreement = result.get('judge_agreement')
    if agreement:
      return f'judge pairwise accuracy {agreement["pairwise_accuracy"]:.3f}'
    return 'response lengths'
  return ''


def summary_lines(config, workdir: str, n_ift: Optional[int] = None,
                  n_eft: Optional[int] = None) -> list:
  """Returns the run's summary: model, sizes, stages, workdir, logs."""
  c, sft, dpo = config.creation, config.sft, config.dpo
  seeds = f'{config.data.ift} + {config.data.eft}'
  if n_ift is not None:
    seeds = f'{n_ift} IFT + {n_eft} EFT examples ({seeds})'
  models = ' -> '.join(f'M{t}' for t in range(1, config.iterations + 2))
  sft_line = 'off (the iterations start from M0)'
  if sft.enabled:
    steps = (f'{sft.num_steps} steps' if sft.num_steps else f'{sft.num_epochs:g} epoch(s)')
    sft_line = f'M0 -> M1, {steps} x batch {sft.batch_size}, max_len {sft.max_len}, lr {sft.lr:g}'
  dpo_steps = f'{dpo.num_steps} steps' if dpo.num_steps else f'{dpo.num_epochs:g} epoch(s)'
  log = config.get('logging')
  logs = 'metrics.jsonl per training stage'
  if log is not None:
    logs += f'; TensorBoard {os.path.join(workdir, "tensorboard") if log.tensorboard else "off"}'
    logs += f'; W&B {log.wandb_project or "off"}'
  stages = ('sft, then ' if sft.enabled else '') + ', '.join(ITERATION_STAGES)
  rows = [
      ('workdir', workdir),
      ('model', f'{config.model} (M0)'
       + (f'; prompts written by {config.prompt_generator}' if config.prompt_generator else '')),
      ('seed data', seeds),
      ('iterations', f'{config.iterations}: {models}'),
      ('prompts', f'{c.num_requests} few-shot requests, {c.few_shot} seeds each, '
                  f'<= {c.prompt_max_new_tokens} tokens'),
      ('candidates', f'{c.n_candidates} per prompt, <= {c.max_new_tokens} tokens, '
                     f'T={c.temperature:g} top_p={c.top_p:g}'),
      ('judge', f'k={c.judge.k} per candidate, <= {c.judge.max_new_tokens} tokens, '
                f'template {_short(c.judge.template)}'),
      ('sft', sft_line),
      ('dpo', f'{dpo.loss} beta={dpo.beta:g}, {dpo_steps} x batch {dpo.batch_size}, '
              f'max_len {dpo.max_len}, lr {dpo.lr:g}'),
      ('eval', f'{config.eval.pairs} (k={config.eval.k})' if config.eval.pairs else 'lengths'),
      ('mesh', f'{tuple(config.mesh)} (data, fsdp, tensor); shards of {config.shard_size}'),
      ('stages', stages),
      ('logs', logs),
  ]
  width = max(len(k) for k, _ in rows)
  return ['srlm_jax: self-rewarding run'] + [f'  {k:<{width}}  {v}' for k, v in rows]


def _short(text: str, n: int = 40) -> str:
  text = ' '.join(str(text).split())
  return repr(text if len(text) <= n else text[:n - 3] + '...')


def dry_run_text(config, workdir: str, n_ift: Optional[int] = None,
                 n_eft: Optional[int] = None) -> str:
  """Returns what --dry_run prints: the summary, each stage's size and the resolved config."""
  lines = summary_lines(config, workdir, n_ift, n_eft)
  n = (n_ift or 0) + (n_eft or 0)
  lines += ['', 'stages (estimated work, tokens; counts after prompts are upper bounds):']
  for p in plan_run(config, n):
    lines.append(f'  {stage_label(p.t, p.name, config.iterations):<16} {p.kind:<7}'
                 f'{int(p.units):>14,}')
  lines += ['', 'resolved config (override any field with --config.<field>=<value>):']
  lines += [f'  {key} = {value!r}' for key, value in config_help.flatten(config)]
  return '\n'.join(lines)


@dataclasses.dataclass
class _Running:
  """The stage running now: its plan, when it started, how far it was then, its bar."""
  plan: StagePlan
  start: float
  frac0: float
  planned: bool  # the bar's total is the stage's whole work (else each caller adds its part)
  bar: Any = None


class _Handle:
  """A stage bar as the sampler and the training loop use it; closing it leaves it open."""

  def __init__(self, console: 'Console', bar):
    self._console, self._bar = console, bar

  def update(self, n: int = 1) -> None:
    self._bar.update(n)
    self._console.tick()

  def set_postfix(self, **kwargs) -> None:
    self._bar.set_postfix(**kwargs)

  def close(self) -> None:
    pass  # the console closes the bar when the stage ends

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def progress_bar(progress: Any, total: int, *, initial: int = 0, desc: str = '',
                 unit: str = 'it'):
  """Returns a bar for `total` units: progress(...) when it is callable, else a tqdm bar.

  `progress` is what the sampler and the training loop take: True/False (a bar of their own on
  process 0, or none) or a callable such as `Console.progress` that returns the stage's bar.
  """
  if callable(progress):
    return progress(total=total, initial=initial, desc=desc, unit=unit)
  return tqdm.tqdm(total=total, initial=initial, desc=desc or None, unit=unit,
                   disable=not (progress and distributed.is_writer()))


class Console:
  """The run's console: prints (process 0 only) and logs each stage as the loop reports it."""

  def __init__(self, config, workdir: str, *, enabled: bool = True, log_metrics: bool = True,
               run_log=None, stream=None, clock: Callable[[], float] = time.perf_counter):
    self.config = config
    self.log_metrics = log_metrics
    self.workdir = workdir
    self.enabled = enabled and distributed.is_writer()
    self.run_log = run_log
    self.stream = stream
    self.clock = clock
    self.plans: list = []
    self.seconds = {}  # kind -> seconds of work timed this session
    self.units = {}  # kind -> units of work timed this session
    self.results = []  # (label, seconds or None, result text, state) per stage, in order
    self._start = clock()
    self._stage: Optional[_Running] = None
    self._last_tick = 0.0

  def _print(self, text: str) -> None:
    if self.enabled:
      tqdm.tqdm.write(text, file=self.stream or sys.stdout)

  def _plan(self, t: int, name: str) -> StagePlan:
    for p in self.plans:
      if (p.t, p.name) == (t, name):
        return p
    p = StagePlan(t, name, 'score', 0.0)  # a stage the plan did not foresee: no ETA weight
    self.plans.append(p)
    return p

  def label(self, t: int, name: str) -> str:
    """Returns the stage's display name."""
    return stage_label(t, name, self.config.iterations)

  def eta(self) -> Optional[float]:
    """Returns the estimated seconds left in the run, counting the running stage's progress."""
    seconds, units = dict(self.seconds), dict(self.units)
    run = self._stage
    if run is not None:
      done = run.plan.units * (run.plan.frac - run.frac0)
      if done > 0:
        seconds[run.plan.kind] = seconds.get(run.plan.kind, 0.0) + self.clock() - run.start
        units[run.plan.kind] = units.get(run.plan.kind, 0.0) + done
    return run_eta(self.plans, seconds, units)

  def start(self, n_ift: Optional[int] = None, n_eft: Optional[int] = None) -> None:
    """Prints the config summary, sizes the stages for the ETA and opens the metrics logs."""
    self.plans = plan_run(self.config, (n_ift or 0) + (n_eft or 0))
    self._start = self.clock()
    if self.log_metrics and self.run_log is None:
      self.run_log = metrics_log.from_config(self.config, self.workdir)
    for line in summary_lines(self.config, self.workdir, n_ift, n_eft):
      self._print(line)

  def stage_skipped(self, t: int, name: str, stage_dir: str) -> None:
    """Prints '<stage>: done, <result>, skipped' for a stage an earlier run completed."""
    plan = self._plan(t, name)
    plan.frac, plan.done = 1.0, True
    result = stage_result(stage_dir, name)
    self.results.append((self.label(t, name), None, result, 'skipped'))
    self._print(f'{self.label(t, name)}: done, {result}, skipped')

  def stage_start(self, t: int, name: str, stage_dir: str) -> None:
    """Opens the stage's bar (sized from the records before it); says where a resume starts."""
    plan = self._plan(t, name)
    total, initial = self._bar_size(t, name, stage_dir)
    if total and initial:
      plan.frac = initial / total
      self._print(f'{self.label(t, name)}: resuming at shard '
                  f'{count_shards(os.path.join(stage_dir, "shards")) + 1} ({initial}/{total} '
                  f'done)')
    self._stage = _Running(plan, self.clock(), plan.frac, planned=bool(total))
    if total:
      self._open_bar(total, initial, 'response' if name == 'judgments' else 'prompt')

  def _bar_size(self, t: int, name: str, stage_dir: str) -> tuple:
    """Returns (bar total, units already done) of a sharded stage; (0, 0) for the others."""
    c, iter_dir = self.config.creation, os.path.dirname(stage_dir)
    if name == 'prompts':
      items, per_item = c.num_requests, 1
    elif name == 'candidates':
      items, per_item = count_lines(os.path.join(iter_dir, 'prompts', 'prompts.jsonl')), 1
    elif name == 'judgments':
      items = count_lines(os.path.join(iter_dir, 'candidates', 'candidates.jsonl'))
      per_item = c.n_candidates
    else:
      return 0, 0
    shards = count_shards(os.path.join(stage_dir, 'shards'))
    done = min(shards * self.config.shard_size, items)
    return items * per_item, done * per_item

  def _open_bar(self, total: int, initial: int, unit: str):
    plan = self._stage.plan
    self._stage.bar = tqdm.tqdm(total=total, initial=initial, unit=unit, leave=False,
                                desc=self.label(plan.t, plan.name), disable=not self.enabled,
                                file=sys.stderr, dynamic_ncols=True)
    return self._stage.bar

  def progress(self, total: int, initial: int = 0, desc: str = '', unit: str = 'it'):
    """Returns the running stage's bar for a sampler or training loop (see progress_bar)."""
    del desc  # the stage's name labels the bar
    if self._stage is None:  # called outside a stage: an unlabelled bar of its own
      return tqdm.tqdm(total=total, initial=initial, unit=unit, disable=not self.enabled)
    run = self._stage
    bar = run.bar
    if bar is None:
      if initial:  # a training stage resumed from its checkpoint
        self._print(f'{self.label(run.plan.t, run.plan.name)}: resuming at step '
                    f'{initial}/{total}')
        run.plan.frac = run.frac0 = initial / max(total, 1)
      bar = self._open_bar(total, initial, unit)
    elif not run.planned:  # e.g. eval's judge chunks: each call adds its part
      bar.total += total
      bar.refresh()
    return _Handle(self, bar)

  def tick(self) -> None:
    """Updates the running stage's progress and, at most once a second, the run's ETA."""
    plan, bar = self._stage.plan, self._stage.bar
    if bar is not None and bar.total:
      plan.frac = min(1.0, bar.n / bar.total)
    now = self.clock()
    if bar is not None and now - self._last_tick >= 1.0:
      self._last_tick = now
      bar.set_description_str(f'{self.label(plan.t, plan.name)} [run ETA '
                              f'{format_seconds(self.eta())}]', refresh=False)

  def stage_end(self, t: int, name: str, stage_dir: str, info: Optional[dict],
                seconds: float) -> None:
    """Closes the stage's bar, prints its result and time, and logs it (TensorBoard, W&B)."""
    plan = self._plan(t, name)
    if self._stage is not None and self._stage.plan is plan:
      if self._stage.bar is not None:
        self._stage.bar.close()
      done = plan.units * (1.0 - self._stage.frac0)
      self.seconds[plan.kind] = self.seconds.get(plan.kind, 0.0) + seconds
      self.units[plan.kind] = self.units.get(plan.kind, 0.0) + done
    self._stage = None
    plan.frac, plan.done = 1.0, True
    if name == 'pairs':  # later stages of this iteration are sized by the real counts
      self._refine(t, stage_dir)
    result = stage_result(stage_dir, name, info)
    self.results.append((self.label(t, name), seconds, result, 'ran'))
    eta = self.eta()
    left = f' (run ETA {format_seconds(eta)})' if eta is not None and eta > 0.5 else ''
    self._print(f'{self.label(t, name)}: {result} in {format_seconds(seconds)}{left}')
    if self.run_log is not None:
      self.run_log.stage(t, name, stage_dir, seconds)

  def _refine(self, t: int, pairs_dir: str) -> None:
    iter_dir = os.path.dirname(pairs_dir)
    prompts = count_lines(os.path.join(iter_dir, 'prompts', 'prompts.jsonl'))
    pairs = count_lines(os.path.join(pairs_dir, 'pairs.jsonl'))
    fresh = {p.name: p for p in _iteration_plan(self.config, t, prompts, pairs)}
    for p in self.plans:
      if p.t == t and not p.done:
        p.units = fresh[p.name].units

  def finish(self, reports: Sequence[dict]) -> None:
    """Prints the end table: each stage's time and result, the totals and where the reports are."""
    for line in end_table(self.results, self.clock() - self._start, self.workdir, reports,
                          self.run_log.where() if self.run_log is not None else []):
      self._print(line)
    self.close()

  def close(self) -> None:
    """Closes the metrics logs (what they hold so far is on disk) and any open bar."""
    if self._stage is not None and self._stage.bar is not None:
      self._stage.bar.close()
    self._stage = None
    if self.run_log is not None:
      self.run_log.close()


def count_shards(folder: str) -> int:
  """Returns the number of complete shards in folder: those with their digest beside them."""
  if not os.path.isdir(folder):
    return 0
  return sum(1 for f in os.listdir(folder) if f.endswith('.jsonl')
             and os.path.exists(workdir_lib.shard_sidecar(os.path.join(folder, f))))


def end_table(results: Sequence[tuple], total_seconds: float, workdir: str,
              reports: Sequence[dict], logs: Sequence[str] = ()) -> list:
  """Returns the end summary: a row per stage (time, result) and where reports and logs are."""
  width = max([len(r[0]) for r in results] + [len('stage')])
  lines = ['', f'{"stage":<{width}}  {"time":>7}  result',
           f'{"-" * width}  {"-" * 7}  {"-" * 40}']
  for label, seconds, result, state in results:
    time_text = format_seconds(seconds) if seconds is not None else state
    lines.append(f'{label:<{width}}  {time_text:>7}  {result}')
  lines.append(f'{"total":<{width}}  {format_seconds(total_seconds):>7}  this session')
  for report in reports:
    t = report['iteration']
    j = report['judgments']
    lines.append(f'iteration {t} ({report["model"]}): {report["prompts"]["kept"]} prompts, '
                 f'{report["candidates"]} candidates, {j["valid"]}/{j["total"]} valid '
                 f'judgments, {report["pairs"]} pairs; report: '
                 f'{os.path.join(workdir, f"iter_{t}", "report.md")}')
  lines += list(logs)
  return lines
