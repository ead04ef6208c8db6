"""A given preference dataset kept on the device: each batch is gathered, cut to its length
bucket and given its loss positions there, never copied through the host.

The dataset is the rewards stage's dict (numpy or device arrays):
  {'chosen': {'inputs', 'targets', 'loss_mask', 'mask'} [N, T], 'rejected': {...} [N, T],
   'ref_chosen_logps' [N], 'ref_rejected_logps' [N]}
  (+ optional per-token 'ref_chosen_token_logps', 'ref_rejected_token_logps' [N, T])
Other keys are ignored. The host reads only per-row token counts [N], once, to pick each
batch's static shapes (the same buckets as data_io.trim_batch and
features.add_loss_positions), and sends each batch's row indices to the device.

Axes: N rows, B batch rows, S sides (chosen, rejected), T positions, K micro-batches,
G groups of a micro-batch (data-parallel devices), L loss-position slots of a group.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from srlm_jax import data_io, distributed, sharding

SIDES = ('chosen', 'rejected')
SEQ_KEYS = ('inputs', 'targets', 'loss_mask', 'mask')
REF_KEYS = ('ref_chosen_logps', 'ref_rejected_logps')
TOKEN_REF_KEYS = ('ref_chosen_token_logps', 'ref_rejected_token_logps')


def check_dataset(dataset, what: str = 'dataset') -> tuple[int, int]:
  """Returns (N, T) of a preference dataset; raises ValueError naming a missing or odd key."""
  if not isinstance(dataset, dict) or any(s not in dataset for s in SIDES):
    raise ValueError(f'{what}: expected a dict with {SIDES} sequence dicts and {REF_KEYS}')
  shape = np.shape(dataset['chosen'].get('inputs', ()))
  if len(shape) != 2:
    raise ValueError(f"{what}['chosen']['inputs']: expected [N, T] token ids, got shape "
                     f'{list(shape)}')
  n, t = shape
  for side in SIDES:
    for key in SEQ_KEYS:
      shape = np.shape(dataset[side].get(key, ()))
      if shape != (n, t):
        raise ValueError(f"{what}['{side}']['{key}']: expected shape [N, T] = [{n}, {t}] "
                         f'(that of chosen/inputs), got {list(shape)}')
  for key in REF_KEYS + TOKEN_REF_KEYS:
    want = (n,) if key in REF_KEYS else (n, t)
    if key not in dataset:
      if key in REF_KEYS:
        raise ValueError(f"{what}: missing '{key}' [N] (the reference policy's log-probs)")
      continue
    if np.shape(dataset[key]) != want:
      raise ValueError(f"{what}['{key}']: expected shape {list(want)}, "
                       f'got {list(np.shape(dataset[key]))}')
  if not n:
    raise ValueError(f'{what}: no pairs to train on')
  return n, t


@functools.partial(jax.jit, static_argnames=('t', 'slots', 'groups', 'k'))
def _select(data, index_B, *, t: int, slots: int, groups: int, k: int):
  """Returns rows index_B of data cut to t positions, with `loss_positions` [G * K, slots]
  (slots 0: none), laid out as features.add_loss_positions lays them out."""
  width = data['chosen']['inputs'].shape[1]
  batch = jax.tree.map(lambda x: x[index_B][:, :t] if x.ndim >= 2 and x.shape[1] == width
                       else x[index_B], data)
  if slots:
    mask_BST = jnp.stack([batch[s]['loss_mask'].astype(bool) for s in SIDES], 1)
    b = mask_BST.shape[0]
    # Micro-batch j holds rows j, k + j, ...; group d of it a run of consecutive ones.
    grouped_KGX = mask_BST.reshape(b // k, k, -1).swapaxes(0, 1).reshape(k, groups, -1)
    where = lambda m: jnp.nonzero(m, size=slots, fill_value=-1)[0]
    index_KGL = jax.vmap(jax.vmap(where))(grouped_KGX)
    batch['loss_positions'] = index_KGL.swapaxes(0, 1).reshape(groups * k, slots).astype(
        jnp.int32)
  return batch


class DeviceBatches:
  """Batches of a preference dataset held on the device (see the module docstring)."""

  def __init__(self, dataset, mesh: Mesh, batch_size: int, seed: int, *, grad_accum: int = 1,
               loss_positions: bool = True, with_ref: bool = True, buckets: int = 8):
    self.n, self.width = check_dataset(dataset)
    keys = (REF_KEYS + TOKEN_REF_KEYS) if with_ref else ()
    picked = {**{s: {k: dataset[s][k] for k in SEQ_KEYS} for s in SIDES},
              **{k: dataset[k] for k in keys if k in dataset}}
    replicated = NamedSharding(mesh, P())
    # Device arrays stay where they are; host arrays go to the device once, whole (a host edge).
    with jax.transfer_guard_host_to_device('allow'):
      self.data = jax.tree.map(
          lambda x: x if isinstance(x, jax.Array) else sharding.put_global(x, replicated), picked)
    counts = jax.jit(lambda d: jnp.stack(
        [jnp.stack([d[s][k].astype(bool).sum(-1) for s in SIDES], 1)
         for k in ('mask', 'loss_mask')]))(self.data)
    real_NS, self.loss_NS = distributed.to_host(counts)  # the one host read of the data
    self.real_N = real_NS.max(1)
    self.mesh, self.batch_size, self.seed = mesh, batch_size, seed
    self.k, self.loss_positions, self.buckets = grad_accum, loss_positions, buckets
    self.groups = mesh.shape['data'] * mesh.shape['fsdp']
    if batch_size % (self.k * self.groups):
      raise ValueError(f'a batch of {batch_size} rows does not split into grad_accum={self.k} '
                       f'micro-batches of {self.groups} groups')

  def shapes(self, index_B: np.ndarray) -> tuple[int, int]:
    """Returns (t, slots): the batch's length bucket and loss-position width (0: none)."""
    t = data_io.length_bucket(max(int(self.real_N[index_B].max()), 1), self.width)
    if not self.loss_positions:
      return t, 0
    b, k = len(index_B), self.k
    counts_B = self.loss_NS[index_B].sum(1)
    per_group = counts_B.reshape(b // k, k).swapaxes(0, 1).reshape(k, self.groups, -1).sum(-1)
    quantum = -(-(b // k // self.groups * len(SIDES) * t) // self.buckets)
    return t, max(1, -(-int(per_group.max()) // quantum)) * quantum

  def __call__(self, step: int):
    """Returns the device batch of update `step` (the rows data_io.batch_at would pick)."""
    index_B = data_io.batch_indices(self.n, step, self.batch_size, self.seed)
    t, slots = self.shapes(index_B)
    with jax.transfer_guard_host_to_device('allow'):  # a host edge: the batch's row indices
      index = sharding.put_global(index_B.astype(np.int32), NamedSharding(self.mesh, P()))
    with jax.set_mesh(self.mesh):
      return _select(self.data, index, t=t, slots=slots, groups=self.groups, k=self.k)
