"""Forced verdicts: a judge's score read from the model's next-token distribution, on the device.

Verdicts (`JudgeSettings.verdict`): 'sampled' parses the judge's own final verdict line
(parser.py), and a judgment without one is invalid. 'forced' keeps each valid sampled verdict
and, for a judgment without one, appends the verdict prefix ('\\nScore: ') to the judge's text
and reads its next-token distribution over the score tokens (one per value of the judge's
scale) in one more forward pass: the score is the expectation under that distribution
renormalised over the scores, so every judgment is valid; the argmax and the probability mass
the scores held are recorded. 'forced_always' forces every judgment, straight after its
reasons (a sampled verdict line is cut off first: `reasons_length`). A score of several tokens
('10' is '1', '0' for SmolLM2) has the product of its tokens' probabilities, read from one row
that appends the shared leading tokens after the prefix (`score_tokens`), less the probability
of the longer scores that continue it.

The rows [prompt, judgment body, prefix] are built on the device from the judge Rollout
(`verdict_rows`): the left-padded prompt, the completion with its tail past the body masked
out, then the prefix. Masked slots are neither attended to nor counted in positions, so a row
with such a hole reads as the compact sequence does. The forward pass (`verdict_distribution`)
runs the output head at the last position only: one prefill-sized pass per batch of rows.

Axis legend: B prompts, R rows (judgments), P prompt width, M judgment width, X prefix
tokens, W row width, F forced rows, S score values, L tokens of the longest score, V
vocabulary.
"""

import contextlib
import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from srlm_jax import data_io
from srlm_jax import llama
from srlm_jax import sampler
from srlm_jax import sharding

BLANK = ' \t*\n'  # what may follow a verdict line's last character
_ROWS_X_WIDTH2 = 16 * 1024 ** 2  # forced rows per batch times their width squared, at most


def score_token_ids(tokenizer: Any, prefix: str, values: Sequence[int]) -> np.ndarray:
  """Returns, per score value, the one token that writes it right after `prefix` [S] int32."""
  ids_SxL, path = score_tokens(tokenizer, prefix, values)
  if ids_SxL.shape[1] != 1:
    bad = next(v for v, row in zip(values, ids_SxL) if (row >= 0).sum() > 1)
    raise ValueError(f'{prefix!r} + {str(bad)!r} tokenises to more than one token after the '
                     f'prefix: {ids_SxL[list(values).index(bad)].tolist()} (see score_tokens)')
  del path
  return ids_SxL[:, 0]


def score_tokens(tokenizer: Any, prefix: str, values: Sequence[int]) -> tuple:
  """Returns (ids_SxL int32, the tokens of each score after `prefix`, -1 padded; path_L-1 the
  tokens a forced row appends after the prefix so that every score's tokens can be read).

  A score may take several tokens ('10' is '1', '0' for SmolLM2): its probability is the
  product of its tokens' conditional probabilities, read at the last L positions of one row
  [.., prefix, path]. So every score's tokens but its last must lie on one chain (`path`, the
  longest score's tokens but its last): 1..10 works, 1..20 ('1x' and '2x') does not.
  """
  base = tokenizer.encode(prefix)
  seqs = []
  for v in values:
    full = tokenizer.encode(prefix + str(v))
    if len(full) <= len(base) or full[:len(base)] != base:
      raise ValueError(
          f'forced verdicts need the verdict prefix to tokenise the same with a score after it: '
          f'{prefix!r} + {str(v)!r} tokenises to {full}, not {base} + the score\'s tokens '
          '(change creation.judge.verdict_prefix, e.g. drop or add its trailing space)')
    seqs.append(tuple(full[len(base):]))
  if len(set(seqs)) != len(seqs):
    raise ValueError(f'scores {list(values)} share tokens after {prefix!r}: {seqs}')
  path = max(seqs, key=len)[:-1]
  for v, seq in zip(values, seqs):
    if seq[:-1] != path[:len(seq) - 1]:
      raise ValueError(
          f'forced verdicts read a multi-token score along one chain of tokens: after '
          f'{prefix!r}, {str(v)!r} is {list(seq)} but the longest score leads through '
          f'{list(path)} (use a scale whose scores share their leading tokens, e.g. 1..10)')
  ids = np.full((len(seqs), len(path) + 1), -1, np.int32)
  for i, seq in enumerate(seqs):
    ids[i, :len(seq)] = seq
  return ids, list(path)


