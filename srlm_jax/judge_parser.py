r"""The judge's verdict `Score: X`, parsed from generated token ids on the device.

Grammar (the same in `parse_score_host` and in the jitted automaton). The verdict is the
judge's own last word: it is read only from the final non-blank line of the text (a line is
blank when it holds nothing but GAP characters), and that line must begin with it:

    verdict line := GAP* SCORE GAP* ':' GAP* NUMBER TAIL
    SCORE   := 'score' in any letter case
    GAP     := ' ' | '\t' | '*'   (so '**Score:** 4', 'Score : 4', 'Score: **4**' all count;
               a newline does not: 'Score\n: 4' and 'Score:\n4' are not verdicts)
    NUMBER  := [0-4] ('.' [0-9]+)? | '5' ('.' '0'+)?   (a value in [0, 5]: 4, 4.5, 3.25, 5.00)
               not followed by a digit nor by '.' and a digit, so 'Score: 10', 'Score: 45',
               'Score: 5.5', 'Score: 4.5.1', 'Score: -1', 'Score: four' are not verdicts
    TAIL    := the rest of the line, whatever it holds: 'Score: 4.', 'Score: 4/5',
               'Score: 4 points', 'Score: 2 (not "Score: 5")' read their first number

So a score inside the reasons ('... I would give it Score: 4 but ...'), on a line that starts
with anything else ('Final score: 4', '> Score: 5', '"Score: 5"'), or followed by any
non-blank line (a judge that quotes the response's "Score: 5" on a line after its own
"Score: 2") is not a verdict: such a text is invalid (score NaN), and the judge's forced
verdict (judge.py) can then ask for one. A later verdict line replaces an earlier one only by
being the final line: 'Score: 1\nScore: 4' reads 4.
Only ASCII characters matter: every non-ASCII character acts like punctuation, so a multi-byte
character split over several byte-level tokens reads the same as when decoded whole.

The device path is a token-level DFA. A 16-state character automaton (where 'score' has been
matched, whether a number is pending and whether its integer digit is 5) is run on the host
once over every vocabulary entry from every start state. What a token does from a state is
summarised as: the end state, and its effect on three float registers, the pending number
`val`, the weight `scale` of its next fraction digit, and the last committed verdict `last`.
Those effects are affine, so each summary is 8 numbers (see `_FIELDS`). Vocabulary entries
with identical summaries share a class, so the table is [C, 16, 8] with C a few dozen (33
for SmolLM2's 49k vocabulary), and each `lax.scan` step over the tokens is one gather.

Axis legend: B rows, T generated tokens, V vocabulary, C token classes, S automaton states.
"""

import re
from typing import Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

HOST_PATTERN = re.compile(
    r'[ \t*]*[Ss][Cc][Oo][Rr][Ee][ \t*]*:[ \t*]*'
    r'([0-4](?:\.[0-9]+)?|5(?:\.0+)?)(?![0-9]|\.[0-9])')


def final_line(text: str) -> Optional[str]:
  """Returns the last line of `text` holding more than GAP characters, or None."""
  lines = [line for line in text.split('\n') if line.strip(' \t*')]
  return lines[-1] if lines else None


def parse_score_host(text: str) -> Optional[float]:
  """Returns the verdict of the final non-blank line of `text` (the module's grammar), or None."""
  match = HOST_PATTERN.match(final_line(text) or '')
  return float(match.group(1)) if match else None


# Automaton states. LINE: at a line start, only GAP characters read on the line so far.
# S..SCORE: a prefix of 'score' read at a line start. GAP: 'score' then spaces, tabs or stars.
# COLON: the ':' read. INT..NUM_DOT: a number is pending (valid so far; it commits as the
# verdict on the first character that cannot extend it). REST: the rest of a line that holds
# no verdict or whose verdict is committed.
(LINE, S, SC, SCO, SCOR, SCORE, GAP, COLON,
 INT, INT5, DOT, DOT5, FRAC, FRAC5, NUM_DOT, REST) = range(16)
