"""The Rollout's host edge: completion texts, npz files of arrays, and joining rollouts.

Axis legend as in rollout.py: B prompts, R = B*n rows, P prompt width, M new-token width.
Nothing here is on the data path: texts feed records (JSONL, for audit) and judge prompts;
npz files hold what a later stage needs to resume (token ids, log-probs, scores).
"""

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from srlm_jax import distributed, sampler, sharding, store
from srlm_jax.rollout import rollout as rollout_lib


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
  """Returns text cut before the first occurrence of any stop string."""
  cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
  return text[:min(cuts)] if cuts else text


def to_host(rollout: rollout_lib.Rollout) -> dict:
  """Returns the Rollout's fields as host NumPy arrays (an explicit device-to-host copy)."""
  return distributed.to_host(rollout.arrays())


def row_text(tokens_M: np.ndarray, length: int, reason: int, tokenizer: Any,
             stop: Sequence[str] = ()) -> str:
  """Returns one completion's text: decoded without its eos token, cut before a stop string."""
  gen = tokens_M[:length]
  body = gen[:-1] if reason == sampler.StopReason.EOS else gen
  return cut_at_stop(tokenizer.decode(body.tolist(), skip_special=True), stop)


def texts(rollout: rollout_lib.Rollout, tokenizer: Any, stop: Sequence[str] = ()
          ) -> list[list[str]]:
  """Returns per prompt its n completion texts (eos dropped, cut before any stop string)."""
  host = distributed.to_host({k: getattr(rollout, k)
                              for k in ('tokens', 'lengths', 'stop_reason')})
  stop = tuple(s for s in stop if s)
  flat = [row_text(host['tokens'][r], int(host['lengths'][r]), int(host['stop_reason'][r]),
                   tokenizer, stop) for r in range(rollout.num_rows)]
  return [flat[i * rollout.n:(i + 1) * rollout.n] for i in range(rollout.num_prompts)]


def flatten(tree: dict, prefix: str = '') -> dict:
  """Returns a nested dict of arrays as one flat dict with '/'-joined keys."""
  out = {}
  for k, v in tree.items():
    if '/' in k:
      raise ValueError(f'array name {k!r} must not contain "/"')
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}/'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def unflatten(flat: dict) -> dict:
  """Returns the nested dict of a flat dict with '/'-joined keys (inverse of flatten)."""
  return sharding.unflatten_paths(flat)


def save(path: str, arrays: dict) -> str:
  """Writes a flat dict of arrays to an .npz file atomically (process 0); returns the path."""
  if not path.endswith('.npz'):
    raise ValueError(f'{path}: an arrays file must end with .npz')
  store.save_arrays(path, arrays)  # the one npz writer (stage shards use it too)
  return path


def load(path: str) -> dict:
  """Returns the arrays of an .npz file written by `save` as host NumPy arrays (checked
  against its stage's DONE when one records it)."""
  try:
    return store.load_arrays(path)
  except (OSError, ValueError) as e:
    raise ValueError(f'{path}: not a readable .npz of arrays ({e})') from e


@functools.partial(jax.jit, static_argnames=('p', 'm', 'pad_id'))
def _widen(r: rollout_lib.Rollout, p: int, m: int, pad_id: int) -> rollout_lib.Rollout:
  """Returns r with prompts left-padded to width p and completions right-padded to m."""
  lp = ((0, 0), (p - r.prompt_tokens.shape[1], 0))
  rp = ((0, 0), (0, m - r.tokens.shape[1]))
  return r.replace(
      prompt_tokens=jnp.pad(r.prompt_tokens, lp, constant_values=pad_id),
      prompt_mask=jnp.pad(r.prompt_mask, lp), tokens=jnp.pad(r.tokens, rp, constant_values=pad_id),
      logprobs=jnp.pad(r.logprobs, rp))


def concat(rollouts: Sequence[rollout_lib.Rollout], pad_id: int = 0) -> rollout_lib.Rollout:
  """Returns one Rollout of the prompts of several, in order (widths padded to the widest)."""
  if not rollouts:
    raise ValueError('concat needs at least one rollout')
  ns = {r.n for r in rollouts}
  if len(ns) != 1:
    raise ValueError(f'cannot concatenate rollouts with different n: {sorted(ns)}')
  p = max(r.prompt_tokens.shape[1] for r in rollouts)
  m = max(r.tokens.shape[1] for r in rollouts)
  wide = [_widen(r, p, m, pad_id) for r in rollouts]
  return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *wide)
