r"""A judge's verdict line (`Score: X`), parsed from generated token ids on the device.

A `Grammar` names the verdict's keyword and its number range; the additive judge's is
`Grammar('Score', 0, 5)`. The same grammar is read by `parse_host` (a regex over the decoded
text) and by the jitted automaton of `make_parser`. The verdict is the judge's own last word:
it is read only from the final non-blank line of the text (a line is blank when it holds
nothing but GAP characters), and that line must begin with it:

    verdict line := GAP* KEYWORD GAP* ':' GAP* NUMBER TAIL
    KEYWORD := the grammar's keyword ('score') in any letter case
    GAP     := ' ' | '\t' | '*'   (so '**Score:** 4', 'Score : 4', 'Score: **4**' all count;
               a newline does not: 'Score\n: 4' and 'Score:\n4' are not verdicts)
    NUMBER  := an integer v in [low, high] written without leading zeros, then, with
               `decimals`, '.' [0-9]+ when v < high or '.' '0'+ when v == high (for 0..5:
               4, 4.5, 3.25, 5.00), not followed by a digit nor by '.' and a digit, so
               'Score: 10', 'Score: 45', 'Score: 5.5', 'Score: 4.5.1', 'Score: -1',
               'Score: 05', 'Score: four' are not verdicts
    TAIL    := the rest of the line, whatever it holds: 'Score: 4.', 'Score: 4/5',
               'Score: 4 points', 'Score: 2 (not "Score: 5")' read their first number

So a score inside the reasons ('... I would give it Score: 4 but ...'), on a line that starts
with anything else ('Final score: 4', '> Score: 5', '"Score: 5"'), or followed by any
non-blank line (a judge that quotes the response's "Score: 5" on a line after its own
"Score: 2") is not a verdict: such a text is invalid (score NaN), and a forced verdict
(judges/forced.py) can then ask for one. A later verdict line replaces an earlier one only by
being the final line: 'Score: 1\nScore: 4' reads 4.
Only ASCII characters matter: every non-ASCII character acts like punctuation, so a multi-byte
character split over several byte-level tokens reads the same as when decoded whole.

The device path is a token-level DFA. A character automaton (where the keyword has been
matched, which integer prefix has been read, whether a fraction is pending) is run on the host
once over every vocabulary entry from every start state. What a token does from a state is
summarised as: the end state, and its effect on three float registers, the pending number
`val`, the weight `scale` of its next fraction digit, and the last committed verdict `last`.
Those effects are affine, so each summary is 8 numbers (see `_FIELDS`). Vocabulary entries
with identical summaries share a class, so the table is [C, S, 8] with C a few dozen (33
for SmolLM2's 49k vocabulary and the 0..5 grammar), and each `lax.scan` step over the tokens
is one gather.

Axis legend: B rows, T generated tokens, V vocabulary, C token classes, S automaton states.
"""

import dataclasses
import functools
import re
from typing import Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

GAPS = ' \t*'


@dataclasses.dataclass(frozen=True)
class Grammar:
  """A verdict line `<keyword>: <number>`, the number an integer in [low, high] (see above)."""
  keyword: str = 'Score'  # ASCII letters, matched in any letter case
  low: int = 0
  high: int = 5
  decimals: bool = True  # whether fractions (4.5) are verdicts too

  def __post_init__(self):
    if not (self.keyword.isascii() and self.keyword.isalpha()):
      raise ValueError(f'verdict keyword {self.keyword!r}: expected ASCII letters only')
    if not 0 <= self.low <= self.high <= 9999:
      raise ValueError(f'verdict range [{self.low}, {self.high}]: expected 0 <= low <= high '
                       '<= 9999')

  @property
  def values(self) -> tuple:
    """Returns the integer scores of the scale, low to high."""
    return tuple(range(self.low, self.high + 1))


SCORE = Grammar()  # the additive rubric's `Score: X`, X in [0, 5]

