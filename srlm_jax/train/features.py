"""Per-token features of a batch under the policy: what an objective receives.

Batches follow data_io's layout: a sequence batch `{inputs, targets, loss_mask, mask}` [B, T]
(SFT), or a pair batch `{'chosen': seq, 'rejected': seq, 'ref_chosen_logps' [B],
'ref_rejected_logps' [B]}` (DPO), optionally with per-token reference log-probs
'ref_chosen_token_logps' / 'ref_rejected_token_logps' [B, T] aligned with the targets, and
`loss_positions` [G, N] (see `add_loss_positions`).

Axes: B rows, T positions (position t scores targets[t]), V vocabulary, D model width,
G groups of consecutive rows (one per data-parallel device and micro-batch), N slots of a group.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from srlm_jax import llama
from srlm_jax.objectives import Features


def token_logps(logits_BTV: jax.Array, targets_BT: jax.Array) -> jax.Array:
  """Returns float32 [B, T] log-probs of the targets; logits[:, t] predicts targets[:, t]."""
  logits_BTV = logits_BTV.astype(jnp.float32)
  # Gather-minus-logsumexp never materialises a second [B, T, V] array, unlike log_softmax.
  target_logits_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
  return target_logits_BT - jax.nn.logsumexp(logits_BTV, axis=-1)


def target_logp_sums(logits_BTV, targets_BT, mask_BT) -> tuple[jax.Array, jax.Array]:
  """Returns float32 [B] sums of the masked target log-probs and float32 [B] token counts."""
  mask_BT = mask_BT.astype(bool)
  # Padding targets (often -100) are not valid ids: gather a real id there, then mask it out.
  logps_BT = token_logps(logits_BTV, jnp.where(mask_BT, targets_BT, 0))
  return jnp.where(mask_BT, logps_BT, 0.0).sum(-1), mask_BT.sum(-1).astype(jnp.float32)


def _logits(config, params, seq) -> jax.Array:
  """Returns float32 [B, T, V] logits of a right-padded sequence batch."""
  positions = llama.default_positions(seq['mask'])
  return llama.Llama(config).apply({'params': params}, seq['inputs'], positions, seq['mask'])[0]


def _logits_at(config, params, seq, index_GN) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Returns float32 logits [G, N, V], targets [G, N] and valid [G, N] at `loss_positions`.

  index_GN holds flat positions into G equal groups of consecutive rows (-1: an unused slot);
  see `add_loss_positions`. Only these positions go through the output head.
  """
  positions = llama.default_positions(seq['mask'])
  hidden_BTD = llama.Llama(config).apply({'params': params}, seq['inputs'], positions,
                                         seq['mask'], hidden_only=True)[0]
  (b, t, d), g = hidden_BTD.shape, index_GN.shape[0]
  valid_GN = index_GN >= 0
  index_GN = jnp.where(valid_GN, index_GN, 0)
  hidden_GND = jnp.take_along_axis(hidden_BTD.reshape(g, b // g * t, d), index_GN[..., None],
                                   axis=1)
  targets_GN = jnp.take_along_axis(seq['targets'].reshape(g, b // g * t), index_GN, axis=1)
  return llama.logits(config, params, hidden_GND), jnp.where(valid_GN, targets_GN, 0), valid_GN


def _scatter_rows(values_GN, index_GN, valid_GN, shape_BT) -> jax.Array:
  """Returns [B, T]: each valid slot's value at its flat position in its group's rows, else 0."""
  (b, t), g = shape_BT, index_GN.shape[0]
  index_GN = jnp.where(valid_GN, index_GN, 0)
  values_GN = jnp.where(valid_GN, values_GN, jnp.zeros((), values_GN.dtype))
  # One scatter per group (vmapped: a batch dimension the partitioner keeps on its device).
  rows = jax.vmap(lambda i, v: jnp.zeros((b // g * t,), v.dtype).at[i].add(v))(index_GN,
                                                                              values_GN)
  return rows.reshape(b, t)


def token_features(config, params, seq, index=None,
                   top1: bool = False) -> tuple[jax.Array, Optional[jax.Array]]:
  """Returns float32 [B, T] policy log-probs of the loss_mask targets (0 elsewhere) and, with
  `top1`, bool [B, T] whether each is the policy's argmax (else None).

  With `index` (a batch's `loss_positions`), the head runs at those positions only.
  """
  mask_BT = seq['loss_mask'].astype(bool)
  if index is None:
    logits_BTV = _logits(config, params, seq)
    targets_BT = jnp.where(mask_BT, seq['targets'], 0)
    logps_BT = jnp.where(mask_BT, token_logps(logits_BTV, targets_BT), 0.0)
    is_top1 = (jnp.argmax(logits_BTV, -1) == targets_BT) & mask_BT if top1 else None
    return logps_BT, is_top1
  logits_GNV, targets_GN, valid_GN = _logits_at(config, params, seq, index)
  shape = seq['targets'].shape
  logps_BT = _scatter_rows(token_logps(logits_GNV, targets_GN), index, valid_GN, shape)
  if not top1:
    return logps_BT, None
  hits_GN = (jnp.argmax(logits_GNV, -1) == targets_GN).astype(jnp.int32)
  return logps_BT, _scatter_rows(hits_GN, index, valid_GN, shape) > 0


def sequence_logps(config, params, seq, index=None) -> tuple[jax.Array, jax.Array]:
  """Returns float32 [B] summed log-probs of each row's loss_mask targets, and their counts."""
  logps_BT, _ = token_features(config, params, seq, index)
  return logps_BT.sum(-1), seq['loss_mask'].astype(bool).sum(-1).astype(jnp.float32)


def interleave(chosen, rejected):
  """Returns the [2B, ...] rows chosen[0], rejected[0], chosen[1], ... of two [B, ...] trees."""
  return jax.tree.map(lambda x, y: jnp.stack([x, y], 1).reshape(-1, *x.shape[1:]),
                      chosen, rejected)


def _pairs(x_2BT):
  """Returns interleaved [2B, ...] rows as [B, 2, ...] (side 0 chosen, 1 rejected)."""
  return x_2BT.reshape(-1, 2, *x_2BT.shape[1:])


def pair_features(config, params, batch) -> Features:
  """Returns the Features (S = 2: chosen, rejected) of a pair batch, both sides in one forward.

  Reference log-probs come from the batch: per sequence ('ref_chosen_logps') and/or per token
  ('ref_chosen_token_logps'); none (reference-free) when the batch has neither.
  """
  # Interleaving (row 2i chosen, 2i+1 rejected) keeps both halves of a pair on one device.
  both = interleave(batch['chosen'], batch['rejected'])
  logps_BT, _ = token_features(config, params, both, batch.get('loss_positions'))
  side = lambda key: (batch[f'ref_chosen_{key}'], batch[f'ref_rejected_{key}'])
  has = lambda key: f'ref_chosen_{key}' in batch
  return Features(
      policy_logps=_pairs(logps_BT),
      loss_mask=_pairs(both['loss_mask'].astype(bool)),
      ref_logps=jnp.stack(side('logps'), 1) if has('logps') else None,
      ref_token_logps=jnp.stack(side('token_logps'), 1) if has('token_logps') else None)


def pair_logps(config, params, batch):
  """Returns (chosen, rejected) summed log-probs [B] and their token counts [B]."""
  features = pair_features(config, params, batch)
  logps, n = features.policy_sums(), features.lengths()
  return logps[:, 0], logps[:, 1], n[:, 0], n[:, 1]


def sequence_features(config, params, seq) -> Features:
  """Returns the Features (S = 1, with is_top1) of a sequence batch."""
  logps_BT, top1_BT = token_features(config, params, seq, seq.get('loss_positions'), top1=True)
  return Features(policy_logps=logps_BT[:, None], is_top1=top1_BT[:, None],
                  loss_mask=seq['loss_mask'].astype(bool)[:, None])


def add_loss_positions(batch, groups: int, grad_accum: int = 1, buckets: int = 8):
  """Returns the host batch with `loss_positions` [grad_accum * groups, N]: where the head runs.

  The output head ([D, V], the largest matmul of a small model) and its gradient then cover
  the target tokens only, not the prompts and the padding: the same numbers, less compute.
  Row d * grad_accum + j lists the flat positions (row * T + t, rows counted within the group,
  a DPO batch's sides interleaved as in `pair_features`) of the loss_mask targets of
  micro-batch j's group d of consecutive rows, -1 filling the rest. With groups = the
  data-parallel device count, each device gathers from its own rows. N is the largest group's
  count rounded up to 1/buckets of the group's positions, so a run compiles a few shapes per
  length bucket.
  """
  sides = [batch['chosen'], batch['rejected']] if 'chosen' in batch else [batch]
  mask = np.stack([np.asarray(side['loss_mask'], bool) for side in sides], 1)  # [B, S, T]
  b, k = mask.shape[0], grad_accum
  if b % (k * groups):
    raise ValueError(f'a batch of {b} rows does not split into grad_accum={k} micro-batches '
                     f'of {groups} groups')
  # Micro-batch j holds rows j, k + j, ... (steps._micro); group d a run of consecutive ones.
  grouped = mask.reshape(b // k, k, -1).swapaxes(0, 1).reshape(k, groups, -1)
  quantum = -(-grouped.shape[-1] // buckets)
  n = max(1, -(-int(grouped.sum(-1).max()) // quantum)) * quantum
  index = np.full((groups, k, n), -1, np.int32)
  for j in range(k):
    for d in range(groups):
      where = np.flatnonzero(grouped[j, d])
      index[d, j, :len(where)] = where
  return {**batch, 'loss_positions': index.reshape(groups * k, n)}
