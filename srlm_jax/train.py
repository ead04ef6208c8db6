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
(`make_online_ref`). `run_sft` / `run_dpo` are whole runs from a config (what launch/ calls).
"""

import contextlib
import functools
import logging
import math
import os
import signal
import types
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from srlm_jax import checkpoint, console, data_io, distributed, llama, losses, sharding
from srlm_jax import validate


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


# Optimizer-state leaves are named after the params they track (mu/layers/..., nu/...), so the
# param rules lay them out too; the only other leaves are scalar counters.
_STATE_RULES = sharding.PARAM_RULES + ((r'(^|/)(step|count)$', P()),)


def state_shardings(state_shapes: TrainState, mesh: Mesh) -> TrainState:
  """Returns the state's shardings: params and their moments by PARAM_RULES, counters replicated."""
  return sharding.param_shardings(mesh, state_shapes, _STATE_RULES)


def make_init(params, optimizer, mesh: Mesh) -> tuple[Callable[[], TrainState], TrainState]:
  """Returns (init_fn, shardings): init_fn() builds the sharded state with float32 params."""
  def init(p):
    p = jax.tree.map(lambda x: x.astype(jnp.float32), p)
    return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p))
  shardings = state_shardings(jax.eval_shape(init, params), mesh)
  jitted = jax.jit(init, out_shardings=shardings)
  return lambda: jitted(jax.device_put(params, sharding.param_shardings(mesh, params))), shardings


# --- losses on a batch --------------------------------------------------------------------------

def _logits(config, params, seq) -> jax.Array:
  """Returns float32 [B, T, V] logits of a right-padded sequence batch."""
  positions = llama.default_positions(seq['mask'])
  return llama.Llama(config).apply({'params': params}, seq['inputs'], positions, seq['mask'])[0]