def _continuations(ids_SxL: np.ndarray) -> np.ndarray:
  """Returns [S, S] float32: 1 where score w's tokens continue score v's (v a proper prefix)."""
  lengths = (ids_SxL >= 0).sum(axis=1)
  out = np.zeros((len(ids_SxL),) * 2, np.float32)
  for v, n in enumerate(lengths):
    for w, m in enumerate(lengths):
      out[v, w] = m > n and np.array_equal(ids_SxL[v, :n], ids_SxL[w, :n])
  return out


@functools.partial(jax.jit, static_argnames='config')
def verdict_distribution(config: llama.LlamaConfig, params, tokens_BT: jax.Array,
                         mask_BT: jax.Array, score_ids_SxL: jax.Array, values_S: jax.Array,
                         cont_SxS: Optional[jax.Array] = None, shared=None):
  """Returns (expected score [B], most likely score [B], probability mass on the scores [B]).

  Each row ends with the verdict prefix and then the L - 1 path tokens (mask marks real
  tokens); the next-token distributions at the last L positions give each score's probability,
  the product over its tokens (score_ids_SxL, -1 padded), less that of the longer scores that
  continue its tokens (cont_SxS: '1' then '0' is 10, not 1), renormalised over the scores.
  With `shared` (sampler.prefill_prefix's cache), the rows are what follows that prefix.
  """
  score_ids_SxL = score_ids_SxL.reshape(score_ids_SxL.shape[0], -1)
  num_l = score_ids_SxL.shape[1]
  positions_BT = llama.default_positions(mask_BT)
  if shared is None:
    hidden_BTD, _ = llama.Llama(config).apply({'params': params}, tokens_BT, positions_BT,
                                              mask_BT, hidden_only=True)
  else:
    hidden_BTD, _ = sampler.after_prefix(config, params, tokens_BT,
                                         positions_BT + shared[0]['k'].shape[2], mask_BT, shared)
  head = params['embed']['embedding'] if config.tie_embeddings else params['lm_head']['kernel']
  logits_BLV = llama.head_matmul(hidden_BTD[:, -num_l:], head, config.tie_embeddings)
  logp_BLV = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)
  real_SxL = score_ids_SxL >= 0
  picked_BSL = logp_BLV[:, jnp.arange(num_l)[None, :], jnp.maximum(score_ids_SxL, 0)]
  logp_BS = jnp.where(real_SxL[None], picked_BSL, 0.0).sum(axis=-1)
  p_BS = jnp.exp(logp_BS)
  if cont_SxS is not None:
    p_BS = jnp.maximum(p_BS - p_BS @ cont_SxS.T, 0.0)
  mass_B = p_BS.sum(axis=-1)
  dist_BS = p_BS / jnp.maximum(mass_B, jnp.finfo(jnp.float32).tiny)[:, None]
  values_S = values_S.astype(jnp.float32)
  return dist_BS @ values_S, values_S[jnp.argmax(p_BS, axis=-1)], mass_B


def text_features(vocab_texts: Sequence[str]) -> np.ndarray:
  """Returns [V, 4] int32 per token text: its length, the offset of its last newline, of its
  last non-BLANK character, and of its last newline before that character (-1: none)."""
  out = np.full((len(vocab_texts), 4), -1, np.int32)
  for i, text in enumerate(vocab_texts):
    nb = len(text.rstrip(BLANK)) - 1
    out[i] = (len(text), text.rfind('\n'), nb, text.rfind('\n', 0, max(nb, 0)))
  return out


