"""Step-DPO: the loss against a hand-computed case and float64 NumPy, and only the step counts.

The formula (process-based self-rewarding, Zhang et al. 2025; Step-DPO, Lai et al. 2024) is
written here independently: -log σ(β [(Σ_step πc - Σ_step rc) - (Σ_step πr - Σ_step rr)]),
every sum over the step's tokens alone.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import srlm_jax
from srlm_jax import objectives
from srlm_jax.objectives import base
from srlm_jax.train import features as features_lib

BETA = 0.5


def _hand_case():
  """Returns one pair, T = 5: two prefix tokens (segment 0), the step (1), a later step (2)."""
  seg = np.array([[0, 0, 1, 1, 2], [0, 0, 1, 1, 1]], np.int32)[None]  # chosen, rejected
  policy = np.array([[-0.7, -1.1, -0.5, -0.25, -3.0], [-0.2, -0.4, -1.5, -1.0, -2.0]])[None]
  ref = np.array([[-0.9, -1.0, -1.0, -0.5, -2.5], [-0.3, -0.5, -1.0, -0.75, -1.0]])[None]
  mask = np.array([[False, True, True, True, True], [False, True, True, True, True]])[None]
  return policy, ref, mask, seg


def _features(policy, ref, mask, seg):
  return base.Features(policy_logps=jnp.asarray(policy, jnp.float32),
                       loss_mask=jnp.asarray(mask),
                       ref_token_logps=jnp.asarray(ref, jnp.float32),
                       segment_ids=None if seg is None else jnp.asarray(seg))


def test_hand_computed_case():
  # Step tokens (segment 1) are positions 2, 3 of chosen and 2, 3, 4 of rejected:
  #   chosen:   π = -0.5 - 0.25 = -0.75,  ref = -1.0 - 0.5 = -1.5,   log-ratio 0.75
  #   rejected: π = -1.5 - 1.0 - 2.0 = -4.5, ref = -1.0 - 0.75 - 1.0 = -2.75, log-ratio -1.75
  #   h = 0.75 - (-1.75) = 2.5; loss = -log σ(0.5 * 2.5) = log(1 + e^-1.25)
  want = math.log1p(math.exp(-1.25))
  loss, metrics = objectives.get('step_dpo')(_features(*_hand_case()), beta=BETA)
  assert float(loss) == pytest.approx(want, rel=1e-6)
  assert float(metrics['rewards/chosen']) == pytest.approx(BETA * 0.75, rel=1e-6)
  assert float(metrics['rewards/rejected']) == pytest.approx(BETA * -1.75, rel=1e-6)
  assert float(metrics['step_tokens/chosen']) == 2 and float(metrics['step_tokens/rejected']) == 3


def test_against_float64_numpy_with_label_smoothing():
  rng = np.random.default_rng(0)
  b, t = 6, 12
  policy, ref = -rng.uniform(0.1, 3, (2, b, 2, t))
  mask = rng.random((b, 2, t)) < 0.8
  seg = rng.integers(0, 3, (b, 2, t)).astype(np.int32)
  eps = 0.1
  got, _ = objectives.get('step_dpo')(_features(policy, ref, mask, seg), beta=BETA,
                                      label_smoothing=eps, step_segment=2)
  step = mask & (seg == 2)
  s = lambda x: np.where(step, x, 0.0).sum(-1)  # float64 step sums [b, 2]
  h = (s(policy)[:, 0] - s(ref)[:, 0]) - (s(policy)[:, 1] - s(ref)[:, 1])
  log_sig = lambda x: -np.logaddexp(0.0, -x)
  want = np.mean(-(1 - eps) * log_sig(BETA * h) - eps * log_sig(-BETA * h))
  assert float(got) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize('where', ['prefix', 'later_step', 'masked_out'])
def test_values_outside_the_step_do_not_change_the_loss(where):
  policy, ref, mask, seg = _hand_case()
  base_loss, _ = objectives.get('step_dpo')(_features(policy, ref, mask, seg), beta=BETA)
  policy2, ref2 = policy.copy(), ref.copy()
  position = {'prefix': 1, 'later_step': 4, 'masked_out': 0}[where]
  policy2[0, 0, position] -= 5.0
  ref2[0, 0, position] += 3.0
  loss, _ = objectives.get('step_dpo')(_features(policy2, ref2, mask, seg), beta=BETA)
  assert float(loss) == float(base_loss)
  policy2[0, 0, 2] -= 1.0  # inside the step: the loss moves
  loss, _ = objectives.get('step_dpo')(_features(policy2, ref2, mask, seg), beta=BETA)
  assert float(loss) > float(base_loss) + 0.1


def test_without_segment_ids_it_is_dpo_on_loss_mask():
  policy, ref, mask, _ = _hand_case()
  feats = _features(policy, ref, mask, None)
  got, _ = objectives.get('step_dpo')(feats, beta=BETA)
  want, _ = objectives.get('sigmoid')(feats, beta=BETA)
  assert float(got) == pytest.approx(float(want), rel=1e-6)


def test_segment_ids_need_per_token_reference():
  policy, ref, mask, seg = _hand_case()
  feats = base.Features(policy_logps=jnp.asarray(policy, jnp.float32),
                        loss_mask=jnp.asarray(mask), ref_logps=jnp.zeros((1, 2)),
                        segment_ids=jnp.asarray(seg))
  with pytest.raises(ValueError, match='per-token reference'):
    objectives.get('step_dpo')(feats, beta=BETA)


@pytest.fixture(scope='module')
def tiny():
  return srlm_jax.load('tiny:0')


def _row(tokens, step_from, step_to):
  """Returns a sequence dict [1, T] whose loss_mask covers targets step_from..step_to-1."""
  t = len(tokens)
  inputs = np.asarray(tokens, np.int32)[None]
  targets = np.concatenate([inputs[:, 1:], np.zeros((1, 1), np.int32)], 1)
  loss_mask = np.zeros((1, t), bool)
  loss_mask[0, step_from:step_to] = True
  return {'inputs': inputs, 'targets': targets, 'loss_mask': loss_mask,
          'mask': np.ones((1, t), bool)}


def _model_loss(model, chosen, rejected, step_from, step_to):
  """Returns step_dpo on the tiny model's log-probs of two rows (reference: fixed -1/token)."""
  batch = {'chosen': _row(chosen, step_from, step_to),
           'rejected': _row(rejected, step_from, step_to)}
  batch = jax.tree.map(jnp.asarray, batch)
  t = len(chosen)
  batch['ref_chosen_token_logps'] = -jnp.ones((1, t))
  batch['ref_rejected_token_logps'] = -jnp.ones((1, t))
  feats = features_lib.pair_features(model.config, model.params, batch)
  return float(objectives.get('step_dpo')(feats, beta=BETA)[0])


def test_a_token_after_the_step_leaves_the_model_loss_unchanged(tiny):
  # Rows: prefix (positions 0-5), the step (targets 5..9: tokens 6-10), later tokens (11-15).
  chosen = [1, 504, 1000, 23, 77, 900, 31, 32, 33, 34, 35, 400, 401, 402, 403, 404]
  rejected = [1, 504, 1000, 23, 77, 900, 51, 52, 53, 54, 55, 400, 401, 402, 403, 404]
  loss = _model_loss(tiny, chosen, rejected, 5, 10)
  later = list(chosen)
  later[13] = 9999  # a token after the step, in chosen
  assert _model_loss(tiny, later, rejected, 5, 10) == loss
  inside = list(chosen)
  inside[8] = 9999  # a token of the step itself
  assert abs(_model_loss(tiny, inside, rejected, 5, 10) - loss) > 1e-4
