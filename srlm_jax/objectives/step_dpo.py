"""Step-DPO: the DPO loss on one reasoning step's tokens, policy and reference on one prefix.

Process-based self-rewarding (Zhang et al. 2025, arXiv 2503.03746, Eq. for step-wise DPO;
also Step-DPO, Lai et al. 2024, arXiv 2406.18629): with x the problem, s_1..s_{k-1} the steps
so far, s_w and s_l the chosen and rejected k-th step,

    L = -log σ(β [log π(s_w | x, s_<k) - log π_ref(s_w | x, s_<k)]
              - β [log π(s_l | x, s_<k) - log π_ref(s_l | x, s_<k)])

so each log-prob is a sum over the step's own tokens only, both conditioned on the same prefix.

What counts as the step: the targets in loss_mask, and, when the features carry segment_ids,
only those whose segment id is `step_segment` (default 1). A row can then hold a whole
solution (prefix, the step, later steps) and the loss still sees the step alone; the
reference's per-token log-probs are required in that case (a per-sequence sum cannot be
restricted to a segment). Rows built by the process search (process/search.py) hold the
prefix as prompt and the step as the completion, so loss_mask alone is the step.
Options: beta (β), label_smoothing (ε, conservative DPO as in 'sigmoid').
"""

import jax
import jax.numpy as jnp

from srlm_jax.objectives import base
from srlm_jax.objectives import preference


def step_mask(features: base.Features, step_segment: int = 1) -> jax.Array:
  """Returns bool [B, S, T]: the targets of the step the loss covers."""
  mask = features.loss_mask.astype(bool)
  if features.segment_ids is not None:
    mask = mask & (features.segment_ids == step_segment)
  return mask


@base.register('step_dpo')
def step_dpo(features: base.Features, *, beta, label_smoothing=0.0, step_segment=1,
             **options):
  """Returns the Step-DPO loss (see the module docstring) and DPO's metrics on the step."""
  del options
  if features.loss_mask.shape[1] != 2:
    raise ValueError(f'step_dpo needs pairs (S = 2 sequences: chosen, rejected); got features '
                     f'of shape {features.loss_mask.shape}')
  mask = step_mask(features, step_segment)
  policy = jnp.where(mask, features.policy_logps, 0.0).sum(-1)
  if features.ref_token_logps is not None:
    ref = jnp.where(mask, features.ref_token_logps, 0.0).sum(-1)
  elif features.segment_ids is not None and features.ref_logps is not None:
    raise ValueError('step_dpo with segment_ids needs per-token reference log-probs '
                     '(ref_token_logps): a per-sequence sum cannot be cut to one step')
  else:
    ref = features.ref_sums()
  loss, metrics = preference.sigmoid(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1],
                                     beta=beta, label_smoothing=label_smoothing)
  steps = mask.sum(-1).astype(jnp.float32)
  return loss, {**metrics, 'step_tokens/chosen': base.mean_f32(steps[:, 0]),
                'step_tokens/rejected': base.mean_f32(steps[:, 1])}