def reasons_host(tokens: np.ndarray, vocab_texts: Sequence[str]) -> np.ndarray:
  """Returns the leading tokens of a judgment before its final line (the host twin of
  `reasons_length`). A token that holds the newline before the final line is dropped with it
  (the verdict prefix starts with its own newline)."""
  texts = [vocab_texts[t] if 0 <= t < len(vocab_texts) else '' for t in tokens]
  text = ''.join(texts)
  start = text.rfind('\n', 0, len(text.rstrip(BLANK)))
  ends = np.cumsum([len(t) for t in texts])
  return tokens[:int(np.sum(ends <= max(start, 0)))]


@jax.jit
def reasons_length(tokens_RxM: jax.Array, body_R: jax.Array, features_Vx4: jax.Array):
  """Returns [R] int32: how many of each row's first body_R tokens `reasons_host` keeps."""
  v = features_Vx4.shape[0]
  in_body_RxM = jnp.arange(tokens_RxM.shape[1])[None, :] < body_R[:, None]
  ok = in_body_RxM & (tokens_RxM >= 0) & (tokens_RxM < v)
  f_RxMx4 = jnp.where(ok[..., None], features_Vx4[jnp.clip(tokens_RxM, 0, v - 1)],
                      jnp.asarray([0, -1, -1, -1], jnp.int32))
  length, last_nl, last_nb, nl_before_nb = (f_RxMx4[..., i] for i in range(4))
  ends_RxM = jnp.cumsum(length, axis=1)
  starts_RxM = ends_RxM - length
  # The token that holds the text's last non-blank character; tokens after it are blank.
  nb_pos_RxM = jnp.where(last_nb >= 0, starts_RxM + last_nb, -1)
  has_nb_R = jnp.any(nb_pos_RxM >= 0, axis=1)
  nb_token_R = jnp.argmax(nb_pos_RxM, axis=1)
  t_M = jnp.arange(tokens_RxM.shape[1])[None, :]
  before = t_M < nb_token_R[:, None]
  at = t_M == nb_token_R[:, None]
  newline_RxM = jnp.where(before & (last_nl >= 0), starts_RxM + last_nl,
                          jnp.where(at & (nl_before_nb >= 0), starts_RxM + nl_before_nb, -1))
  start_R = jnp.where(has_nb_R, jnp.max(newline_RxM, axis=1), -1)
  kept = in_body_RxM & (ends_RxM <= jnp.maximum(start_R, 0)[:, None])
  return kept.sum(axis=1, dtype=jnp.int32)


