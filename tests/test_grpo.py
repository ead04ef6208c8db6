"""GRPO's advantages, loss and gradient against float64 references written from the papers.

The references loop over groups, samples and tokens in plain Python/NumPy, from the published
formulas (DeepSeekMath Sec. 4.1.2 and Eq. 3-4; Dr. GRPO, arXiv 2503.20783; PPO's clip), not
from srlm_jax/objectives/grpo.py.
"""

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from srlm_jax import objectives
from srlm_jax.objectives import grpo as grpo_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ref_advantages(rewards, dr_grpo, eps=1e-4):
  """A_i = (r_i - mean) / (std + eps), population std; Dr. GRPO: r_i - mean."""
  out = np.zeros(rewards.shape, np.float64)
  for b, group in enumerate(np.asarray(rewards, np.float64)):
    mean = sum(group) / len(group)
    std = (sum((r - mean) ** 2 for r in group) / len(group)) ** 0.5
    for i, r in enumerate(group):
      out[b, i] = (r - mean) if dr_grpo else (r - mean) / (std + eps)
  return out


def ref_loss(logp, old, ref, mask, adv, *, beta, clip_eps, dr_grpo, max_tokens):
  """-1/(BG) sum_i [1/|o_i| or 1/max_tokens] sum_t (min(rho A, clip(rho) A) - beta k3)."""
  b_, g_, t_ = logp.shape
  total = 0.0
  for b in range(b_):
    for i in range(g_):
      seq, n = 0.0, 0
      for t in range(t_):
        if not mask[b, i, t]:
          continue
        n += 1
        rho = np.exp(float(logp[b, i, t]) - float(old[b, i, t]))
        a = float(adv[b, i])
        surrogate = min(rho * a, min(max(rho, 1 - clip_eps), 1 + clip_eps) * a)
        d = float(ref[b, i, t]) - float(logp[b, i, t])
        kl = np.exp(d) - d - 1
        seq += surrogate - beta * kl
      seq /= max_tokens if dr_grpo else max(n, 1)
      total += seq
  return -total / (b_ * g_)


def batch(seed=0, b=3, g=4, t=7):
  rng = np.random.default_rng(seed)
  logp = -rng.uniform(0.1, 3.0, (b, g, t))
  old = logp + rng.normal(0, 0.3, (b, g, t))  # ratios from about 0.4 to 2.5: clipping bites
  ref = logp + rng.normal(0, 0.5, (b, g, t))
  lengths = rng.integers(1, t + 1, (b, g))
  mask = np.arange(t)[None, None] < lengths[..., None]
  rewards = rng.integers(0, 3, (b, g)).astype(np.float64)
  rewards[0] = 1.0  # a zero-variance group
  return logp, old, ref, mask, rewards


@pytest.mark.parametrize('dr_grpo', [False, True])
def test_advantages_match_the_published_formula(dr_grpo):
  *_, rewards = batch()
  got = np.asarray(grpo_lib.group_advantages(jnp.asarray(rewards, jnp.float32), dr_grpo=dr_grpo))
  want = ref_advantages(rewards, dr_grpo)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert np.all(got[0] == 0)  # equal rewards: no advantage, no gradient
  if not dr_grpo:  # normalised groups with spread have unit (population) std, up to eps
    spread = want.std(axis=1) > 0
    np.testing.assert_allclose(got[spread].std(axis=1), 1.0, rtol=1e-3)


@pytest.mark.parametrize('dr_grpo,beta', [(False, 0.0), (False, 0.04), (True, 0.0),
                                          (True, 0.1)])
def test_loss_matches_the_published_formula(dr_grpo, beta):
  logp, old, ref, mask, rewards = batch(1)
  adv = ref_advantages(rewards, dr_grpo)
  features = objectives.Features(
      policy_logps=jnp.asarray(np.where(mask, logp, 0), jnp.float32), loss_mask=jnp.asarray(mask),
      old_logps=jnp.asarray(old, jnp.float32), ref_token_logps=jnp.asarray(ref, jnp.float32),
      rewards=jnp.asarray(rewards, jnp.float32))
  loss, metrics = objectives.get('grpo')(features, beta=beta, clip_eps=0.2, dr_grpo=dr_grpo,
                                         max_tokens=7)
  want = ref_loss(logp, old, ref, mask, adv, beta=beta, clip_eps=0.2, dr_grpo=dr_grpo,
                  max_tokens=7)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-6)
  ratio = np.exp(logp - old)[mask]
  np.testing.assert_allclose(float(metrics['clip_fraction']),
                             np.mean((ratio < 0.8) | (ratio > 1.2)), rtol=1e-6)
  assert 0 < float(metrics['clip_fraction']) < 1  # the test covers both branches of the min
  d = (ref - logp)[mask]
  want_kl = np.mean(np.exp(d) - d - 1) if beta else 0.0
  np.testing.assert_allclose(float(metrics['kl']), want_kl, rtol=1e-5, atol=1e-7)


