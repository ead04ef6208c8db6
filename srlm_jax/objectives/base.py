"""What an objective receives (per-token features), and the one registry of objectives.

An objective is a pure function

    objective(features: Features, **options) -> (loss, metrics)

`loss` a float32 scalar to minimise, `metrics` float32 scalars to log. The trainer builds the
features of a batch (srlm_jax/train/features.py) and calls the objective inside the jitted
step, so the same function serves SFT, the DPO family and losses that need per-token or
per-step quantities; options come from the config (`beta`, `loss_options`, ...), and an
objective ignores those it does not use.

Axes: B examples, S sequences per example (1 for SFT, 2 for a preference pair: chosen then
rejected, n for a group of samples of one prompt), T target positions.
"""

from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp

Objective = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
_REGISTRY: dict[str, Objective] = {}


@flax.struct.dataclass
class Features:
  """Per-token features of a batch of B examples of S sequences each (see the module legend).

  Position t of a sequence scores its target t (the next token after input t). policy_logps and
  is_top1 are 0 / False where loss_mask is False; other per-token arrays come from the data as
  they are, so an objective masks what it reads with loss_mask.
  """
  policy_logps: jax.Array  # [B, S, T] float32 log-prob of each target under the policy
  loss_mask: jax.Array  # [B, S, T] bool: the targets the loss covers (response tokens)
  # The reference policy's log-probs: per sequence [B, S] (sums over loss_mask), per token
  # [B, S, T], both, or neither (reference-free objectives; `ref_sums` is then 0).
  ref_logps: Optional[jax.Array] = None
  ref_token_logps: Optional[jax.Array] = None
  segment_ids: Optional[jax.Array] = None  # [B, S, T] int32 step / segment of each target
  rewards: Optional[jax.Array] = None  # [B, S] float32 scalar reward of each sequence
  advantages: Optional[jax.Array] = None  # [B, S] or [B, S, T] float32
  is_top1: Optional[jax.Array] = None  # [B, S, T] bool: the target is the policy's argmax
  # [B, S, T] float32 log-probs of the targets under the policy that sampled them (the
  # importance ratio's denominator in policy-gradient objectives such as grpo)
  old_logps: Optional[jax.Array] = None

  def policy_sums(self) -> jax.Array:
    """Returns float32 [B, S]: each sequence's summed policy log-probs over loss_mask."""
    return jnp.where(self.loss_mask, self.policy_logps, 0.0).sum(-1)

  def ref_sums(self) -> jax.Array:
    """Returns float32 [B, S]: the reference's summed log-probs (0 without a reference)."""
    if self.ref_logps is not None:
      return jnp.asarray(self.ref_logps)
    if self.ref_token_logps is not None:
      return jnp.where(self.loss_mask, self.ref_token_logps, 0.0).sum(-1)
    return jnp.zeros(self.loss_mask.shape[:2], jnp.float32)

  def lengths(self) -> jax.Array:
    """Returns float32 [B, S]: each sequence's count of loss_mask targets."""
    return self.loss_mask.astype(bool).sum(-1).astype(jnp.float32)


def register(name: str) -> Callable[[Objective], Objective]:
  """Returns a decorator that registers an objective under `name` (again: replaces it)."""
  def add(fn: Objective) -> Objective:
    _REGISTRY[name] = fn
    return fn
  return add


def get(name: str) -> Objective:
  """Returns the objective registered under `name`."""
  if name not in _REGISTRY:
    raise KeyError(f'unknown objective {name!r}; registered objectives: {", ".join(names())}')
  return _REGISTRY[name]


def names() -> list[str]:
  """Returns the registered objective names, sorted."""
  return sorted(_REGISTRY)


def mean_f32(x: Any) -> jax.Array:
  """Returns the mean of x as a float32 scalar (how metrics are logged)."""
  return jnp.mean(x).astype(jnp.float32)
