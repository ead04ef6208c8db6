"""GRPO: group-normalised advantages and the clipped policy-gradient loss with a k3 KL penalty.

Axes (base.py's legend): B prompts (examples), G = S samples of each prompt (a group), T
target positions.

Published forms (written out so a test can check them independently):

  advantages   GRPO (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300, Sec. 4.1.2):
                   A_i = (r_i - mean(r)) / (std(r) + eps)   over the G rewards of a group
               with std the population standard deviation (ddof 0); a group whose rewards are
               all equal gets A = 0 (no gradient).
               Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv
               2503.20783): A_i = r_i - mean(r) (no std division).
  ratio        rho_t = exp(logp_t - old_logp_t), old = the policy that sampled the tokens.
  clipped term l_t = min(rho_t A, clip(rho_t, 1 - clip_eps, 1 + clip_eps) A) (PPO, Schulman et
               al. 2017, arXiv 1707.06347, Eq. 7).
  KL penalty   k3 = exp(ref_t - logp_t) - (ref_t - logp_t) - 1 (Schulman 2020, "Approximating
               KL divergence"; DeepSeekMath Eq. 4), weight beta; beta = 0 needs no reference.
  loss         GRPO:      L = -1/(B G) sum_i 1/|o_i| sum_t (l_t - beta k3_t)
               Dr. GRPO:  L = -1/(B G) sum_i 1/max_tokens sum_t (l_t - beta k3_t)
               (Dr. GRPO drops the per-sequence length normalisation: every token weighs the
               same, a constant, e.g. the generation budget, keeps the scale).

The objective reads Features.old_logps (None: the policy itself, detached; rho = 1, the
single-update case), Features.ref_token_logps (needed when beta > 0) and Features.advantages
[B, G] (else they are computed from Features.rewards [B, G]).
"""

import jax
import jax.numpy as jnp

from srlm_jax.objectives import base


def group_advantages(rewards_BxG: jax.Array, *, dr_grpo: bool = False,
                     eps: float = 1e-4) -> jax.Array:
  """Returns float32 [B, G] advantages: rewards centred on their group's mean, divided by
  the group's std + eps unless dr_grpo; 0 for a group whose rewards are all equal."""
  r = rewards_BxG.astype(jnp.float32)
  centred = r - r.mean(axis=-1, keepdims=True)
  if dr_grpo:
    return centred
  std = jnp.sqrt(jnp.mean(centred ** 2, axis=-1, keepdims=True))
  return centred / (std + eps)


def k3(policy_logps, ref_logps) -> jax.Array:
  """Returns the per-token k3 estimate of KL(policy || ref): exp(d) - d - 1, d = ref - policy."""
  d = ref_logps - policy_logps
  return jnp.exp(d) - d - 1.0


@base.register('grpo')
def grpo(features: base.Features, *, beta: float = 0.0, clip_eps: float = 0.2,
         dr_grpo: bool = False, max_tokens: int = 0, adv_eps: float = 1e-4,
         **options) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Returns the GRPO (or Dr. GRPO) loss of a batch of groups and its metrics.

  `max_tokens` is Dr. GRPO's constant normaliser (required with dr_grpo); beta = 0 drops the
  KL term (no reference log-probs needed). Metrics: loss, kl (token mean of k3; 0 without a
  reference), clip_fraction (tokens whose ratio the clip changed), ratio (token mean),
  advantage_abs (mean |A|).
  """
  del options  # the DPO family's options mean nothing here
  mask = features.loss_mask.astype(bool)
  logp = features.policy_logps
  old = (jax.lax.stop_gradient(logp) if features.old_logps is None
         else features.old_logps.astype(jnp.float32))
  if features.advantages is not None:
    adv_BxG = features.advantages.astype(jnp.float32)
  elif features.rewards is not None:
    adv_BxG = group_advantages(features.rewards, dr_grpo=dr_grpo, eps=adv_eps)
  else:
    raise ValueError('grpo needs Features.advantages or Features.rewards')
  adv = adv_BxG[..., None] if adv_BxG.ndim == 2 else adv_BxG
  ratio = jnp.exp(jnp.where(mask, logp - old, 0.0))
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  term = jnp.minimum(ratio * adv, clipped * adv)
  kl = jnp.zeros_like(logp)
  if beta:
    if features.ref_token_logps is None:
      raise ValueError(f'grpo with beta={beta} needs the reference per-token log-probs '
                       '(Features.ref_token_logps); beta=0 needs none')
    kl = k3(logp, features.ref_token_logps.astype(jnp.float32))
    term = term - beta * kl
  term = jnp.where(mask, term, 0.0)
  n_tokens = mask.sum(-1).astype(jnp.float32)  # [B, G]
  if dr_grpo:
    if not max_tokens:
      raise ValueError('grpo with dr_grpo=True needs max_tokens (the constant normaliser)')
    per_seq = term.sum(-1) / float(max_tokens)
  else:
    per_seq = term.sum(-1) / jnp.maximum(n_tokens, 1.0)
  loss = -per_seq.mean()
  total = jnp.maximum(mask.sum().astype(jnp.float32), 1.0)
  token_mean = lambda x: jnp.where(mask, x, 0.0).sum() / total
  changed = (ratio < 1.0 - clip_eps) | (ratio > 1.0 + clip_eps)
  return loss, {
      'loss': loss.astype(jnp.float32),
      'kl': token_mean(kl).astype(jnp.float32),
      'clip_fraction': token_mean(changed.astype(jnp.float32)).astype(jnp.float32),
      'ratio': token_mean(ratio).astype(jnp.float32),
      'advantage_abs': base.mean_f32(jnp.abs(adv_BxG)),
  }
