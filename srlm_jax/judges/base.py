"""The Judge plug-in point: what a judge owns, how it is asked, and the registry of judges.

A `Judge` (frozen dataclass) owns its request templates, its verdict grammar (compiled to the
device parser of parser.py and to a host regex), its score scale (`score_values`: reports,
pairing and EFT data read the scale from here, never from constants) and the format of its
EFT targets. Adding a judge is one module that builds a `Judge` and calls `register`; the
config names it (`creation.judge.kind`).

`JudgeScores` is what judging returns on the device; `JudgeSettings` how each candidate is
judged. Axis legend: R judged responses, K judgments per response.
"""

import dataclasses
import functools
import importlib
import math
import re
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from srlm_jax.judges import parser as parser_lib

VERDICTS = ('sampled', 'forced', 'forced_always')
AGGREGATES = ('mean', 'sum')  # how a response's K judgments reduce (`aggregate`)
EFT_TARGETS = ('judgment', 'score_only')

_TAG = re.compile(r'<(/?)(question|response)>', re.IGNORECASE)


def quote(text: str) -> str:
  """Returns text with tags that could close or open a quoted block neutralised."""
  return _TAG.sub(lambda m: f'<{m.group(1)}{m.group(2)}\u200b>', text.strip())


@dataclasses.dataclass(frozen=True)
class JudgeTemplate:
  """How a judgment is asked for: the rubric text and an optional system message."""
  rubric: str  # must contain {prompt} and {response}
  system: Optional[str] = None

  def __post_init__(self):
    for field in ('{prompt}', '{response}'):
      if field not in self.rubric:
        raise ValueError(f'judge rubric must contain {field}; got: {self.rubric[:80]!r}...')


@dataclasses.dataclass(frozen=True)
class JudgeSettings:
  """How each candidate is judged: by which judge, k sampled judgments, parsed and averaged."""
  kind: str = 'additive'  # a registered judge (see `names()`) or its module's path
  k: int = 3  # judgments per candidate (the paper: 3)
  temperature: float = 0.7
  top_p: float = 0.9
  max_new_tokens: int = 192
  template: Optional[JudgeTemplate] = None  # None: the judge's default template
  verdict: str = 'sampled'  # one of VERDICTS (see forced.py)
  verdict_prefix: Optional[str] = None  # before a forced score token; None: the judge's own
  aggregate: str = 'mean'  # one of AGGREGATES: the valid scores' mean (the paper) or sum (vote)
  meta_filter: int = 0  # k_meta: only a response's top k_meta judgments by the meta RM count
  meta_kind: str = 'meta_rm'  # the judge that scores judgments for meta_filter

  def __post_init__(self):
    if self.verdict not in VERDICTS:
      raise ValueError(f'judge verdict={self.verdict!r}: expected one of {VERDICTS}')
    if self.aggregate not in AGGREGATES:
      raise ValueError(f'judge aggregate={self.aggregate!r}: expected one of {AGGREGATES}')
    if not 0 <= self.meta_filter <= self.k:
      raise ValueError(f'judge meta_filter={self.meta_filter}: expected 0 (off) or k_meta in '
                       f'1..k={self.k}')