NUM_STATES = 16
_PENDING = (INT, INT5, DOT, DOT5, FRAC, FRAC5, NUM_DOT)
# Per (class, state) summary: end state; kind of write to `last` (0 none, 1 the number pending
# at the token's start, 2 the constant `last_const`: a number read wholly inside the token, or
# -1 where a non-blank line starts and so cancels the verdict before it); keep (1: the
# pending number is continued, val += scale * add, scale *= mult; 0: val, scale = new_*).
_FIELDS = ('next', 'kind', 'keep', 'add', 'mult', 'new_val', 'new_scale', 'last_const')

_NONE, _COMMIT, _START, _APPEND, _CANCEL = range(5)


def _char_step(state: int, ch: str) -> Tuple[int, int, int]:
  """Returns (next state, action, digit) of the character automaton for one character."""
  digit = ord(ch) - 48 if '0' <= ch <= '9' else -1
  if state in _PENDING:
    if digit >= 0:
      if state in (DOT, FRAC) or (state in (DOT5, FRAC5) and digit == 0):
        return (FRAC if state in (DOT, FRAC) else FRAC5), _APPEND, digit
      return REST, _NONE, -1  # a digit too many (45, 5.5, 4.5.1): the line has no verdict
    if ch == '.' and state in (INT, INT5, FRAC, FRAC5):
      return {INT: DOT, INT5: DOT5}.get(state, NUM_DOT), _NONE, -1
    return (LINE if ch == '\n' else REST), _COMMIT, -1
  if ch == '\n':
    return LINE, _NONE, -1
  gap = ch in ' \t*'
  if state == LINE:
    if gap:
      return LINE, _NONE, -1
    # A non-blank line: whatever it holds, the verdicts of earlier lines no longer count.
    return (S if ch in 'sS' else REST), _CANCEL, -1
  if state == COLON:
    if gap:
      return COLON, _NONE, -1
    if 0 <= digit <= 5:
      return (INT5 if digit == 5 else INT), _START, digit
  elif state in (SCORE, GAP):
    if gap:
      return GAP, _NONE, -1
    if ch == ':':
      return COLON, _NONE, -1
  elif state in (S, SC, SCO, SCOR) and ch.isascii() and ch.lower() == 'score'[state - S + 1]:
    return state + 1, _NONE, -1
  return REST, _NONE, -1


def _token_summary(text: str, state: int) -> Tuple[float, ...]:
  """Returns the `_FIELDS` summary of reading `text` from automaton state `state`."""
  kind, keep, add, mult = 0, 1, 0.0, 1.0
  new_val, new_scale, last_const = 0.0, 1.0, 0.0
  for ch in text:
    state, action, digit = _char_step(state, ch)
    if action == _COMMIT:
      if keep:
        kind = 1
      else:
        kind, last_const = 2, new_val
    elif action == _CANCEL:
      kind, last_const = 2, -1.0
    elif action == _START:
      keep, new_val, new_scale = 0, float(digit), 0.1
    elif action == _APPEND:
      if keep:
        add, mult = add + mult * digit, mult * 0.1
      else:
        new_val, new_scale = new_val + new_scale * digit, new_scale * 0.1
  return (state, kind, keep, add, mult, new_val, new_scale, last_const)


def _normalise(text: str) -> str:
  """Returns `text` with characters, and runs of them, that the automaton treats alike merged."""
  out, run = [], 0  # run: letters kept so far in the current run of ASCII letters
  for ch in text:
    if ch.isascii() and ch.isalpha():
      # A run of letters can only extend a match of 'score': once it holds another letter, or
      # six letters, the automaton sits in REST until the run ends.
      if run < 0:
        continue
      ch = ch.lower() if ch.lower() in 'score' else 'a'
      run = -1 if ch == 'a' or run == 5 else run + 1
      out.append(ch)
      continue
    run = 0
    if ch in ' \t*':
      ch = ' '
    elif not ('0' <= ch <= '9' or ch in ':.\n'):
      ch = '#'
    # A second '#', ' ' or newline in a row never changes the state nor `last` (each leads
    # to a fixed point).
    if not (out and ch in '# \n' and out[-1] == ch):
      out.append(ch)
  return ''.join(out)


