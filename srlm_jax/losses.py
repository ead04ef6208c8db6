"""Preference losses for DPO-style training, one small pure function each, in a registry.

Every preference loss has one signature, so one config can switch between them:

    fn(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
       *, beta, **options) -> (loss, metrics)

The log-probs are per-sequence sums over the response tokens, float32 [B]; `loss` is the mean
over the batch; `metrics` holds float32 scalars named as TRL's DPOTrainer logs them.

Notation in the docstrings: πc, πr the policy's log-probs of the chosen and rejected
responses, rc, rr the reference model's, |yc|, |yr| their token counts, σ the logistic
function, and h = (πc - rc) - (πr - rr) the DPO log-ratio margin.

Options (keywords; a loss ignores those it does not use, and raises ValueError when one it
needs is missing):
  chosen_lengths, rejected_lengths  [B] response token counts (ipo, rpo, simpo, sft).
  label_smoothing                   ε, the assumed label-flip rate; default 0 (sigmoid, rpo,
                                    robust).
  nll_weight                        α, weight of the NLL term; default 1 (rpo).
  chosen_nll                        [B] per-token NLL of each chosen response; default
                                    -πc / |yc| (rpo).
  gamma                             γ, SimPO's target reward margin; default 0.5, TRL's (simpo).

Add a loss with `@losses.register('name')` on a function of the signature above.
"""

from typing import Callable

import jax
import jax.numpy as jnp

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
_REGISTRY: dict[str, LossFn] = {}


def register(name: str) -> Callable[[LossFn], LossFn]:
  """Returns a decorator that registers a loss under `name` (registering again replaces it)."""
  def add(fn: LossFn) -> LossFn:
    _REGISTRY[name] = fn
    return fn
  return add


def get(name: str) -> LossFn:
  """Returns the loss registered under `name`."""
  if name not in _REGISTRY:
    raise KeyError(f'unknown loss {name!r}; registered losses: {", ".join(names())}')
  return _REGISTRY[name]


def names() -> list[str]:
  """Returns the registered loss names, sorted."""
  return sorted(_REGISTRY)


def token_logps(logits_BTV: jax.Array, targets_BT: jax.Array) -> jax.Array:
  """Returns float32 [B, T] log-probs of the targets; logits[:, t] predicts targets[:, t]."""
  logits_BTV = logits_BTV.astype(jnp.float32)
  # Gather-minus-logsumexp never materialises a second [B, T, V] array, unlike log_softmax.
  target_logits_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
  return target_logits_BT - jax.nn.logsumexp(logits_BTV, axis=-1)


def sequence_logps(logits_BTV, targets_BT, mask_BT) -> tuple[jax.Array, jax.Array]:
  """Returns float32 [B] sums of the masked target log-probs and float32 [B] token counts."""
  mask_BT = mask_BT.astype(bool)
  # Padding targets (often -100) are not valid ids: gather a real id there, then mask it out.
  logps_BT = token_logps(logits_BTV, jnp.where(mask_BT, targets_BT, 0))
  return jnp.where(mask_BT, logps_BT, 0.0).sum(-1), mask_BT.sum(-1).astype(jnp.float32)


def sft_loss(logits_BTV, targets_BT, mask_BT) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Returns the token-mean NLL over the masked (target) tokens and its metrics."""
  mask_BT = mask_BT.astype(bool)
  logps_BT = token_logps(logits_BTV, jnp.where(mask_BT, targets_BT, 0))
  n_tokens = mask_BT.sum().astype(jnp.float32)
  denom = jnp.maximum(n_tokens, 1.0)  # An all-padding batch gives 0, not NaN.
  loss = -jnp.where(mask_BT, logps_BT, 0.0).sum() / denom
  correct_BT = (jnp.argmax(logits_BTV, axis=-1) == targets_BT) & mask_BT
  return loss, {'loss': loss, 'n_tokens': n_tokens, 'accuracy': correct_BT.sum() / denom}


def _option(options: dict, key: str, loss_name: str):
  """Returns options[key], raising ValueError when the loss needs it and it is missing."""
  if options.get(key) is None:
    raise ValueError(f'loss {loss_name!r} needs the option {key!r}; '
                     f'options given: {sorted(k for k, v in options.items() if v is not None)}')
  return options[key]


def _lengths(options: dict, key: str, loss_name: str) -> jax.Array:
  """Returns options[key] as float token counts, at least 1 so empty responses stay finite."""
  return jnp.maximum(jnp.asarray(_option(options, key, loss_name)), 1).astype(jnp.float32)


def _result(losses_B, policy_chosen_logps, policy_rejected_logps,
            chosen_rewards_B, rejected_rewards_B) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Returns the batch-mean loss and its TRL-named float32 scalar metrics."""
  loss = losses_B.mean()
  mean = lambda x: jnp.mean(x).astype(jnp.float32)
  return loss, {
      'loss': mean(loss),
      'rewards/chosen': mean(chosen_rewards_B),
      'rewards/rejected': mean(rejected_rewards_B),
      'rewards/margins': mean(chosen_rewards_B - rejected_rewards_B),
      'rewards/accuracies': mean(chosen_rewards_B > rejected_rewards_B),
      'logps/chosen': mean(policy_chosen_logps),
      'logps/rejected': mean(policy_rejected_logps),
  }


def _dpo_result(losses_B, beta, pc, pr, rc, rr):
  """Returns `_result` with DPO's implicit rewards β (π - r)."""
  return _result(losses_B, pc, pr, beta * (pc - rc), beta * (pr - rr))


