"""The self-rewarding loop: M0 -SFT(IFT+EFT)-> M1 -AIFT-> M2 -AIFT-> M3 ..., resumable.

Work directory layout (every stage writes under its own folder, then marks itself complete
by atomically writing DONE; a stage with DONE is never run again):

  config.json                         the run's config; a resume with another one is refused
                                      (allow_config_change: recorded in history.jsonl)
  history.jsonl, LOCK                 starts, resumes, config changes; the live run (workdir.py)
  m1_sft/      data.jsonl, train/ (orbax checkpoints, metrics.jsonl, params/), DONE
  iter_<t>/    trains M_{t+1} from M_t, t = 1 .. config.iterations
    prompts/     shards/NNNNN.jsonl (raw few-shot completions), prompts.jsonl, rejected.jsonl
    candidates/  shards/NNNNN.jsonl, candidates.jsonl
    judgments/   shards/NNNNN.jsonl, judgments.jsonl
    pairs/       pairs.jsonl, decisions.jsonl
    ref_logps/   ref_logps.npz (M_t's log-probs of every chosen and rejected response)
    dpo/         orbax checkpoints, metrics.jsonl, params/ (M_{t+1})
    eval/        eval.json: response lengths; with config.eval.pairs, M_{t+1}'s judge agreement
                 with those human pairs (judgments.jsonl holds its judgments, resumable)
    report.json, report.md, *.png

The sampling stages run in shards of `config.shard_size` prompts, each written atomically, so
a killed run resumes at its first missing shard; DPO and SFT resume from their last orbax
checkpoint. Each DONE (and each shard's NNNNN.json) records its files' record counts and sha256,
checked when the run starts and when a later stage reads them. Shard seeds depend only on the
config's seed and the shard index, so a resumed run writes the same records as one never
interrupted. One run at a time holds the workdir's LOCK; the config is validated (validate.py)
before anything is read or loaded.
"""

import dataclasses
import json
import logging
import os
import signal
import time
from typing import Any, Callable, Optional

import numpy as np

from srlm_jax import checkpoint
from srlm_jax import console as console_lib
from srlm_jax import creation
from srlm_jax import data as data_lib
from srlm_jax import data_io
from srlm_jax import distributed
from srlm_jax import evaluate as evaluate_lib
from srlm_jax import judge
from srlm_jax import report as report_lib
from srlm_jax import train
from srlm_jax import validate
from srlm_jax import workdir as workdir_lib

EMBEDDED = os.path.join(os.path.dirname(__file__), 'data')
STAGES = ('prompts', 'candidates', 'judgments', 'pairs', 'ref_logps', 'dpo', 'eval')
# Crash testing: the process SIGKILLs itself on reaching the named point, '<stage>' (its work
# done, DONE not yet written), '<stage>:shard' (its first shard written) or 'sft:checkpoint' /
# 'dpo:checkpoint' (inside training, its first checkpoint written; see train.KILL_AT_ENV).
# Resumption tests use it to kill a run inside each stage in turn.
KILL_AT_ENV = train.KILL_AT_ENV


def _crash_point(name: str) -> None:
  if os.environ.get(KILL_AT_ENV) == name:
    os.kill(os.getpid(), signal.SIGKILL)


def data_path(path: str) -> str:
  """Returns path, with 'embedded:<name>' resolved to the package's own seed data."""
  if path.startswith('embedded:'):
    return os.path.join(EMBEDDED, path.split(':', 1)[1])
  return path


# --- stage bookkeeping ---------------------------------------------------------------------

def exists(path: str) -> bool:
  """Returns os.path.exists(path), the same answer on every process of a multi-host run.

  Every process looks before any may go on (a barrier), so none sees a file that process 0
  wrote after the others looked and takes a different branch.
  """
  found = os.path.exists(path)
  distributed.barrier(f'exists {path}')
  return found


def is_done(stage_dir: str) -> bool:
  """Returns whether the stage in stage_dir has completed."""
  return exists(os.path.join(stage_dir, 'DONE'))


