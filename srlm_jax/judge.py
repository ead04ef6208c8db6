"""LLM-as-a-Judge: the additive 5-point rubric prompt, in the model's own chat format.

The judge reads a question and a candidate response and awards points cumulatively, ending
with a line `Score: <points>` (the grammar the parser accepts is in judge_parser.py).

Verdicts (`JudgeSettings.verdict`): 'sampled' parses the judge's own final `Score: X` line
(judge_parser.py), and a judgment without one is invalid. 'forced' keeps each valid sampled
verdict and, for a judgment without one, appends the verdict prefix ('\\nScore: ') to the
judge's text and reads its next-token distribution over the score tokens 0..5 in one more
forward pass: the score is the expectation under that distribution renormalised over the
scores, so every judgment is valid; the argmax and the probability mass the scores held are
recorded. 'forced_always' forces every judgment, straight after its reasons (a sampled verdict
line is cut off first). The forward pass runs over each whole [prompt, judgment, prefix] row,
batched and jitted (`verdict_distribution`), the output head at the last position only: one
prefill-sized pass per batch, simpler than keeping the sampler's decode cache alive.

The candidate response is quoted inside <response> ... </response> tags, and any tag-like
text inside it that could close the quote is neutralised, so a response cannot pass text of
its own off as the judge's verdict. The verdict is parsed only from the tokens the judge
generates, never from the prompt, so a response that itself contains `Score: 5` does not
change the score.
"""

import contextlib
import dataclasses
import functools
import re
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from srlm_jax import data_io
from srlm_jax import distributed
from srlm_jax import llama
from srlm_jax.rewards import pairs
from srlm_jax import rollout
from srlm_jax import sampler
from srlm_jax import sharding
from srlm_jax.judge_parser import HOST_PATTERN, make_score_parser, parse_score_host  # pylint: disable=unused-import

ADDITIVE_RUBRIC = """\
Review the user's question and the candidate response below, then score the response with \
the additive 5-point system described here. Points add up as each criterion is met:

- Award 1 point if the response is relevant to the question and offers some related \
information, even if it is incomplete or carries some unrelated material.
- Award a 2nd point if the response covers a substantial part of the question, even if it \
does not resolve it fully or answer it directly.
- Award a 3rd point if the response usefully answers the basic elements of the question, \
whether or not it reads like an AI assistant's answer or contains material typical of blogs \
and search results.
- Award a 4th point if the response is clearly written from an AI assistant's perspective, \
addresses the question directly and comprehensively, and is well organised and helpful, even \
if there is slight room for more clarity, concision or focus.
- Award a 5th point if the response is tailored to the question without extraneous content, \
reflects expert knowledge, and is engaging, insightful and of the highest quality.

<question>
{prompt}
</question>

<response>
{response}
</response>

After examining the question and the response, justify your total score briefly, in at most \
100 words. End with a final line of the form "Score: <points>", where <points> is your total \
from 0 to 5."""

# The multiple-choice form the paper compared against (26.6% pairwise accuracy vs 65.1%):
# kept as an alternative wording for judge studies.
CHOICE_RUBRIC = """\
Read the user's question and the candidate response below, and rate the response by choosing \
the one description that fits it best:

0: The response is irrelevant to the question or empty.
1: The response is relevant and gives some related information.
2: The response covers a substantial part of the question.
3: The response usefully answers the basic elements of the question.
4: The response is direct, comprehensive, well organised and written as an AI assistant.
5: The response is expert, tailored to the question, engaging, with no extraneous content.

<question>
{prompt}
</question>

<response>
{response}
</response>

Explain your choice briefly, then end with a final line of the form "Score: <points>"."""

# The additive rubric in a few lines, for small models and CPU demos: judge prompts about 300
# tokens shorter, so SFT on EFT examples and judging cost less and fit short context windows.
COMPACT_RUBRIC = """\
Score the response to the question from 0 to 5, adding one point for each that holds: it is \
relevant; it covers much of the question; it usefully answers the basics; it is a clear, \
organised, helpful assistant answer; it is expert and tailored, with nothing extraneous.
<question>
{prompt}
</question>
<response>
{response}
</response>
End with a line "Score: <points>"."""

