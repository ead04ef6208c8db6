"""Step splitting: the configurable rule that cuts a response into reasoning steps.

Rules (`SplitRule.kind`):
  * 'lines'  : every non-blank line is a step.
  * 'step'   : a step starts at each line that opens with "Step <k>:" (or "Step <k>."); text
               before the first such line is a step of its own when it is not blank, and the
               lines after a head belong to its step until the next head.
  * 'marker' : steps are separated by a marker string (e.g. '<step>'); blank pieces dropped.
Steps are returned stripped of surrounding whitespace.

While sampling, a step ends on the device at a stop string (`stop_strings`): for 'lines' and
'step' a token that holds a newline (in SmolLM2's vocabulary those are whitespace-only tokens,
so the step is the line and the boundary never falls inside a word); for 'marker' the marker.
The search keeps the sampled token ids of each chosen step, so step boundaries never move by
re-tokenising text.
"""

import dataclasses
import functools
import re
from typing import Any, List

KINDS = ('lines', 'step', 'marker')
_STEP_HEAD = re.compile(r'^[ \t*#]*step\s*\d+\s*[:.]', re.IGNORECASE | re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class SplitRule:
  """How a response splits into steps (see the module docstring)."""
  kind: str = 'lines'
  marker: str = ''  # the separator of kind 'marker'

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'step split kind={self.kind!r}: expected one of {KINDS}')
    if self.kind == 'marker' and not self.marker:
      raise ValueError("step split kind='marker' needs a non-empty marker string")


def split(text: str, rule: SplitRule = SplitRule()) -> List[str]:
  """Returns the steps of a response under `rule` (stripped, none blank)."""
  if rule.kind == 'lines':
    pieces = text.split('\n')
  elif rule.kind == 'marker':
    pieces = text.split(rule.marker)
  else:
    starts = [m.start() for m in _STEP_HEAD.finditer(text)]
    bounds = [0] + starts + [len(text)]
    pieces = [text[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
  return [p.strip() for p in pieces if p.strip()]


@functools.lru_cache(maxsize=8)
def _newline_tokens(tokenizer: Any) -> tuple:
  """Returns the texts of the vocabulary's tokens that hold a newline and encode to themselves."""
  out = []
  for i, text in enumerate(tokenizer.vocab_texts()):
    if '\n' in text and tokenizer.encode(text, add_bos=False) == [i]:
      out.append(text)
  return tuple(out)


def stop_strings(rule: SplitRule, tokenizer: Any) -> List[str]:
  """Returns the stop strings that end one sampled step on the device under `rule`."""
  if rule.kind == 'marker':
    return [rule.marker]
  return list(_newline_tokens(tokenizer)) or ['\n']


def render(steps: List[str], rule: SplitRule = SplitRule()) -> str:
  """Returns steps joined back into one response text under `rule` (split inverts it)."""
  sep = f'\n{rule.marker}\n' if rule.kind == 'marker' else '\n'
  return sep.join(s.strip() for s in steps)
