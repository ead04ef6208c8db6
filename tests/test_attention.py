"""attention.attend against the formula softmax(q k^T / sqrt(Dh)) v, written here in numpy.

The decode path (one query a row, SUM_MIN_ROWS query rows or more, on a CPU) computes its
scores as a sum of broadcast products, not a dot; both paths must give the formula's numbers,
shared blocks and masks included.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srlm_jax import attention

B, K, G, DH = 6, 2, 3, 16


def _reference(q_BKGTd, blocks):
  """The formula over the blocks' slots joined, each shared block repeated for its rows."""
  q = np.asarray(q_BKGTd, np.float64)
  keys, vals, allowed = [], [], []
  for key_bKdS, val_bKSd, allowed_bTS in blocks:
    n = q.shape[0] // key_bKdS.shape[0]
    keys.append(np.repeat(np.asarray(key_bKdS, np.float64), n, axis=0))
    vals.append(np.repeat(np.asarray(val_bKSd, np.float64), n, axis=0))
    allowed.append(np.broadcast_to(np.repeat(np.asarray(allowed_bTS), n, axis=0)
                                   if allowed_bTS.shape[0] > 1 else np.asarray(allowed_bTS),
                                   (q.shape[0], q.shape[3], key_bKdS.shape[-1])))
  key, val, ok = (np.concatenate(keys, -1), np.concatenate(vals, -2),
                  np.concatenate(allowed, -1))
  logits = np.einsum('bkgtd,bkds->bkgts', q, key) / np.sqrt(q.shape[-1])
  logits = np.where(ok[:, None, None], logits, -np.inf)
  probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
  probs /= probs.sum(axis=-1, keepdims=True)
  return np.einsum('bkgts,bksd->bkgtd', probs, val)


def _blocks(rng, t, n_shared=3):
  """A block shared by n_shared rows, a prompt block with padding, and the rows' own slots."""
  normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  prompt_mask = np.ones((B, t, 7), bool)
  prompt_mask[0, :, :3] = False  # left padding
  own_mask = np.broadcast_to(np.arange(5)[None, None, :] <= 2, (1, t, 5))
  shared = B // n_shared
  return [(normal(shared, K, DH, 4), normal(shared, K, 4, DH), np.ones((1, t, 4), bool)),
          (normal(B, K, DH, 7), normal(B, K, 7, DH), prompt_mask),
          (normal(B, K, DH, 5), normal(B, K, 5, DH), own_mask)]


@pytest.mark.parametrize('t,sum_min_rows', [(1, 0), (1, attention.SUM_MIN_ROWS), (3, 0)])
def test_attend_matches_the_formula(t, sum_min_rows, monkeypatch):
  """With one query a row, through the sum of products (threshold 0) and through the dot."""
  monkeypatch.setattr(attention, 'SUM_MIN_ROWS', sum_min_rows)
  rng = np.random.default_rng(t)
  q = rng.standard_normal((B, K, G, t, DH)).astype(np.float32)
  blocks = _blocks(rng, t)
  for chosen in (blocks, blocks[1:2]):  # several blocks, and one
    got = jax.jit(lambda q, b: attention.attend(q, b, jnp.float32))(q, chosen)
    np.testing.assert_allclose(np.asarray(got), _reference(q, chosen), rtol=2e-5, atol=2e-6)


def test_decode_scores_equal_the_dot_without_running_one():
  """One query a row, SUM_MIN_ROWS query rows or more, on a CPU: the sum of products, no dot."""
  rng = np.random.default_rng(0)
  rows = attention.SUM_MIN_ROWS // (K * G) + 1
  q = rng.standard_normal((rows, K, G, 1, DH)).astype(np.float32)
  key = rng.standard_normal((rows, K, DH, 9)).astype(np.float32)
  jaxpr = str(jax.make_jaxpr(attention.scores)(q, key))
  assert 'cond' in jaxpr and 'dot_general' not in jaxpr
  for fewer_rows_or_queries in (q[:rows - 2], np.repeat(q, 2, axis=3)):
    jaxpr = str(jax.make_jaxpr(attention.scores)(fewer_rows_or_queries, key[:len(
        fewer_rows_or_queries)]))
    assert 'dot_general' in jaxpr and 'cond' not in jaxpr
  dot = np.einsum('bkxtd,bkds->bkxts', q.astype(np.float64), key)
  np.testing.assert_allclose(np.asarray(jax.jit(attention.scores)(q, key)), dot, rtol=1e-5,
                             atol=1e-5)
  # A NaN query takes the cond's other branch: its row is NaN, every other row unchanged.
  q[0, 0, 0, 0, 0] = np.nan
  got = np.asarray(jax.jit(attention.scores)(q, key))
  assert np.isnan(got[0, 0, 0]).all() and not np.isnan(got[1:]).any()
  np.testing.assert_allclose(got[1:], dot[1:], rtol=1e-5, atol=1e-5)
