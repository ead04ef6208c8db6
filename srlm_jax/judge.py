"""LLM-as-a-Judge: the additive 5-point rubric prompt, in the model's own chat format.

The judge reads a question and a candidate response and awards points cumulatively, ending
with a line `Score: <points>` (the grammar the parser accepts is in judge_parser.py).

The candidate response is quoted inside <response> ... </response> tags, and any tag-like
text inside it that could close the quote is neutralised, so a response cannot pass text of
its own off as the judge's verdict. The verdict is parsed only from the tokens the judge
generates, never from the prompt, so a response that itself contains `Score: 5` does not
change the score.
"""

import dataclasses
import re
from typing import Any, Optional, Sequence

import jax
import numpy as np

from srlm_jax import pairs
from srlm_jax import sampler
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


@dataclasses.dataclass(frozen=True)
class JudgeSettings:
  """How each candidate is judged: k sampled judgments, parsed and averaged."""
  k: int = 3  # judgments per candidate (the paper: 3)
  temperature: float = 0.7
  top_p: float = 0.9
  max_new_tokens: int = 192
  template: JudgeTemplate = JudgeTemplate()


@dataclasses.dataclass
class Judgments:
  """K judgments of each of R responses: texts, parsed scores and their mean."""
  texts: list  # [R][K] judge completions
  scores_RxK: np.ndarray  # float32, NaN where invalid
  valid_RxK: np.ndarray  # bool
  mean_R: np.ndarray  # mean of the valid scores, NaN where none is valid
  n_valid_R: np.ndarray  # int32


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


def judge_responses(model: Any, prompts: Sequence[str], responses: Sequence[str], *,
                    settings: JudgeSettings = JudgeSettings(), parser=None, seed: int = 0,
                    progress: bool = True) -> Judgments:
  """Returns settings.k parsed judgments of each (prompt, response) pair by the model."""
  if len(prompts) != len(responses):
    raise ValueError(f'{len(prompts)} prompts but {len(responses)} responses')
  parser = parser or make_score_parser(model.tokenizer)
  requests = [judge_messages(p, r, settings.template) for p, r in zip(prompts, responses)]
  out = sampler.generate_tokens(model, requests, n=settings.k,
                                max_new_tokens=settings.max_new_tokens,
                                temperature=settings.temperature, top_p=settings.top_p,
                                seed=seed, progress=progress)
  flat = [c for comps in out for c in comps]
  if not flat:
    empty = np.zeros((0, settings.k), np.float32)
    return Judgments([], empty, empty.astype(bool), empty[:, 0], np.zeros(0, np.int32))
  # Only the judge's own generated tokens are parsed: text quoted in the prompt never counts.
  tokens = pad_right([c.tokens for c in flat], model.tokenizer.pad_id)
  scores, valid = jax.device_get(jax.jit(parser)(tokens))
  scores_RxK = np.asarray(scores, np.float32).reshape(len(out), settings.k)
  valid_RxK = np.asarray(valid, bool).reshape(len(out), settings.k)
  mean, count = jax.device_get(pairs.mean_valid(scores_RxK[None], valid_RxK[None]))
  return Judgments([[c.text for c in comps] for comps in out], scores_RxK, valid_RxK,
                   np.asarray(mean[0], np.float32), np.asarray(count[0], np.int32))
