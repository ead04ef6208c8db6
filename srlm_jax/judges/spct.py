"""SPCT (DeepSeek-GRM, arXiv 2504.02495): principles, a critique, then pointwise 1..10 scores.

The judge first writes principles for the question, then critiques the response(s) against
them, then gives each response a score from 1 to 10 (`GRAMMAR`: integers, no decimals).

One response per request (the registered judge 'spct'): a plain pointwise Judge ending with
`Score: N`, so it works wherever a judge does (the judgments stage, evaluate, forced
verdicts; '10' is two tokens for SmolLM2 and forced.score_tokens reads it as their product).

Several responses per request (`judge_together`): the N responses of one question are shown
as [Response 1] .. [Response N] in an order drawn per sample (seeded, `orders`), and the
judgment ends with the line `Scores: a, b, ...` (N integers in the scale, in shown order),
parsed on the device by `list_parser` (a character-level scan; `parse_list_host` is its
host regex twin). A forced verdict appends '\\nScore of Response j: ' after the critique for
each shown j and reads each score as forced.py does. The shuffle is undone on the device before
the scores are returned, so row g * N + i of the result is response i of question g.

Inference-time scaling: K sampled judgments per response, summed over the valid ones
(`base.aggregate(..., 'sum')`, the vote), optionally only the meta RM's top k_meta
(voting.py, meta_rm.py).

Axis legend: G questions, N responses per question, K judgments (samples), B rows, T tokens,
C characters per token (normalised), R = G * N judged responses.
"""

import functools
import re
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from srlm_jax import distributed
from srlm_jax import rollout as rollout_lib
from srlm_jax.judges import base
from srlm_jax.judges import forced as forced_lib
from srlm_jax.judges import judging
from srlm_jax.judges import parser

GRAMMAR = parser.Grammar('Score', 1, 10, decimals=False)
LIST_KEYWORD = 'Scores'

SINGLE_RUBRIC = """\
You are an expert judge of answers to user questions.

<question>
{prompt}
</question>

<response>
{response}
</response>

First write 2 to 4 short principles that a good answer to this question should meet \
(accuracy, helpfulness, clarity, and any the question itself calls for). Then critique the \
response against each principle in a few sentences. End with a final line of the form \
"Score: <n>", where <n> is an integer from 1 (poor) to 10 (excellent)."""

COMPACT_RUBRIC = """\
Question: {prompt}
<response>
{response}
</response>
Write principles for a good answer, critique the response against them, then end with a \
line "Score: <n>" (1 to 10)."""

MULTI_RUBRIC = """\
You are an expert judge of answers to user questions.

<question>
{prompt}
</question>

{responses}

First write 2 to 4 short principles that a good answer to this question should meet \
(accuracy, helpfulness, clarity, and any the question itself calls for). Then critique each \
response against the principles in a few sentences. End with a final line of the form \
"Scores: {example}", giving each response, in the order shown, an integer from 1 (poor) to \
10 (excellent)."""

TEMPLATES = {'spct': SINGLE_RUBRIC, 'compact': COMPACT_RUBRIC}

JUDGE = base.register(base.Judge(
    name='spct', grammar=GRAMMAR, templates=TEMPLATES, default_template='spct',
    verdict_prefix='\nScore: '))

_TAGS = re.compile(r'<(/?)(response \d+)>', re.IGNORECASE)


def together_messages(prompt: str, responses: Sequence[str], order: Sequence[int],
                      system: Optional[str] = None) -> list:
  """Returns one request (chat messages) showing `responses` in `order` (order[j] = the index
  of the response shown as Response j + 1)."""
  blocks = []
  for j, i in enumerate(order):
    text = _TAGS.sub(lambda m: f'<{m.group(1)}{m.group(2)}\u200b>', base.quote(responses[i]))
    blocks.append(f'<response {j + 1}>\n{text}\n</response {j + 1}>')
  example = ', '.join(f'<n{j + 1}>' for j in range(len(order)))
  user = MULTI_RUBRIC.format(prompt=base.quote(prompt), responses='\n\n'.join(blocks),
                             example=example)
  return ([{'role': 'system', 'content': system}] if system else []) + [
      {'role': 'user', 'content': user}]


def orders(seed: int, num_questions: int, k: int, n: int) -> np.ndarray:
  """Returns [G, K, N] int32: per question and sample, the order its N responses are shown in
  (a permutation drawn from `seed`, one per sample)."""
  rng = np.random.default_rng(seed)
  return np.stack([np.stack([rng.permutation(n) for _ in range(k)]) if k else
                   np.zeros((0, n), np.int64) for _ in range(num_questions)]).reshape(
                       num_questions, k, n).astype(np.int32)


