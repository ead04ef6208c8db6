"""The host loop: runs a jitted step over batches with checkpoints, metrics and finite checks.

`train_loop` resumes from the newest good checkpoint in its workdir, puts each host (or
device) batch on the mesh, fetches the metrics after every update (a non-finite loss stops the
run before anything is saved) and checks the params for NaN/inf at every checkpoint.
"""

import logging
import os
import signal
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from srlm_jax import bars, checkpoint, distributed, sharding
from srlm_jax.train.state import TrainState
from srlm_jax.train.steps import jit_step


def put_batch(mesh: Optional[Mesh], batch):
  """Returns a batch (any tree of host or device arrays) on mesh, leaves split on BATCH.

  Host arrays are copied in by each process's share; device arrays (a dataset kept on the
  device) are re-laid out on the device, with no copy through the host.
  """
  if mesh is None:
    return jax.tree.map(jnp.asarray, batch)

  def put(x):
    target = sharding.batch_sharding(mesh, x.shape)
    if isinstance(x, jax.Array):
      return jax.device_put(x, target)
    return sharding.put_global(x, target)
  return jax.tree.map(put, batch)


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
               progress: Any = True, label: str = 'train',
               on_resume: Optional[Callable[[], None]] = None) -> TrainState:
  """Runs step_fn from the latest checkpoint in workdir (else init_fn()) to num_steps.

  get_batch(i) gives the host batch of update i (a pure function of i, so resuming replays the
  same data); prepare maps the device batch (e.g. adds online reference log-probs). Metrics go
  to workdir/metrics.jsonl every log_every updates; checkpoints every checkpoint_every and at
  the end. A non-finite loss or grad norm raises FloatingPointError before anything is saved
  (the metrics are fetched after every update for this check), and so do non-finite params at
  each checkpoint and after the last update (`check_finite_params`): every checkpoint on disk
  holds finite params. A resume restores the newest checkpoint whose digests match (a corrupt
  one is moved aside with a warning; see checkpoint.Checkpoints.restore_good). on_resume() runs
  when a checkpoint replaces init_fn (e.g. to free the starting params init_fn would donate).
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
      if on_resume is not None:
        on_resume()
    log = checkpoint.MetricsWriter(workdir, resume_step=start)
    # `progress`: a bar labelled `label`, or the loop console's stage bar (bars.progress_bar)
    bar = bars.progress_bar(progress, num_steps, initial=start, desc=label, unit='step')
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