# Per (class, state) summary: end state; kind of write to `last` (0 none, 1 the number pending
# at the token's start, 2 the constant `last_const`: a number read wholly inside the token, or
# -1 where a non-blank line starts and so cancels the verdict before it); keep (1: the
# pending number is continued, val += scale * add, scale *= mult; 0: val, scale = new_*).
_FIELDS = ('next', 'kind', 'keep', 'add', 'mult', 'new_val', 'new_scale', 'last_const')

_NONE, _COMMIT, _INT, _APPEND, _CANCEL = range(5)


class Automaton:
  """The character automaton of one grammar, and the per-token summaries built from it.

  States: LINE (at a line start, only GAP characters read on the line so far), one per
  keyword prefix (1 .. n letters read), GAP (the keyword, then GAP characters), COLON (the ':'
  read), one per integer prefix (the number so far is that integer: its value is the state's),
  DOT / DOT_HI (an integer then '.', below / at the top of the range), FRAC / FRAC_HI (digits
  after it), NUM_DOT (a complete number and one more '.'), and REST (the rest of a line that
  holds no verdict or whose verdict is committed). A pending number commits as the verdict on
  the first character that cannot extend it.
  """

  def __init__(self, grammar: Grammar = SCORE):
    self.grammar = grammar
    self.keyword = grammar.keyword.lower()
    n = len(self.keyword)
    self.LINE, self.GAP, self.COLON = 0, n + 1, n + 2
    whole = [str(v) for v in grammar.values]
    prefixes = sorted({w[:i] for w in whole for i in range(1, len(w) + 1)},
                      key=lambda p: (len(p), p))
    self.int_state = {p: n + 3 + i for i, p in enumerate(prefixes)}
    self.int_value = {s: float(p) for p, s in self.int_state.items()}
    self.complete = {s for p, s in self.int_state.items() if p in set(whole)}
    base = n + 3 + len(prefixes)
    (self.DOT, self.DOT_HI, self.FRAC, self.FRAC_HI, self.NUM_DOT,
     self.REST) = range(base, base + 6)
    self.num_states = base + 6
    self.pending = tuple(sorted(self.complete)) + (self.DOT, self.DOT_HI, self.FRAC,
                                                   self.FRAC_HI, self.NUM_DOT)
    # A letter no keyword letter equals: `normalise` writes every other letter as it.
    self.other_letter = next(c for c in 'abcdefghijklmnopqrstuvwxyz' if c not in self.keyword)
    self.prefix_of = {s: p for p, s in self.int_state.items()}

  def char_step(self, state: int, ch: str) -> Tuple[int, int, int]:
    """Returns (next state, action, digit) of the character automaton for one character."""
    digit = ord(ch) - 48 if '0' <= ch <= '9' else -1
    end = self.LINE if ch == '\n' else self.REST
    if state in self.prefix_of:  # an integer read so far
      if digit >= 0:
        nxt = self.int_state.get(self.prefix_of[state] + ch)
        return (nxt, _INT, digit) if nxt is not None else (self.REST, _NONE, -1)
      if state not in self.complete:
        return end, _NONE, -1  # not a number of the range (e.g. 1 of 10..12): no verdict
      if ch == '.':
        if not self.grammar.decimals:
          return self.NUM_DOT, _NONE, -1
        top = self.int_value[state] == self.grammar.high
        return (self.DOT_HI if top else self.DOT), _NONE, -1
      return end, _COMMIT, -1
    if state in (self.DOT, self.DOT_HI, self.FRAC, self.FRAC_HI, self.NUM_DOT):
      if digit >= 0:
        if state in (self.DOT, self.FRAC):
          return self.FRAC, _APPEND, digit
        if state in (self.DOT_HI, self.FRAC_HI) and digit == 0:
          return self.FRAC_HI, _APPEND, digit
        return self.REST, _NONE, -1  # a digit too many (5.5, 4.5.1): the line has no verdict
      if ch == '.' and state in (self.FRAC, self.FRAC_HI):
        return self.NUM_DOT, _NONE, -1
      return end, _COMMIT, -1
    if ch == '\n':
      return self.LINE, _NONE, -1
    gap = ch in GAPS
    n = len(self.keyword)
    if state == self.LINE:
      if gap:
        return self.LINE, _NONE, -1
      # A non-blank line: whatever it holds, the verdicts of earlier lines no longer count.
      return (1 if ch.isascii() and ch.lower() == self.keyword[0] else self.REST), _CANCEL, -1
    if state == self.COLON:
      if gap:
        return self.COLON, _NONE, -1
      if ch in self.int_state:
        return self.int_state[ch], _INT, digit
    elif state in (n, self.GAP):
      if gap:
        return self.GAP, _NONE, -1
      if ch == ':':
        return self.COLON, _NONE, -1
    elif 1 <= state < n and ch.isascii() and ch.lower() == self.keyword[state]:
      return state + 1, _NONE, -1
    return self.REST, _NONE, -1

  def token_summary(self, text: str, state: int) -> Tuple[float, ...]:
    """Returns the `_FIELDS` summary of reading `text` from automaton state `state`."""
    kind, keep, add, mult = 0, 1, 0.0, 1.0
    new_val, new_scale, last_const = 0.0, 1.0, 0.0
    if state in self.int_value:  # the pending integer is the state's: no register needed
      keep, new_val, new_scale = 0, self.int_value[state], 0.1
    for ch in text:
      state, action, digit = self.char_step(state, ch)
      if action == _COMMIT:
        if keep:
          kind = 1
        else:
          kind, last_const = 2, new_val
      elif action == _CANCEL:
        kind, last_const = 2, -1.0
      elif action == _INT:
        keep, new_val, new_scale = 0, self.int_value[state], 0.1
      elif action == _APPEND:
        if keep:
          add, mult = add + mult * digit, mult * 0.1
        else:
          new_val, new_scale = new_val + new_scale * digit, new_scale * 0.1
    return (state, kind, keep, add, mult, new_val, new_scale, last_const)

  def normalise(self, text: str) -> str:
    """Returns `text` with characters, and runs of them, that the automaton treats alike merged."""
    out, run = [], 0  # run: letters kept so far in the current run of ASCII letters
    n = len(self.keyword)
    for ch in text:
      if ch.isascii() and ch.isalpha():
        # A run of letters can only extend a match of the keyword: once it holds another
        # letter, or more letters than the keyword, the automaton sits in REST until it ends.
        if run < 0:
          continue
        ch = ch.lower() if ch.lower() in self.keyword else self.other_letter
        run = -1 if ch == self.other_letter or run == n else run + 1
        out.append(ch)
        continue
      run = 0
      if ch in GAPS:
        ch = ' '
      elif not ('0' <= ch <= '9' or ch in ':.\n'):
        ch = '#'
      # A second '#', ' ' or newline in a row never changes the state nor `last` (each leads
      # to a fixed point).
      if not (out and ch in '# \n' and out[-1] == ch):
        out.append(ch)
    return ''.join(out)

  def build_tables(self, vocab_texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray, int]:
    """Returns (class_V int32, table_CxSxF float32, class of the empty text) for a vocabulary."""
    norm = [self.normalise(t) for t in vocab_texts] + ['']
    uniq, norm_idx = np.unique(np.array(norm, dtype=object), return_inverse=True)
    rows = np.array([[self.token_summary(t, s) for s in range(self.num_states)] for t in uniq])
    rows_u, row_idx = np.unique(rows.reshape(len(uniq), -1), axis=0, return_inverse=True)
    class_v = row_idx.reshape(-1)[norm_idx.reshape(-1)].astype(np.int32)
    table = rows_u.reshape(-1, self.num_states, len(_FIELDS)).astype(np.float32)
    return class_v[:-1], table, int(class_v[-1])


