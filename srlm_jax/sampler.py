"""Batched sampling from a Llama: one prefill, then a device-side `lax.while_loop` decode.

Axis legend: B prompts, N samples per prompt, R = B*N rows, P prompt bucket, Q = P - 1 prompt
cache slots, M new-token bucket, W longest stop sequence; V, K, G, Dh, D as in
llama.py.

Two jitted functions (the tunix layout): `prefill` runs the left-padded prompts, minus their
last token, through `llama.transformer` once and keeps the KV cache it writes (`llama.init_cache`'s
layout) as the prompt cache, one per prompt ([B, ...]: the N samples of a prompt share its
prefill and read its cache, never a copy), returning a `DecodeState` pytree. `decode` (the state
donated, so the cache is updated in place) runs `decode_step` in a `lax.while_loop`, one token per
row per step, the prompt's last token first, until every row is done or max_new_tokens are made.
Each row also has a generation cache of M slots ([R, ...], the same layout): step t writes the
token it feeds (the last prompt token, then generated token t-1) at slot t. A step runs
`llama.layer`, the layers of training and prefill; its attention (`attention.attend`) is one softmax
over two blocks, the prompt's real (unpadded) slots and the row's own generation slots up to the
current one. RoPE positions count real tokens only. Sharing the prompt cache makes N samples read
the prompt's keys and values once per step, not N times: judging (N = 3, prompts of a rubric plus
a response) is bound by these reads on a CPU.

Static shapes: `sample` pads prompts to P = prompt_bucket(length), 32 * {1, 1.5} * 2^i up to 128,
then 128 * {1, 1.25, 1.5, 1.75} * 2^i (the bucket pads a prompt by under a fifth above 128
tokens, under a third below: prefill and every decode step scale with P), and buffers to
M = bucket(max_new), powers of two from 32, so a run compiles once per (batch, P, M) and
sampling mode (`token_draw.Mode`; temperature, top_p, min_p and max_new_tokens are device
scalars, no recompile when they change). A batch of prompts of mixed lengths is prefilled packed
(`pack_plan`: the prompts end to end in fewer rows of Q slots, each attending to its own
tokens), or failing that in row groups (`prefill_groups`), when either cuts the padding enough;
the prompt cache decode reads keeps the left-padded [B, Q] layout either way.

Each step draws its tokens with `token_draw.next_token` (the filters, in Hugging Face's order).
Row j of prompt i uses the key fold_in(key, prompt_id_i * N + j), so a sample does not depend on
how prompts were batched.
"""

import enum
import functools
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from srlm_jax import attention, llama, sharding, token_draw
# Prompt buckets, row groups and packing (prompt_layout), also importable from here.
from srlm_jax.prompt_layout import (  # pylint: disable=unused-import
    FINE_BUCKET, GROUP_GAIN, MIN_BUCKET, MIN_GROUP_ROWS, bucket, deal, longest_first, pack_plan,
    pack_rows, prefill_groups, prompt_bucket)

Array = jax.Array
P = jax.sharding.PartitionSpec


class StopReason(enum.IntEnum):
  EOS = 0  # an eos id was sampled (it is the last token of the row)
  STOP_SEQUENCE = 1  # the row's last tokens are one of the stop sequences
  MAX_TOKENS = 2  # max_new_tokens were generated


@flax.struct.dataclass
class SampleOutput:
  """What `sample` returns; rows are prompt-major: row i*N + j is sample j of prompt i."""
  tokens: Array  # [R, max_new] int32: generated ids, the eos / stop tokens included, pad after
  lengths: Array  # [R] int32: tokens generated (the eos / stop tokens included)
  logprobs: Array  # [R, max_new] float32: raw-model log-prob of each token, 0 after the end
  stop_reason: Array  # [R] int32 StopReason


@flax.struct.dataclass
class DecodeState:
  """The decode loop's carry."""
  step: Array  # [] int32: tokens generated so far
  cache: dict  # 'prompt': llama.init_cache's layout, per layer keys [B, K, Dh, Q] and values
  #             [B, K, Q, Dh], as prefill wrote it; 'rows': the same with R rows and M slots,
  #             the rows' generation slots
  prompt_mask_BQ: Array  # real (not padding) prompt cache slots
  token_R: Array  # the token fed at this step
  position_R: Array  # its RoPE position
  key_R: Array  # per-row PRNG keys
  tail_RW: Array  # the last W generated tokens (-1 before the first), matched to stop sequences
  tokens_RM: Array  # the SampleOutput fields, as they fill up
  logprobs_RM: Array
  done_R: Array
  length_R: Array
  reason_R: Array


