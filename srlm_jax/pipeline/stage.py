"""The Stage plug-in point: one module per stage, a registry, and the Context a stage runs in.

A stage is one module in srlm_jax/pipeline/stages/ (or anywhere importable) that ends with
`register(Stage(name, run, ...))`. `config.stages` lists the stages each iteration runs, in
order, by name (or by the dotted module path of a stage outside the package); the runner
(runner.py) runs each in `iter_<t>/<name>/` unless its DONE is there, then writes DONE.

`run(ctx, out_dir)` does the work and returns the info DONE records. What it may use, through
the Context: the config and this iteration's settings, the models (M_t, any named model), the
records and arrays of the stages before it, and `ctx.sharded` for work that should resume
shard by shard after a kill.
"""

import dataclasses
import importlib
import os
import signal
from typing import Any, Callable, Optional

from srlm_jax.pipeline import settings as settings_lib
from srlm_jax import store


@dataclasses.dataclass(frozen=True)
class Stage:
  """One step of an iteration: its folder name, what it reads, what it writes, its work."""
  name: str  # folder under iter_<t>/ and its entry in config.stages
  run: Callable[['Context', str], Optional[dict]]  # does the work in out_dir; returns DONE info
  inputs: tuple[str, ...] = ()  # stages whose outputs it reads (earlier in config.stages)
  records: tuple[str, ...] = ()  # the JSONL files it writes at its top level (audit)
  # Where under out_dir a training stage saves M_{t+1}'s params ('' for the others): the
  # next iteration starts from the last such stage that did not record {'skipped': True}.
  params: str = ''


_REGISTRY: dict[str, Stage] = {}
_ENTRIES: dict[str, str] = {}  # config.stages entry (a dotted module path) -> stage name


def register(stage: Stage) -> Stage:
  """Adds a stage to the registry (a name registered twice is an error); returns it."""
  known = _REGISTRY.get(stage.name)
  if known is not None and known.run is not stage.run:
    raise ValueError(f'stage {stage.name!r} is registered twice ({known.run.__module__} and '
                     f'{stage.run.__module__})')
  _REGISTRY[stage.name] = stage
  return stage


def _builtins() -> None:
  importlib.import_module('srlm_jax.pipeline.stages')  # each module registers its stage


def names() -> list[str]:
  """Returns the names of every registered stage (the built-in ones included)."""
  _builtins()
  return sorted(_REGISTRY)


def get(entry: str) -> Stage:
  """Returns the stage a config.stages entry names: a registered name, or a module path.

  Any other entry ('my_package.my_stage') is imported, and the one stage that module registers
  is the entry's stage. Neither: ValueError listing the registered names.
  """
  _builtins()
  if entry in _REGISTRY:
    return _REGISTRY[entry]
  if entry in _ENTRIES:
    return _REGISTRY[_ENTRIES[entry]]
  try:
    module = importlib.import_module(entry)
  except ImportError as e:
    raise ValueError(f'stage {entry!r}: not a registered stage '
                     f'({", ".join(sorted(_REGISTRY))}) nor an importable module that '
                     f'registers one ({e})') from None
  found = [s.name for s in _REGISTRY.values()
           if getattr(s.run, '__module__', None) == module.__name__]
  if len(found) != 1:
    raise ValueError(f'stage {entry!r}: module {module.__name__} registers {len(found)} stages '
                     f'({found}); expected exactly one (register(Stage(...)))')
  _ENTRIES[entry] = found[0]
  return _REGISTRY[found[0]]


def crash_point(name: str) -> None:
  """SIGKILLs this process when SRLM_JAX_KILL_AT names this point (crash testing)."""
  # Points: '<stage>' (its work done, DONE not written), '<stage>:shard' (its first shard
  # written), 'm1_sft', '<training stage>:checkpoint' (train.KILL_AT_ENV, inside training).
  from srlm_jax import train  # pylint: disable=g-import-not-at-top
  if os.environ.get(train.KILL_AT_ENV) == name:
    os.kill(os.getpid(), signal.SIGKILL)


class Models:
  """The run's models, loaded on first use and kept until `release` (one per name and use).

  Training takes the float32 master weights; sampling and judging take a copy in
  config.creation.compute_dtype (llama.for_compute: bf16 on accelerators, float32 on a CPU,
  where the copy is the master itself).
  """

  def __init__(self, config, load_model: Callable[[str], Any],
               settings: settings_lib.CreationSettings):
    self.config = config
    self.load_model = load_model
    self.settings = settings
    self._cache = {}
    # name -> its architecture and tokenizer (no params; kept by release): what a model
    # directory written beside trained params needs (srlm_jax/model_dir.py)
    self.specs = {}

  def _compute(self, key, model):
    if ('compute',) + key not in self._cache:
      from srlm_jax import llama  # pylint: disable=g-import-not-at-top
      config, params = llama.for_compute(model.config, model.params,
                                         self.config.creation.compute_dtype)
      self._cache[('compute',) + key] = _replace(model, config=config, params=params)
    return self._cache[('compute',) + key]

  def load(self, name: str, training: bool = False):
    """Returns the model `name` (config, tokenizer, params), loaded once."""
    if ('name', name) not in self._cache:
      self._cache[('name', name)] = self.load_model(name)
    model = self._cache[('name', name)]
    self.specs.setdefault(name, _spec(model, name))
    return model if training else self._compute(('name', name), model)

  def base(self, training: bool = False):
    """Returns M0 (config.model), its context checked against every token limit."""
    first = ('name', self.config.model) not in self._cache
    model = self.load(self.config.model, training)
    if first:  # the context is known only now; every limit must leave room for a prompt
      settings_lib.check_context(self.settings, model.config.max_seq_len)
    return model

  def at(self, params_dir: Optional[str], training: bool = False):
    """Returns M0 with the params saved in params_dir (None: M0 itself), loaded once."""
    if params_dir is None:
      return self.base(training)
    key = ('params', params_dir)
    if key not in self._cache:
      from srlm_jax import checkpoint  # pylint: disable=g-import-not-at-top
      base = self.base(training=True)
      self._cache[key] = _replace(base, params=checkpoint.load_params(
          params_dir, getattr(base, 'mesh', None)))
    return self._cache[key] if training else self._compute(key, self._cache[key])

  def release(self) -> None:
    """Drops every cached model; its device arrays go once no caller holds them."""
    self._cache.clear()