def _logits_at(config, params, seq, index_GN) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Returns float32 logits [G, N, V], targets [G, N] and valid [G, N] at `loss_positions`.

  index_GN holds flat positions into G equal groups of consecutive rows (-1: an unused slot);
  see `add_loss_positions`. Only these positions go through the output head.
  """
  positions = llama.default_positions(seq['mask'])
  hidden_BTD = llama.Llama(config).apply({'params': params}, seq['inputs'], positions,
                                         seq['mask'], hidden_only=True)[0]
  (b, t, d), g = hidden_BTD.shape, index_GN.shape[0]
  valid_GN = index_GN >= 0
  index_GN = jnp.where(valid_GN, index_GN, 0)
  hidden_GND = jnp.take_along_axis(hidden_BTD.reshape(g, b // g * t, d), index_GN[..., None],
                                   axis=1)
  targets_GN = jnp.take_along_axis(seq['targets'].reshape(g, b // g * t), index_GN, axis=1)
  return llama.logits(config, params, hidden_GND), jnp.where(valid_GN, targets_GN, 0), valid_GN


def sequence_logps(config, params, seq, index=None) -> tuple[jax.Array, jax.Array]:
  """Returns float32 [B] summed log-probs of each row's loss_mask targets, and their counts.

  With `index` (a batch's `loss_positions`), the head runs at those positions only.
  """
  if index is None:
    return losses.sequence_logps(_logits(config, params, seq), seq['targets'], seq['loss_mask'])
  logits_GNV, targets_GN, valid_GN = _logits_at(config, params, seq, index)
  logps_GN = jnp.where(valid_GN, losses.token_logps(logits_GNV, targets_GN), 0.0)
  (b, t), g = seq['targets'].shape, index.shape[0]
  # Each slot's row within its group, one-hot: a [G, N] x [G, N, B/G] sum back to rows.
  row_GNR = (index[..., None] // t == jnp.arange(b // g)[None, None]) & valid_GN[..., None]
  logps_B = jnp.einsum('gn,gnr->gr', logps_GN, row_GNR.astype(jnp.float32)).reshape(b)
  return logps_B, seq['loss_mask'].astype(bool).sum(-1).astype(jnp.float32)


def _interleave(chosen, rejected):
  """Returns the [2B, ...] rows chosen[0], rejected[0], chosen[1], ... of two [B, ...] trees."""
  return jax.tree.map(lambda x, y: jnp.stack([x, y], 1).reshape(-1, *x.shape[1:]),
                      chosen, rejected)


def pair_logps(config, params, batch):
  """Returns (chosen, rejected) log-probs and counts, both sides in one [2B, T] forward."""
  # Interleaving (row 2i chosen, 2i+1 rejected) keeps both halves of a pair on one device.
  both = _interleave(batch['chosen'], batch['rejected'])
  logps, n = sequence_logps(config, params, both, batch.get('loss_positions'))
  logps, n = logps.reshape(-1, 2), n.reshape(-1, 2)
  return logps[:, 0], logps[:, 1], n[:, 0], n[:, 1]


def sft_loss(params, batch, *, model_config):
  """Returns the token-mean NLL of the response tokens and its metrics."""
  if 'loss_positions' in batch:
    return losses.sft_loss(*_logits_at(model_config, params, batch, batch['loss_positions']))
  return losses.sft_loss(_logits(model_config, params, batch), batch['targets'],
                         batch['loss_mask'])


def dpo_loss(params, batch, *, model_config, loss_fn, beta, options):
  """Returns the preference loss of the batch's pairs and its metrics."""
  pc, pr, nc, nr = pair_logps(model_config, params, batch)
  return loss_fn(pc, pr, batch['ref_chosen_logps'], batch['ref_rejected_logps'], beta=beta,
                 chosen_lengths=nc, rejected_lengths=nr, **options)


def add_loss_positions(batch, groups: int, grad_accum: int = 1, buckets: int = 8):
  """Returns the host batch with `loss_positions` [grad_accum * groups, N]: where the head runs.

  The output head ([D, V], the largest matmul of a small model) and its gradient then cover
  the target tokens only, not the prompts and the padding: the same numbers, less compute.
  Row d * grad_accum + j lists the flat positions (row * T + t, rows counted within the group,
  a DPO batch's sides interleaved as in `pair_logps`) of the loss_mask targets of micro-batch
  j's group d of consecutive rows, -1 filling the rest. With groups = the data-parallel device
  count, each device gathers from its own rows. N is the largest group's count rounded up to
  1/buckets of the group's positions, so a run compiles a few shapes per length bucket.
  """
  sides = [batch['chosen'], batch['rejected']] if 'chosen' in batch else [batch]
  mask = np.stack([np.asarray(side['loss_mask'], bool) for side in sides], 1)  # [B, S, T]
  b, k = mask.shape[0], grad_accum
  if b % (k * groups):
    raise ValueError(f'a batch of {b} rows does not split into grad_accum={k} micro-batches '
                     f'of {groups} groups')
  # Micro-batch j holds rows j, k + j, ... (`_micro`); group d a run of consecutive ones.
  grouped = mask.reshape(b // k, k, -1).swapaxes(0, 1).reshape(k, groups, -1)
  quantum = -(-grouped.shape[-1] // buckets)
  n = max(1, -(-int(grouped.sum(-1).max()) // quantum)) * quantum
  index = np.full((groups, k, n), -1, np.int32)
  for j in range(k):
    for d in range(groups):
      where = np.flatnonzero(grouped[j, d])
      index[d, j, :len(where)] = where
  return {**batch, 'loss_positions': index.reshape(groups * k, n)}


# --- the step -----------------------------------------------------------------------------------

def _micro(x, k):
  """Returns [k*B, ...] as [k, B, ...]; micro-batch i holds rows i, k+i, ... (device-local)."""
  if x.shape[0] % k:
    raise ValueError(f'a batch of {x.shape[0]} rows does not split into grad_accum={k}')
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
  metrics = {**metrics, 'grad_norm': optax.tree.norm(grads)}
  if token_weighted:  # a count, not a mean: the micro-batches' weighted average would be wrong
    metrics['n_tokens'] = batch['loss_mask'].sum().astype(jnp.float32)
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
  return jax.tree.map(lambda x: sharding.put_global(x, sharding.batch_sharding(mesh, x.shape)),
                      batch)


@functools.partial(jax.jit, static_argnames='config')
def _jit_logps(config, params, seq):
  return sequence_logps(config, params, seq)


def dataset_logps(config, params, seqs, batch_size: int = 16, mesh: Optional[Mesh] = None):
  """Returns host float32 [N] log-probs and token counts of every row of a sequence dataset."""
  logps, counts = [], []
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    for batch, n in data_io.batches_in_order(seqs, batch_size):
      lp, c = distributed.to_host(_jit_logps(config, params, put_batch(mesh, batch)))
      logps.append(lp[:n])
      counts.append(c[:n])
  return np.concatenate(logps), np.concatenate(counts)


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
  loss_fn = jax.jit(functools.partial(losses.get(loss), beta=beta, **dict(loss_options or {})))

  def evaluate(params):
    pc, nc = dataset_logps(config, params, dataset['chosen'], batch_size, mesh)
    pr, nr = dataset_logps(config, params, dataset['rejected'], batch_size, mesh)
    _, metrics = loss_fn(pc, pr, dataset['ref_chosen_logps'], dataset['ref_rejected_logps'],
                         chosen_lengths=nc, rejected_lengths=nr)
    return {k: float(v) for k, v in metrics.items()}
  return evaluate


# --- the host loop ------------------------------------------------------------------------------

# Crash testing (loop.py's kill points use it too): a training run whose `label` is sft or dpo
# SIGKILLs itself after its first checkpoint before the last step when this is
# '<label>:checkpoint', so a test can resume a run killed inside its training loop.
KILL_AT_ENV = 'SRLM_JAX_KILL_AT'


@jax.jit
def _nonfinite_counts(tree):
  """Returns, per floating leaf, its count of NaN and inf entries (float32: exact below 2**24)."""
  return jax.tree.map(lambda x: jnp.sum(~jnp.isfinite(x), dtype=jnp.float32), tree)


def nonfinite_params(params) -> dict:
  """Returns {param path: count} of the params holding NaN or inf (empty when all are finite)."""
  floating = jax.tree.map(lambda x: x if jnp.issubdtype(x.dtype, jnp.inexact) else None, params)
  counts = distributed.to_host(_nonfinite_counts(floating))
  return {sharding.path_str(p): int(c) for p, c in jax.tree_util.tree_flatten_with_path(counts)[0]
          if c > 0}


def _last_good(ckpts: Optional[checkpoint.Checkpoints]) -> str:
  if ckpts is None:
    return 'no checkpoint'
  ckpts.wait()
  step = ckpts.latest_step()
  if step is None:
    return f'no checkpoint in {ckpts.directory}'
  return f'last good checkpoint: step {step} in {ckpts.step_dir(step)}'


def check_finite_params(params, step: int, ckpts: Optional[checkpoint.Checkpoints] = None,
                        where: str = '') -> None:
  """Returns None when every param is finite; else raises FloatingPointError.

  The error names the step, the non-finite tensors and the last good checkpoint. Every
  trainer calls it on the params it is about to save or hand on (after its last update).
  """
  bad = nonfinite_params(params)
  if bad:
    size = {sharding.path_str(p): int(np.prod(x.shape))
            for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    names = ', '.join(f'{k} ({n} of {size[k]})' for k, n in list(bad.items())[:8])
    more = f' and {len(bad) - 8} more' if len(bad) > 8 else ''
    raise FloatingPointError(
        f'{where or "training"}: step {step}: non-finite params after the update: {names}{more}; '
        f'training stopped without saving this state ({_last_good(ckpts)})')


def _check_finite(metrics: dict, step: int, ckpts: checkpoint.Checkpoints) -> None:
  """Raises FloatingPointError naming the step when the loss or grad norm is not finite."""
  for name in ('loss', 'grad_norm'):
    if name in metrics and not np.isfinite(metrics[name]):
      raise FloatingPointError(
          f'step {step}: {name} is {float(metrics[name])}; training stopped without saving '
          f'this state ({_last_good(ckpts)})')


def train_loop(step_fn, init_fn: Callable[[], TrainState], get_batch: Callable[[int], Any],
               num_steps: int, *, workdir: str, mesh: Mesh, shardings: TrainState, rng=None,
               checkpoint_every: int = 200, keep: int = 3, log_every: int = 1,
               prepare: Optional[Callable[[Any], Any]] = None,
               eval_fn: Optional[Callable[[Any], dict]] = None, eval_every: int = 0,
               progress: Any = True, label: str = 'train') -> TrainState:
  """Runs step_fn from the latest checkpoint in workdir (else init_fn()) to num_steps.

  get_batch(i) gives the host batch of update i (a pure function of i, so resuming replays the
  same data); prepare maps the device batch (e.g. adds online reference log-probs). Metrics go
  to workdir/metrics.jsonl every log_every updates; checkpoints every checkpoint_every and at
  the end. A non-finite loss or grad norm raises FloatingPointError before anything is saved
  (the metrics are fetched after every update for this check), and so do non-finite params at
  each checkpoint and after the last update (`check_finite_params`): every checkpoint on disk
  holds finite params. A resume restores the newest checkpoint whose digests match (a corrupt
  one is moved aside with a warning; see checkpoint.Checkpoints.restore_good).
  """
  os.makedirs(workdir, exist_ok=True)
  rng = jax.random.key(0) if rng is None else rng
  step = jit_step(step_fn, mesh, shardings)
  with checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'), checkpoint_every,
                              keep) as ckpts:
    start, state = ckpts.restore_good(checkpoint.abstract(jax.eval_shape(init_fn), shardings))
    if start is None:
      state, start = init_fn(), 0
    else:
      logging.info('resumed from %s at step %d', ckpts.directory, start)
    log = checkpoint.MetricsWriter(workdir, resume_step=start)
    # `progress`: a bar labelled `label`, or the loop console's stage bar (console.progress_bar)
    bar = console.progress_bar(progress, num_steps, initial=start, desc=label, unit='step')
    for i in range(start, num_steps):
      batch = put_batch(mesh, get_batch(i))
      if prepare is not None:
        batch = prepare(batch)
      state, metrics = step(state, batch, rng)
      metrics = distributed.to_host(metrics)
      done = i + 1
      _check_finite(metrics, done, ckpts)
      bar.set_postfix(loss=f'{float(metrics["loss"]):.4f}')
      bar.update(1)
      if done % log_every == 0 or done == num_steps:
        log.write(done, metrics)
      if eval_fn is not None and eval_every and (done % eval_every == 0 or done == num_steps):
        log.write(done, {f'eval/{k}': v for k, v in eval_fn(state.params).items()})
      if done == num_steps or ckpts.should_save(done):
        check_finite_params(state.params, done, ckpts, where=workdir)
        ckpts.save(done, state, force=done == num_steps)
        if os.environ.get(KILL_AT_ENV) == f'{label}:checkpoint' and done < num_steps:
          ckpts.wait()  # crash testing: killed mid-run, its checkpoint sealed on disk
          os.kill(os.getpid(), signal.SIGKILL)
    log.close()
    bar.close()
  return state


# --- whole runs (what launch/sft.py and launch/dpo.py call) ------------------------------------

def _setup(cfg, model):
  """Returns (model, mesh, compute config): cfg.model loaded unless given, cfg.init_params in."""
  mesh = sharding.make_mesh(*cfg.mesh)
  if model is None:
    import srlm_jax  # pylint: disable=g-import-not-at-top
    model = srlm_jax.load(cfg.model, mesh=mesh, dtype='float32')
  if cfg.init_params:  # e.g. the previous stage's workdir/params
    model = types.SimpleNamespace(config=model.config, tokenizer=model.tokenizer,
                                  params=checkpoint.load_params(cfg.init_params, mesh))
  n = mesh.shape['data'] * mesh.shape['fsdp']
  if cfg.batch_size % cfg.grad_accum or (cfg.batch_size // cfg.grad_accum) % n:
    raise ValueError(f'batch_size={cfg.batch_size} must split into grad_accum={cfg.grad_accum} '
                     f'micro-batches whose size divides by the {n} data-parallel devices')
  return model, mesh, model.config.replace(dtype=cfg.dtype, remat=cfg.remat,
                                          unroll_layers=cfg.unroll_layers)


def _run(cfg, workdir, model, mesh, step_fn, dataset, num_steps, optimizer, **kwargs):
  init_fn, shardings = make_init(model.params, optimizer, mesh)

  def get_batch(i):
    batch = data_io.trim_batch(data_io.batch_at(dataset, i, cfg.batch_size, cfg.seed),
                               cfg.max_len)
    if cfg.head_at_loss_positions:
      batch = add_loss_positions(batch, mesh.shape['data'] * mesh.shape['fsdp'], cfg.grad_accum)
    return batch

  state = train_loop(
      step_fn, init_fn, get_batch,
      num_steps, workdir=workdir, mesh=mesh, shardings=shardings, rng=jax.random.key(cfg.seed),
      checkpoint_every=cfg.checkpoint_every, keep=cfg.keep, log_every=cfg.log_every,
      eval_every=cfg.eval_every, **kwargs)
  if cfg.export_params:
    checkpoint.save_params(os.path.join(workdir, 'params'), state.params)
  # The run is complete: its earlier checkpoints are not needed to resume (the loop prunes
  # further, to cfg.keep_after_done, once its stage is DONE).
  checkpoint.prune(os.path.join(workdir, 'checkpoints'), max(1, cfg.keep_after_done))
  return state


def _num_steps(cfg, n: int) -> int:
  return cfg.num_steps or max(1, int(cfg.num_epochs * n) // cfg.batch_size)


def run_sft(cfg, workdir: str, model=None, progress: bool = True) -> TrainState:
  """Fine-tunes cfg.model (or `model`: .config, .params, .tokenizer) on cfg.train_data."""
  validate.check_train_config(cfg, 'sft')  # every field, before the model loads
  model, mesh, mc = _setup(cfg, model)
  load = functools.partial(data_io.load_sft, tokenizer=model.tokenizer, max_len=cfg.max_len,
                           chat_template=cfg.chat_template)
  dataset = load(cfg.train_data)
  num_steps = _num_steps(cfg, data_io.num_examples(dataset))
  optimizer = make_optimizer(cfg, num_steps)
  step_fn = make_sft_step(mc, optimizer, lr_schedule(cfg, num_steps), cfg.grad_accum)
  eval_fn = sft_eval(mc, load(cfg.eval_data), cfg.batch_size, mesh) if cfg.eval_data else None
  return _run(cfg, workdir, model, mesh, step_fn, dataset, num_steps, optimizer,
              eval_fn=eval_fn, progress=progress, label='sft')


def _dpo_data(cfg, model, path):
  return data_io.load_dpo(path, model.tokenizer, cfg.max_len, cfg.chat_template)


def reference_logps(cfg, model=None) -> dict:
  """Returns {'ref_chosen_logps', 'ref_rejected_logps'} [N]: cfg.train_data under the model."""
  model, mesh, mc = _setup(cfg, model)
  scored = compute_ref_logps(mc, model.params, _dpo_data(cfg, model, cfg.train_data),
                             cfg.batch_size, mesh)
  return {k: scored[k] for k in ('ref_chosen_logps', 'ref_rejected_logps')}


def run_dpo(cfg, workdir: str, model=None, ref_params=None, ref_logps=None,
            progress: bool = True) -> TrainState:
  """Trains cfg.model (or `model`) with DPO on cfg.train_data against a frozen reference.

  The reference is ref_params, else cfg.ref_params / cfg.ref_model, else the starting policy;
  `ref_logps` (from `reference_logps`, e.g. saved by an earlier stage) skips scoring the
  training pairs with it.
  """
  validate.check_train_config(cfg, 'dpo')  # every field, before the model loads
  if cfg.reference not in ('precomputed', 'online', 'none'):
    raise ValueError(f'reference={cfg.reference!r}: expected precomputed, online or none')
  model, mesh, mc = _setup(cfg, model)
  if cfg.reference != 'none' and ref_params is None:
    if cfg.ref_params:
      ref_params = checkpoint.load_params(cfg.ref_params, mesh)
    elif cfg.ref_model:
      import srlm_jax  # pylint: disable=g-import-not-at-top
      ref_params = srlm_jax.load(cfg.ref_model, mesh=mesh).params
    else:
      ref_params = model.params  # the policy's starting point, as in the paper
  if cfg.reference == 'none':  # reference-free losses (simpo): zero log-probs
    score = zero_ref_logps
  else:
    ref_params = jax.device_put(ref_params, sharding.param_shardings(mesh, ref_params))
    score = functools.partial(compute_ref_logps, mc, ref_params, batch_size=cfg.batch_size,
                              mesh=mesh)
  dataset, prepare = _dpo_data(cfg, model, cfg.train_data), None
  if cfg.reference == 'online':
    prepare = make_online_ref(mc, ref_params, mesh)
  elif ref_logps is not None:
    n = data_io.num_examples(dataset)
    if any(len(ref_logps[k]) != n for k in ('ref_chosen_logps', 'ref_rejected_logps')):
      raise ValueError(f'ref_logps cover {len(ref_logps["ref_chosen_logps"])} pairs; '
                       f'{cfg.train_data} tokenises to {n}')
    dataset = {**dataset, **{k: np.asarray(v, np.float32) for k, v in ref_logps.items()}}
  else:
    dataset = score(dataset)
  options = cfg.loss_options.to_dict()
  eval_fn = None
  if cfg.eval_data:
    eval_fn = dpo_eval(mc, score(_dpo_data(cfg, model, cfg.eval_data)), cfg.loss, cfg.beta,
                       options, cfg.batch_size, mesh)
  del score, ref_params  # outside 'online' one model stays in memory from here on
  num_steps = _num_steps(cfg, data_io.num_examples(dataset))
  optimizer = make_optimizer(cfg, num_steps)
  step_fn = make_dpo_step(mc, optimizer, cfg.loss, cfg.beta, options, lr_schedule(cfg, num_steps),
                          cfg.grad_accum)
  return _run(cfg, workdir, model, mesh, step_fn, dataset, num_steps, optimizer, prepare=prepare,
              eval_fn=eval_fn, progress=progress, label='dpo')