CACHE = P(sharding.BATCH, 'tensor', None, None)  # a KV cache layer's keys or values


def _constrain_cache(cache):
  return jax.tree.map(lambda c: sharding.constrain(c, CACHE), cache)


SHARED = P(None, 'tensor', None, None)  # the shared prefix's cache layer (batch 1, S0 slots)


@functools.partial(jax.jit, static_argnames='config')
def prefill_prefix(config: llama.LlamaConfig, params, prefix_tokens_1S: Array) -> tuple:
  """Returns the KV cache (llama.init_cache's layout, batch 1) of a prefix every prompt shares.

  Its S0 tokens are all real and take positions 0..S0-1; `prefill(shared=...)` then runs only
  each prompt's remaining tokens, and every decode step reads this cache once for all rows.
  """
  s0 = prefix_tokens_1S.shape[1]
  mask_1S = jnp.ones((1, s0), bool)
  _, cache = llama.transformer(
      config, params, prefix_tokens_1S.astype(jnp.int32), llama.default_positions(mask_1S),
      mask_1S, cache=llama.init_cache(config, 1, s0), cache_index=0, hidden_only=True)
  return jax.tree.map(lambda c: sharding.constrain(c, SHARED), cache)


def after_prefix(config: llama.LlamaConfig, params, tokens_BT: Array, positions_BT: Array,
                 mask_BT: Array, shared: tuple, segment_ids_BT=None) -> tuple[Array, tuple]:
  """Returns (final-norm hidden states [B, T, D], their T-slot cache) of sequences whose
  tokens follow the shared prefix (`prefill_prefix`'s cache), positions counted after it.

  Each layer's attention is one softmax over two blocks: the shared prefix (every slot, read
  once for the B rows) and the sequence's own slots, causal, without its padding and, with
  `segment_ids_BT` (packed prompts), within the query's segment.
  """
  b, t = tokens_BT.shape
  own_allowed_BTT = (jnp.tril(jnp.ones((t, t), bool))[None] & mask_BT[:, None, :])
  if segment_ids_BT is not None:
    own_allowed_BTT &= segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :]
  x_BTD = sharding.constrain(llama.embed(config, params, tokens_BT), sharding.ACTIVATION)
  rope_BT1h = llama.rope(config, positions_BT)
  cache = []
  for l in range(config.n_layers):
    def attend_kv(q_BKGTd, key_BKdT, val_BKTd, l=l):
      dt = config.dtype
      blocks = [(shared[l]['k'].astype(dt), shared[l]['v'].astype(dt),
                 jnp.ones((1, t, shared[l]['v'].shape[2]), bool)),
                (key_BKdT.astype(dt), val_BKTd.astype(dt), own_allowed_BTT)]
      own = {'k': key_BKdT.astype(config.dtype), 'v': val_BKTd.astype(config.dtype)}
      return attention.attend(q_BKGTd, blocks, dt), own
    x_BTD, own = llama.layer(config, llama.layer_params(params, l), x_BTD, rope_BT1h,
                             attend_kv)
    cache.append(own)
  x_BTD = llama.rms_norm(x_BTD, params['final_norm']['scale'], config.norm_eps, config.dtype)
  return x_BTD, tuple(cache)


@functools.partial(jax.jit, static_argnames=('config', 'n', 'max_new_bucket', 'stop_width',
                                             'pad_id', 'length', 'groups'))