@jax.jit
def unshuffle(shown_GxKxN: jax.Array, order_GxKxN: jax.Array) -> jax.Array:
  """Returns [G*N, K]: the scores by response (row g * N + i is response i of question g),
  from scores in shown order (shown[g, k, j] is the score of response order[g, k, j])."""
  g, k, n = shown_GxKxN.shape
  by_response = jnp.zeros_like(shown_GxKxN).at[
      jnp.arange(g)[:, None, None], jnp.arange(k)[None, :, None], order_GxKxN].set(shown_GxKxN)
  return by_response.transpose(0, 2, 1).reshape(g * n, k)


def list_pattern(n: int) -> 're.Pattern':
  """Returns the host regex of a final `Scores: a, b, ...` line of n integers."""
  gap = r'[ \t*]*'
  nums = rf'([0-9]+)' + ''.join(rf'{gap},{gap}([0-9]+)' for _ in range(n - 1))
  keyword = ''.join(f'[{c.upper()}{c.lower()}]' for c in LIST_KEYWORD)
  return re.compile(rf'{gap}{keyword}{gap}:{gap}{nums}{gap}(?:\.{gap})?')


def parse_list_host(text: str, n: int, grammar: parser.Grammar = GRAMMAR) -> Optional[list]:
  """Returns the n scores of a judgment's final `Scores:` line, or None (the host twin of
  `list_parser`): every number must be in the scale, nothing but gaps or a '.' after them."""
  match = list_pattern(n).fullmatch(parser.final_line(text) or '')
  if not match:
    return None
  values = [int(v) for v in match.groups()]
  return values if all(grammar.low <= v <= grammar.high for v in values) else None


# Character classes of the list automaton.
_OTHER, _NEWLINE, _GAP, _COLON, _COMMA, _DOT, _DIGIT0 = 0, 1, 2, 3, 4, 5, 6
_LETTER0 = _DIGIT0 + 10


def _char_class(ch: str, letters: str) -> int:
  if ch == '\n':
    return _NEWLINE
  if ch in parser.GAPS:
    return _GAP
  if ch in ':,.':
    return {':': _COLON, ',': _COMMA, '.': _DOT}[ch]
  if '0' <= ch <= '9':
    return _DIGIT0 + int(ch)
  if ch.isascii() and ch.lower() in letters:
    return _LETTER0 + letters.index(ch.lower())
  return _OTHER


def char_table(vocab_texts: Sequence[str], letters: str) -> np.ndarray:
  """Returns [V, C] int32: each token's text as character classes, -1 padded; a run of
  _OTHER or _GAP characters is written once (a repeat never changes the automaton)."""
  rows = []
  for text in vocab_texts:
    out = []
    for ch in text:
      c = _char_class(ch, letters)
      if not (out and c in (_OTHER, _GAP) and out[-1] == c):
        out.append(c)
    rows.append(out)
  width = max(1, max(len(r) for r in rows))
  table = np.full((len(rows), width), -1, np.int32)
  for i, r in enumerate(rows):
    table[i, :len(r)] = r
  return table


