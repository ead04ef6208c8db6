"""Forced verdicts: a judge's score read from the model's next-token distribution, on the device.

Verdicts (`JudgeSettings.verdict`): 'sampled' parses the judge's own final verdict line
(parser.py), and a judgment without one is invalid. 'forced' keeps each valid sampled verdict
and, for a judgment without one, appends the verdict prefix ('\\nScore: ') to the judge's text
and reads its next-token distribution over the score tokens (one per value of the judge's
scale): the score is the expectation under that distribution renormalised over the scores, so
every judgment is valid; the argmax and the probability mass the scores held are recorded.
'forced_always' forces every judgment, straight after its reasons (a sampled verdict line is
cut off first: `reasons_length`). A score of several tokens ('10' is '1', '0' for SmolLM2) has
the product of its tokens' probabilities, read from one row that appends the shared leading
tokens after the prefix (`score_tokens`), less the probability of the longer scores that
continue it.

The verdicts are read while the judge is sampled (`verdict_hook`, rollout.sample's on_batch):
each device batch's decode cache already holds every judgment's prompt and tokens, so the
prefix is fed after the judgment's body as a few more decode-like steps
(sampler.continue_rows), for every row at once; no judge prompt is run twice. The output head
runs at the last L positions only.

Axis legend: B prompts, R rows (judgments), M judgment width, X prefix tokens, T = 1 + X fed
tokens, J prefixes, S score values, L tokens of the longest score, V vocabulary.
"""

import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

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


def read_scores(config: llama.LlamaConfig, params, hidden_BLD: jax.Array,
                score_ids_SxL: jax.Array, values_S: jax.Array,
                cont_SxS: Optional[jax.Array] = None) -> tuple:
  """Returns (expected score [B], most likely score [B], probability mass on the scores [B]).

  hidden_BLD are the final-norm hidden states at the last L positions of rows that end with
  the verdict prefix and then the L - 1 path tokens; their next-token distributions give each
  score's probability, the product over its tokens (score_ids_SxL, -1 padded), less that of
  the longer scores that continue its tokens (cont_SxS: '1' then '0' is 10, not 1),
  renormalised over the scores.
  """
  score_ids_SxL = score_ids_SxL.reshape(score_ids_SxL.shape[0], -1)
  num_l = score_ids_SxL.shape[1]
  head = params['embed']['embedding'] if config.tie_embeddings else params['lm_head']['kernel']
  logits_BLV = llama.head_matmul(hidden_BLD[:, -num_l:], head, config.tie_embeddings)
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


@jax.jit
def body_lengths(lengths_R: jax.Array, stop_reason_R: jax.Array) -> jax.Array:
  """Returns each judgment's length without its eos token (what a forced verdict follows)."""
  return lengths_R - (stop_reason_R == int(sampler.StopReason.EOS)).astype(jnp.int32)


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


def replicate(mesh: Optional[jax.sharding.Mesh], tree: Any) -> Any:
  """Returns host arrays uploaded explicitly: whole on every device of `mesh` (global arrays,
  so a multi-host run's jitted calls can mix them with sharded ones), else to the default
  device."""
  if mesh is None:
    return jax.device_put(tree)
  whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda x: sharding.put_global(x, whole), tree)


@functools.partial(jax.jit, static_argnames='config')
def continued_verdicts(config: llama.LlamaConfig, params, state: Any, prompts_BP: jax.Array,
                       tokens_RxM: jax.Array, body_R: jax.Array, prefixes: tuple,
                       score_ids_SxL: jax.Array, values_S: jax.Array,
                       cont_SxS: jax.Array) -> tuple:
  """Returns (expected, argmax, mass) float32 [R, J]: per judgment row of a finished decode
  (sampler.DecodeState), the verdict after its first body_R tokens and each of the J
  `prefixes` (token arrays, each ending with score_tokens' path), read from the state's cache.

  The row's body token at slot body_R (its prompt's last token, from the left-padded
  prompts_BP, when the body is empty) is fed again, then the prefix: T = 1 + X tokens per row
  and prefix, with no prompt run again (sampler.continue_rows).
  """
  r = tokens_RxM.shape[0]
  last_R = jnp.repeat(prompts_BP[:, -1], r // prompts_BP.shape[0])
  before_R = jnp.take_along_axis(tokens_RxM, jnp.maximum(body_R - 1, 0)[:, None], axis=1)[:, 0]
  first_R = jnp.where(body_R > 0, before_R, last_R)
  outs = []
  for prefix_X in prefixes:
    tokens_RT = jnp.concatenate(
        [first_R[:, None], jnp.broadcast_to(prefix_X, (r, prefix_X.shape[0]))], axis=1)
    hidden_RTD = sampler.continue_rows(config, params, state, tokens_RT, body_R)
    outs.append(read_scores(config, params, hidden_RTD, score_ids_SxL, values_S, cont_SxS))
  return tuple(jnp.stack([o[i] for o in outs], axis=1) for i in range(3))


def verdict_hook(model: Any, parser: Any, verdict: str, prefixes: Sequence[Sequence[int]],
                 score_ids: np.ndarray, values: Sequence[int],
                 features: Optional[np.ndarray] = None):
  """Returns rollout.sample's on_batch for a judge: per judgment row (expected, argmax, mass)
  float32 [R, J], its forced verdict after each of the J prefixes.

  Every row gets one, as cheap as J short decode steps: with verdict='forced' the caller keeps
  those of the rows without a parsed verdict; with 'forced_always' the verdict follows the
  reasons (a parsed verdict line cut, `reasons_length` over the tokenizer's `features`).
  `parser` is the judge's jitted device parser; `prefixes` end with score_tokens' path and
  score_ids is its [S, L].
  """
  mesh = getattr(model, 'mesh', None)
  ids_SxL = np.asarray(score_ids, np.int32).reshape(len(values), -1)
  prefixes_X, ids, values_S, cont_SxS = replicate(mesh, (
      tuple(np.asarray(p, np.int32) for p in prefixes), ids_SxL,
      np.asarray(values, np.int32), _continuations(ids_SxL)))
  features_Vx4 = replicate(mesh, features) if verdict == 'forced_always' else None

  def on_batch(out, state, prompts_BP):
    body_R = body_lengths(out.lengths, out.stop_reason)
    if features_Vx4 is not None:
      _, valid_R = parser(out.tokens)
      body_R = jnp.where(valid_R, reasons_length(out.tokens, body_R, features_Vx4), body_R)
    return continued_verdicts(model.config, model.params, state, prompts_BP, out.tokens, body_R,
                              prefixes_X, ids, values_S, cont_SxS)
  return on_batch
