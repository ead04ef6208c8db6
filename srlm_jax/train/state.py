"""The train state, the AdamW optimizer on its schedule, and the sharded state initialisation.

Params are float32 master weights; optimizer-state leaves are laid out by the param rules.
"""

import math
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec as P

from srlm_jax import sharding


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array  # int32 scalar: optimizer updates done so far
  params: Any  # float32 master params
  opt_state: Any


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


def release(params) -> None:
  """Returns None after deleting the device buffers of params' jax arrays (others untouched)."""
  for x in jax.tree.leaves(params):
    if isinstance(x, jax.Array) and not x.is_deleted():
      x.delete()


def make_init(params, optimizer, mesh: Mesh,
              donate: bool = False) -> tuple[Callable[[], TrainState], TrainState]:
  """Returns (init_fn, shardings): init_fn() builds the sharded state with float32 params.

  With `donate`, init_fn hands params' device buffers to the state (float32 params laid out
  by PARAM_RULES become its params without a copy) and deletes what is left of them, so the
  device then holds one copy of the policy: the caller must not use params again.
  """
  def init(p):
    p = jax.tree.map(lambda x: x.astype(jnp.float32), p)
    return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p))
  shardings = state_shardings(jax.eval_shape(init, params), mesh)
  jitted = jax.jit(init, out_shardings=shardings, donate_argnums=0 if donate else ())

  def init_fn():
    state = jitted(jax.device_put(params, sharding.param_shardings(mesh, params)))
    # Not while traced (jax.eval_shape(init_fn) gives the state's shapes): nothing ran yet.
    if donate and not isinstance(state.step, jax.core.Tracer):
      release(params)  # a copy device_put made to re-lay them out was donated; these were not
    return state
  return init_fn, shardings
