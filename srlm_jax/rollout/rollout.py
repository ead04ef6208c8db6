"""The Rollout: n sampled completions of each of B prompts, kept on the device as one pytree.

Axis legend: B prompts, N = n samples per prompt, R = B*N rows (prompt-major: row i*N + j is
sample j of prompt i), P prompt width (left-padded), M new-token width (max_new_tokens).

`sample` runs `sampler.sample` over device batches of prompts sorted by length (as the host
path did), then gathers the rows back into input order on the device: the batching never
shows in the result, and the samples for a seed are those the host path drew. What stays on
the host is the tokenised prompts (uploaded explicitly) and the order of the rows (a
permutation uploaded explicitly); `records.py` turns a Rollout into texts and files.
"""

import contextlib
import functools
from typing import Any, Callable, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from srlm_jax import bars, sampler, sharding

# Rows (prompts * n) per device batch, at most. A decode step's weight matmuls cost less per row
# in larger batches: SmolLM2-135M's MLP, 30 layers on the 2-core CPU, ran at 135 / 198 / 224 / 259
# GFLOP/s at 48 / 64 / 96 / 192 rows (2026-12-04). Sampling 3 judgments of 128 tokens for
# additive-judge-sized requests (255 tokens after a 256-token shared prefix), the sampler on its
# own, took 33.7 s per 16 requests in batches of 16 and 25.3 s in batches of 32; a decode step
# took 291 ms for 32 requests (96 rows) and 550 ms for 64 (192 rows), 5% less per row.
DEFAULT_ROWS = 192
# ... and at most this many bytes of generation cache (rows x new-token bucket x the KV bytes
# of one slot in all layers): SmolLM2's 128 rows of 1024 new tokens would take 6 GB in float32.
DECODE_CACHE_BYTES = 1 << 31
# ... and at most this many attention scores per head in a batch's prefill (prompts x length^2,
# what the prefill's [B, heads, T, T] scores hold): long prompts go in smaller batches. 2^25 is
# 16 prompts of 1448 tokens, 1.2 GB of float32 scores for SmolLM2's 9 heads; 64 prompts of the
# additive judge's ~200 tokens after its shared rubric are far below it. The meta RM's requests
# (a question, a response and a judgment, up to ~1500 tokens) in 64-prompt batches took 24 GB
# and were killed on a 24 GB CPU machine; with this bound the same run peaked at 12.7 GB.
PREFILL_SCORES = 1 << 25
# A token prefix every prompt of a call starts with (a judge's rubric, a few-shot header, a chat
# template's system header) is prefilled once when it is at least SHARE_MIN tokens; its length
# is rounded down to a multiple of SHARE_MULTIPLE so that calls whose prefixes differ a little
# share compiled shapes. bench_sampler's 64 chat prompts (42-126 tokens) share a 24-token system
# header: with the prompts packed (`sampler.pack_plan`), a call took 28.2-30.3 s with it
# prefilled once against 29.4-31.8 s without, in three pairs on 2026-12-05, each pair faster
# shared (tokens equal). Before packing the same comparison was within noise (24.9-28.4 s
# against 25.4-26.7 s), and the bound was 32 tokens in multiples of 16.
SHARE_MIN = 16
SHARE_MULTIPLE = 8
FIELDS = ('prompt_tokens', 'prompt_mask', 'tokens', 'logprobs', 'lengths', 'stop_reason')


@flax.struct.dataclass
class Rollout:
  """n samples of each of B prompts, on the device; rows prompt-major (row i*n + j)."""
  prompt_tokens: jax.Array  # [B, P] int32, left-padded chat-formatted prompt ids (pad_id)
  prompt_mask: jax.Array  # [B, P] bool, real prompt tokens
  tokens: jax.Array  # [R, M] int32 completion ids incl. the eos/stop token, pad after
  logprobs: jax.Array  # [R, M] float32 log-prob of each sampled token under the unmodified
  #                      model (temperature 1, no filtering), 0 after length
  lengths: jax.Array  # [R] int32 completion tokens (eos/stop token included)
  stop_reason: jax.Array  # [R] int32 sampler.StopReason
  n: int = flax.struct.field(pytree_node=False, default=1)

  @property
  def num_prompts(self) -> int:
    """Returns B."""
    return int(self.prompt_tokens.shape[0])

  @property
  def num_rows(self) -> int:
    """Returns R = B * n."""
    return int(self.tokens.shape[0])

  def arrays(self) -> dict:
    """Returns the six array fields by name (what a stage publishes)."""
    return {k: getattr(self, k) for k in FIELDS}