@dataclasses.dataclass
class Context:
  """What a stage's `run` receives: the run's config, iteration t's settings and models."""
  config: Any
  t: int  # iteration (0: M1's SFT)
  iter_dir: str  # where this iteration's stages write (the workdir for t = 0)
  settings: settings_lib.CreationSettings  # with this iteration's seed
  seeds: dict  # {'ift': [(prompt, response)], 'eft': [(p, r, judgment)], 'seed_prompts'}
  progress: Any  # a stage bar factory (console.progress) or a bool
  models: Models
  params_dir: Optional[str]  # M_t's params (None: M0)
  eval_groups: list = dataclasses.field(default_factory=list)  # human pairs (config.eval)
  published: dict = dataclasses.field(default_factory=dict)  # stage -> arrays, this process

  def model(self, training: bool = False):
    """Returns M_t (cached): in the compute dtype, or its float32 master when training."""
    return self.models.at(self.params_dir, training)

  def load_model(self, name: str, training: bool = False):
    """Returns the model `name` (a path or registered name; cached), as `model` does."""
    return self.models.load(name, training)

  def model_at(self, params_dir: Optional[str], training: bool = False):
    """Returns M0 with the params in params_dir (None: M0 itself; cached), as `model` does."""
    return self.models.at(params_dir, training)

  def release_models(self) -> None:
    """Drops every cached model (a training stage calls it first: only its policy stays)."""
    self.models.release()

  def params_after(self) -> Optional[str]:
    """Returns M_{t+1}'s params dir: the last finished training stage's (else M_t's)."""
    params_dir = self.params_dir
    for entry in self.config.stages:
      stage = get(entry)
      info = self.info(stage.name) if stage.params else {}
      if info and not info.get('skipped'):
        params_dir = os.path.join(self.iter_dir, stage.name, stage.params)
    return params_dir

  def release_arrays(self, keep: tuple[str, ...] = ()) -> None:
    """Drops the published arrays held in memory but those of the stages in keep (a later
    `arrays` call reads them back from their arrays.npz)."""
    for name in [n for n in self.published if n not in keep]:
      del self.published[name]

  def path(self, stage: str, filename: str) -> str:
    """Returns the path of a file an earlier stage of this iteration wrote."""
    return os.path.join(self.iter_dir, stage, filename)

  def records(self, stage: str, filename: str) -> list:
    """Returns the records of an earlier stage's JSONL file, checked against its DONE."""
    return store.read_records(self.path(stage, filename))

  def info(self, stage: str) -> dict:
    """Returns the DONE info of an earlier stage ({} when it has not finished)."""
    return store.done_info(os.path.join(self.iter_dir, stage))

  def sharded(self, out_dir: str, items: list, fn: store.ShardFn, desc: str,
              infos: Optional[list] = None) -> tuple:
    """Returns (records, arrays) of fn over items in config.shard_size shards, resumable;
    `infos` gets each shard's info (store.sharded)."""
    return store.sharded(out_dir, items, self.config.shard_size, fn, desc, crash_point, infos)

  def publish(self, out_dir: str, arrays: dict) -> None:
    """Writes out_dir/arrays.npz (recorded in DONE) and keeps the arrays for later stages."""
    store.save_arrays(os.path.join(out_dir, store.ARRAYS), arrays)
    self.published[os.path.basename(out_dir)] = store.to_device(arrays)

  def arrays(self, stage: str) -> dict:
    """Returns the arrays an earlier stage published, on the device."""
    if stage not in self.published:
      self.published[stage] = store.to_device(store.load_arrays(self.path(stage, store.ARRAYS)))
    return self.published[stage]

  def train_config(self, block: str, **overrides):
    """Returns config[block] (a training config) resolved, with the run's mesh and overrides."""
    cfg = self.config[block].copy_and_resolve_references()
    with cfg.unlocked():
      cfg.mesh = self.config.mesh
      for key, value in overrides.items():
        cfg[key] = value
    return cfg

  crash_point = staticmethod(crash_point)


def _spec(model, name: str):
  import types  # pylint: disable=g-import-not-at-top
  return types.SimpleNamespace(config=model.config, tokenizer=model.tokenizer, path=name)


def _replace(model, **fields):
  if dataclasses.is_dataclass(model):
    return dataclasses.replace(model, **fields)
  import types  # pylint: disable=g-import-not-at-top
  return types.SimpleNamespace(**{**vars(model), **fields})