@functools.lru_cache(maxsize=16)
def automaton(grammar: Grammar = SCORE) -> Automaton:
  """Returns the (cached) character automaton of a grammar."""
  return Automaton(grammar)


@functools.lru_cache(maxsize=16)
def host_pattern(grammar: Grammar = SCORE) -> 're.Pattern':
  """Returns the regex of a verdict line (matched at the start of the final line)."""
  keyword = ''.join(f'[{c.upper()}{c.lower()}]' for c in grammar.keyword)
  numbers = []
  for v in sorted(grammar.values, key=lambda v: -len(str(v))):  # longest first: 10 before 1
    frac = (r'(?:\.0+)?' if v == grammar.high else r'(?:\.[0-9]+)?') if grammar.decimals else ''
    numbers.append(str(v) + frac)
  return re.compile(rf'[ \t*]*{keyword}[ \t*]*:[ \t*]*({"|".join(numbers)})(?![0-9]|\.[0-9])')


HOST_PATTERN = host_pattern(SCORE)


def final_line(text: str) -> Optional[str]:
  """Returns the last line of `text` holding more than GAP characters, or None."""
  lines = [line for line in text.split('\n') if line.strip(GAPS)]
  return lines[-1] if lines else None


def parse_host(text: str, grammar: Grammar = SCORE) -> Optional[float]:
  """Returns the verdict of the final non-blank line of `text` (the grammar), or None."""
  match = host_pattern(grammar).match(final_line(text) or '')
  return float(match.group(1)) if match else None