def from_arrays(arrays: dict, n: int) -> Rollout:
  """Returns the Rollout of `arrays` (the six FIELDS, e.g. a stage's published arrays)."""
  missing = [k for k in FIELDS if k not in arrays]
  if missing:
    raise ValueError(f'rollout arrays lack {missing}; expected the fields {list(FIELDS)}')
  b, r = arrays['prompt_tokens'].shape[0], arrays['tokens'].shape[0]
  if r != b * n:
    raise ValueError(f'rollout arrays: {r} completion rows for {b} prompts, expected '
                     f'{b} * n={n}')
  return Rollout(n=n, **{k: arrays[k] for k in FIELDS})


def left_pad(ids: Sequence[np.ndarray], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns host (tokens [B, width] int32, mask [B, width] bool) of left-padded id rows."""
  tokens = np.full((len(ids), width), pad_id, np.int32)
  mask = np.zeros((len(ids), width), bool)
  for r, x in enumerate(ids):
    if len(x):
      tokens[r, width - len(x):], mask[r, width - len(x):] = x, True
  return tokens, mask


@functools.partial(jax.jit, static_argnames='n')
def _gather_rows(parts: tuple, src_R: jax.Array, n: int) -> tuple:
  """Returns (tokens, logprobs, lengths, stop_reason) of the batches' rows in input order."""
  del n  # a cache key only: rows are already n per prompt
  cat = lambda f: jnp.concatenate([getattr(p, f) for p in parts], axis=0)[src_R]
  return cat('tokens'), cat('logprobs'), cat('lengths'), cat('stop_reason')


@jax.jit
def _gather_extras(parts: tuple, src_R: jax.Array):
  """Returns the batches' on_batch pytrees joined, their rows in input order."""
  return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0)[src_R], *parts)


def shared_prefix_length(ids: Sequence[np.ndarray], minimum: int = SHARE_MIN,
                         multiple: int = SHARE_MULTIPLE) -> int:
  """Returns how many leading tokens every prompt shares, rounded down to `multiple`, or 0
  when that is under `minimum` (or there is one prompt). Each prompt keeps >= 1 token."""
  if len(ids) < 2 or not minimum:
    return 0
  first = ids[0][:min(len(x) for x in ids) - 1]
  same = np.ones(len(first), bool)
  for x in ids[1:]:
    same &= x[:len(first)] == first
  common = len(first) if same.all() else int(np.argmin(same))
  common = common // multiple * multiple
  return common if common >= minimum else 0