@functools.lru_cache(maxsize=8)
def list_parser(tokenizer: Any, n: int, grammar: parser.Grammar = GRAMMAR):
  """Returns jitted parse(tokens_BxT) -> (scores_BxN float32, NaN where invalid; valid_B):
  the n integers of the final non-blank line `Scores: a, b, ...` (see `parse_list_host`)."""
  keyword = LIST_KEYWORD.lower()
  letters = ''.join(sorted(set(keyword)))
  texts = list(tokenizer.vocab_texts())
  texts[tokenizer.pad_id] = ''
  table_VxC = jax.device_put(char_table(texts, letters))
  kw_classes = jnp.asarray([_LETTER0 + letters.index(c) for c in keyword], jnp.int32)
  nk = len(keyword)
  # Line states: 0 start (gaps only), 1..nk keyword letters read, then these.
  after_kw, wait, in_num, after_num, tail, bad = range(nk + 1, nk + 7)

  def line_ok(state_B, count_B, nums_BxN):
    in_range = ((nums_BxN >= grammar.low) & (nums_BxN <= grammar.high)).all(axis=-1)
    return (((state_B == in_num) | (state_B == after_num) | (state_B == tail))
            & (count_B == n) & in_range)

  def step(carry, c_B):
    state, cur, count, nums, last, last_ok = carry
    skip = c_B < 0
    digit = (c_B >= _DIGIT0) & (c_B < _DIGIT0 + 10)
    gap = c_B == _GAP
    newline = c_B == _NEWLINE
    # A number ends on a gap, comma, dot or newline: commit it to the line's list.
    ends = (state == in_num) & ~digit & ~skip
    slot = jax.nn.one_hot(jnp.minimum(count, n - 1), n, dtype=bool) & (count < n)[:, None]
    nums = jnp.where(ends[:, None] & slot, cur[:, None], nums)
    count = count + ends.astype(jnp.int32)
    # A non-blank line that ends replaces the verdict.
    closes = newline & (state != 0)
    ok = line_ok(jnp.where(state == in_num, after_num, state), count, nums)
    last = jnp.where(closes[:, None], nums, last)
    last_ok = jnp.where(closes, ok, last_ok)
    kw_next = kw_classes[jnp.clip(state, 0, nk - 1)]
    nxt = jnp.where(
        state == 0, jnp.where(gap, 0, jnp.where(c_B == kw_classes[0], 1, bad)),
        jnp.where((state >= 1) & (state < nk), jnp.where(c_B == kw_next, state + 1, bad),
        jnp.where((state == nk) | (state == after_kw),
                  jnp.where(gap, after_kw, jnp.where(c_B == _COLON, wait, bad)),
        jnp.where(state == wait, jnp.where(gap, wait, jnp.where(digit, in_num, bad)),
        jnp.where((state == in_num) | (state == after_num),
                  jnp.where(digit & (state == in_num), in_num,
                  jnp.where(gap, after_num, jnp.where(c_B == _COMMA, wait,
                            jnp.where(c_B == _DOT, tail, bad)))),
        jnp.where(state == tail, jnp.where(gap, tail, bad), bad))))))
    nxt = jnp.where(newline, 0, nxt)
    value = c_B - _DIGIT0
    cur = jnp.where(digit & (state == in_num), jnp.minimum(cur * 10 + value, 99999),
                    jnp.where(digit, value, cur))
    count = jnp.where(newline, 0, count)
    new = (jnp.where(skip, carry[0], nxt), jnp.where(skip, carry[1], cur),
           jnp.where(skip, carry[2], count), jnp.where(skip[:, None], carry[3], nums),
           last, last_ok)
    return new, None

  @jax.jit
  def parse(tokens_BxT: jax.Array):
    tokens_BxT = jnp.asarray(tokens_BxT, jnp.int32)
    v = table_VxC.shape[0]
    in_vocab = (tokens_BxT >= 0) & (tokens_BxT < v)
    chars_BxTxC = jnp.where(in_vocab[..., None], table_VxC[jnp.clip(tokens_BxT, 0, v - 1)], -1)
    chars_BxX = chars_BxTxC.reshape(tokens_BxT.shape[0], -1)
    b = tokens_BxT.shape[0]
    zeros = jnp.zeros((b,), jnp.int32)
    init = (zeros, zeros, zeros, jnp.zeros((b, n), jnp.int32), jnp.zeros((b, n), jnp.int32),
            jnp.zeros((b,), bool))
    (state, cur, count, nums, last, last_ok), _ = jax.lax.scan(step, init, chars_BxX.T)
    # The text's end closes its last line as a newline does.
    ends = state == in_num
    slot = jax.nn.one_hot(jnp.minimum(count, n - 1), n, dtype=bool) & (count < n)[:, None]
    nums = jnp.where(ends[:, None] & slot, cur[:, None], nums)
    count = count + ends.astype(jnp.int32)
    closes = state != 0
    ok = line_ok(jnp.where(ends, after_num, state), count, nums)
    last = jnp.where(closes[:, None], nums, last)
    last_ok = jnp.where(closes, ok, last_ok)
    return jnp.where(last_ok[:, None], last.astype(jnp.float32), jnp.nan), last_ok

  return parse


def _forced_prefix(j: int) -> str:
  return f'\nScore of Response {j + 1}: '


@jax.jit
def _set_rows(forced_B, olds: tuple, news: tuple) -> tuple:
  """Returns each [B, N] array of `olds` with the forced rows taken from `news`."""
  return tuple(jnp.where(forced_B[:, None], new, old) for old, new in zip(olds, news))


