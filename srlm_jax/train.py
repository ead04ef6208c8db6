"""Train state, optimizer, the pure SFT and DPO steps, and the host loop that runs them.

Steps are pure functions `step(state, batch, rng) -> (state, metrics)`; `jit_step` compiles one
with explicit in/out shardings and the state donated. One call is one optimizer update:
gradient accumulation runs inside the step as a `lax.scan` over `grad_accum` micro-batches
(rather than optax.MultiSteps), so the step stays pure, `state.step` counts updates, each
checkpoint is at an update boundary, and only one micro-batch's activations are live. SFT
micro-batches are weighted by their share of target tokens, DPO ones equally, so k micro-steps
give the same update as one step on the whole batch.

Params are float32 master weights; the forward computes in the model config's `dtype`
(bfloat16 casts inside each layer) and takes logits in float32. Batches follow data_io's
layout: SFT `{inputs, targets, loss_mask, mask}` [B, T]; DPO `{'chosen': seq, 'rejected': seq,
'ref_chosen_logps', 'ref_rejected_logps'}`. The reference log-probs are computed once per
dataset (`compute_ref_logps`, one model in memory) or per batch from a frozen tree
(`make_online_ref`).
"""

import functools
import json
import logging
import math
import os
import re
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from srlm_jax import checkpoint, data_io, llama, losses, sharding


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array  # int32 scalar: optimizer updates done so far
  params: Any  # float32 master params
  opt_state: Any


# --- optimizer ----------------------------------------------------------------------------------

def lr_schedule(cfg, num_steps: Optional[int] = None) -> optax.Schedule:
  """Returns the schedule: linear warmup to cfg.lr, then cosine/linear/constant to cfg.end_lr."""
  total = num_steps or cfg.num_steps
  warmup, peak, end, kind = cfg.warmup_steps, cfg.lr, cfg.end_lr, cfg.schedule
  if kind not in ('cosine', 'linear', 'constant'):
    raise ValueError(f'schedule={kind!r}: expected cosine, linear or constant')

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * jnp.minimum(1.0, (step + 1) / max(warmup, 1))
    frac = jnp.clip((step - warmup) / max(total - warmup - 1, 1), 0.0, 1.0)
    if kind == 'cosine':
      decay = end + (peak - end) * 0.5 * (1 + jnp.cos(math.pi * frac))
    elif kind == 'linear':
      decay = peak + (end - peak) * frac
    else:
      decay = jnp.asarray(peak, jnp.float32)
    return jnp.where(step < warmup, warm, decay)
  return schedule


def _decay_mask(params):
  """Returns True for the params weight decay applies to (not the norm scales)."""
  return jax.tree_util.tree_map_with_path(lambda p, _: 'norm' not in sharding.path_str(p), params)


def make_optimizer(cfg, num_steps: Optional[int] = None) -> optax.GradientTransformation:
  """Returns AdamW on the config's schedule, after global-norm clipping when clip_norm > 0."""
  adamw = optax.adamw(lr_schedule(cfg, num_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                      weight_decay=cfg.weight_decay, mask=_decay_mask)
  clip = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
  return optax.chain(*clip, adamw)


def state_shardings(state_shapes: TrainState, mesh: Mesh) -> TrainState:
  """Returns the state's shardings: params and their moments by PARAM_RULES, scalars replicated."""
  replicated = NamedSharding(mesh, P())

  def leaf(path, x):
    if not x.shape:
      return replicated
    name = sharding.path_str(path)
    for pattern, spec in sharding.PARAM_RULES:
      if re.search(pattern, name):
        return sharding.sharding_for(mesh, spec, x.shape)
    raise ValueError(f'state leaf {name} (shape {x.shape}) matches no sharding rule')
  return jax.tree_util.tree_map_with_path(leaf, state_shapes)


def make_init(params, optimizer, mesh: Mesh) -> tuple[Callable[[], TrainState], TrainState]:
  """Returns (init_fn, shardings): init_fn() builds the sharded state with float32 params."""
  def init(p):
    p = jax.tree.map(lambda x: x.astype(jnp.float32), p)
    return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p))
  shardings = state_shardings(jax.eval_shape(init, params), mesh)
  jitted = jax.jit(init, out_shardings=shardings)
  return lambda: jitted(jax.device_put(params, sharding.param_shardings(mesh, params))), shardings


# --- losses on a batch --------------------------------------------------------------------------