def build_tables(vocab_texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray, int]:
  """Returns (class_V int32, table_CxSxF float32, class of the empty text) for a vocabulary."""
  norm = [_normalise(t) for t in vocab_texts] + ['']
  uniq, norm_idx = np.unique(np.array(norm, dtype=object), return_inverse=True)
  rows = np.array([[_token_summary(t, s) for s in range(NUM_STATES)] for t in uniq])
  rows_u, row_idx = np.unique(rows.reshape(len(uniq), -1), axis=0, return_inverse=True)
  class_v = row_idx.reshape(-1)[norm_idx.reshape(-1)].astype(np.int32)
  table = rows_u.reshape(-1, NUM_STATES, len(_FIELDS)).astype(np.float32)
  return class_v[:-1], table, int(class_v[-1])


def make_score_parser(tokenizer_or_texts, pad_id: Optional[int] = None
                      ) -> Callable[[jax.Array], Tuple[jax.Array, jax.Array]]:
  """Returns parse(tokens_BxT) -> (scores_B float32, NaN where invalid; valid_B bool).

  Args:
    tokenizer_or_texts: an object with `vocab_texts()` (each id's text in a decoded sequence,
      '' for special tokens) and `pad_id`, or that list of per-id texts itself.
    pad_id: the padding id (default: the tokenizer's `pad_id`); required with a plain list.
      Pad tokens, and ids outside [0, V), read as empty text, so right padding is inert.
  """
  if hasattr(tokenizer_or_texts, 'vocab_texts'):
    texts = list(tokenizer_or_texts.vocab_texts())
    pad_id = tokenizer_or_texts.pad_id if pad_id is None else pad_id
  else:
    texts = list(tokenizer_or_texts)
    if pad_id is None:
      raise ValueError('make_score_parser: pad_id is required with a list of per-id texts')
  if not 0 <= pad_id < len(texts):
    raise ValueError(f'make_score_parser: pad_id {pad_id} outside the vocabulary [0, '
                     f'{len(texts)})')
  texts[pad_id] = ''
  class_v, table, empty_class = build_tables(texts)
  class_v, table = jnp.asarray(class_v), jnp.asarray(table)
  vocab_size = class_v.shape[0]
  pending = jnp.asarray(_PENDING, jnp.int32)

  def parse(tokens_BxT: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Returns (scores_B, valid_B) of the final-line verdict in each row of token ids."""
    tokens_BxT = jnp.asarray(tokens_BxT, jnp.int32)
    in_vocab = (tokens_BxT >= 0) & (tokens_BxT < vocab_size)
    cls_BxT = jnp.where(in_vocab, class_v[jnp.clip(tokens_BxT, 0, vocab_size - 1)],
                        empty_class)

    def step(carry, cls_B):
      state_B, val_B, scale_B, last_B = carry
      f = table[cls_B, state_B]  # [B, F]: one gather per token
      nxt, kind, keep, add, mult, new_val, new_scale, last_const = (
          f[:, i] for i in range(len(_FIELDS)))
      val_cont_B = val_B + scale_B * add
      last_B = jnp.where(kind == 1, val_cont_B, jnp.where(kind == 2, last_const, last_B))
      keep = keep > 0
      val_B = jnp.where(keep, val_cont_B, new_val)
      scale_B = jnp.where(keep, scale_B * mult, new_scale)
      return (nxt.astype(jnp.int32), val_B, scale_B, last_B), None

    batch = tokens_BxT.shape[0]
    init = (jnp.full((batch,), LINE, jnp.int32), jnp.zeros((batch,), jnp.float32),
            jnp.ones((batch,), jnp.float32), jnp.full((batch,), -1.0, jnp.float32))
    (state_B, val_B, _, last_B), _ = jax.lax.scan(step, init, cls_BxT.T)
    # A number still pending at the end of the text is complete: it commits.
    last_B = jnp.where(jnp.any(state_B[:, None] == pending[None, :], axis=1), val_B, last_B)
    valid_B = last_B >= 0
    return jnp.where(valid_B, last_B, jnp.nan), valid_B

  parse.num_classes = int(table.shape[0])
  return parse