def prefill(config: llama.LlamaConfig, params, prompt_tokens_BP: Array, prompt_mask_BP: Array,
            key: Array, prompt_ids_B: Array, *, n: int, max_new_bucket: int, stop_width: int = 1,
            pad_id: int = 0, length: int = 0, groups: tuple = (), shared=None,
            packing=None) -> DecodeState:
  """Returns the decode state after one pass over the prompts (all but their last token).

  The prompts are first left-padded to `length` tokens when it is longer than they are. With
  `shared` (prefill_prefix's cache of S0 tokens), the prompts are what follows that prefix:
  their positions start at S0 and they attend to it. With `groups` (`prefill_groups`' widths),
  the rows run in len(groups) equal consecutive groups, group g on its last groups[g] tokens
  (its rows' prompts must fit them), and the groups' caches are left-padded to the widest.
  With `packing` (`pack_plan`'s [S, R, Q] layout of the padded prompts, on the device), the
  prompts' tokens run packed in S * R rows, each attending only to its own, and their cache is
  then gathered back into the rows' left-padded layout (zeros in the padding slots).
  """
  pad = ((0, 0), (max(length - prompt_tokens_BP.shape[1], 0), 0))
  prompt_tokens_BP = jnp.pad(prompt_tokens_BP.astype(jnp.int32), pad, constant_values=pad_id)
  mask_BP = jnp.pad(prompt_mask_BP.astype(bool), pad)
  (b, p), m = prompt_tokens_BP.shape, max_new_bucket
  if packing is not None and (groups or packing.ndim != 3 or packing.shape[2] != p - 1
                              or b % packing.shape[0]):
    raise ValueError(f'a packed prefill has no groups and a [blocks, rows, {p - 1}] layout '
                     f'(the prompt cache slots) of blocks that divide the {b} rows; got groups '
                     f'{groups} and a layout of shape {packing.shape}')
  if groups and (b % len(groups) or max(groups) > p):
    raise ValueError(f'prefill groups {groups}: need widths of at most the {p} prompt slots '
                     f'and a number of groups that divides the {b} rows')
  s0 = 0 if shared is None else shared[0]['v'].shape[2]
  positions_BP = llama.default_positions(mask_BP) + s0
  # Only the cache is kept: no output head runs.
  def run(tokens_BT, positions_BT, mask_BT, segment_ids_BT=None):
    if shared is None:
      return llama.transformer(
          config, params, tokens_BT, positions_BT, mask_BT, cache=_constrain_cache(
              llama.init_cache(config, tokens_BT.shape[0], tokens_BT.shape[1])),
          cache_index=0, segment_ids=segment_ids_BT, hidden_only=True)[1]
    return after_prefix(config, params, tokens_BT, positions_BT, mask_BT, shared,
                        segment_ids_BT)[1]
  inputs = (prompt_tokens_BP[:, :-1], positions_BP[:, :-1], mask_BP[:, :-1])
  if packing is not None:
    prompt_cache = _packed_prefill(run, inputs, packing, pad_id)
  elif not groups:
    prompt_cache = run(*inputs)
  else:
    size = b // len(groups)
    parts = [run(*(x[g * size:(g + 1) * size, p - w:] for x in inputs))
             for g, w in enumerate(groups)]
    left_pad = lambda c, axis: jnp.pad(c, [(p - 1 - c.shape[axis], 0) if a == axis else (0, 0)
                                          for a in range(c.ndim)])
    prompt_cache = tuple({'k': jnp.concatenate([left_pad(c[l]['k'], 3) for c in parts]),
                          'v': jnp.concatenate([left_pad(c[l]['v'], 2) for c in parts])}
                         for l in range(config.n_layers))
  rep = lambda x: jnp.repeat(x, n, axis=0)
  r = b * n
  row_ids = (prompt_ids_B[:, None] * n + jnp.arange(n)[None, :]).reshape(r)
  cache = {'prompt': _constrain_cache(prompt_cache),
           'rows': _constrain_cache(llama.init_cache(config, r, m))}
  if shared is not None:
    cache['shared'] = jax.tree.map(lambda c: sharding.constrain(c, SHARED), shared)
  return DecodeState(
      step=jnp.zeros((), jnp.int32),
      cache=cache,
      prompt_mask_BQ=sharding.constrain(mask_BP[:, :-1], P(sharding.BATCH)),
      token_R=rep(prompt_tokens_BP[:, -1]), position_R=rep(positions_BP[:, -1]),
      key_R=jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, row_ids),
      tail_RW=jnp.full((r, stop_width), -1, jnp.int32),
      tokens_RM=jnp.full((r, m), pad_id, jnp.int32), logprobs_RM=jnp.zeros((r, m), jnp.float32),
      done_R=jnp.zeros((r,), bool), length_R=jnp.zeros((r,), jnp.int32),
      reason_R=jnp.full((r,), int(StopReason.MAX_TOKENS), jnp.int32))