def sequence_logps(config, params, seq) -> tuple[jax.Array, jax.Array]:
  """Returns float32 [B] summed log-probs of each row's loss_mask targets, and their counts."""
  positions = llama.default_positions(seq['mask'])
  logits, _ = llama.Llama(config).apply({'params': params}, seq['inputs'], positions, seq['mask'])
  return losses.sequence_logps(logits, seq['targets'], seq['loss_mask'])


def pair_logps(config, params, batch):
  """Returns (chosen, rejected) log-probs and counts, both sides in one [2B, T] forward."""
  c, r = batch['chosen'], batch['rejected']
  b = c['inputs'].shape[0]
  # Interleaving (row 2i chosen, 2i+1 rejected) keeps both halves of a pair on one device.
  both = jax.tree.map(lambda x, y: jnp.stack([x, y], 1).reshape(2 * b, *x.shape[1:]), c, r)
  logps, n = sequence_logps(config, params, both)
  logps, n = logps.reshape(b, 2), n.reshape(b, 2)
  return logps[:, 0], logps[:, 1], n[:, 0], n[:, 1]


def sft_loss(params, batch, *, model_config):
  """Returns the token-mean NLL of the response tokens and its metrics."""
  positions = llama.default_positions(batch['mask'])
  logits, _ = llama.Llama(model_config).apply({'params': params}, batch['inputs'], positions,
                                              batch['mask'])
  return losses.sft_loss(logits, batch['targets'], batch['loss_mask'])


def dpo_loss(params, batch, *, model_config, loss_fn, beta, options):
  """Returns the preference loss of the batch's pairs and its metrics."""
  pc, pr, nc, nr = pair_logps(model_config, params, batch)
  return loss_fn(pc, pr, batch['ref_chosen_logps'], batch['ref_rejected_logps'], beta=beta,
                 chosen_lengths=nc, rejected_lengths=nr, **options)


# --- the step -----------------------------------------------------------------------------------

def _micro(x, k):
  """Returns [k*B, ...] as [k, B, ...]; micro-batch i holds rows i, k+i, ... (device-local)."""
  return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)


def _grads(loss_fn, params, batch, k: int, token_weighted: bool):
  """Returns (grads, metrics) of the whole batch, accumulated over k micro-batches by scan."""
  grad_fn = jax.grad(loss_fn, has_aux=True)
  if k == 1:
    return grad_fn(params, batch)
  micro = jax.tree.map(lambda x: _micro(x, k), batch)
  if token_weighted:  # the token-mean over the batch is the token-weighted mean of micro means
    n = micro['loss_mask'].reshape(k, -1).sum(-1).astype(jnp.float32)
    weights = n / jnp.maximum(n.sum(), 1.0)
  else:
    weights = jnp.full((k,), 1.0 / k, jnp.float32)

  def body(acc, xs):
    mb, w = xs
    out = grad_fn(params, mb)
    return jax.tree.map(lambda a, x: a + w * x, acc, out), None
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro)))
  out, _ = jax.lax.scan(body, zeros, (micro, weights))
  return out


def train_step(state: TrainState, batch, rng, *, loss_fn, optimizer, schedule=None,
               grad_accum: int = 1, token_weighted: bool = False):
  """Returns (the state after one optimizer update on batch, its float32 metrics)."""
  del rng  # the Llama has no dropout; kept so every step has the same signature
  grads, metrics = _grads(loss_fn, state.params, batch, grad_accum, token_weighted)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  metrics = {**metrics, 'grad_norm': optax.global_norm(grads)}
  if schedule is not None:
    metrics['lr'] = jnp.asarray(schedule(state.step), jnp.float32)
  params = optax.apply_updates(state.params, updates)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_sft_step(model_config, optimizer, schedule=None, grad_accum: int = 1):
  """Returns the pure SFT step (state, batch, rng) -> (state, metrics)."""
  loss = functools.partial(sft_loss, model_config=model_config)
  return functools.partial(train_step, loss_fn=loss, optimizer=optimizer, schedule=schedule,
                           grad_accum=grad_accum, token_weighted=True)


def make_dpo_step(model_config, optimizer, loss: str = 'sigmoid', beta: float = 0.1,
                  loss_options: Optional[dict] = None, schedule=None, grad_accum: int = 1):
  """Returns the pure DPO step (state, batch, rng) -> (state, metrics) for losses.get(loss)."""
  fn = functools.partial(dpo_loss, model_config=model_config, loss_fn=losses.get(loss),
                         beta=beta, options=dict(loss_options or {}))
  return functools.partial(train_step, loss_fn=fn, optimizer=optimizer, schedule=schedule,
                           grad_accum=grad_accum)


