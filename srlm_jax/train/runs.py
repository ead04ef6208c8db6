"""Whole training runs from a config (what launch/sft.py, launch/dpo.py and the loop call).

`run_sft` tokenises cfg.train_data; `run_dpo` trains on cfg.train_data against a reference
policy whose log-probs it scores once (or per batch: 'online'), or on a given preference
dataset (`dataset=`: token ids and reference log-probs already on hand, e.g. from the
rollout that sampled them), in which case no reference model is ever loaded.
"""

import functools
import os
import types
from typing import Optional

import jax
import numpy as np

from srlm_jax import checkpoint, data_io, sharding, validate
from srlm_jax.train import features, reference, state as state_lib, steps
from srlm_jax.train.device_data import DeviceBatches
from srlm_jax.train.host_loop import train_loop


def _setup(cfg, model):
  """Returns (model, mesh, compute config, owned): cfg.model loaded unless given,
  cfg.init_params in; owned when this run loaded the params itself (no one else holds them)."""
  mesh = sharding.make_mesh(*cfg.mesh)
  owned = model is None
  if model is None:
    import srlm_jax  # pylint: disable=g-import-not-at-top
    model = srlm_jax.load(cfg.model, mesh=mesh, dtype='float32')
  if cfg.init_params:  # e.g. the previous stage's workdir/params
    model = types.SimpleNamespace(config=model.config, tokenizer=model.tokenizer,
                                  params=checkpoint.load_params(cfg.init_params, mesh))
    owned = True
  n = mesh.shape['data'] * mesh.shape['fsdp']
  if cfg.batch_size % cfg.grad_accum or (cfg.batch_size // cfg.grad_accum) % n:
    raise ValueError(f'batch_size={cfg.batch_size} must split into grad_accum={cfg.grad_accum} '
                     f'micro-batches whose size divides by the {n} data-parallel devices')
  return model, mesh, model.config.replace(dtype=cfg.dtype, remat=cfg.remat,
                                          unroll_layers=cfg.unroll_layers), owned


def _host_batches(cfg, mesh, dataset):
  """Returns get_batch(i): batch i of a host dataset, trimmed, with its loss positions."""
  def get_batch(i):
    batch = data_io.trim_batch(data_io.batch_at(dataset, i, cfg.batch_size, cfg.seed),
                               cfg.max_len)
    if cfg.head_at_loss_positions:
      batch = features.add_loss_positions(batch, mesh.shape['data'] * mesh.shape['fsdp'],
                                          cfg.grad_accum)
    return batch
  return get_batch


def _run(cfg, workdir, params, mesh, step_fn, get_batch, num_steps, optimizer, *,
         donate: bool = False, **kwargs):
  """Returns the final state of train_loop from params (donated into it when `donate`)."""
  init_fn, shardings = state_lib.make_init(params, optimizer, mesh, donate=donate)
  on_resume = functools.partial(state_lib.release, params) if donate else None
  del params  # with `donate`, the state holds the only copy from here on
  state = train_loop(
      step_fn, init_fn, get_batch,
      num_steps, workdir=workdir, mesh=mesh, shardings=shardings, rng=jax.random.key(cfg.seed),
      checkpoint_every=cfg.checkpoint_every, keep=cfg.keep, log_every=cfg.log_every,
      eval_every=cfg.eval_every, on_resume=on_resume, **kwargs)
  if cfg.export_params:
    checkpoint.save_params(os.path.join(workdir, 'params'), state.params)
  # The run is complete: its earlier checkpoints are not needed to resume (the loop prunes
  # further, to cfg.keep_after_done, once its stage is DONE).
  checkpoint.prune(os.path.join(workdir, 'checkpoints'), max(1, cfg.keep_after_done))
  return state


def _num_steps(cfg, n: int) -> int:
  return cfg.num_steps or max(1, int(cfg.num_epochs * n) // cfg.batch_size)


def run_sft(cfg, workdir: str, model=None, progress: bool = True) -> state_lib.TrainState:
  """Fine-tunes cfg.model (or `model`: .config, .params, .tokenizer) on cfg.train_data."""
  validate.check_train_config(cfg, 'sft')  # every field, before the model loads
  model, mesh, mc, owned = _setup(cfg, model)
  load = functools.partial(data_io.load_sft, tokenizer=model.tokenizer, max_len=cfg.max_len,
                           chat_template=cfg.chat_template)
  dataset = load(cfg.train_data)
  num_steps = _num_steps(cfg, data_io.num_examples(dataset))
  optimizer = state_lib.make_optimizer(cfg, num_steps)
  step_fn = steps.make_sft_step(mc, optimizer, state_lib.lr_schedule(cfg, num_steps),
                                cfg.grad_accum)
  eval_fn = None
  if cfg.eval_data:
    eval_fn = reference.sft_eval(mc, load(cfg.eval_data), cfg.batch_size, mesh)
  return _run(cfg, workdir, model.params, mesh, step_fn, _host_batches(cfg, mesh, dataset),
              num_steps, optimizer, donate=owned, eval_fn=eval_fn, progress=progress,
              label='sft')


def _dpo_data(cfg, model, path):
  return data_io.load_dpo(path, model.tokenizer, cfg.max_len, cfg.chat_template)


def reference_logps(cfg, model=None) -> dict:
  """Returns {'ref_chosen_logps', 'ref_rejected_logps'} [N]: cfg.train_data under the model."""
  model, mesh, mc, _ = _setup(cfg, model)
  scored = reference.compute_ref_logps(mc, model.params, _dpo_data(cfg, model, cfg.train_data),
                                       cfg.batch_size, mesh)
  return {k: scored[k] for k in ('ref_chosen_logps', 'ref_rejected_logps')}


def _check_given_dataset(cfg, ref_params, ref_logps) -> None:
  """Raises ValueError when a run on a given dataset is also asked for a reference model."""
  clash = [name for name, v in (('ref_params', ref_params is not None),
                                ('ref_logps', ref_logps is not None),
                                ("config.reference='online'", cfg.reference == 'online'),
                                (f'config.eval_data={cfg.eval_data!r}', bool(cfg.eval_data)))
           if v]
  if clash:
    raise ValueError(f'run_dpo(dataset=...): the dataset carries its reference log-probs and '
                     f'no reference model is loaded, so {", ".join(clash)} cannot apply')


def run_dpo(cfg, workdir: str, model=None, ref_params=None, ref_logps=None,
            progress: bool = True, dataset: Optional[dict] = None,
            donate: bool = False) -> state_lib.TrainState:
  """Trains cfg.model (or `model`) with DPO against a frozen reference; returns the state.

  Without `dataset`, it trains on cfg.train_data (tokenised here). The reference is
  ref_params, else cfg.ref_params / cfg.ref_model, else the starting policy; `ref_logps`
  (from `reference_logps`, e.g. saved by an earlier stage) skips scoring the pairs with it.
  With `dataset` (a preference dataset dict of numpy or device arrays: see
  train/device_data.py), it trains on those token ids against the dataset's reference
  log-probs; cfg.train_data is unused and no reference model is loaded.
  `donate`: `model`'s params become the trained state's (they are deleted from `model`), so
  the device holds one copy of the policy; params this run loads itself (cfg.model,
  cfg.init_params) are always donated.
  """
  validate.check_train_config(cfg, 'dpo')  # every field, before the model loads
  if cfg.reference not in ('precomputed', 'online', 'none'):
    raise ValueError(f'reference={cfg.reference!r}: expected precomputed, online or none')
  if dataset is not None:
    _check_given_dataset(cfg, ref_params, ref_logps)
  model, mesh, mc, owned = _setup(cfg, model)
  options = cfg.loss_options.to_dict()
  eval_fn = prepare = None
  if dataset is not None:
    get_batch = DeviceBatches(dataset, mesh, cfg.batch_size, cfg.seed, grad_accum=cfg.grad_accum,
                              loss_positions=cfg.head_at_loss_positions,
                              with_ref=cfg.reference != 'none')
    n = get_batch.n
  else:
    if cfg.reference != 'none' and ref_params is None:
      if cfg.ref_params:
        ref_params = checkpoint.load_params(cfg.ref_params, mesh)
      elif cfg.ref_model:
        import srlm_jax  # pylint: disable=g-import-not-at-top
        ref_params = srlm_jax.load(cfg.ref_model, mesh=mesh).params
      else:
        ref_params = model.params  # the policy's starting point, as in the paper
    if cfg.reference == 'none':  # reference-free losses (simpo): zero log-probs
      score = reference.zero_ref_logps
    else:
      ref_params = jax.device_put(ref_params, sharding.param_shardings(mesh, ref_params))
      score = functools.partial(reference.compute_ref_logps, mc, ref_params,
                                batch_size=cfg.batch_size, mesh=mesh)
    train_data = _dpo_data(cfg, model, cfg.train_data)
    if cfg.reference == 'online':
      prepare = reference.make_online_ref(mc, ref_params, mesh)
      owned = donate = False  # the starting policy may be the reference the loop scores with
    elif ref_logps is not None:
      n = data_io.num_examples(train_data)
      if any(len(ref_logps[k]) != n for k in ('ref_chosen_logps', 'ref_rejected_logps')):
        raise ValueError(f'ref_logps cover {len(ref_logps["ref_chosen_logps"])} pairs; '
                         f'{cfg.train_data} tokenises to {n}')
      train_data = {**train_data, **{k: np.asarray(v, np.float32) for k, v in ref_logps.items()}}
    else:
      train_data = score(train_data)
    if cfg.eval_data:
      eval_fn = reference.dpo_eval(mc, score(_dpo_data(cfg, model, cfg.eval_data)), cfg.loss,
                                   cfg.beta, options, cfg.batch_size, mesh)
    del score, ref_params  # outside 'online' one model stays in memory from here on
    get_batch, n = _host_batches(cfg, mesh, train_data), data_io.num_examples(train_data)
  num_steps = _num_steps(cfg, n)
  optimizer = state_lib.make_optimizer(cfg, num_steps)
  step_fn = steps.make_dpo_step(mc, optimizer, cfg.loss, cfg.beta, options,
                                state_lib.lr_schedule(cfg, num_steps), cfg.grad_accum)
  params, model = model.params, None  # the state is the policy from here on
  return _run(cfg, workdir, params, mesh, step_fn, get_batch, num_steps, optimizer,
              donate=owned or donate, prepare=prepare, eval_fn=eval_fn, progress=progress,
              label='dpo')
