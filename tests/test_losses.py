"""Each objective against its published formula in NumPy float64, finite differences, and
TRL's code; objectives on per-token features against the sequence-sum formulas.

The DPO family's formulas (objectives.get(name).formula) take sequence sums; the registered
objectives take per-token features (objectives.Features). TRL comparisons call TRL's own loss code (`DPOTrainer._compute_loss` with a stand-in model that
returns fixed per-token log-probs, and `CPOTrainer.cpo_loss` for SimPO); they need `trl`
installed and fail without it.
"""

import collections
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srlm_jax import objectives
from srlm_jax.objectives import base, preference
from srlm_jax.train import features

B = 16
BETA = 0.1
PREFERENCE_LOSSES = ['sigmoid', 'ipo', 'hinge', 'robust', 'rpo', 'simpo', 'sft']
METRIC_NAMES = {'loss', 'rewards/chosen', 'rewards/rejected', 'rewards/margins',
                'rewards/accuracies', 'logps/chosen', 'logps/rejected'}


def _log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def _batch(seed=0):
  """Returns float64 (pc, pr, rc, rr) summed log-probs and int (chosen, rejected) lengths."""
  rng = np.random.default_rng(seed)
  chosen_len, rejected_len = rng.integers(1, 60, B), rng.integers(1, 60, B)
  # Per-token log-probs near -1, so sums scale with length as a real model's do.
  logps = [-rng.uniform(0.2, 2.0, B) * n for n in (chosen_len, rejected_len) * 2]
  return logps, (chosen_len, rejected_len)


def _reference(name, pc, pr, rc, rr, *, beta, chosen_lengths, rejected_lengths,
               label_smoothing=0.0, nll_weight=1.0, gamma=0.5):
  """Returns the per-sequence float64 loss of the paper's formula (see preference.py)."""
  eps, h = label_smoothing, (pc - rc) - (pr - rr)
  lc, lr = np.asarray(chosen_lengths, np.float64), np.asarray(rejected_lengths, np.float64)
  dpo = -(1 - eps) * _log_sigmoid(beta * h) - eps * _log_sigmoid(-beta * h)
  return {
      'sigmoid': lambda: dpo,
      'ipo': lambda: ((pc - rc) / lc - (pr - rr) / lr - 1 / (2 * beta)) ** 2,
      'hinge': lambda: np.maximum(0.0, 1 - beta * h),
      'robust': lambda: ((1 - eps) * -_log_sigmoid(beta * h) + eps * _log_sigmoid(-beta * h))
                        / (1 - 2 * eps),
      'rpo': lambda: dpo + nll_weight * -pc / lc,
      'simpo': lambda: -_log_sigmoid(beta * pc / lc - beta * pr / lr - gamma),
      'sft': lambda: -pc / lc,
  }[name]()


def _reference_metrics(name, pc, pr, rc, rr, *, beta, chosen_lengths, rejected_lengths, **_):
  """Returns the float64 reference metrics other than `loss`."""
  if name == 'simpo':
    chosen, rejected = beta * pc / chosen_lengths, beta * pr / rejected_lengths
  else:
    chosen, rejected = beta * (pc - rc), beta * (pr - rr)
  return {'rewards/chosen': chosen.mean(), 'rewards/rejected': rejected.mean(),
          'rewards/margins': (chosen - rejected).mean(),
          'rewards/accuracies': (chosen > rejected).mean(),
          'logps/chosen': pc.mean(), 'logps/rejected': pr.mean()}


def _options(label_smoothing, seed=0):
  _, (chosen_len, rejected_len) = _batch(seed)
  return dict(chosen_lengths=chosen_len, rejected_lengths=rejected_len,
              label_smoothing=label_smoothing, nll_weight=0.7, gamma=0.3)


def _formula(name):
  return objectives.get(name).formula


def _call(name, logps, options, jit):
  fn = functools.partial(_formula(name), beta=BETA)
  fn = jax.jit(fn) if jit else fn
  return fn(*[jnp.asarray(x) for x in logps], **{k: jnp.asarray(v) for k, v in options.items()})