def jit_step(step, mesh: Mesh, shardings: TrainState):
  """Returns step jitted on mesh: state in/out by `shardings` (donated), batch split on BATCH."""
  replicated = NamedSharding(mesh, P())
  jitted = jax.jit(step, in_shardings=(shardings, NamedSharding(mesh, P(sharding.BATCH)),
                                       replicated),
                   out_shardings=(shardings, replicated), donate_argnums=0)

  def call(state, batch, rng):
    with jax.set_mesh(mesh):
      return jitted(state, batch, rng)
  return call


# --- reference log-probs and evaluation ----------------------------------------------------------

def put_batch(mesh: Optional[Mesh], batch):
  """Returns a host batch (any tree) on mesh, each leaf's leading dimension split on BATCH."""
  if mesh is None:
    return jax.tree.map(jnp.asarray, batch)
  return jax.tree.map(lambda x: jax.device_put(x, sharding.batch_sharding(mesh, x.shape)), batch)


@functools.partial(jax.jit, static_argnames='config')
def _jit_logps(config, params, seq):
  return sequence_logps(config, params, seq)


def dataset_logps(config, params, seqs, batch_size: int = 16, mesh: Optional[Mesh] = None):
  """Returns host float32 [N] log-probs and token counts of every row of a sequence dataset."""
  logps, counts = [], []
  with jax.set_mesh(mesh) if mesh is not None else _null():
    for batch, n in data_io.batches_in_order(seqs, batch_size):
      lp, c = jax.device_get(_jit_logps(config, params, put_batch(mesh, batch)))
      logps.append(lp[:n])
      counts.append(c[:n])
  return np.concatenate(logps), np.concatenate(counts)


def _null():
  import contextlib  # pylint: disable=g-import-not-at-top
  return contextlib.nullcontext()


def compute_ref_logps(config, params, dataset, batch_size: int = 16, mesh=None) -> dict:
  """Returns the DPO dataset with 'ref_chosen_logps' / 'ref_rejected_logps' [N] of params."""
  chosen, _ = dataset_logps(config, params, dataset['chosen'], batch_size, mesh)
  rejected, _ = dataset_logps(config, params, dataset['rejected'], batch_size, mesh)
  return {**dataset, 'ref_chosen_logps': chosen, 'ref_rejected_logps': rejected}


def zero_ref_logps(dataset) -> dict:
  """Returns the DPO dataset with zero reference log-probs (reference-free losses: simpo)."""
  n = data_io.num_examples(dataset)
  return {**dataset, 'ref_chosen_logps': np.zeros(n, np.float32),
          'ref_rejected_logps': np.zeros(n, np.float32)}


def make_online_ref(config, ref_params, mesh: Mesh):
  """Returns prepare(batch) adding the frozen ref_params' log-probs to a device batch."""
  @jax.jit
  def add_ref(ref, batch):
    rc, rr, _, _ = pair_logps(config, jax.lax.stop_gradient(ref), batch)
    return {**batch, 'ref_chosen_logps': rc, 'ref_rejected_logps': rr}

  def prepare(batch):
    with jax.set_mesh(mesh):
      return add_ref(ref_params, batch)
  return prepare


def sft_eval(config, dataset, batch_size: int = 16, mesh=None):
  """Returns eval(params) -> {'nll': token-mean NLL of the responses, 'n_tokens'}."""
  def evaluate(params):
    logps, n = dataset_logps(config, params, dataset, batch_size, mesh)
    return {'nll': float(-logps.sum() / max(n.sum(), 1)), 'n_tokens': float(n.sum())}
  return evaluate


def dpo_eval(config, dataset, loss: str, beta: float, loss_options=None, batch_size=16,
             mesh=None):
  """Returns eval(params) -> the loss's metrics over every pair of a ref-scored dataset."""
  def evaluate(params):
    pc, nc = dataset_logps(config, params, dataset['chosen'], batch_size, mesh)
    pr, nr = dataset_logps(config, params, dataset['rejected'], batch_size, mesh)
    _, metrics = losses.get(loss)(
        jnp.asarray(pc), jnp.asarray(pr), jnp.asarray(dataset['ref_chosen_logps']),
        jnp.asarray(dataset['ref_rejected_logps']), beta=beta, chosen_lengths=jnp.asarray(nc),
        rejected_lengths=jnp.asarray(nr), **dict(loss_options or {}))
    return {k: float(v) for k, v in metrics.items()}
  return evaluate
