"""GRPO on the device: a Rollout's groups as training rows, their log-probs, the update step.

Axis legend: B prompts, G samples per prompt (the Rollout's n), R = B*G rows (prompt-major),
S = P + M positions of a row (the prompt's real tokens, then the completion, then padding),
P prompt width, M new-token width.

A batch (`group_batch`) keeps every array [B, G, ...], so the train step's batch split
(leading axis, one share per data-parallel device, micro-batches by `grad_accum`) never cuts
a group; the forward runs on the [R, S] rows.
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from srlm_jax import llama, objectives, sharding
from srlm_jax.objectives import grpo as grpo_lib
from srlm_jax.rewards import pairs as pairs_lib
from srlm_jax.rollout import rollout as rollout_lib
from srlm_jax.train import features as features_lib
from srlm_jax.train import steps as steps_lib

def _groups(x_R, n: int):
  """Returns [R, ...] rows as [B, G, ...] (prompt-major)."""
  return x_R.reshape(-1, n, *x_R.shape[1:])


def _rows(x_BG):
  """Returns [B, G, ...] as [R, ...] rows."""
  return x_BG.reshape(-1, *x_BG.shape[2:])


@functools.partial(jax.jit, static_argnames=('pad_id', 'dr_grpo'))
def group_batch(roll: rollout_lib.Rollout, rewards_R: jax.Array, *, pad_id: int,
                dr_grpo: bool = False, adv_eps: float = 1e-4) -> dict:
  """Returns the GRPO batch of a Rollout, every array [B, G, ...]:
    inputs, mask [B, G, S]     the prompt's real tokens then the completion (the forward's rows)
    start [B, G]               the position whose output predicts the completion's first token
    completion [B, G, M]       the sampled tokens (the targets the loss covers)
    loss_mask [B, G, M]        the completion's tokens (eos/stop token included)
    sampler_logps [B, G, M]    the Rollout's log-probs of them (temperature 1)
    rewards, advantages [B, G] (advantages normalised within each group)."""
  n = roll.n
  prompt_RxP = jnp.repeat(roll.prompt_tokens, n, axis=0)
  prompt_mask_RxP = jnp.repeat(roll.prompt_mask.astype(bool), n, axis=0)
  # The DPO dataset's row builder: real prompt tokens to the front, the completion after them.
  seq, _ = pairs_lib.sequence_rows(
      prompt_RxP, prompt_mask_RxP, roll.tokens, roll.logprobs, roll.lengths, pad_id)
  m = roll.tokens.shape[1]
  loss_mask_RxM = jnp.arange(m)[None, :] < roll.lengths[:, None]
  rewards_BxG = _groups(rewards_R.astype(jnp.float32), n)
  return {
      'inputs': _groups(seq['inputs'], n), 'mask': _groups(seq['mask'], n),
      'start': _groups(prompt_mask_RxP.sum(-1).astype(jnp.int32) - 1, n),
      'completion': _groups(jnp.where(loss_mask_RxM, roll.tokens, 0), n),
      'loss_mask': _groups(loss_mask_RxM, n),
      'sampler_logps': _groups(jnp.where(loss_mask_RxM, roll.logprobs, 0.0), n),
      'rewards': rewards_BxG,
      'advantages': grpo_lib.group_advantages(rewards_BxG, dr_grpo=dr_grpo, eps=adv_eps)}


def token_logps(model_config, params, batch, temperature: float = 1.0) -> jax.Array:
  """Returns float32 [B, G, M] log-probs of the completion tokens (0 past each one's length)
  under softmax(logits / temperature): the distribution the sampler drew from (as TRL's GRPO).

  The output head ([D, V], the largest matmul of a small model) runs at the M completion
  positions of each row only, not at the prompt's.
  """
  inputs_RxS, mask_RxS = _rows(batch['inputs']), _rows(batch['mask'])
  hidden_RxSxD = llama.Llama(model_config).apply(
      {'params': params}, inputs_RxS, llama.default_positions(mask_RxS), mask_RxS,
      hidden_only=True)[0]
  loss_mask_RxM = _rows(batch['loss_mask']).astype(bool)
  s, m = inputs_RxS.shape[1], loss_mask_RxM.shape[1]
  index_RxM = jnp.minimum(_rows(batch['start'])[:, None] + jnp.arange(m)[None, :], s - 1)
  hidden_RxMxD = jnp.take_along_axis(hidden_RxSxD, index_RxM[..., None], axis=1)
  logits_RxMxV = llama.logits(model_config, params, hidden_RxMxD)
  if temperature != 1.0:
    logits_RxMxV = logits_RxMxV / temperature
  logps_RxM = features_lib.token_logps(logits_RxMxV, _rows(batch['completion']))
  return jnp.where(loss_mask_RxM, logps_RxM, 0.0).reshape(batch['loss_mask'].shape)


def grpo_loss(params, batch, *, model_config, options: dict, temperature: float = 1.0):
  """Returns the grpo objective of a batch of groups under params, and its metrics."""
  features = objectives.Features(
      policy_logps=token_logps(model_config, params, batch, temperature),
      loss_mask=batch['loss_mask'].astype(bool), old_logps=batch.get('old_logps'),
      ref_token_logps=batch.get('ref_logps'), advantages=batch['advantages'])
  return objectives.get('grpo')(features, **options)


def make_grpo_step(model_config, optimizer, options: dict, schedule=None, grad_accum: int = 1,
                   temperature: float = 1.0):
  """Returns the pure GRPO update (state, batch, rng) -> (state, metrics): one optimizer
  update on the whole batch (grad_accum micro-batches of whole groups, weighted equally)."""
  loss = functools.partial(grpo_loss, model_config=model_config, options=dict(options),
                           temperature=temperature)
  return functools.partial(steps_lib.train_step, loss_fn=loss, optimizer=optimizer,
                           schedule=schedule, grad_accum=grad_accum)


def jit_logps(model_config, mesh, temperature: float = 1.0):
  """Returns logps(params, batch) -> [B, G, S] jitted on mesh (a forward, no gradient)."""
  jitted = jax.jit(functools.partial(token_logps, model_config, temperature=temperature),
                   out_shardings=NamedSharding(mesh, P(sharding.BATCH)))

  def call(params, batch):
    with jax.set_mesh(mesh):
      return jitted(params, batch)
  return call
