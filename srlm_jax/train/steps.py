"""The pure SFT and DPO steps: features -> objective -> gradients -> one optimizer update.

Steps are pure functions `step(state, batch, rng) -> (state, metrics)`; `jit_step` compiles one
with explicit in/out shardings and the state donated. One call is one optimizer update:
gradient accumulation runs inside the step as a `lax.scan` over `grad_accum` micro-batches
(rather than optax.MultiSteps), so the step stays pure, `state.step` counts updates, each
checkpoint is at an update boundary, and only one micro-batch's activations are live. SFT
micro-batches are weighted by their share of target tokens, DPO ones equally, so k micro-steps
give the same update as one step on the whole batch.

The forward computes in the model config's `dtype` (bfloat16 casts inside each layer) and
takes log-probs in float32; the loss is a registered objective (srlm_jax.objectives) of the
batch's per-token features (features.py).
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from srlm_jax import objectives, sharding
from srlm_jax.train import features
from srlm_jax.train.state import TrainState


def sft_loss(params, batch, *, model_config, objective: str = 'nll', **options):
  """Returns the objective (default: token-mean NLL of the response tokens) and its metrics."""
  return objectives.get(objective)(features.sequence_features(model_config, params, batch),
                                   **options)


def dpo_loss(params, batch, *, model_config, loss_fn, beta, options):
  """Returns the preference objective `loss_fn` of the batch's pairs and its metrics."""
  return loss_fn(features.pair_features(model_config, params, batch), beta=beta, **options)


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
  """Returns the pure DPO step (state, batch, rng) -> (state, metrics) for objectives.get(loss)."""
  fn = functools.partial(dpo_loss, model_config=model_config, loss_fn=objectives.get(loss),
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
