"""Supervised fine-tuning: the token-mean negative log-likelihood of the response tokens.

(The DPO family's 'sft' loss, the chosen responses' NLL as a mean of per-sequence means, is a
preference formula in preference.py.)
"""

import jax
import jax.numpy as jnp

from srlm_jax.objectives import base


@base.register('nll')
def nll(features: base.Features, **options) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Returns the token-mean NLL over every sequence's loss_mask targets and its metrics.

  Metrics: loss, n_tokens, and accuracy (the share of targets that are the policy's argmax)
  when the features carry `is_top1`. An all-padding batch gives 0, not NaN.
  """
  del options  # beta and loss_options mean nothing here
  mask = features.loss_mask.astype(bool)
  n_tokens = mask.sum().astype(jnp.float32)
  denom = jnp.maximum(n_tokens, 1.0)
  loss = -jnp.where(mask, features.policy_logps, 0.0).sum() / denom
  metrics = {'loss': loss.astype(jnp.float32), 'n_tokens': n_tokens}
  if features.is_top1 is not None:
    metrics['accuracy'] = (features.is_top1 & mask).sum() / denom
  return loss, metrics
