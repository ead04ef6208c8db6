"""What a run prints: a config summary, one labelled bar per stage with the whole run's ETA,
a line for each stage done, skipped or resumed, and an end table.

The loop calls a `Console` at a few points (`start`, `stage_start`, `stage_end`,
`stage_skipped`, `finish`) and passes `console.progress` wherever the stages take a
`progress` argument: the sampler and the training loop ask it for their bar
(`bars.progress_bar`), so every shard of a stage advances one bar labelled with the stage's name.
Only process 0 of a multi-host run prints. Stage ends are also logged to TensorBoard / W&B
through `metrics_log.RunLog`. The run's plan and ETA are in `console_plan`, the text it prints
in `console_text`; this module holds the live part.

Third-party INFO logging (Orbax, absl, jax) is off unless --verbosity is given
(`quiet_third_party`).
"""

import dataclasses
import logging
import os
import sys
import time
from typing import Any, Callable, Optional, Sequence

import tqdm

from srlm_jax import distributed
from srlm_jax import metrics_log
# The parts of the console, re-exported: callers have always found them here.
# pylint: disable=unused-import
from srlm_jax.bars import progress_bar
from srlm_jax.console_plan import ITERATION_STAGES, PRIOR_COST, StagePlan, iteration_plan
from srlm_jax.console_plan import plan_run, run_eta
from srlm_jax.console_text import RECORDS, count_lines, count_shards, dry_run_text, end_table
from srlm_jax.console_text import format_seconds, stage_label, stage_result, summary_lines
# pylint: enable=unused-import


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
    fresh = {p.name: p for p in iteration_plan(self.config, t, prompts, pairs)}
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