def mark_done(stage_dir: str, info: Optional[dict] = None) -> None:
  """Marks the stage complete, atomically (a temp file renamed to DONE); process 0 writes it.

  DONE holds info plus `outputs`: the record count and sha256 of each record file at the top
  of stage_dir, which `read_records` and the next run's start check.
  """
  if distributed.is_writer():
    os.makedirs(stage_dir, exist_ok=True)
    tmp = os.path.join(stage_dir, f'.DONE.tmp.{os.getpid()}')
    with open(tmp, 'w', encoding='utf-8') as f:
      json.dump({**(info or {}), 'outputs': workdir_lib.stage_outputs(stage_dir)}, f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, os.path.join(stage_dir, 'DONE'))
  distributed.barrier(f'done {stage_dir}')


def read_records(path: str) -> list:
  """Returns the JSON objects of a JSONL file the loop wrote (empty file: no records).

  A file its stage's DONE records is checked against its digest first; a truncated or edited
  file, like a malformed line, is an error naming it.
  """
  workdir_lib.verify_output(path)
  return [obj for _, _, obj in data_io.read_jsonl(path, allow_empty=True)]


def sharded(stage_dir: str, items: list, shard_size: int, fn: Callable[[list, int], list],
            desc: str) -> list:
  """Returns fn applied shard by shard over items; finished shards are read back, not redone."""
  shard_dir = os.path.join(stage_dir, 'shards')
  os.makedirs(shard_dir, exist_ok=True)
  out = []
  n_shards = max(1, -(-len(items) // shard_size))
  for s in range(n_shards):
    path = os.path.join(shard_dir, f'{s:05d}.jsonl')
    sidecar = workdir_lib.shard_sidecar(path)
    # A shard without its digest was cut off before it was recorded: written again (its seed
    # depends only on its index, so the records are the same).
    if not exists(sidecar):
      logging.info('%s: shard %d/%d', desc, s + 1, n_shards)
      creation.write_jsonl(path, fn(items[s * shard_size:(s + 1) * shard_size], s))
      if distributed.is_writer():
        _write_json(sidecar, workdir_lib.file_digest(path))
      distributed.barrier(f'digest {sidecar}')
      _crash_point(f'{desc}:shard')
    workdir_lib.verify_file(path, workdir_lib.read_json(sidecar), sidecar)
    out.extend(read_records(path))
  return out


# --- the loop --------------------------------------------------------------------------------

def read_seed_data(config) -> dict:
  """Returns the validated seed records; any bad line raises naming its file and line."""
  ift = [(data_io.text_field(r, 'prompt'), data_io.text_field(r, 'response'))
         for r in data_lib.read_source(data_path(config.data.ift))]
  eft = []
  for r in data_lib.read_source(data_path(config.data.eft)):
    path, line, obj = r
    judgment = data_io.text_field(r, 'judgment')
    if judge.parse_score_host(judgment) is None:
      raise ValueError(f'{path}:{line}: EFT judgment has no final "Score: X" verdict')
    eft.append((data_io.text_field(r, 'prompt'), data_io.text_field(r, 'response'), judgment))
  if config.data.max_ift:
    ift = ift[:config.data.max_ift]
  if config.data.max_eft:
    eft = eft[:config.data.max_eft]
  return {'ift': ift, 'eft': eft, 'seed_prompts': [p for p, _ in ift]}


def default_loader(config) -> Callable[[str], Any]:
  """Returns load_model(name): srlm_jax.load onto the config's mesh, in float32."""
  import srlm_jax  # pylint: disable=g-import-not-at-top
  from srlm_jax import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(*config.mesh)
  return lambda name: srlm_jax.load(name, mesh=mesh, dtype='float32')


class Loop:
  """One self-rewarding run in a work directory: `run()` does (or resumes) everything."""

  def __init__(self, config, workdir: str, *, load_model: Callable[[str], Any],
               progress: bool = True):
    validate.check_loop_config(config)  # every field, before anything is read or loaded
    self.config = config
    self.workdir = workdir
    self.load_model = load_model
    self.progress = progress
    self.seeds = read_seed_data(config)  # validated before any compute
    validate.check_few_shot(config, len(self.seeds['seed_prompts']), data_path(config.data.ift))
    self.eval_groups = (evaluate_lib.load_judge_groups(config.eval.pairs,
                                                       config.eval.max_pairs or None)
                        if config.eval.pairs else [])
    self.settings = creation_settings(config)
    # Prints (process 0, when progress is on) and logs each stage to TensorBoard / W&B; the
    # stages take its stage bars as their `progress` (see console.progress_bar).
    self.console = console_lib.Console(config, workdir, enabled=progress)
    self.progress = self.console.progress
    self._base = None

  def base(self):
    """Returns M0 (config, tokenizer, params), loaded once."""
    if self._base is None:
      self._base = self.load_model(self.config.model)
      # The context is known only now; every token limit must leave room for a prompt.
      creation.check_context(self.settings, self._base.config.max_seq_len)
    return self._base

  def model_at(self, params_dir: Optional[str]):
    """Returns M0 with the params saved in params_dir (None: M0 itself)."""
    base = self.base()
    if params_dir is None:
      return base
    mesh = getattr(base, 'mesh', None)
    return _with_params(base, checkpoint.load_params(params_dir, mesh))

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
        reports.append(self.iteration(t, params_dir))
        params_dir = self.params_after(t, params_dir)
      self.console.finish(reports)
      return reports
    finally:
      self.console.close()
      if held:
        held.release()

  # --- M1 ------------------------------------------------------------------------------------

  def sft_m1(self) -> Optional[str]:
    """Returns M1's params dir after SFT on IFT + EFT (None when config.sft.enabled is off)."""
    if not self.config.sft.enabled:
      return None
    stage = os.path.join(self.workdir, 'm1_sft')
    params_dir = os.path.join(stage, 'train', 'params')
    if is_done(stage):
      self.console.stage_skipped(0, 'sft', stage)
      _prune_done(os.path.join(stage, 'train'), self.config.sft)  # if a kill came before
      return params_dir
    self.console.stage_start(0, 'sft', stage)
    start = time.perf_counter()
    records = [{'prompt': p, 'response': r} for p, r in self.seeds['ift']]
    records += [{'prompt': judge.judge_prompt(p, r, self.settings.judge.template),
                 'response': _eft_target(j, self.config.data.eft_target)}
                for p, r, j in self.seeds['eft']]
    data = creation.write_jsonl(os.path.join(stage, 'data.jsonl'), records)
    cfg = _train_config(self.config.sft, train_data=data, mesh=self.config.mesh)
    train.run_sft(cfg, os.path.join(stage, 'train'), model=self.base(), progress=self.progress)
    _crash_point('m1_sft')
    mark_done(stage, {'examples': len(records)})
    _prune_done(os.path.join(stage, 'train'), self.config.sft)
    self.console.stage_end(0, 'sft', stage, {'examples': len(records)},
                           time.perf_counter() - start)
    return params_dir

  # --- one iteration ------------------------------------------------------------------------

  def params_after(self, t: int, params_dir: Optional[str]) -> Optional[str]:
    """Returns M_{t+1}'s params dir (M_t's when iteration t made no pairs to train on)."""
    dpo_dir = os.path.join(self.workdir, f'iter_{t}', 'dpo')
    info = _done_info(dpo_dir)
    return params_dir if info.get('skipped') else os.path.join(dpo_dir, 'params')

  def iteration(self, t: int, params_dir: Optional[str]) -> dict:
    """Runs (or resumes) iteration t, M_t -> M_{t+1}; returns its report."""
    d = os.path.join(self.workdir, f'iter_{t}')
    settings = dataclasses.replace(self.settings, seed=self.settings.seed + 1000 * t)
    model = self.model_at(params_dir)
    timings = {k: v for k, v in _done_info(os.path.join(d, 'timings')).items()
               if k != 'outputs'}
    cfg = self.config

    def stage(name, fn):
      path = os.path.join(d, name)
      if not is_done(path):
        os.makedirs(path, exist_ok=True)
        self.console.stage_start(t, name, path)
        start = time.perf_counter()
        info = fn(path) or {}
        _crash_point(name)
        timings[name] = round(time.perf_counter() - start, 2)
        mark_done(path, info)
        mark_done(os.path.join(d, 'timings'), timings)
        self.console.stage_end(t, name, path, info, timings[name])
      else:
        self.console.stage_skipped(t, name, path)
      return path

    def prompts(path):
      generator = model if not cfg.prompt_generator else self.load_model(cfg.prompt_generator)
      seeds = self.seeds['seed_prompts']
      raw = sharded(path, list(range(settings.num_requests)), cfg.shard_size,
                    lambda ids, s: creation.raw_prompts(generator, seeds, settings, ids[0],
                                                        len(ids), progress=self.progress),
                    'prompts')
      kept, rejected = creation.select_prompts(raw, seeds, settings)
      creation.write_jsonl(os.path.join(path, 'prompts.jsonl'), kept)
      creation.write_jsonl(os.path.join(path, 'rejected.jsonl'), rejected)
      return {'kept': len(kept), 'rejected': len(rejected)}

    def candidates(path):
      kept = read_records(os.path.join(d, 'prompts', 'prompts.jsonl'))
      out = sharded(path, kept, cfg.shard_size,
                    lambda rs, s: creation.candidates(model, rs, settings, shard=s,
                                                      progress=self.progress), 'candidates')
      creation.write_jsonl(os.path.join(path, 'candidates.jsonl'), out)

    parser = None

    def judgments(path):
      nonlocal parser
      parser = parser or judge.make_score_parser(model.tokenizer)
      cands = read_records(os.path.join(d, 'candidates', 'candidates.jsonl'))
      out = sharded(path, cands, cfg.shard_size,
                    lambda rs, s: creation.judge_candidates(model, rs, settings, parser=parser,
                                                            shard=s, progress=self.progress),
                    'judgments')
      creation.write_jsonl(os.path.join(path, 'judgments.jsonl'), out)
      return creation.judgment_stats(out)  # valid fraction, ties, variances: in DONE

    def pairs(path):
      cands = read_records(os.path.join(d, 'candidates', 'candidates.jsonl'))
      judged = read_records(os.path.join(d, 'judgments', 'judgments.jsonl'))
      pair_records, decisions = creation.make_pairs(cands, judged, settings)
      creation.write_jsonl(os.path.join(path, 'pairs.jsonl'), pair_records)
      creation.write_jsonl(os.path.join(path, 'decisions.jsonl'), decisions)
      return {'pairs': len(pair_records)}

    def ref_logps(path):
      pairs_path = os.path.join(d, 'pairs', 'pairs.jsonl')
      if not read_records(pairs_path):
        return {'skipped': True}
      dpo_cfg = _train_config(cfg.dpo, train_data=pairs_path, mesh=cfg.mesh)
      logps = train.reference_logps(dpo_cfg, model)
      if distributed.is_writer():  # read back after the stage's DONE (a barrier)
        tmp = os.path.join(path, 'ref_logps.tmp.npz')
        np.savez(tmp, **logps)
        os.replace(tmp, os.path.join(path, 'ref_logps.npz'))
      return {'pairs': int(len(logps['ref_chosen_logps']))}

    def dpo(path):
      pairs_path = os.path.join(d, 'pairs', 'pairs.jsonl')
      if _done_info(os.path.join(d, 'ref_logps')).get('skipped'):
        logging.warning('iteration %d made no preference pairs: M_%d = M_%d', t, t + 1, t)
        return {'skipped': True}
      workdir_lib.verify_output(os.path.join(d, 'ref_logps', 'ref_logps.npz'))
      with np.load(os.path.join(d, 'ref_logps', 'ref_logps.npz')) as f:
        ref = {k: f[k] for k in f.files}
      dpo_cfg = _train_config(cfg.dpo, train_data=pairs_path, mesh=cfg.mesh)
      state = train.run_dpo(dpo_cfg, path, model=model, ref_logps=ref,
                            progress=self.progress)
      del state
      return {'skipped': False}

    def evaluate(path):
      result = {'lengths': report_lib.response_lengths(
          read_records(os.path.join(d, 'pairs', 'pairs.jsonl')),
          read_records(os.path.join(d, 'candidates', 'candidates.jsonl')))}
      if self.eval_groups:  # M_{t+1} judges the human pairs
        judged = self.model_at(self.params_after(t, params_dir))
        metrics, _ = evaluate_lib.evaluate_judge(
            judged, self.eval_groups, dataclasses.replace(settings.judge, k=cfg.eval.k),
            seed=settings.seed, progress=self.progress,
            cache_path=os.path.join(path, 'judgments.jsonl'))
        result['judge_agreement'] = {'model': f'M{t + 1}', 'pairs_file': cfg.eval.pairs,
                                     **metrics}
      if distributed.is_writer():
        with open(os.path.join(path, 'eval.json'), 'w', encoding='utf-8') as f:
          json.dump(result, f, indent=2)

    for name, fn in zip(STAGES, (prompts, candidates, judgments, pairs, ref_logps, dpo,
                                 evaluate)):
      stage(name, fn)
    _prune_done(os.path.join(d, 'dpo'), cfg.dpo)
    return report_lib.write_report(d, t, timings)


# --- helpers -------------------------------------------------------------------------------------

def _eft_target(judgment: str, kind: str) -> str:
  """Returns the SFT target of an EFT example: the whole judgment or only its verdict line."""
  if kind == 'judgment':
    return judgment
  if kind == 'score_only':
    return f'Score: {judge.parse_score_host(judgment):g}'
  raise ValueError(f'data.eft_target={kind!r}: expected judgment or score_only')


def _prune_done(train_dir: str, cfg) -> None:
  """Deletes a finished training stage's checkpoints but its newest cfg.keep_after_done."""
  # DONE and the params/ export replace them: a finished stage never resumes, and its
  # checkpoints (params plus two optimizer moments) are three times the size of params/.
  if os.path.isdir(os.path.join(train_dir, 'params')):
    checkpoint.prune(os.path.join(train_dir, 'checkpoints'), cfg.keep_after_done)


def _done_info(stage_dir: str) -> dict:
  path = os.path.join(stage_dir, 'DONE')
  if not os.path.exists(path):
    return {}
  return workdir_lib.read_json(path)  # a truncated DONE is an error naming it


def _write_json(path: str, obj) -> None:
  tmp = f'{path}.tmp.{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(obj, f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _with_params(model, params):
  if dataclasses.is_dataclass(model):
    return dataclasses.replace(model, params=params)
  import types  # pylint: disable=g-import-not-at-top
  return types.SimpleNamespace(**{**vars(model), 'params': params})


def _train_config(cfg, **overrides):
  cfg = cfg.copy_and_resolve_references()
  with cfg.unlocked():
    for key, value in overrides.items():
      cfg[key] = value
  return cfg


def creation_settings(config) -> creation.CreationSettings:
  """Returns the CreationSettings described by the loop config's `creation` block."""
  c = config.creation
  return creation.CreationSettings(
      num_requests=c.num_requests, few_shot=c.few_shot,
      prompt_temperature=c.prompt_temperature, prompt_top_p=c.prompt_top_p,
      prompt_max_new_tokens=c.prompt_max_new_tokens,
      filters=creation.instructions.FilterConfig(
          min_words=c.filters.min_words, max_words=c.filters.max_words,
          max_chars=c.filters.max_chars, near_duplicate=c.filters.near_duplicate,
          require_instruction=c.filters.require_instruction),
      n_candidates=c.n_candidates, temperature=c.temperature, top_p=c.top_p,
      max_new_tokens=c.max_new_tokens,
      judge=judge.JudgeSettings(k=c.judge.k, temperature=c.judge.temperature,
                                top_p=c.judge.top_p, max_new_tokens=c.judge.max_new_tokens,
                                template=judge.get_template(c.judge.template),
                                verdict=c.judge.verdict, verdict_prefix=c.judge.verdict_prefix),
      min_gap=c.min_gap, length_margin=c.length_margin or None, seed=config.seed,
      truncate_prompts=c.truncate_prompts)