def default_batch_size(n: int, longest: int, row_cache_bytes: int = 0) -> int:
  """Returns the prompts per device batch: DEFAULT_ROWS // n, and at most PREFILL_SCORES /
  longest^2 (the prefill's attention scores) and DECODE_CACHE_BYTES / (n * row_cache_bytes)
  (a row's generation cache), rounded down to a power of two, at least 1."""
  prompts = min(DEFAULT_ROWS // n, PREFILL_SCORES // max(longest, 1) ** 2,
                DECODE_CACHE_BYTES // max(n * row_cache_bytes, 1))
  return 1 << (max(1, prompts).bit_length() - 1)


def sample(model: Any, prompt_ids: Sequence[np.ndarray], *, n: int = 1, max_new_tokens: int,
           temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0,
           stop: Sequence[str] = (), seed: int = 0, batch_size: Optional[int] = None,
           progress: Any = True, prompt_width: int = 0,
           mesh: Optional[jax.sharding.Mesh] = None, share_prefix: bool = True,
           stats: Optional[dict] = None, ignore_eos: bool = False,
           on_batch: Optional[Callable] = None):
  """Returns the Rollout of n samples of each tokenised prompt (rows in input order).

  `prompt_ids` are chat-formatted ids that already fit the context with max_new_tokens (see
  completions.encode_prompts). Prompts are sorted by length into device batches of `batch_size`
  (default DEFAULT_ROWS // n, and at most PREFILL_SCORES / longest prompt^2 and
  DECODE_CACHE_BYTES of generation cache, rounded down to a power of two), so a batch's padding
  is only the spread of its lengths; row j of prompt i is seeded by (seed, i * n + j), so the
  samples do not depend on the batching. With `share_prefix`, the tokens every prompt starts with
  (`shared_prefix_length`) are prefilled once and each batch runs only what follows. Stop
  strings end a row on the device as token sequences. The Rollout's prompts are left-padded
  to max(prompt_width, longest prompt) and its completions to max_new_tokens. `stats`, when
  given, receives the prefill's token counts: `prompt_tokens` (real, run per prompt),
  `prefill_slots` (what the batches ran, padding included), `padded_fraction`, and
  `shared_prefix_tokens` (run once). `ignore_eos` makes every row run to max_new_tokens
  (benchmarks that must do a fixed amount of work).

  `on_batch(out, state, prompts_BP)`, when given, runs on each device batch while its decode
  state is alive: `out` is the batch's sampler.SampleOutput, `state` its final
  sampler.DecodeState (what sampler.continue_rows reads), `prompts_BP` its left-padded prompts
  (without the shared prefix). It returns a pytree of
  arrays with one leading row per sample of the batch; the call then returns (Rollout, that
  pytree with its rows gathered into input order, as the Rollout's are). A judge reads its
  forced verdicts this way (judges/forced.py), without running the judge prompts again.
  """
  tok = model.tokenizer
  mesh = mesh if mesh is not None else getattr(model, 'mesh', None)
  ids = [np.asarray(x, np.int32) for x in prompt_ids]
  if max_new_tokens < 1 or n < 1:
    raise ValueError(f'need max_new_tokens >= 1 and n >= 1; got {max_new_tokens}, {n}')
  if any(not len(x) for x in ids):
    raise ValueError(f'prompt {[len(x) for x in ids].index(0)} has no tokens')
  width = max([prompt_width] + [len(x) for x in ids])
  host_tokens, host_mask = left_pad(ids, max(width, 1), tok.pad_id)
  s0 = shared_prefix_length(ids) if share_prefix else 0
  rest = [x[s0:] for x in ids]  # what each batch prefills and decodes from
  rest_width = max([len(x) for x in rest], default=1)
  rest_tokens, rest_mask = left_pad(rest, rest_width, tok.pad_id)
  stop_seqs = [q for q in (tok.encode(s, add_bos=False) for s in stop if s) if q]
  settings = dict(max_new_tokens=max_new_tokens, n=n, temperature=temperature, top_k=top_k,
                  top_p=top_p, min_p=min_p, eos_ids=() if ignore_eos else tuple(tok.eos_ids),
                  stop_seqs=stop_seqs, pad_id=tok.pad_id)
  cfg = model.config
  row_cache_bytes = (sampler.bucket(max_new_tokens) * 2 * cfg.n_layers * cfg.n_kv_heads
                     * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize)
  batch_size = batch_size or default_batch_size(n, rest_width, row_cache_bytes)
  multiple = 1 if mesh is None else int(np.prod([mesh.shape[a] for a in sharding.BATCH]))
  order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
  put = lambda *xs: tuple(sharding.shard_batch(mesh, x) if mesh is not None
                          else jax.device_put(x) for x in xs)
  # Host edges: the seed and the prompts go up explicitly; the rest runs on the device.
  with jax.transfer_guard('allow'):
    key = jax.random.key(seed)
  parts, extras, src = [], [], np.zeros(len(ids) * n, np.int32)
  offset, slots = 0, 0
  with (jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()), \
      bars.progress_bar(progress, len(ids), desc='generate', unit='prompt') as bar:
    shared = None
    if s0:  # the common prefix, replicated: every batch's rows attend to it
      prefix = jax.device_put(ids[0][None, :s0], None if mesh is None else
                              jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
      shared = sampler.prefill_prefix(model.config, model.params, prefix)
    for start in range(0, len(order), batch_size):
      chunk = order[start:start + batch_size]
      # A last, smaller batch is padded to a power of two, rows repeating its shortest prompt
      # (the rows stay longest first, for the prefill's row groups).
      b = len(chunk) if len(chunk) == batch_size else min(sampler.bucket(len(chunk), 1),
                                                          batch_size)
      rows = chunk + [chunk[-1]] * (-(-b // multiple) * multiple - len(chunk))
      p = max(len(rest[i]) for i in rows)
      # Packed when that pays, each batch shard's rows on their own, the rows dealt to the
      # shards (`sampler.pack_plan`, `sampler.deal`); else in row groups when those do.
      dealt = sampler.deal(rows, multiple)
      packing = sampler.pack_plan([len(rest[i]) for i in dealt], sampler.prompt_bucket(p) - 1,
                                  multiple)
      rows = dealt if packing is not None else rows
      groups = () if packing is not None else sampler.prefill_groups(
          [len(rest[i]) for i in rows], multiple)
      tokens, mask, pids = put(rest_tokens[rows, rest_width - p:],
                               rest_mask[rows, rest_width - p:], np.asarray(rows, np.int32))
      out = sampler.sample(model.config, model.params, tokens, mask, key, prompt_ids_B=pids,
                           shared=shared, return_state=on_batch is not None, groups=groups,
                           packing=None if packing is None else put(packing)[0], **settings)
      if on_batch is not None:
        out, state = out
        extras.append(on_batch(out, state, tokens))
        del state  # the batch's caches are freed before the next batch runs
      parts.append(out)
      widths = groups or (sampler.prompt_bucket(p),)
      slots += (packing.size if packing is not None
                else len(rows) // len(widths) * sum(w - 1 for w in widths))
      for r, i in reversed(list(enumerate(rows))):  # a repeated prompt: its first row
        src[i * n:(i + 1) * n] = offset + r * n + np.arange(n)
      offset += len(rows) * n
      bar.update(len(chunk))
    if stats is not None:
      real = sum(len(x) - 1 for x in rest)  # a prompt's last token is decode's first input
      stats.update(prefill_summary([{'prompt_tokens': int(real), 'prefill_slots': int(slots),
                                     'shared_prefix_tokens': int(s0)}]))
    prompt_tokens, prompt_mask = put(host_tokens, host_mask)
    if not parts:
      zeros = lambda dtype: jax.device_put(np.zeros((0, max_new_tokens), dtype))
      empty = Rollout(prompt_tokens, prompt_mask, zeros(np.int32), zeros(np.float32),
                      jax.device_put(np.zeros(0, np.int32)),
                      jax.device_put(np.zeros(0, np.int32)), n=n)
      return empty if on_batch is None else (empty, None)
    (src_dev,) = put(src)
    tokens, logprobs, lengths, reason = _gather_rows(tuple(parts), src_dev, n)
    out = Rollout(prompt_tokens=prompt_tokens, prompt_mask=prompt_mask, tokens=tokens,
                  logprobs=logprobs, lengths=lengths, stop_reason=reason, n=n)
    if on_batch is None:
      return out
    return out, _gather_extras(tuple(extras), src_dev)


def prefill_summary(parts: Sequence[dict]) -> dict:
  """Returns the prefill counts of several `sample` calls (their `stats`) added up, with the
  padded fraction of the slots the batches ran: {prompt_tokens, prefill_slots, padded_fraction,
  shared_prefix_tokens (each call's shared prefix, prefilled once per call)}."""
  total = {key: sum(int(p.get(key, 0)) for p in parts)
           for key in ('prompt_tokens', 'prefill_slots', 'shared_prefix_tokens')}
  slots = total['prefill_slots']
  total['padded_fraction'] = round(1 - total['prompt_tokens'] / slots, 4) if slots else 0.0
  return total
