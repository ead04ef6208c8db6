"""Log-probs of whole datasets: the reference policy's (precomputed or online) and held-out
evaluation of a policy (SFT NLL, the preference objective's metrics).

Axes: N dataset rows, B batch rows, T positions.
"""

import contextlib
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from srlm_jax import data_io, distributed, objectives
from srlm_jax.train import features
from srlm_jax.train.host_loop import put_batch


@functools.partial(jax.jit, static_argnames='config')
def _jit_logps(config, params, seq):
  return features.sequence_logps(config, params, seq)


@functools.partial(jax.jit, static_argnames='config')
def _jit_token_logps(config, params, seq):
  return features.token_features(config, params, seq)[0]


def _over_dataset(fn, seqs, batch_size: int, mesh: Optional[Mesh]):
  """Returns fn(batch) of every batch of seqs in order, concatenated on the host (N rows)."""
  outs = []
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    for batch, n in data_io.batches_in_order(seqs, batch_size):
      out = distributed.to_host(fn(put_batch(mesh, batch)))
      outs.append(jax.tree.map(lambda x, n=n: x[:n], out))  # the last batch repeats rows
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def dataset_logps(config, params, seqs, batch_size: int = 16, mesh: Optional[Mesh] = None):
  """Returns host float32 [N] log-probs and token counts of every row of a sequence dataset."""
  return tuple(_over_dataset(functools.partial(_jit_logps, config, params), seqs, batch_size,
                             mesh))


def dataset_token_logps(config, params, seqs, batch_size: int = 16,
                        mesh: Optional[Mesh] = None) -> np.ndarray:
  """Returns host float32 [N, T] log-probs of every row's loss_mask targets (0 elsewhere)."""
  return _over_dataset(functools.partial(_jit_token_logps, config, params), seqs, batch_size,
                       mesh)


def compute_ref_logps(config, params, dataset, batch_size: int = 16, mesh=None) -> dict:
  """Returns the DPO dataset with 'ref_chosen_logps' / 'ref_rejected_logps' [N] of params."""
  chosen, _ = dataset_logps(config, params, dataset['chosen'], batch_size, mesh)
  rejected, _ = dataset_logps(config, params, dataset['rejected'], batch_size, mesh)
  return {**dataset, 'ref_chosen_logps': chosen, 'ref_rejected_logps': rejected}


def zero_ref_logps(dataset) -> dict:
  """Returns the DPO dataset with zero reference log-probs (reference-free losses: simpo)."""
  n = data_io.num_examples(dataset)
  return {**dataset, 'ref_chosen_logps': np.zeros(n, np.float32),
          'ref_rejected_logps': np.zeros(n, np.float32)}


def make_online_ref(config, ref_params, mesh: Mesh):
  """Returns prepare(batch) adding the frozen ref_params' log-probs to a device batch."""
  @jax.jit
  def add_ref(ref, batch):
    rc, rr, _, _ = features.pair_logps(config, jax.lax.stop_gradient(ref), batch)
    return {**batch, 'ref_chosen_logps': rc, 'ref_rejected_logps': rr}

  def prepare(batch):
    with jax.set_mesh(mesh):
      return add_ref(ref_params, batch)
  return prepare


def sft_eval(config, dataset, batch_size: int = 16, mesh=None):
  """Returns eval(params) -> {'nll': token-mean NLL of the responses, 'n_tokens'}."""
  def evaluate(params):
    logps, n = dataset_logps(config, params, dataset, batch_size, mesh)
    return {'nll': float(-logps.sum() / max(n.sum(), 1)), 'n_tokens': float(n.sum())}
  return evaluate


def dpo_eval(config, dataset, loss: str, beta: float, loss_options=None, batch_size=16,
             mesh=None):
  """Returns eval(params) -> the objective's metrics over every pair of a ref-scored dataset."""
  objective = jax.jit(functools.partial(objectives.get(loss), beta=beta,
                                        **dict(loss_options or {})))
  sides = ('chosen', 'rejected')
  mask = np.stack([np.asarray(dataset[s]['loss_mask'], bool) for s in sides], 1)  # [N, 2, T]
  ref = np.stack([np.asarray(dataset[f'ref_{s}_logps'], np.float32) for s in sides], 1)

  def evaluate(params):
    policy = np.stack([dataset_token_logps(config, params, dataset[s], batch_size, mesh)
                       for s in sides], 1)
    _, metrics = objective(objectives.Features(policy_logps=jnp.asarray(policy),
                                               loss_mask=jnp.asarray(mask),
                                               ref_logps=jnp.asarray(ref)))
    return {k: float(v) for k, v in metrics.items()}
  return evaluate
