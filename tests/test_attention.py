"""attention.attend against the formula softmax(q k^T / sqrt(Dh)) v, written here in numpy:
one query a row (decode) and several, shared blocks and masks included."""

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


@pytest.mark.parametrize('t', [1, 3])
def test_attend_matches_the_formula(t):
  """With one query a row (a decode step) and with three, over several blocks and over one."""
  rng = np.random.default_rng(t)
  q = rng.standard_normal((B, K, G, t, DH)).astype(np.float32)
  blocks = _blocks(rng, t)
  for chosen in (blocks, blocks[1:2]):  # several blocks, and one
    got = jax.jit(lambda q, b: attention.attend(q, b, jnp.float32))(q, chosen)
    np.testing.assert_allclose(np.asarray(got), _reference(q, chosen), rtol=2e-5, atol=2e-6)
