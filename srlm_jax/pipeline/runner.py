"""The self-rewarding loop as a runner over config.stages: M0 -SFT-> M1 -stages-> M2 ...

Work directory layout (each stage writes under its own folder, then marks itself complete by
atomically writing DONE; a stage with DONE is never run again; see srlm_jax/store.py):

  config.json, history.jsonl, LOCK    the run's config, its starts and resumes, the live run
  m1_sft/      stage `sft`: data.jsonl, train/ (orbax checkpoints, metrics.jsonl, params/), DONE
  iter_<t>/    trains M_{t+1} from M_t, t = 1 .. config.iterations
    <stage>/     one folder per entry of config.stages, in order (stages/<name>.py says what
                 each writes); shards/ for the sharded ones
    timings/DONE seconds per stage
    report.json, report.md, *.png

Before any compute: the config is validated (validate.py, config.stages included), the seed
data read, one run holds the workdir's LOCK, the config matches the run it resumes, and every
output recorded so far is intact. Shard seeds depend only on the config's seed and the shard
index, so a resumed run writes the same records as one never interrupted.
"""

import dataclasses
import os
import time
from typing import Any, Callable, Optional

from srlm_jax import compiled_programs
from srlm_jax import console as console_lib
from srlm_jax import evaluate as evaluate_lib
from srlm_jax import model_dir
from srlm_jax import report as report_lib
from srlm_jax import validate
from srlm_jax import workdir as workdir_lib
from srlm_jax.pipeline import seeds as seeds_lib
from srlm_jax.pipeline import settings as settings_lib
from srlm_jax.pipeline import stage as stage_lib
from srlm_jax import store

M1_DIR = 'm1_sft'


def default_loader(config) -> Callable[[str], Any]:
  """Returns load_model(name): srlm_jax.load onto the config's mesh, in float32."""
  import srlm_jax  # pylint: disable=g-import-not-at-top
  from srlm_jax import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(*config.mesh)
  return lambda name: srlm_jax.load(name, mesh=mesh, dtype='float32')