def test_given_advantages_and_single_update_case():
  """Advantages given directly equal those computed from rewards; without old log-probs the
  ratio is 1 and the loss is -mean_i mean_t A_i (the on-policy case)."""
  logp, _, ref, mask, rewards = batch(2)
  adv = ref_advantages(rewards, False)
  f = lambda **kw: objectives.Features(
      policy_logps=jnp.asarray(logp, jnp.float32), loss_mask=jnp.asarray(mask), **kw)
  grpo = objectives.get('grpo')
  a, _ = grpo(f(rewards=jnp.asarray(rewards, jnp.float32)))
  b, m = grpo(f(advantages=jnp.asarray(adv, jnp.float32)))
  np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
  np.testing.assert_allclose(float(a), -adv.mean(), atol=1e-6)  # each row's token mean is A_i
  assert float(m['ratio']) == 1.0 and float(m['kl']) == 0.0
  del ref


def test_errors_name_what_is_missing():
  logp, _, _, mask, rewards = batch()
  f = objectives.Features(policy_logps=jnp.asarray(logp, jnp.float32),
                          loss_mask=jnp.asarray(mask), rewards=jnp.asarray(rewards))
  with pytest.raises(ValueError, match='ref_token_logps'):
    objectives.get('grpo')(f, beta=0.1)
  with pytest.raises(ValueError, match='max_tokens'):
    objectives.get('grpo')(f, dr_grpo=True)
  with pytest.raises(ValueError, match='advantages or Features.rewards'):
    objectives.get('grpo')(objectives.Features(policy_logps=f.policy_logps,
                                               loss_mask=f.loss_mask))


GRADIENT_CHECK = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update('jax_enable_x64', True)
    import sys; sys.path.insert(0, {tests!r})
    from test_grpo import batch, ref_advantages
    from srlm_jax import objectives
    for dr_grpo, beta in ((False, 0.04), (True, 0.1)):
      logp, old, ref, mask, rewards = batch(3)
      adv = ref_advantages(rewards, dr_grpo)
      def loss(x):
        f = objectives.Features(policy_logps=x, loss_mask=jnp.asarray(mask),
                                old_logps=jnp.asarray(old), ref_token_logps=jnp.asarray(ref),
                                advantages=jnp.asarray(adv))
        return objectives.get('grpo')(f, beta=beta, clip_eps=0.2, dr_grpo=dr_grpo,
                                      max_tokens=7)[0]
      x = jnp.asarray(logp)
      assert x.dtype == jnp.float64
      grad = np.asarray(jax.grad(loss)(x))
      fd, h = np.zeros_like(logp), 1e-6
      for index in np.ndindex(*logp.shape):
        e = np.zeros_like(logp); e[index] = h
        fd[index] = (float(loss(x + e)) - float(loss(x - e))) / (2 * h)
      # A token exactly at a clip boundary has no derivative; none is within 1e-4 of one.
      rho = np.exp(logp - old)
      assert np.min(np.abs(np.abs(rho - 1) - 0.2)) > 1e-4
      np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
      assert np.abs(grad[~mask]).max() == 0 and np.abs(grad[mask]).max() > 1e-3
    print('ok')
''')


def test_gradient_matches_finite_differences_in_float64():
  """jax.grad of the loss w.r.t. the policy's token log-probs equals central differences
  (float64, in a subprocess so that x64 does not leak into other tests)."""
  code = GRADIENT_CHECK.format(tests=os.path.join(ROOT, 'tests'))
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert out.returncode == 0 and out.stdout.strip().endswith('ok'), out.stderr[-3000:]