TEMPLATES = {'additive': ADDITIVE_RUBRIC, 'choice': CHOICE_RUBRIC, 'compact': COMPACT_RUBRIC}

_TAG = re.compile(r'<(/?)(question|response)>', re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class JudgeTemplate:
  """How a judgment is asked for: the rubric text and an optional system message."""
  rubric: str = ADDITIVE_RUBRIC  # must contain {prompt} and {response}
  system: Optional[str] = None

  def __post_init__(self):
    for field in ('{prompt}', '{response}'):
      if field not in self.rubric:
        raise ValueError(f'judge rubric must contain {field}; got: {self.rubric[:80]!r}...')


def get_template(name_or_text: str, system: Optional[str] = None) -> JudgeTemplate:
  """Returns the named template ('additive', 'choice') or one built from the given text."""
  rubric = TEMPLATES.get(name_or_text, name_or_text)
  if name_or_text not in TEMPLATES and '{response}' not in name_or_text:
    raise ValueError(f'unknown judge template {name_or_text!r}: expected one of '
                     f'{sorted(TEMPLATES)} or a rubric text with {{prompt}} and {{response}}')
  return JudgeTemplate(rubric, system)


def quote(text: str) -> str:
  """Returns text with tags that could close or open a quoted block neutralised."""
  return _TAG.sub(lambda m: f'<{m.group(1)}{m.group(2)}\u200b>', text.strip())


def judge_prompt(prompt: str, response: str, template: JudgeTemplate = JudgeTemplate()) -> str:
  """Returns the judge instruction for one (prompt, response) pair."""
  return template.rubric.format(prompt=quote(prompt), response=quote(response))


def judge_messages(prompt: str, response: str,
                   template: JudgeTemplate = JudgeTemplate()) -> list:
  """Returns the judge request as chat messages (to format with the model's chat template)."""
  messages = [{'role': 'system', 'content': template.system}] if template.system else []
  messages.append({'role': 'user', 'content': judge_prompt(prompt, response, template)})
  return messages


VERDICTS = ('sampled', 'forced', 'forced_always')
SCORE_VALUES = tuple(range(6))  # what a forced verdict chooses among: the rubric's 0..5 points


@dataclasses.dataclass(frozen=True)
class JudgeSettings:
  """How each candidate is judged: k sampled judgments, parsed and averaged."""
  k: int = 3  # judgments per candidate (the paper: 3)
  temperature: float = 0.7
  top_p: float = 0.9
  max_new_tokens: int = 192
  template: JudgeTemplate = JudgeTemplate()
  verdict: str = 'sampled'  # one of VERDICTS (see the module docstring)
  verdict_prefix: str = '\nScore: '  # appended before a forced verdict's score token

  def __post_init__(self):
    if self.verdict not in VERDICTS:
      raise ValueError(f'judge verdict={self.verdict!r}: expected one of {VERDICTS}')


@dataclasses.dataclass
class Judgments:
  """K judgments of each of R responses: texts, parsed scores and their mean."""
  texts: list  # [R][K] judge completions
  scores_RxK: np.ndarray  # float32, NaN where invalid
  valid_RxK: np.ndarray  # bool
  mean_R: np.ndarray  # mean of the valid scores, NaN where none is valid
  n_valid_R: np.ndarray  # int32
  forced_RxK: Optional[np.ndarray] = None  # bool: the score is a forced verdict's expectation
  argmax_RxK: Optional[np.ndarray] = None  # float32: a forced verdict's most likely score
  mass_RxK: Optional[np.ndarray] = None  # float32: the probability the score tokens held
  truncated_R: Optional[np.ndarray] = None  # int32: judge-prompt tokens dropped to fit


def score_json(x) -> Optional[float]:
  """Returns a float32 score as the shortest decimal that reads back as the same float32 (3.1,
  not 3.0999999046325684), or None for NaN (no valid score): how records store scores."""
  x = np.float32(x)
  return None if np.isnan(x) else float(np.format_float_positional(x, unique=True))


def pad_right(rows: Sequence[np.ndarray], pad_id: int, multiple: int = 32) -> np.ndarray:
  """Returns the rows right-padded with pad_id to a common length (a multiple of `multiple`)."""
  width = max([len(r) for r in rows] + [1])
  width = -(-width // multiple) * multiple
  out = np.full((len(rows), width), pad_id, np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def score_token_ids(tokenizer: Any, prefix: str,
                    values: Sequence[int] = SCORE_VALUES) -> np.ndarray:
  """Returns, per score value, the one token that writes it right after `prefix` [S] int32."""
  base = tokenizer.encode(prefix)
  ids = []
  for v in values:
    full = tokenizer.encode(prefix + str(v))
    if len(full) != len(base) + 1 or full[:len(base)] != base:
      raise ValueError(
          f'forced verdicts need each score to be one token after the verdict prefix: '
          f'{prefix!r} + {str(v)!r} tokenises to {full}, not {base} + one id (change '
          'creation.judge.verdict_prefix, e.g. drop or add its trailing space)')
    ids.append(full[-1])
  if len(set(ids)) != len(ids):
    raise ValueError(f'scores {list(values)} share tokens after {prefix!r}: {ids}')
  return np.asarray(ids, np.int32)


@functools.partial(jax.jit, static_argnames='config')
def verdict_distribution(config: llama.LlamaConfig, params, tokens_BT: jax.Array,
                         mask_BT: jax.Array, score_ids_S: jax.Array, values_S: jax.Array):
  """Returns (expected score [B], most likely score [B], probability mass on the scores [B]).

  Each row is left-padded (mask marks real tokens) and ends with the verdict prefix; the
  distribution is the model's next token after it, restricted to score_ids and renormalised.
  """
  positions_BT = llama.default_positions(mask_BT)
  hidden_BTD, _ = llama.Llama(config).apply({'params': params}, tokens_BT, positions_BT,
                                            mask_BT, hidden_only=True)
  head = params['embed']['embedding'] if config.tie_embeddings else params['lm_head']['kernel']
  logits_BV = llama.head_matmul(hidden_BTD[:, -1], head, config.tie_embeddings)
  scores_BS = logits_BV[:, score_ids_S]
  dist_BS = jax.nn.softmax(scores_BS, axis=-1)
  mass_B = jnp.exp(jax.nn.logsumexp(scores_BS, axis=-1) - jax.nn.logsumexp(logits_BV, axis=-1))
  values_S = values_S.astype(jnp.float32)
  return dist_BS @ values_S, values_S[jnp.argmax(scores_BS, axis=-1)], mass_B


def forced_verdicts(model: Any, rows: Sequence[np.ndarray], score_ids: np.ndarray,
                    values: Sequence[int] = SCORE_VALUES, batch_rows: int = 16):
  """Returns (expected, argmax, mass) float32 [R] of the score after each row of token ids.

  Rows are sorted by length into left-padded batches of `batch_rows` (lengths bucketed as the
  sampler's prompts are, so one compile per bucket), each one `verdict_distribution` call.
  """
  mesh = getattr(model, 'mesh', None)
  multiple = 1 if mesh is None else int(np.prod([mesh.shape[a] for a in sharding.BATCH]))
  batch_rows = -(-batch_rows // multiple) * multiple
  out = np.zeros((3, len(rows)), np.float32)
  order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
  score_ids, values = jnp.asarray(score_ids, jnp.int32), jnp.asarray(values, jnp.int32)
  pad = model.tokenizer.pad_id
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    for start in range(0, len(order), batch_rows):
      chunk = order[start:start + batch_rows]
      chunk_rows = chunk + [chunk[0]] * (batch_rows - len(chunk))  # one batch shape
      t = data_io.length_bucket(max(len(rows[i]) for i in chunk), max_len=1 << 62)
      tokens = np.full((batch_rows, t), pad, np.int32)
      mask = np.zeros((batch_rows, t), bool)
      for r, i in enumerate(chunk_rows):
        tokens[r, t - len(rows[i]):], mask[r, t - len(rows[i]):] = rows[i], True
      tokens, mask = sharding.shard_batch(mesh, tokens, mask)
      got = distributed.to_host(verdict_distribution(model.config, model.params, tokens, mask,
                                                     score_ids, values))
      for k in range(3):
        out[k, chunk] = np.asarray(got[k])[:len(chunk)]
  return out[0], out[1], out[2]


def reasons_tokens(tokens: np.ndarray, vocab_texts: Sequence[str]) -> np.ndarray:
  """Returns the leading tokens of a judgment before its final line (what forced_always keeps).

  A token that holds the newline before the final line is dropped with it (the verdict prefix
  starts with its own newline).
  """
  texts = [vocab_texts[t] if 0 <= t < len(vocab_texts) else '' for t in tokens]
  text = ''.join(texts)
  start = text.rfind('\n', 0, len(text.rstrip(' \t*\n')))
  ends = np.cumsum([len(t) for t in texts])
  return tokens[:int(np.sum(ends <= max(start, 0)))]


def judge_responses(model: Any, prompts: Sequence[str], responses: Sequence[str], *,
                    settings: JudgeSettings = JudgeSettings(), parser=None, seed: int = 0,
                    progress: bool = True, where: Optional[Sequence[str]] = None,
                    truncate: bool = False) -> Judgments:
  """Returns settings.k judgments of each (prompt, response) pair by the model, parsed or
  forced per settings.verdict (`where` names the pairs in context-length errors)."""
  if len(prompts) != len(responses):
    raise ValueError(f'{len(prompts)} prompts but {len(responses)} responses')
  parser = parser or make_score_parser(model.tokenizer)
  forcing = settings.verdict != 'sampled'
  prefix = model.tokenizer.encode(settings.verdict_prefix) if forcing else []
  score_ids = score_token_ids(model.tokenizer, settings.verdict_prefix) if forcing else None
  requests = [judge_messages(p, r, settings.template) for p, r in zip(prompts, responses)]
  out = rollout.generate_tokens(model, requests, n=settings.k,
                                max_new_tokens=settings.max_new_tokens,
                                temperature=settings.temperature, top_p=settings.top_p,
                                seed=seed, progress=progress, where=where, truncate=truncate,
                                reserve=len(prefix))
  flat = [c for comps in out for c in comps]
  if not flat:
    empty = np.zeros((0, settings.k), np.float32)
    return Judgments([], empty, empty.astype(bool), empty[:, 0], np.zeros(0, np.int32))
  # Only the judge's own generated tokens are parsed: text quoted in the prompt never counts.
  tokens = pad_right([c.tokens for c in flat], model.tokenizer.pad_id)
  scores, valid = jax.device_get(jax.jit(parser)(tokens))
  scores, valid = np.array(scores, np.float32), np.array(valid, bool)
  forced = np.zeros(len(flat), bool)
  argmax, mass = np.full(len(flat), np.nan, np.float32), np.full(len(flat), np.nan, np.float32)
  if forcing:
    forced = np.ones(len(flat), bool) if settings.verdict == 'forced_always' else ~valid
    vocab = model.tokenizer.vocab_texts() if settings.verdict == 'forced_always' else None
    rows = []
    for i in np.flatnonzero(forced):
      c = flat[i]
      body = c.tokens[:-1] if c.stop_reason == sampler.StopReason.EOS else c.tokens
      if valid[i]:  # forced_always: the sampled verdict line is cut, the reasons stay
        body = reasons_tokens(body, vocab)
      rows.append(np.concatenate([c.prompt_tokens, body, prefix]).astype(np.int32))
    if rows:
      expected, best, held = forced_verdicts(model, rows, score_ids)
      scores[forced], argmax[forced], mass[forced] = expected, best, held
      valid[forced] = True
  shape = (len(out), settings.k)
  scores_RxK, valid_RxK = scores.reshape(shape), valid.reshape(shape)
  mean, count = jax.device_get(pairs.mean_valid(scores_RxK[None], valid_RxK[None]))
  return Judgments([[c.text for c in comps] for comps in out], scores_RxK, valid_RxK,
                   np.asarray(mean[0], np.float32), np.asarray(count[0], np.int32),
                   forced.reshape(shape), argmax.reshape(shape), mass.reshape(shape),
                   np.asarray([comps[0].prompt_truncated for comps in out], np.int32))