@functools.partial(jax.jit, static_argnames=('n', 'width', 'pad_id'))
def verdict_rows(prompt_tokens_BxP: jax.Array, prompt_mask_BxP: jax.Array,
                 tokens_RxM: jax.Array, body_R: jax.Array, rows_F: jax.Array,
                 prefix_X: jax.Array, *, n: int, width: int, pad_id: int):
  """Returns (tokens_FxW, mask_FxW): per forced row, [padding, prompt, body, prefix]."""
  f, m = rows_F.shape[0], tokens_RxM.shape[1]
  x = prefix_X.shape[0]
  prompt = prompt_tokens_BxP[rows_F // n]
  prompt_mask = prompt_mask_BxP[rows_F // n]
  body = tokens_RxM[rows_F]
  body_mask = jnp.arange(m)[None, :] < body_R[rows_F][:, None]
  pad = width - prompt.shape[1] - m - x
  tokens_FxW = jnp.concatenate([jnp.full((f, pad), pad_id, jnp.int32), prompt, body,
                                jnp.broadcast_to(prefix_X, (f, x))], axis=1)
  mask_FxW = jnp.concatenate([jnp.zeros((f, pad), bool), prompt_mask, body_mask,
                              jnp.ones((f, x), bool)], axis=1)
  spec = jax.sharding.PartitionSpec(sharding.BATCH, None)
  return sharding.constrain(tokens_FxW, spec), sharding.constrain(mask_FxW, spec)


def replicate(mesh: Optional[jax.sharding.Mesh], tree: Any) -> Any:
  """Returns host arrays uploaded explicitly: whole on every device of `mesh` (global arrays,
  so a multi-host run's jitted calls can mix them with sharded ones), else to the default
  device."""
  if mesh is None:
    return jax.device_put(tree)
  whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda x: sharding.put_global(x, whole), tree)


@functools.partial(jax.jit, static_argnames='s0')
def drop_prefix(tokens_BxP: jax.Array, mask_BxP: jax.Array, s0: int) -> tuple:
  """Returns left-padded prompts without their first s0 real tokens: [B, P - s0] each."""
  real_BxP = jnp.cumsum(mask_BxP.astype(jnp.int32), axis=1) > s0
  return tokens_BxP[:, s0:], (mask_BxP & real_BxP)[:, s0:]


def forced_verdicts(model: Any, rollout: Any, body_R: jax.Array, rows: np.ndarray,
                    prefix: Sequence[int], score_ids: np.ndarray, values: Sequence[int],
                    batch_rows: int = 16, shared_prefix: Sequence[int] = ()) -> tuple:
  """Returns device (expected, argmax, mass) float32 [F] of the score after each forced row.

  `rows` (host int array) index the rollout's rows; each row is its prompt, its first body_R
  tokens and the prefix (with a multi-token scale, `prefix` ends with score_tokens' path and
  score_ids is its [S, L]). Rows go in batches of `batch_rows` at one width (the prompt,
  judgment and prefix widths summed, bucketed as the sampler's prompts are), so each judge
  call compiles once per bucket. `shared_prefix`, the tokens every prompt starts with (the
  rubric: rollout.shared_prefix_length), is run once and the rows attend to its cache.
  """
  mesh = getattr(model, 'mesh', None)
  multiple = 1 if mesh is None else int(np.prod([mesh.shape[a] for a in sharding.BATCH]))
  batch_rows = -(-batch_rows // multiple) * multiple
  s0 = len(shared_prefix)
  p, m = rollout.prompt_tokens.shape[1] - s0, rollout.tokens.shape[1]
  width = data_io.length_bucket(p + m + len(prefix), max_len=1 << 62)
  # Long rows go in smaller batches: the attention scores grow as rows * width^2.
  batch_rows = max(multiple, min(batch_rows, (_ROWS_X_WIDTH2 // width ** 2) // multiple
                                 * multiple))
  ids_SxL = np.asarray(score_ids, np.int32).reshape(len(values), -1)
  prefix_X, score_ids_S, values_S, cont_SxS = replicate(
      mesh, (np.asarray(prefix, np.int32), ids_SxL, np.asarray(values, np.int32),
             _continuations(ids_SxL)))
  outs = []
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    prompt_tokens, prompt_mask, shared = rollout.prompt_tokens, rollout.prompt_mask, None
    if s0:
      shared = sampler.prefill_prefix(model.config, model.params, replicate(
          mesh, np.asarray(shared_prefix, np.int32)[None]))
      prompt_tokens, prompt_mask = drop_prefix(prompt_tokens, prompt_mask, s0)
    for start in range(0, len(rows), batch_rows):
      chunk = np.asarray(rows[start:start + batch_rows], np.int32)
      chunk = np.concatenate([chunk, np.full(batch_rows - len(chunk), chunk[0], np.int32)])
      tokens, mask = verdict_rows(prompt_tokens, prompt_mask, rollout.tokens,
                                  body_R, replicate(mesh, chunk), prefix_X, n=rollout.n,
                                  width=width, pad_id=model.tokenizer.pad_id)
      outs.append(verdict_distribution(model.config, model.params, tokens, mask, score_ids_S,
                                       values_S, cont_SxS, shared))
  return _concat(tuple(outs), len(rows))


@functools.partial(jax.jit, static_argnames='f')
def _concat(outs: tuple, f: int) -> tuple:
  """Returns the batches' (expected, argmax, mass) joined, the batch padding cut: [F] each."""
  return tuple(jnp.concatenate([o[i] for o in outs])[:f] for i in range(3))
