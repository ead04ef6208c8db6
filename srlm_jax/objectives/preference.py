"""The DPO family: each published loss a formula on a pair's sequence sums, registered as an
objective.

A formula has one signature, so one config can switch between them:

    formula(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
            *, beta, **options) -> (loss, metrics)

The log-probs are per-sequence sums over the response tokens, float32 [B]; `loss` is the mean
over the batch; `metrics` holds float32 scalars named as TRL's DPOTrainer logs them.
`register_pair_loss(name)` registers a formula as the objective `name` (`PairLoss`): the
objective sums a pair's per-token features (S = 2: chosen, rejected) and passes the sums, with
the token counts as `chosen_lengths` / `rejected_lengths`, to the formula.

Notation in the docstrings: πc, πr the policy's log-probs of the chosen and rejected
responses, rc, rr the reference model's, |yc|, |yr| their token counts, σ the logistic
function, and h = (πc - rc) - (πr - rr) the DPO log-ratio margin.

Options (keywords; a formula ignores those it does not use, and raises ValueError when one it
needs is missing):
  chosen_lengths, rejected_lengths  [B] response token counts (ipo, rpo, simpo, sft).
  label_smoothing                   ε, the assumed label-flip rate; default 0 (sigmoid, rpo,
                                    robust).
  nll_weight                        α, weight of the NLL term; default 1 (rpo).
  chosen_nll                        [B] per-token NLL of each chosen response; default
                                    -πc / |yc| (rpo).
  gamma                             γ, SimPO's target reward margin; default 0.5, TRL's (simpo).
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from srlm_jax.objectives import base

Formula = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class PairLoss:
  """The objective of a formula on sequence sums, applied to a pair's features (S = 2)."""
  formula: Formula

  def __call__(self, features: base.Features, *, beta, **options):
    """Returns the formula's (loss, metrics) on the features' chosen and rejected sums."""
    if features.loss_mask.shape[1] != 2:
      raise ValueError(f'a preference objective needs pairs (S = 2 sequences per example); '
                       f'got features of shape {features.loss_mask.shape}')
    policy, ref, lengths = features.policy_sums(), features.ref_sums(), features.lengths()
    options = {'chosen_lengths': lengths[:, 0], 'rejected_lengths': lengths[:, 1], **options}
    return self.formula(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta=beta, **options)


def register_pair_loss(name: str) -> Callable[[Formula], Formula]:
  """Returns a decorator that registers a sequence-sum formula as the objective `name`."""
  def add(formula: Formula) -> Formula:
    base.register(name)(PairLoss(formula))
    return formula
  return add


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
  return loss, {
      'loss': base.mean_f32(loss),
      'rewards/chosen': base.mean_f32(chosen_rewards_B),
      'rewards/rejected': base.mean_f32(rejected_rewards_B),
      'rewards/margins': base.mean_f32(chosen_rewards_B - rejected_rewards_B),
      'rewards/accuracies': base.mean_f32(chosen_rewards_B > rejected_rewards_B),
      'logps/chosen': base.mean_f32(policy_chosen_logps),
      'logps/rejected': base.mean_f32(policy_rejected_logps),
  }


def _dpo_result(losses_B, beta, pc, pr, rc, rr):
  """Returns `_result` with DPO's implicit rewards β (π - r)."""
  return _result(losses_B, pc, pr, beta * (pc - rc), beta * (pr - rr))


@register_pair_loss('sigmoid')
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


@register_pair_loss('ipo')
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


@register_pair_loss('hinge')
def hinge(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
          *, beta, **options):
  """Returns the SLiC hinge loss and its metrics.

  SLiC-HF, Zhao et al. 2023, arXiv 2305.10425, Eq. 1 on the log-ratio margin:
      L = max(0, 1 - β h)
  """
  del options
  pc, pr, rc, rr = policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
  return _dpo_result(jax.nn.relu(1 - beta * ((pc - rc) - (pr - rr))), beta, pc, pr, rc, rr)


@register_pair_loss('robust')
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


@register_pair_loss('rpo')
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


@register_pair_loss('simpo')
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


@register_pair_loss('sft')
def sft(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        *, beta, **options):
  """Returns the batch mean of the chosen responses' per-token NLL and DPO's metrics.

  Supervised fine-tuning on the chosen responses only: L = -πc / |yc|.
  """
  pc, pr, rc, rr = policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
  return _dpo_result(-pc / _lengths(options, 'chosen_lengths', 'sft'), beta, pc, pr, rc, rr)