@pytest.mark.parametrize('jit', [False, True])
@pytest.mark.parametrize('label_smoothing', [0.0, 0.15])
@pytest.mark.parametrize('name', PREFERENCE_LOSSES)
def test_loss_matches_published_formula(name, label_smoothing, jit):
  logps, _ = _batch()
  options = _options(label_smoothing)
  expected = _reference(name, *logps, beta=BETA, **options).mean()
  expected_metrics = _reference_metrics(name, *logps, beta=BETA, **options)

  # float32, as in training: float32 rounding of sums near -100 allows about 1e-5.
  loss, metrics = _call(name, [x.astype(np.float32) for x in logps], options, jit)
  assert loss.shape == () and loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-5)
  assert METRIC_NAMES <= set(metrics)
  for key, value in metrics.items():
    assert value.shape == () and value.dtype == jnp.float32, key
  np.testing.assert_allclose(metrics['loss'], expected, rtol=1e-5, atol=1e-5)
  for key, value in expected_metrics.items():
    np.testing.assert_allclose(metrics[key], value, rtol=1e-5, atol=1e-5, err_msg=key)

  # float64 leaves only the formula to compare.
  with jax.enable_x64(True):
    loss64, _ = _call(name, logps, options, jit)
  np.testing.assert_allclose(loss64, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('jit', [False, True])
@pytest.mark.parametrize('name', PREFERENCE_LOSSES)
def test_gradients_match_finite_differences(name, jit):
  logps, _ = _batch(1)
  options = _options(0.15, seed=1)
  h = (logps[0] - logps[2]) - (logps[1] - logps[3])
  assert np.all(np.abs(1 - BETA * h) > 1e-3), 'a hinge kink this close breaks the check'
  with jax.enable_x64(True):
    jnp_options = {k: jnp.asarray(v) for k, v in options.items()}
    loss_fn = lambda *x: _formula(name)(*x, beta=BETA, **jnp_options)[0]
    grad_fn = jax.grad(loss_fn, argnums=(0, 1, 2, 3))
    grads = (jax.jit(grad_fn) if jit else grad_fn)(*[jnp.asarray(x) for x in logps])
    # All 2 * 4B perturbed copies of the inputs go through one vmapped call.
    step = 1e-5
    deltas = np.eye(4 * B).reshape(4 * B, 4, B) * step
    base = np.stack(logps)[None]
    values = jax.vmap(lambda x: loss_fn(*x))(jnp.asarray(np.concatenate([base + deltas,
                                                                         base - deltas])))
  values = np.asarray(values)
  numeric = ((values[:4 * B] - values[4 * B:]) / (2 * step)).reshape(4, B)
  np.testing.assert_allclose(np.stack(grads), numeric, rtol=1e-6, atol=1e-9)


def test_rpo_uses_given_chosen_nll():
  logps, _ = _batch()
  options = _options(0.0)
  nll = np.linspace(0.5, 2.0, B)
  loss, metrics = preference.rpo(*logps, beta=BETA, chosen_nll=nll, nll_weight=0.5)
  dpo = _reference('sigmoid', *logps, beta=BETA, **options).mean()
  np.testing.assert_allclose(loss, dpo + 0.5 * nll.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics['nll_loss'], nll.mean(), rtol=1e-6)


def _numpy_token_logps(logits, targets):
  shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
  log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return np.take_along_axis(log_softmax, targets[..., None], axis=-1)[..., 0]


def _logits_batch(seed=0, shape=(3, 7, 11)):
  rng = np.random.default_rng(seed)
  logits = rng.normal(0, 3, shape).astype(np.float32)
  targets = rng.integers(0, shape[-1], shape[:2])
  mask = rng.random(shape[:2]) < 0.7
  mask[-1] = False  # A row with no target tokens.
  return logits, targets, mask


@pytest.mark.parametrize('jit', [False, True])
def test_target_logp_sums_match_numpy(jit):
  logits, targets, mask = _logits_batch()
  expected = (_numpy_token_logps(logits, targets) * mask).sum(-1)
  padded_targets = np.where(mask, targets, -100)  # Padding ids must not reach the gather.
  fn = jax.jit(features.target_logp_sums) if jit else features.target_logp_sums
  logps, n_tokens = fn(jnp.asarray(logits), jnp.asarray(padded_targets), jnp.asarray(mask))
  assert logps.dtype == jnp.float32 and logps.shape == (3,)
  np.testing.assert_allclose(logps, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(n_tokens, mask.sum(-1))
  # bfloat16 logits (a bfloat16 model's output) still give float32 log-probs.
  bf16_logits = jnp.asarray(logits, jnp.bfloat16)
  token_fn = jax.jit(features.token_logps) if jit else features.token_logps
  token_logps = token_fn(bf16_logits, targets)
  assert token_logps.dtype == jnp.float32
  np.testing.assert_allclose(token_logps, _numpy_token_logps(np.float32(bf16_logits), targets),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('jit', [False, True])
def test_nll_objective_is_token_mean_over_targets(jit):
  logits, targets, mask = _logits_batch(2)
  nll = -_numpy_token_logps(logits, targets)
  top1 = logits.argmax(-1) == targets

  def feats(m):  # S = 1 sequence per example
    return objectives.Features(policy_logps=jnp.asarray(np.where(m, -nll, 0.0))[:, None],
                               loss_mask=jnp.asarray(m)[:, None],
                               is_top1=jnp.asarray(top1 & m)[:, None])
  fn = jax.jit(objectives.get('nll')) if jit else objectives.get('nll')
  loss, metrics = fn(feats(mask))
  np.testing.assert_allclose(loss, nll[mask].mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics['loss'], loss)
  assert metrics['n_tokens'] == mask.sum()
  np.testing.assert_allclose(metrics['accuracy'], top1[mask].mean(), rtol=1e-6)
  empty_loss, empty_metrics = fn(feats(np.zeros_like(mask)))
  assert empty_loss == 0 and empty_metrics['accuracy'] == 0


def _pair_features(per_token, mask, ref_logps=None, ref_token_logps=None):
  """Returns Features of B pairs from [2B, T] per-token rows (chosen rows, then rejected)."""
  pairs = lambda x: None if x is None else jnp.asarray(np.stack([x[:B], x[B:]], 1))
  ref = None if ref_logps is None else jnp.asarray(np.stack(ref_logps, 1))
  return objectives.Features(policy_logps=pairs(np.where(mask, per_token, 0.0)),
                             loss_mask=pairs(mask), ref_logps=ref,
                             ref_token_logps=pairs(ref_token_logps))


@pytest.mark.parametrize('name', PREFERENCE_LOSSES)
def test_pair_objective_on_token_features_is_formula_on_sums(name):
  """A registered preference objective given per-token features (with per-token or
  per-sequence reference log-probs) gives the published formula on the sequence sums."""
  per_token, mask = _token_batch(11)
  ref_token = np.where(mask, -np.random.default_rng(12).uniform(0.05, 2.5, mask.shape), 0.0)
  sums, ref_sums, lengths = (per_token * mask).sum(-1), ref_token.sum(-1), mask.sum(-1)
  expected = _reference(name, sums[:B], sums[B:], ref_sums[:B], ref_sums[B:], beta=BETA,
                        chosen_lengths=lengths[:B], rejected_lengths=lengths[B:],
                        label_smoothing=0.1, nll_weight=0.7, gamma=0.3).mean()
  options = dict(label_smoothing=0.1, nll_weight=0.7, gamma=0.3)
  objective = jax.jit(functools.partial(objectives.get(name), beta=BETA, **options))
  with jax.enable_x64(True):
    by_token = objective(_pair_features(per_token, mask, ref_token_logps=ref_token))[0]
    by_sequence = objective(_pair_features(per_token, mask, (ref_sums[:B], ref_sums[B:])))[0]
  np.testing.assert_allclose(by_token, expected, rtol=1e-12)
  np.testing.assert_allclose(by_sequence, expected, rtol=1e-12)


def test_objective_written_on_token_features_equals_sequence_formula(monkeypatch):
  """Sigmoid DPO written on per-token log-ratios (an objective as a researcher would add one)
  equals the published sequence-sum formula and the registered 'sigmoid' objective."""
  monkeypatch.setattr(base, '_REGISTRY', dict(base._REGISTRY))

  @objectives.register('token_dpo')
  def token_dpo(f: objectives.Features, *, beta, **options):
    del options
    ratio_BST = jnp.where(f.loss_mask, f.policy_logps - f.ref_token_logps, 0.0)
    margin_B = ratio_BST[:, 0].sum(-1) - ratio_BST[:, 1].sum(-1)
    loss = -jax.nn.log_sigmoid(beta * margin_B).mean()
    return loss, {'loss': loss}

  per_token, mask = _token_batch(13)
  ref_token = np.where(mask, -np.random.default_rng(14).uniform(0.05, 2.5, mask.shape), 0.0)
  sums, ref_sums = (per_token * mask).sum(-1), ref_token.sum(-1)
  expected = _reference('sigmoid', sums[:B], sums[B:], ref_sums[:B], ref_sums[B:], beta=BETA,
                        chosen_lengths=None, rejected_lengths=None).mean()
  feats = _pair_features(per_token.astype(np.float32), mask,
                         ref_token_logps=ref_token.astype(np.float32))
  loss, _ = jax.jit(functools.partial(objectives.get('token_dpo'), beta=BETA))(feats)
  registered, _ = objectives.get('sigmoid')(feats, beta=BETA)
  assert 'token_dpo' in objectives.names()
  np.testing.assert_allclose(loss, expected, rtol=1e-5)  # float32 sums of ~50 tokens
  np.testing.assert_allclose(loss, registered, rtol=1e-6)


def test_pair_objective_needs_pairs():
  per_token, mask = _token_batch(15)
  single = objectives.Features(policy_logps=jnp.asarray(per_token)[:, None],
                               loss_mask=jnp.asarray(mask)[:, None])
  with pytest.raises(ValueError, match='S = 2'):
    objectives.get('sigmoid')(single, beta=BETA)


def test_registry():
  assert set(PREFERENCE_LOSSES + ['nll']) <= set(objectives.names())
  assert objectives.get('sigmoid').formula is preference.sigmoid
  with pytest.raises(KeyError, match='sigmoid') as error:
    objectives.get('no_such_loss')
  assert 'no_such_loss' in str(error.value) and 'simpo' in str(error.value)


def test_register_custom_pair_loss(monkeypatch):
  monkeypatch.setattr(base, '_REGISTRY', dict(base._REGISTRY))

  @objectives.register_pair_loss('my_loss')
  def my_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
              *, beta, **options):
    del options
    return preference.hinge(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                            ref_rejected_logps, beta=2 * beta)

  assert _formula('my_loss') is my_loss and 'my_loss' in objectives.names()
  logps, _ = _batch()
  np.testing.assert_allclose(_formula('my_loss')(*logps, beta=BETA)[0],
                             preference.hinge(*logps, beta=2 * BETA)[0])
  per_token, mask = _token_batch(16)
  sums = (per_token * mask).sum(-1)
  refs = (sums[:B] - 1.0, sums[B:] + 1.0)
  np.testing.assert_allclose(
      objectives.get('my_loss')(_pair_features(per_token, mask, refs), beta=BETA)[0],
      preference.hinge(sums[:B], sums[B:], *refs, beta=2 * BETA)[0], rtol=1e-6)


@pytest.mark.parametrize('name', ['ipo', 'rpo', 'simpo', 'sft'])
def test_missing_required_option_raises(name):
  logps, (chosen_len, _) = _batch()
  with pytest.raises(ValueError, match=f"'{name}'.*'chosen_lengths'"):
    _formula(name)(*logps, beta=BETA, label_smoothing=0.1)
  if name in ('ipo', 'simpo'):
    with pytest.raises(ValueError, match="'rejected_lengths'"):
      _formula(name)(*logps, beta=BETA, chosen_lengths=chosen_len)


def test_robust_rejects_label_smoothing_of_one_half():
  logps, _ = _batch()
  with pytest.raises(ValueError, match='label_smoothing'):
    preference.robust(*logps, beta=BETA, label_smoothing=0.5)


@pytest.mark.parametrize('name', PREFERENCE_LOSSES)
def test_unknown_options_are_ignored(name):
  logps, _ = _batch()
  options = _options(0.1)
  loss, _ = _formula(name)(*logps, beta=BETA, **options)
  loss_extra, _ = _formula(name)(*logps, beta=BETA, **options, not_an_option=3, other=None)
  np.testing.assert_array_equal(loss, loss_extra)


# TRL: the losses compared here are TRL's own code paths, run on the same log-probs.


@pytest.fixture(scope='module')
def trl():
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import trl as trl_module  # pylint: disable=g-import-not-at-top
    from trl import DPOTrainer  # pylint: disable=g-import-not-at-top
    from trl.experimental.cpo import CPOTrainer  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    pytest.fail(f'the TRL comparison needs trl (pip install trl): {e}')
  return types.SimpleNamespace(torch=torch, version=trl_module.__version__, DPOTrainer=DPOTrainer,
                               CPOTrainer=CPOTrainer)


def _token_batch(seed, equal_lengths=False):
  """Returns float64 per-token log-probs [2B, T] (chosen rows, then rejected) and their mask."""
  rng = np.random.default_rng(seed)
  T = 48
  lengths = np.full(2 * B, 30) if equal_lengths else rng.integers(1, T + 1, 2 * B)
  mask = np.arange(T)[None] < lengths[:, None]
  return np.where(mask, -rng.uniform(0.05, 2.5, (2 * B, T)), 0.0), mask


def _trl_dpo(trl, loss_type, per_token, mask, ref_logps, *, beta, label_smoothing):
  """Returns TRL DPOTrainer._compute_loss's loss and logged metrics on fixed log-probs."""
  torch = trl.torch
  n, T = per_token.shape
  # TRL scores position t + 1 of input_ids with column t of the log-probs: the completion mask
  # carries a leading prompt column that the shift drops.
  completion_mask = torch.tensor(np.concatenate([np.zeros((n, 1), bool), mask], 1)).long()
  log_probs = torch.tensor(per_token)
  stand_in_model = lambda **kw: types.SimpleNamespace(
      log_probs=log_probs, entropy=torch.zeros(n, T), mean_logits=torch.zeros(n, T),
      is_top1=torch.zeros(n, T, dtype=torch.bool))
  identity = lambda x: x
  trainer = types.SimpleNamespace(
      model=types.SimpleNamespace(training=False),
      accelerator=types.SimpleNamespace(device='cpu', gather=identity, gather_for_metrics=identity),
      aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
      f_divergence_type='reverse_kl', loss_types=[loss_type], loss_weights=[1.0], beta=beta,
      label_smoothing=label_smoothing, use_weighting=False, _total_train_tokens=0, _tp_size=1,
      _metrics=collections.defaultdict(lambda: collections.defaultdict(list)),
      args=types.SimpleNamespace())
  inputs = {'input_ids': torch.zeros(n, T + 1, dtype=torch.long),
            'attention_mask': torch.ones(n, T + 1, dtype=torch.long),
            'completion_mask': completion_mask,
            'ref_chosen_logps': torch.tensor(ref_logps[0]),
            'ref_rejected_logps': torch.tensor(ref_logps[1])}
  loss = trl.DPOTrainer._compute_loss(trainer, stand_in_model, inputs, return_outputs=False)
  return loss.item(), {k: v[0] for k, v in trainer._metrics['eval'].items()}


def _ours(name, per_token, mask, ref_logps, *, beta, **options):
  """Returns the registered objective on the per-token features of TRL's inputs (float64)."""
  with jax.enable_x64(True):
    return objectives.get(name)(_pair_features(per_token, mask, ref_logps), beta=beta,
                                **options)


@pytest.mark.parametrize('loss_type', ['sigmoid', 'ipo', 'hinge', 'robust', 'sft'])
def test_matches_trl_dpo_trainer(trl, loss_type):
  # TRL's sft is a token mean over the batch, ours a mean of per-sequence token means: they
  # agree when all chosen responses have the same length.
  per_token, mask = _token_batch(3, equal_lengths=loss_type == 'sft')
  ref_logps = -np.random.default_rng(4).uniform(5, 60, (2, B))
  eps = 0.2 if loss_type == 'robust' else 0.0
  trl_loss, trl_metrics = _trl_dpo(trl, loss_type, per_token, mask, ref_logps, beta=0.3,
                                   label_smoothing=eps)
  loss, metrics = _ours(loss_type, per_token, mask, ref_logps, beta=0.3, label_smoothing=eps)
  np.testing.assert_allclose(loss, trl_loss, rtol=1e-6, err_msg=f'trl {trl.version}')
  for key in METRIC_NAMES - {'loss'}:
    np.testing.assert_allclose(metrics[key], trl_metrics[key], rtol=1e-6, err_msg=key)


def test_conservative_dpo_matches_trl(trl):
  # TRL >= 1.0 keeps cDPO's label-smoothed sigmoid only in its 'aot' loss, which applies it
  # after sorting the policy and reference log-ratios over the batch; on a batch where both
  # are already ascending, 'aot' is exactly cDPO.
  per_token, mask = _token_batch(5)
  sums = (per_token * mask).sum(-1)
  order = np.argsort(sums[:B] - sums[B:])
  per_token = np.concatenate([per_token[:B][order], per_token[B:][order]])
  mask = np.concatenate([mask[:B][order], mask[B:][order]])
  sums = (per_token * mask).sum(-1)
  ref_rejected = -np.random.default_rng(6).uniform(5, 60, B)
  ref_chosen = ref_rejected + np.sort(np.random.default_rng(7).normal(0, 5, B))
  trl_loss, _ = _trl_dpo(trl, 'aot', per_token, mask, (ref_chosen, ref_rejected), beta=0.1,
                         label_smoothing=0.25)
  loss, _ = _ours('sigmoid', per_token, mask, (ref_chosen, ref_rejected), beta=0.1,
                  label_smoothing=0.25)
  assert np.all(np.diff(sums[:B] - sums[B:]) >= 0)
  np.testing.assert_allclose(loss, trl_loss, rtol=1e-6, err_msg=f'trl {trl.version}')


def test_simpo_matches_trl_cpo_trainer(trl):
  per_token, mask = _token_batch(8)
  lengths = mask.sum(-1)
  # TRL's CPOTrainer feeds SimPO length-averaged log-probs.
  average = trl.torch.tensor((per_token * mask).sum(-1) / lengths)
  trainer = types.SimpleNamespace(alpha=0.0, loss_type='simpo', beta=2.0, simpo_gamma=0.8,
                                  label_smoothing=0.0,
                                  accelerator=types.SimpleNamespace(device='cpu'))
  trl_losses, trl_chosen, trl_rejected = trl.CPOTrainer.cpo_loss(trainer, average[:B], average[B:])
  loss, metrics = _ours('simpo', per_token, mask, np.zeros((2, B)), beta=2.0, gamma=0.8)
  np.testing.assert_allclose(loss, trl_losses.mean().item(), rtol=1e-6)
  np.testing.assert_allclose(metrics['rewards/chosen'], trl_chosen.mean().item(), rtol=1e-6)
  np.testing.assert_allclose(metrics['rewards/rejected'], trl_rejected.mean().item(), rtol=1e-6)


def test_token_logps_matches_trl(trl):
  logits, targets, _ = _logits_batch(9)
  from trl.trainer.utils import selective_log_softmax  # pylint: disable=g-import-not-at-top
  expected = selective_log_softmax(trl.torch.tensor(logits), trl.torch.tensor(targets)).numpy()
  np.testing.assert_allclose(features.token_logps(jnp.asarray(logits), targets), expected,
                             rtol=1e-5, atol=1e-5)