@dataclasses.dataclass(frozen=True, eq=False)
class Judge:
  """A pointwise judge: its requests, verdict grammar, score scale and EFT target format."""
  name: str
  grammar: parser_lib.Grammar  # the verdict line and the score range
  templates: Mapping[str, str]  # named rubrics, each with {prompt} and {response}
  default_template: str  # a key of templates
  verdict_prefix: str  # what a forced verdict appends before the score token
  justification: Optional[Callable[[int], str]] = None  # an EFT judgment text for a score

  @property
  def score_values(self) -> tuple:
    """Returns the integer scores of the judge's scale, lowest first."""
    return self.grammar.values

  def template(self, name_or_text: Optional[str] = None,
               system: Optional[str] = None) -> JudgeTemplate:
    """Returns the named template (default: the judge's) or one built from a rubric text."""
    name_or_text = self.default_template if name_or_text is None else name_or_text
    if name_or_text not in self.templates and '{response}' not in name_or_text:
      raise ValueError(f'unknown judge template {name_or_text!r} for judge {self.name!r}: '
                       f'expected one of {sorted(self.templates)} or a rubric text with '
                       '{prompt} and {response}')
    return JudgeTemplate(self.templates.get(name_or_text, name_or_text), system)

  def prompt_text(self, prompt: str, response: str,
                  template: Optional[JudgeTemplate] = None) -> str:
    """Returns the judge instruction for one (prompt, response) pair."""
    template = template or self.template()
    return template.rubric.format(prompt=quote(prompt), response=quote(response))

  def messages(self, prompt: str, response: str,
               template: Optional[JudgeTemplate] = None) -> list:
    """Returns one judge request as chat messages (formatted later by the model's template)."""
    template = template or self.template()
    out = [{'role': 'system', 'content': template.system}] if template.system else []
    out.append({'role': 'user', 'content': self.prompt_text(prompt, response, template)})
    return out

  def requests(self, prompts: Sequence[str], responses: Sequence[str],
               template: Optional[JudgeTemplate] = None) -> list:
    """Returns per (prompt, response) its judge request as chat messages."""
    if len(prompts) != len(responses):
      raise ValueError(f'{len(prompts)} prompts but {len(responses)} responses')
    return [self.messages(p, r, template) for p, r in zip(prompts, responses)]

  def parser(self, tokenizer: Any) -> Callable:
    """Returns the jitted device parser tokens_RxT -> (scores_R, NaN where invalid; valid_R)."""
    return _jitted_parser(tokenizer, self.grammar)

  def parse_host(self, text: str) -> Optional[float]:
    """Returns the verdict of a judgment text (the host twin of `parser`), or None."""
    return parser_lib.parse_host(text, self.grammar)

  def verdict_line(self, score: float) -> str:
    """Returns the verdict line that states `score` ('Score: 4')."""
    return f'{self.grammar.keyword}: {score:g}'

  def eft_judgment(self, score: int) -> str:
    """Returns an EFT training judgment for a human-derived score, ending in its verdict."""
    low, high = self.score_values[0], self.score_values[-1]
    if score not in self.score_values or int(score) != score:
      raise ValueError(f'judge {self.name!r}: an EFT score must be an integer in {low}..{high}, '
                       f'got {score!r}')
    return self.justification(int(score)) if self.justification else self.verdict_line(score)

  def eft_target(self, judgment: str, kind: str) -> str:
    """Returns the SFT target of an EFT example: the whole judgment or only its verdict line."""
    if kind == 'judgment':
      return judgment
    if kind == 'score_only':
      score = self.parse_host(judgment)
      if score is None:
        raise ValueError(f'EFT judgment has no final "{self.grammar.keyword}: X" verdict: '
                         f'{judgment[-80:]!r}')
      return self.verdict_line(score)
    raise ValueError(f'data.eft_target={kind!r}: expected one of {EFT_TARGETS}')

  def rank_score(self, rank: int) -> int:
    """Returns the EFT score of a human rank (0 = best): max(low + 1, high - rank)."""
    low, high = self.score_values[0], self.score_values[-1]
    return max(min(low + 1, high), high - int(rank))

  def quality_score(self, q: float) -> int:
    """Returns the EFT score of a quality label q in [0, 1]: the nearest point of the scale."""
    low, high = self.score_values[0], self.score_values[-1]
    return min(high, max(low, math.floor(low + (high - low) * float(q) + 0.5)))


@functools.lru_cache(maxsize=16)
def _jitted_parser(tokenizer: Any, grammar: parser_lib.Grammar) -> Callable:
  """Returns jax.jit of the grammar's parser over the tokenizer's vocabulary (built once)."""
  return jax.jit(parser_lib.make_parser(tokenizer, grammar=grammar))