def judge_together(model: Any, prompts: Sequence[str], responses: Sequence[Sequence[str]],
                   settings: base.JudgeSettings, seed: int = 0, *, progress: Any = True,
                   truncate: bool = False) -> tuple[list, base.JudgeScores]:
  """Returns (judgment texts [G * N][K], JudgeScores [G * N, K]) of settings.k SPCT judgments of
  each question's N responses, all N in one request per sample, shown in a seeded order drawn
  per sample; row g * N + i is response i of question g (the shuffle undone)."""
  judge_ = base.get(settings.kind)
  if judge_.grammar != GRAMMAR and judge_ is not JUDGE:
    raise ValueError(f'judge_together is SPCT\'s; settings.kind={settings.kind!r}')
  n = {len(r) for r in responses}
  if len(n) > 1 or len(prompts) != len(responses):
    raise ValueError(f'judge_together: {len(prompts)} questions with response counts {n}; '
                     'expected one list of the same number of responses per question')
  n = n.pop() if n else 1
  tok, k, g = model.tokenizer, settings.k, len(prompts)
  mesh = getattr(model, 'mesh', None)
  put = lambda tree: forced_lib.replicate(mesh, tree)
  order_GxKxN = orders(seed, g, k, n)
  system = settings.template.system if settings.template else None
  requests = [together_messages(prompts[q], responses[q], order_GxKxN[q, s], system)
              for q in range(g) for s in range(k)]
  forcing = settings.verdict != 'sampled'
  ids_SxL, path = forced_lib.score_tokens(tok, _forced_prefix(0), GRAMMAR.values)
  prefixes = [tok.encode(_forced_prefix(j)) + path for j in range(n)] if forcing else [[]]
  ids, dropped = rollout_lib.encode_prompts(
      model, requests, max_new_tokens=settings.max_new_tokens, truncate=truncate,
      reserve=max(len(p) for p in prefixes))
  hook = None
  if forcing:
    hook = forced_lib.verdict_hook(
        model, list_parser(tok, n), settings.verdict, prefixes, ids_SxL, GRAMMAR.values,
        judging.text_features(tok) if settings.verdict == 'forced_always' else None)
  roll = rollout_lib.sample(model, ids, n=1, max_new_tokens=settings.max_new_tokens,
                            temperature=settings.temperature, top_p=settings.top_p, seed=seed,
                            progress=progress, on_batch=hook)
  if forcing:
    roll, (expected_BxN, forced_argmax_BxN, forced_mass_BxN) = roll
  shown_BxN, valid_B = list_parser(tok, n)(roll.tokens)
  nan = np.full((g * k, n), np.nan, np.float32)
  forced_B = put(np.zeros(g * k, bool))
  argmax_BxN, mass_BxN = put(nan), put(nan)
  if forcing:  # every judgment, or those without a verdict line of their own
    forced_B = put(np.ones(g * k, bool)) if settings.verdict == 'forced_always' else ~valid_B
    shown_BxN, argmax_BxN, mass_BxN = _set_rows(
        forced_B, (shown_BxN, argmax_BxN, mass_BxN),
        (expected_BxN, forced_argmax_BxN, forced_mass_BxN))
    valid_B = valid_B | forced_B
  order = put(order_GxKxN)
  by_response = lambda x_BxN: unshuffle(jnp.asarray(x_BxN).reshape(g, k, n), order)
  every = lambda x_B: jnp.broadcast_to(jnp.asarray(x_B)[:, None], (g * k, n))
  dropped_R = np.repeat(np.asarray(dropped, np.int32).reshape(g, k).max(axis=1, initial=0), n)
  out = base.JudgeScores(
      scores_RxK=by_response(shown_BxN), valid_RxK=by_response(every(valid_B)),
      forced_RxK=by_response(every(forced_B)), argmax_RxK=by_response(argmax_BxN),
      mass_RxK=by_response(mass_BxN), truncated_R=put(dropped_R),
      kept_RxK=put(np.ones((g * n, k), bool)), meta_RxK=put(np.full((g * n, k), np.nan,
                                                                    np.float32)))
  texts_B = [row[0] for row in rollout_lib.texts(roll, tok)]
  texts = [[texts_B[q * k + s] for s in range(k)] for q in range(g) for _ in range(n)]
  if settings.meta_filter:
    out = judging.meta_filtered(model, settings, [p for p in prompts for _ in range(n)],
                                [r for rs in responses for r in rs], texts, out, seed)
  return texts, out
