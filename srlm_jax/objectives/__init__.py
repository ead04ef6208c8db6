"""Objectives: losses on per-token features, one registry (see base.py for the protocol).

  from srlm_jax import objectives
  loss, metrics = objectives.get('sigmoid')(features, beta=0.1)

Add an objective with `@objectives.register(name)` on `fn(features, **options)`, or a formula
on a pair's sequence sums (the DPO family's published form) with
`@objectives.register_pair_loss(name)`; `config.loss` names either.
"""

from srlm_jax.objectives import grpo, preference, sft, step_dpo
from srlm_jax.objectives.base import Features, Objective, get, names, register
from srlm_jax.objectives.preference import PairLoss, register_pair_loss

__all__ = ['Features', 'Objective', 'PairLoss', 'get', 'grpo', 'names', 'preference',
           'register', 'register_pair_loss', 'sft']
