"""Self-instruction creation, step 1: new prompts by few-shot prompting from seed prompts.

Each request shows the generator model 8 seed prompts, drawn without replacement, and asks
for one new task. The completions are parsed, cleaned and filtered (a documented heuristic,
`reject_reason`), then deduplicated: exactly (after normalising case, spacing and
punctuation) and near-duplicates by ROUGE-L F1 >= `near_duplicate` against every prompt kept
so far and every seed prompt (the Self-Instruct criterion, 0.7 by default).
"""

import dataclasses
import re
from typing import Optional, Sequence

import numpy as np

FEW_SHOT_HEADER = (
    'Below are examples of tasks that people ask an AI assistant to do. Write one new task '
    'of your own: something different from the examples, that a person might really ask, '
    'self-contained and answerable in text. Reply with the task only, with no answer and no '
    'numbering.\n')

# First words that make a line read as an instruction when it does not end with '?'.
_INSTRUCTION_WORDS = frozenset("""
add analyse analyze answer arrange brainstorm build calculate categorize change check choose
classify come compare compose compute construct convert correct create debug define describe
design detect determine develop devise draft edit estimate evaluate explain express extract
fill find fix format generate give help identify imagine implement improve list make name
offer organize outline paraphrase plan predict prepare propose provide recommend rephrase
rewrite rank rate reply respond restate review say show simplify solve sort state suggest
summarize summarise teach tell transform translate turn use verify write can could should
would how what why when where which who whom whose is are do does did i my if please
""".split())

_LABEL = re.compile(r'^\s*(?:\*\*)?(?:new\s+)?(?:task|instruction|prompt|question)\s*'
                    r'(?:\d+)?\s*[:.)-]\s*(?:\*\*)?\s*', re.IGNORECASE)
_NUMBERING = re.compile(r'^\s*(?:\d+[.)]|[-*•])\s+')


@dataclasses.dataclass(frozen=True)
class FilterConfig:
  """What a generated prompt must satisfy to be kept."""
  min_words: int = 3
  max_words: int = 150
  max_chars: int = 1000
  near_duplicate: float = 0.7  # ROUGE-L F1 at or above which two prompts count as the same
  require_instruction: bool = True  # drop text that reads as neither a question nor a task


def few_shot_request(examples: Sequence[str]) -> str:
  """Returns the user message that asks for one new task after the given examples."""
  lines = [FEW_SHOT_HEADER]
  for i, example in enumerate(examples, 1):
    lines.append(f'Task {i}: {example.strip()}\n')
  lines.append(f'Task {len(examples) + 1}:')
  return '\n'.join(lines)


def draw_examples(seed_prompts: Sequence[str], n_requests: int, k: int,
                  rng: np.random.Generator) -> list:
  """Returns n_requests lists of k seed prompts, each drawn without replacement."""
  if len(seed_prompts) < k:
    raise ValueError(f'few-shot prompting needs at least {k} seed prompts; got {len(seed_prompts)}')
  return [[seed_prompts[i] for i in rng.choice(len(seed_prompts), k, replace=False)]
          for _ in range(n_requests)]


def extract_prompt(completion: str) -> str:
  """Returns the task a completion proposes: its first paragraph, labels and numbering removed."""
  text = completion.strip()
  text = _LABEL.sub('', text, count=1)
  # The model often goes on with an answer or a further "Task 10:"; keep the first block.
  text = re.split(r'\n\s*\n|\n\s*(?:\*\*)?(?:task|answer|response|solution)\s*\d*\s*[:.]',
                  text, maxsplit=1, flags=re.IGNORECASE)[0]
  text = _NUMBERING.sub('', text.strip())
  return text.strip().strip('"').strip()


def normalise(text: str) -> str:
  """Returns text lower-cased with punctuation dropped and spaces collapsed (exact dedup key)."""
  return ' '.join(re.findall(r'[a-z0-9]+', text.lower()))


def rouge_l(a: Sequence[str], b: Sequence[str]) -> float:
  """Returns the ROUGE-L F1 of two token lists (longest common subsequence)."""
  if not a or not b:
    return 0.0
  prev = [0] * (len(b) + 1)
  for x in a:
    cur = [0]
    for j, y in enumerate(b):
      cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
    prev = cur
  lcs = prev[-1]
  if lcs == 0:
    return 0.0
  precision, recall = lcs / len(a), lcs / len(b)
  return 2 * precision * recall / (precision + recall)


def reject_reason(prompt: str, config: FilterConfig = FilterConfig()) -> Optional[str]:
  """Returns why a generated prompt is rejected on its own ('empty', 'too_long', ...), or None."""
  words = prompt.split()
  if not words:
    return 'empty'
  if len(words) > config.max_words or len(prompt) > config.max_chars:
    return 'too_long'
  if len(words) < config.min_words:
    return 'too_short'
  first = re.sub(r'[^a-z]', '', words[0].lower())
  if config.require_instruction and not (prompt.rstrip().endswith('?')
                                         or first in _INSTRUCTION_WORDS):
    return 'not_an_instruction'
  return None


@dataclasses.dataclass
class Selection:
  """Generated prompts sorted into kept and rejected, with the reason for each rejection."""
  kept: list  # [(request index, prompt)]
  rejected: list  # [(request index, prompt, reason)]

  def counts(self) -> dict:
    """Returns how many were kept and how many rejected for each reason."""
    out = {'generated': len(self.kept) + len(self.rejected), 'kept': len(self.kept)}
    for _, _, reason in self.rejected:
      out[reason] = out.get(reason, 0) + 1
    return out


def select_prompts(candidates: Sequence[str], seed_prompts: Sequence[str],
                   config: FilterConfig = FilterConfig()) -> Selection:
  """Returns the candidates that pass the filters and are not (near-)duplicates, in order."""
  seed_keys = {normalise(s) for s in seed_prompts}
  kept_tokens = [normalise(s).split() for s in seed_prompts]
  n_seed = len(kept_tokens)
  seen = set()
  selection = Selection([], [])
  for i, raw in enumerate(candidates):
    prompt = extract_prompt(raw)
    reason = reject_reason(prompt, config)
    key = normalise(prompt)
    if reason is None and key in seed_keys:
      reason = 'copy_of_seed'
    elif reason is None and key in seen:
      reason = 'duplicate'
    elif reason is None:
      tokens = key.split()
      best = max((rouge_l(tokens, other) for other in kept_tokens), default=0.0)
      if best >= config.near_duplicate:
        reason = 'near_duplicate_of_seed' if _argmax_is_seed(tokens, kept_tokens, n_seed,
                                                             config) else 'near_duplicate'
    if reason is None:
      seen.add(key)
      kept_tokens.append(key.split())
      selection.kept.append((i, prompt))
    else:
      selection.rejected.append((i, prompt, reason))
  return selection


def _argmax_is_seed(tokens, kept_tokens, n_seed, config) -> bool:
  return any(rouge_l(tokens, t) >= config.near_duplicate for t in kept_tokens[:n_seed])