class Runner:
  """One self-rewarding run in a work directory: `run()` does (or resumes) everything."""

  def __init__(self, config, workdir: str, *, load_model: Callable[[str], Any],
               progress: bool = True, seeds: Optional[dict] = None):
    """`seeds` replaces config.data's seed records ({'ift', 'eft', 'seed_prompts'})."""
    validate.check_loop_config(config)  # every field and stage, before anything is read
    self.config = config
    self.workdir = workdir
    self.stages = [stage_lib.get(entry) for entry in config.stages]
    # validated before any compute
    self.seeds = seeds if seeds is not None else seeds_lib.read_seed_data(config)
    validate.check_few_shot(config, len(self.seeds['seed_prompts']),
                            'the seed prompts' if seeds is not None else
                            seeds_lib.data_path(config.data.ift))
    self.eval_groups = (evaluate_lib.load_judge_groups(seeds_lib.data_path(config.eval.pairs),
                                                       config.eval.max_pairs or None)
                        if config.eval.pairs else [])
    self.settings = settings_lib.from_config(config)
    self.models = stage_lib.Models(config, load_model, self.settings)
    # Prints (process 0, when progress is on) and logs each stage to TensorBoard / W&B; the
    # stages take its stage bars as their `progress` (see console.progress_bar).
    self.console = console_lib.Console(config, workdir, enabled=progress)
    self.progress = self.console.progress

  def run(self) -> list:
    """Runs or resumes M1 SFT and every iteration; returns each iteration's report."""
    os.makedirs(self.workdir, exist_ok=True)
    # Before any compute: one live run per workdir, the same config as the run it resumes
    # (or the recorded override), and every output recorded so far intact.
    held = workdir_lib.lock(self.workdir)
    try:
      workdir_lib.check_config(self.workdir, self.config,
                               self.config.get('allow_config_change', False))
      workdir_lib.verify_workdir(self.workdir)
      self.console.start(len(self.seeds['ift']), len(self.seeds['eft']))
      params_dir = self.sft_m1()
      reports = []
      for t in range(1, self.config.iterations + 1):
        ctx = self.context(t, params_dir)
        reports.append(self.iteration(ctx))
        params_dir = ctx.params_after()
        decision = ctx.info('guard')  # the guard stage's (stages/guard.py), if it ran
        if decision.get('stop'):
          break
        if 'rollback_to' in decision:  # the best model kept so far ('' is M0)
          params_dir = (os.path.join(self.workdir, decision['rollback_to'])
                        if decision['rollback_to'] else None)
      self.console.finish(reports)
      return reports
    finally:
      self.console.close()
      if held:
        held.release()

  def context(self, t: int, params_dir: Optional[str]) -> stage_lib.Context:
    """Returns iteration t's Context (t = 0: M1's SFT in the workdir itself)."""
    return stage_lib.Context(
        config=self.config, t=t,
        iter_dir=os.path.join(self.workdir, f'iter_{t}') if t else self.workdir,
        settings=dataclasses.replace(self.settings, seed=self.settings.seed + 1000 * t),
        seeds=seeds_lib.with_human_eft(self.seeds, self.config, self.workdir, t),
        progress=self.progress, models=self.models, params_dir=params_dir,
        eval_groups=self.eval_groups)

  def sft_m1(self) -> Optional[str]:
    """Returns M1's params dir after SFT on IFT + EFT (None when config.sft.enabled is off)."""
    if not self.config.sft.enabled:
      return None
    ctx, stage = self.context(0, None), stage_lib.get('sft')
    ctx.settings = self.settings
    if self.config.data.get('eft_source', 'given') == 'model':  # the judge writes M1's EFT
      eft_dir = os.path.join(self.workdir, seeds_lib.EFT_DIR)
      self.run_stage(ctx, seeds_lib.EFT_STAGE, eft_dir, {})
      self.seeds['eft'] = seeds_lib.model_eft(eft_dir)
    out_dir = os.path.join(self.workdir, M1_DIR)
    self.run_stage(ctx, stage, out_dir, {})
    return os.path.join(out_dir, stage.params)

  def iteration(self, ctx: stage_lib.Context) -> dict:
    """Runs (or resumes) iteration ctx.t, M_t -> M_{t+1}; returns its report."""
    timings = {k: v for k, v in store.done_info(os.path.join(ctx.iter_dir, 'timings')).items()
               if k != 'outputs'}
    for stage in self.stages:
      self.run_stage(ctx, stage, os.path.join(ctx.iter_dir, stage.name), timings)
    return report_lib.write_report(ctx.iter_dir, ctx.t, timings)

  def run_stage(self, ctx: stage_lib.Context, stage: stage_lib.Stage, out_dir: str,
                timings: dict) -> None:
    """Runs one stage in out_dir unless its DONE is there; records its seconds in timings."""
    if store.is_done(out_dir):
      self.console.stage_skipped(ctx.t, stage.name, out_dir)
    else:
      os.makedirs(out_dir, exist_ok=True)
      self.console.stage_start(ctx.t, stage.name, out_dir)
      start = time.perf_counter()
      info = stage.run(ctx, out_dir) or {}
      if stage.params and os.path.isdir(os.path.join(out_dir, stage.params)):
        # M_{t+1} usable on its own: config and tokenizer beside its params (model_dir.py)
        base = self.models.specs.get(self.config.model) or self.models.base(training=True)
        model_dir.write(os.path.join(out_dir, stage.params), base, base=self.config.model)
      stage_lib.crash_point(os.path.basename(out_dir))  # its work done, DONE not yet written
      seconds = round(time.perf_counter() - start, 2)
      store.mark_done(out_dir, info)
      if ctx.t:
        timings[stage.name] = seconds
        store.mark_done(os.path.join(ctx.iter_dir, 'timings'), timings)
      self.console.stage_end(ctx.t, stage.name, out_dir, info, seconds)
      compiled_programs.release_if_crowded()  # a long run must not reach the kernel's map limit
    if stage.params:  # also after a kill between DONE and the pruning
      _prune_done(os.path.dirname(os.path.join(out_dir, stage.params)),
                  self.config[stage.name] if stage.name in self.config else None)


def _prune_done(train_dir: str, cfg) -> None:
  """Deletes a finished training stage's checkpoints but its newest cfg.keep_after_done."""
  # DONE and the params/ export replace them: a finished stage never resumes, and its
  # checkpoints (params plus two optimizer moments) are three times the size of params/.
  from srlm_jax import checkpoint  # pylint: disable=g-import-not-at-top
  if cfg is not None and os.path.isdir(os.path.join(train_dir, 'params')):
    checkpoint.prune(os.path.join(train_dir, 'checkpoints'), cfg.keep_after_done)