@flax.struct.dataclass
class JudgeScores:
  """K judgments of each of R responses, on the device."""
  scores_RxK: jax.Array  # float32, NaN where invalid
  valid_RxK: jax.Array  # bool
  forced_RxK: jax.Array  # bool: the score is a forced verdict's expectation
  argmax_RxK: jax.Array  # float32: a forced verdict's most likely score (NaN if not forced)
  mass_RxK: jax.Array  # float32: the probability the score tokens held (NaN if not forced)
  truncated_R: jax.Array  # int32: judge-prompt tokens dropped to fit the context
  # bool: the judgment counts (False: dropped by the meta filter, so valid_RxK is False too).
  kept_RxK: Optional[jax.Array] = None
  meta_RxK: Optional[jax.Array] = None  # float32: the meta RM's score (NaN: no meta filter)

  def arrays(self) -> dict:
    """Returns the fields by name (what the judgments stage publishes)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None}


FIELDS = tuple(f.name for f in dataclasses.fields(JudgeScores))


@functools.partial(jax.jit, static_argnames='how')
def aggregate(scores_RxK: jax.Array, valid_RxK: jax.Array, how: str = 'mean') -> tuple:
  """Returns (value_R float32: the mean ('mean') or sum ('sum', SPCT's vote) of each row's valid
  judgments, NaN where none is valid; count_R int32 of them). Leading axes pass through."""
  if how not in AGGREGATES:
    raise ValueError(f'aggregate how={how!r}: expected one of {AGGREGATES}')
  counted = valid_RxK & ~jnp.isnan(scores_RxK)
  count_R = counted.sum(axis=-1, dtype=jnp.int32)
  total_R = jnp.where(counted, scores_RxK, 0.0).sum(axis=-1).astype(jnp.float32)
  value_R = total_R / jnp.maximum(count_R, 1) if how == 'mean' else total_R
  return jnp.where(count_R > 0, value_R, jnp.nan), count_R


def mean_valid(scores_RxK: jax.Array, valid_RxK: jax.Array) -> tuple:
  """Returns (mean_R of the valid judgments, NaN where none; count_R int32 of them)."""
  return aggregate(scores_RxK, valid_RxK, 'mean')


def score_json(x) -> Optional[float]:
  """Returns a float32 score as the shortest decimal that reads back as the same float32 (3.1,
  not 3.0999999046325684), or None for NaN (no valid score): how records store scores."""
  x = np.float32(x)
  return None if np.isnan(x) else float(np.format_float_positional(x, unique=True))


_REGISTRY: dict = {}
_ENTRIES: dict = {}  # a module path given as a kind -> the name of the judge it registers


def register(judge: Judge) -> Judge:
  """Returns `judge` after adding it to the registry under its name (names are unique)."""
  if judge.name in _REGISTRY and _REGISTRY[judge.name] is not judge:
    raise ValueError(f'a judge named {judge.name!r} is already registered')
  _REGISTRY[judge.name] = judge
  return judge


def get(name: str) -> Judge:
  """Returns the judge a name or module path names (as creation.judge.kind does).

  A name that is not registered is imported as a module ('my_package.my_judge'); the one
  registered Judge that module holds at its top level is the judge, so a judge outside the
  package needs no other import.
  """
  if name in _REGISTRY:
    return _REGISTRY[name]
  if name not in _ENTRIES:
    try:
      module = importlib.import_module(name)
    except ImportError as e:
      raise ValueError(f'unknown judge kind {name!r}: expected one of {names()} or an '
                       f'importable module that registers one ({e})') from None
    found = [v for v in vars(module).values()
             if isinstance(v, Judge) and _REGISTRY.get(v.name) is v]
    if len(found) != 1:
      raise ValueError(f'judge kind {name!r}: module {module.__name__} holds {len(found)} '
                       'registered judges; expected exactly one (JUDGE = register(Judge(...)))')
    _ENTRIES[name] = found[0].name
  return _REGISTRY[_ENTRIES[name]]


def names() -> list:
  """Returns the registered judges' names, sorted."""
  return sorted(_REGISTRY)


def get_template(name_or_text: str, system: Optional[str] = None,
                 kind: str = 'additive') -> JudgeTemplate:
  """Returns judge `kind`'s named template or one built from the given rubric text."""
  return get(kind).template(name_or_text, system)