def _packed_prefill(run, inputs, packing_SRQ: Array, pad_id: int) -> tuple:
  """Returns `run`'s cache of the [B, Q] inputs (tokens, positions, mask) run packed as
  `pack_plan` laid them out, in the inputs' [B, Q] layout.

  Each of the S blocks of B / S rows is gathered into its R packed rows and back by a gather
  batched over the blocks, which XLA partitions over the mesh's batch shards with no
  communication when S is their number (a flat gather over all B * Q slots needs all-gathers
  and collective-permutes)."""
  tokens_BQ, positions_BQ, mask_BQ = inputs
  (b, q), (s, r, _) = tokens_BQ.shape, packing_SRQ.shape
  packing_SRQ = sharding.constrain(packing_SRQ, P(sharding.BATCH))
  valid_SRQ = packing_SRQ >= 0
  index_SRQ = jnp.maximum(packing_SRQ, 0)
  per_block = jax.vmap(lambda x, i: x[i])  # block s's slots x[s] at its indices i[s]
  flat = lambda x: x.reshape((s * r,) + x.shape[2:])  # [S, R, Q, ...] -> [S * R, Q, ...]
  take = lambda x_BQ, fill: flat(jnp.where(valid_SRQ, per_block(x_BQ.reshape(s, -1), index_SRQ),
                                           fill))
  packed = run(take(tokens_BQ, pad_id), take(positions_BQ, 0), flat(valid_SRQ),
               flat(jnp.where(valid_SRQ, index_SRQ // q, -1)))  # a prompt's segment: its row
  # Each [B, Q] slot's packed slot in its block (the layout inverted); padding reads slot 0,
  # then 0.
  source_SX = jax.vmap(lambda p, v: jnp.zeros((b // s * q,), jnp.int32).at[
      jnp.where(v, p, b // s * q)].set(jnp.arange(r * q, dtype=jnp.int32).reshape(r, q),
                                       mode='drop'))(packing_SRQ, valid_SRQ)

  def unpack(c, axis):  # [S * R, ...] with the Q slots on `axis` -> [B, ...] likewise
    c = jnp.moveaxis(c, axis, 1)
    c = per_block(c.reshape((s, r * q) + c.shape[2:]), source_SX).reshape((b, q) + c.shape[2:])
    c = jnp.where(mask_BQ.reshape((b, q) + (1,) * (c.ndim - 2)), c, jnp.zeros((), c.dtype))
    return jnp.moveaxis(c, 1, axis)
  return tuple({'k': unpack(c['k'], 3), 'v': unpack(c['v'], 2)} for c in packed)


def split_layers(params) -> dict:
  """Returns params with the stacked layers split into a tuple of per-layer trees (for decode)."""
  n_layers = jax.tree.leaves(params['layers'])[0].shape[0]
  return {**params, 'layers': tuple(llama.layer_params(params, l) for l in range(n_layers))}


def step_logits(config: llama.LlamaConfig, dparams, state: DecodeState) -> tuple[Array, dict]:
  """Returns (float32 logits [R, V], updated cache) for the token each row is fed at this step.

  `llama.layer` over `split_layers` params, unrolled: on a CPU this is 1.5-2.5x faster than a
  scan over the stacked layers, whose per-step slices of the weights cost more than the matmuls.
  Its attention reads two blocks of slots in one softmax: the prompt's cache, shared by its N
  rows, and the row's own generation slots up to this step, where this step's key is written;
  a third, the prefix shared by every prompt (`prefill_prefix`), when there is one.
  """
  slot, prompt, rows = state.step, state.cache['prompt'], state.cache['rows']
  shared = state.cache.get('shared')
  prompt_allowed_B1Q = state.prompt_mask_BQ[:, None, :]
  own_allowed_11M = (jnp.arange(rows[0]['v'].shape[2]) <= slot)[None, None, :]
  rope_R11h = llama.rope(config, state.position_R[:, None])
  x_R1D = sharding.constrain(llama.embed(config, dparams, state.token_R[:, None]),
                             sharding.ACTIVATION)
  new_rows = []
  for l, lp in enumerate(dparams['layers']):
    def attend_kv(q_RKG1d, key_RKd1, val_RK1d, l=l):
      write = lambda c, x, axis: jax.lax.dynamic_update_slice_in_dim(c, x.astype(c.dtype), slot,
                                                                     axis=axis)
      own = {'k': write(rows[l]['k'], key_RKd1, 3), 'v': write(rows[l]['v'], val_RK1d, 2)}
      dt = config.dtype
      blocks = [(prompt[l]['k'].astype(dt), prompt[l]['v'].astype(dt), prompt_allowed_B1Q),
                (own['k'].astype(dt), own['v'].astype(dt), own_allowed_11M)]
      if shared is not None:  # one block read once for all R rows
        blocks.insert(0, (shared[l]['k'].astype(dt), shared[l]['v'].astype(dt),
                          jnp.ones((1, 1, shared[l]['v'].shape[2]), bool)))
      return attention.attend(q_RKG1d, blocks, dt), own
    x_R1D, own = llama.layer(config, lp, x_R1D, rope_R11h, attend_kv)
    new_rows.append(own)
  x_RD = llama.rms_norm(x_R1D[:, 0], dparams['final_norm']['scale'], config.norm_eps,
                        config.dtype)
  cache = {**state.cache, 'rows': _constrain_cache(tuple(new_rows))}
  return llama.logits(config, dparams, x_RD), cache


@functools.partial(jax.jit, static_argnames='config')
def continue_rows(config: llama.LlamaConfig, params, state: DecodeState, tokens_RT: Array,
                  start_R: Array) -> Array:
  """Returns the final-norm hidden states [R, T, D] of tokens fed after a finished decode.

  Row r keeps its prompt cache (its prompt but the last token) and its first start_R[r]
  generation slots (slot 0: the prompt's last token; slot j: generated token j - 1); the T
  tokens take slots start_R[r].. and the positions after them, so the row reads as [prompt,
  generated tokens 0 .. start_R[r] - 2, tokens_RT[r]] (start_R[r] = 0: the prompt without its
  last token, then tokens_RT[r]) run from scratch. Each needs start_R <= the row's length
  (later slots may hold padding). The state is read, not changed: this is how a
  judge appends a verdict prefix to its judgments without running their prompts again.
  """
  t = tokens_RT.shape[1]
  prompt, rows, shared = state.cache['prompt'], state.cache['rows'], state.cache.get('shared')
  m = rows[0]['v'].shape[2]
  positions_RT = (state.position_R - state.step + start_R)[:, None] + jnp.arange(t)[None, :]
  prompt_allowed_B1Q = state.prompt_mask_BQ[:, None, :]
  kept_allowed_R1M = (jnp.arange(m)[None, :] < start_R[:, None])[:, None, :]
  new_allowed_1TT = jnp.tril(jnp.ones((t, t), bool))[None]
  rope_RT1h = llama.rope(config, positions_RT)
  x_RTD = sharding.constrain(llama.embed(config, params, tokens_RT.astype(jnp.int32)),
                             sharding.ACTIVATION)
  for l in range(config.n_layers):
    def attend_kv(q_RKGTd, key_RKdT, val_RKTd, l=l):
      dt = config.dtype
      as_cached = lambda x: x.astype(rows[l]['k'].dtype).astype(dt)  # as decode stores them
      blocks = [(prompt[l]['k'].astype(dt), prompt[l]['v'].astype(dt), prompt_allowed_B1Q),
                (rows[l]['k'].astype(dt), rows[l]['v'].astype(dt), kept_allowed_R1M),
                (as_cached(key_RKdT), as_cached(val_RKTd), new_allowed_1TT)]
      if shared is not None:
        blocks.insert(0, (shared[l]['k'].astype(dt), shared[l]['v'].astype(dt),
                          jnp.ones((1, 1, shared[l]['v'].shape[2]), bool)))
      return attention.attend(q_RKGTd, blocks, dt), None
    x_RTD, _ = llama.layer(config, llama.layer_params(params, l), x_RTD, rope_RT1h,
                           attend_kv)
  return llama.rms_norm(x_RTD, params['final_norm']['scale'], config.norm_eps, config.dtype)


def decode_step(config: llama.LlamaConfig, dparams, state: DecodeState, knobs: dict,
                mode: token_draw.Mode) -> tuple[DecodeState, Array]:
  """Returns (the state after one token per row, its float32 logits [R, V]) (split_layers)."""
  logits_RV, cache = step_logits(config, dparams, state)
  token_R, logprob_R = token_draw.next_token(logits_RV, state.key_R, state.step, knobs, mode)
  done, step = state.done_R, state.step
  token_R = jnp.where(done, mode.pad_id, token_R)
  logprob_R = jnp.where(done, 0.0, logprob_R)
  tail_RW = jnp.concatenate([state.tail_RW[:, 1:], token_R[:, None]], axis=1)
  eos = functools.reduce(jnp.logical_or, [token_R == e for e in mode.eos_ids], done) & ~done
  stop = functools.reduce(jnp.logical_or, [
      jnp.all(tail_RW[:, -len(q):] == jnp.asarray(q, jnp.int32)[None, :], axis=1)
      for q in mode.stop_seqs], done) & ~done & ~eos
  reason = jnp.where(eos, int(StopReason.EOS),
                     jnp.where(stop, int(StopReason.STOP_SEQUENCE), state.reason_R))
  new_state = state.replace(
      step=step + 1, cache=cache, token_R=token_R, position_R=state.position_R + 1, tail_RW=tail_RW,
      tokens_RM=jax.lax.dynamic_update_slice(state.tokens_RM, token_R[:, None], (0, step)),
      logprobs_RM=jax.lax.dynamic_update_slice(state.logprobs_RM, logprob_R[:, None], (0, step)),
      done_R=done | eos | stop | (step + 1 >= knobs['max_new_tokens']),
      length_R=jnp.where(done, state.length_R, step + 1), reason_R=reason)
  return new_state, logits_RV


@functools.partial(jax.jit, static_argnames=('config', 'mode'), donate_argnames='state')
def decode(config: llama.LlamaConfig, params, state: DecodeState, knobs: dict,
           mode: token_draw.Mode) -> DecodeState:
  """Returns the state once every row is done or knobs['max_new_tokens'] tokens were made."""
  def cond(s):
    return (s.step < knobs['max_new_tokens']) & ~jnp.all(s.done_R)
  dparams = split_layers(params)
  return jax.lax.while_loop(cond, lambda s: decode_step(config, dparams, s, knobs, mode)[0], state)


@functools.partial(jax.jit, static_argnames='max_new_tokens')
def _output(state: DecodeState, max_new_tokens: int, rows_R=None) -> SampleOutput:
  """Returns the state's SampleOutput, its rows taken in the order rows_R when given."""
  out = SampleOutput(tokens=state.tokens_RM[:, :max_new_tokens], lengths=state.length_R,
                     logprobs=state.logprobs_RM[:, :max_new_tokens], stop_reason=state.reason_R)
  return out if rows_R is None else jax.tree.map(lambda x: x[rows_R], out)


def sample(config: llama.LlamaConfig, params, prompt_tokens_BP, prompt_mask_BP, key, *,
           max_new_tokens: int, n: int = 1, temperature: float = 0.0, top_k: int = 0,
           top_p: float = 1.0, min_p: float = 0.0, eos_ids: Sequence[int] = (),
           stop_seqs: Sequence[Sequence[int]] = (), pad_id: int = 0,
           prompt_ids_B=None, shared=None, return_state: bool = False, groups=None,
           packing=None):
  """Returns n samples per left-padded prompt (prompt-major rows), from one prefill per prompt.

  Call it from the host (under `jax.set_mesh` for a sharded run): the float settings pick the
  compiled mode. Every row needs a real last token (left padding). `prompt_ids_B` (default
  0..B-1) seeds the rows, row j of prompt i using fold_in(key, prompt_ids_B[i] * n + j).
  With `shared` (`prefill_prefix` of a prefix every prompt starts with), the prompts are given
  without that prefix. With `return_state`, returns (SampleOutput, the final DecodeState), whose
  cache `continue_rows` reads.

  `packing` is `prefill`'s packed layout (`pack_plan` of the rows' lengths at the prompt
  bucket), `groups` its row groups (`prefill_groups`). By default, for host prompts, the prompts
  are packed when packing pays, under a mesh each batch shard's rows on their own, the rows
  first dealt to the shards longest first (`deal`); if packing does not pay, the rows are sorted
  longest first and grouped when that pays. The state's rows keep their order (no sorting or
  dealing when it is returned); the output is returned in the rows' order. `packing=False`, or
  explicit groups (`()`: one), turn packing off. A row's tokens do not depend on the layout.
  """
  b, p = np.shape(prompt_tokens_BP)
  if max_new_tokens < 1 or n < 1:
    raise ValueError(f'need max_new_tokens >= 1 and n >= 1; got {max_new_tokens}, {n}')
  if not isinstance(prompt_mask_BP, jax.Array) and not np.asarray(prompt_mask_BP)[:, -1].all():
    raise ValueError('every prompt row must be left-padded with a real last token')
  mode = token_draw.make_mode(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                              eos_ids=eos_ids, stop_seqs=stop_seqs, pad_id=pad_id)
  # Host values reach the device by explicit transfers only (rollouts are sampled under
  # jax.transfer_guard('disallow')); the prompts are padded to their bucket inside `prefill`.
  put = lambda x, dtype: x if isinstance(x, jax.Array) else jax.device_put(np.asarray(x, dtype))
  if isinstance(key, int):
    key = jax.random.key(put(key, np.int32))
  prompt_ids_B = np.arange(b) if prompt_ids_B is None else prompt_ids_B
  on_host = not any(isinstance(x, jax.Array)
                    for x in (prompt_tokens_BP, prompt_mask_BP, prompt_ids_B))
  rows_R, order = None, np.arange(b)
  lengths = np.asarray(prompt_mask_BP).sum(axis=1) if on_host else None
  if groups is None and packing is None and on_host:
    shards = sharding.batch_multiple()
    shards = shards if b % shards == 0 else 1
    if shards > 1 and not return_state:  # every shard's rows of every length
      order = np.asarray(deal(np.argsort(-lengths, kind='stable'), shards))
    packing = pack_plan(lengths[order], prompt_bucket(p) - 1, shards)
    order = order if packing is not None else np.arange(b)
  packing = None if packing is False else packing
  if packing is not None:
    groups = ()
  if groups is None and on_host:
    if return_state:  # its rows keep their order
      groups = prefill_groups(lengths, sharding.batch_multiple())
    else:
      order, groups = longest_first(prompt_mask_BP, sharding.batch_multiple())
  if (groups or packing is not None) and (order != np.arange(b)).any():  # restored by _output
    prompt_tokens_BP, prompt_mask_BP, prompt_ids_B = (
        np.asarray(x)[order] for x in (prompt_tokens_BP, prompt_mask_BP, prompt_ids_B))
    rows_R = put((np.argsort(order)[:, None] * n + np.arange(n)).reshape(-1), np.int32)
  if groups and b % len(groups) == 0 and not isinstance(prompt_mask_BP, jax.Array):
    fits = np.asarray(prompt_mask_BP).sum(axis=1) <= np.repeat(groups, b // len(groups))
    if not fits.all():
      raise ValueError(f'prompt row {int(np.argmin(fits))} is longer than its prefill group\'s '
                       f'width ({groups})')
  state = prefill(config, params, put(prompt_tokens_BP, np.int32), put(prompt_mask_BP, bool), key,
                  put(prompt_ids_B, np.int32), n=n, max_new_bucket=bucket(max_new_tokens),
                  stop_width=mode.stop_width, pad_id=mode.pad_id, length=prompt_bucket(p),
                  groups=tuple(groups or ()), shared=shared,
                  packing=None if packing is None else put(packing, np.int32))
  knobs = token_draw.make_knobs(max_new_tokens=max_new_tokens, temperature=temperature,
                                top_p=top_p, min_p=min_p)
  state = decode(config, params, state, knobs, mode)
  out = _output(state, max_new_tokens, rows_R)
  return (out, state) if return_state else out