@register('sigmoid')
def sigmoid(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
            *, beta, label_smoothing=0.0, **options):
  """Returns the DPO loss (conservative DPO when label_smoothing > 0) and its metrics.

  DPO, Rafailov et al. 2023, arXiv 2305.18290, Eq. 7; cDPO, Mitchell 2023, "A note on DPO
  with noisy preferences and relationship to IPO", with ε = label_smoothing:
      L = -(1 - ε) log σ(β h) - ε log σ(-β h)
  """
  del options
  pc, pr, rc, rr = policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
  logits = beta * ((pc - rc) - (pr - rr))
  eps = label_smoothing
  losses = -(1 - eps) * jax.nn.log_sigmoid(logits) - eps * jax.nn.log_sigmoid(-logits)
  return _dpo_result(losses, beta, pc, pr, rc, rr)


@register('ipo')
def ipo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        *, beta, **options):
  """Returns the IPO loss on per-token log-ratios (TRL's default) and its metrics.

  IPO, Azar et al. 2023, arXiv 2310.12036, Eq. 17, with β as τ:
      L = (h' - 1 / (2β))^2,   h' = (πc - rc) / |yc| - (πr - rr) / |yr|
  Dividing by the lengths follows TRL, whose authors confirmed with the IPO authors that the
  paper's results used it; without it the squared loss grows with response length.
  For the un-normalised form of Eq. 17, pass lengths of 1.
  """
  pc, pr, rc, rr = policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
  chosen_len = _lengths(options, 'chosen_lengths', 'ipo')
  rejected_len = _lengths(options, 'rejected_lengths', 'ipo')
  margin = (pc - rc) / chosen_len - (pr - rr) / rejected_len
  return _dpo_result((margin - 1 / (2 * beta)) ** 2, beta, pc, pr, rc, rr)


@register('hinge')
def hinge(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
          *, beta, **options):
  """Returns the SLiC hinge loss and its metrics.

  SLiC-HF, Zhao et al. 2023, arXiv 2305.10425, Eq. 1 on the log-ratio margin:
      L = max(0, 1 - β h)
  """
  del options
  pc, pr, rc, rr = policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
  return _dpo_result(jax.nn.relu(1 - beta * ((pc - rc) - (pr - rr))), beta, pc, pr, rc, rr)


@register('robust')
def robust(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
           *, beta, label_smoothing=0.0, **options):
  """Returns the robust DPO loss, unbiased under label-flip rate ε < 1/2, and its metrics.

  rDPO, Chowdhury et al. 2024, arXiv 2403.00409, Eq. 8, with ε = label_smoothing:
      L = ((1 - ε) (-log σ(β h)) + ε log σ(-β h)) / (1 - 2ε)
  """
  del options
  eps = label_smoothing
  if isinstance(eps, (int, float)) and not 0 <= eps < 0.5:
    raise ValueError(f"loss 'robust' needs 0 <= label_smoothing < 0.5, got {eps}")
  pc, pr, rc, rr = policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
  logits = beta * ((pc - rc) - (pr - rr))
  losses = (-(1 - eps) * jax.nn.log_sigmoid(logits) + eps * jax.nn.log_sigmoid(-logits))
  losses = losses / (1 - 2 * eps)
  return _dpo_result(losses, beta, pc, pr, rc, rr)


@register('rpo')
def rpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        *, beta, nll_weight=1.0, **options):
  """Returns the iterative RPO loss (DPO plus the chosen response's NLL) and its metrics.

  Iterative RPO, Pang et al. 2024, arXiv 2404.19733, Eq. 1, with α = nll_weight:
      L = L_sigmoid - α log π(yc) / |yc|
  `chosen_nll` may give the per-token NLL directly, otherwise it is -πc / |yc|.
  """
  loss, metrics = sigmoid(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                          ref_rejected_logps, beta=beta, **options)
  nll = options.get('chosen_nll')
  if nll is None:
    nll = -policy_chosen_logps / _lengths(options, 'chosen_lengths', 'rpo')
  nll_loss = jnp.mean(nll)
  loss = loss + nll_weight * nll_loss
  f32 = lambda x: x.astype(jnp.float32)
  return loss, {**metrics, 'loss': f32(loss), 'nll_loss': f32(nll_loss)}


@register('simpo')
def simpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
          *, beta, gamma=0.5, **options):
  """Returns the reference-free SimPO loss and its metrics (rewards are β π / |y|).

  SimPO, Meng et al. 2024, arXiv 2405.14734, Eq. 6 (the ref log-probs are ignored):
      L = -log σ(β πc / |yc| - β πr / |yr| - γ)
  """
  del ref_chosen_logps, ref_rejected_logps
  chosen_rewards = beta * policy_chosen_logps / _lengths(options, 'chosen_lengths', 'simpo')
  rejected_rewards = beta * policy_rejected_logps / _lengths(options, 'rejected_lengths', 'simpo')
  losses = -jax.nn.log_sigmoid(chosen_rewards - rejected_rewards - gamma)
  return _result(losses, policy_chosen_logps, policy_rejected_logps, chosen_rewards,
                 rejected_rewards)


@register('sft')
def sft(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        *, beta, **options):
  """Returns the batch mean of the chosen responses' per-token NLL and DPO's metrics.

  Supervised fine-tuning on the chosen responses only: L = -πc / |yc|.
  """
  pc, pr, rc, rr = policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
  return _dpo_result(-pc / _lengths(options, 'chosen_lengths', 'sft'), beta, pc, pr, rc, rr)