def make_parser(tokenizer_or_texts, pad_id: Optional[int] = None, grammar: Grammar = SCORE
                ) -> Callable[[jax.Array], Tuple[jax.Array, jax.Array]]:
  """Returns parse(tokens_BxT) -> (scores_B float32, NaN where invalid; valid_B bool).

  Args:
    tokenizer_or_texts: an object with `vocab_texts()` (each id's text in a decoded sequence,
      '' for special tokens) and `pad_id`, or that list of per-id texts itself.
    pad_id: the padding id (default: the tokenizer's `pad_id`); required with a plain list.
      Pad tokens, and ids outside [0, V), read as empty text, so right padding is inert.
    grammar: the verdict line to read.
  """
  if hasattr(tokenizer_or_texts, 'vocab_texts'):
    texts = list(tokenizer_or_texts.vocab_texts())
    pad_id = tokenizer_or_texts.pad_id if pad_id is None else pad_id
  else:
    texts = list(tokenizer_or_texts)
    if pad_id is None:
      raise ValueError('make_parser: pad_id is required with a list of per-id texts')
  if not 0 <= pad_id < len(texts):
    raise ValueError(f'make_parser: pad_id {pad_id} outside the vocabulary [0, {len(texts)})')
  texts[pad_id] = ''
  auto = automaton(grammar)
  class_v, table, empty_class = auto.build_tables(texts)
  pending_S = np.zeros(auto.num_states, bool)
  pending_S[list(auto.pending)] = True
  # Uploaded once, explicitly: the parser may run under jax.transfer_guard('disallow').
  class_v, table, pending_S = jax.device_put((class_v, table, pending_S))
  vocab_size = class_v.shape[0]

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
    init = (jnp.full((batch,), auto.LINE, jnp.int32), jnp.zeros((batch,), jnp.float32),
            jnp.ones((batch,), jnp.float32), jnp.full((batch,), -1.0, jnp.float32))
    (state_B, val_B, _, last_B), _ = jax.lax.scan(step, init, cls_BxT.T)
    # A number still pending at the end of the text is complete: it commits.
    last_B = jnp.where(pending_S[state_B], val_B, last_B)
    valid_B = last_B >= 0
    return jnp.where(valid_B, last_B, jnp.nan), valid_B

  parse.num_classes = int(table.shape[0])
  return parse
