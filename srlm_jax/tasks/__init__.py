"""Generated verifiable tasks: arithmetic word problems and Countdown puzzles, with checkers.

  from srlm_jax import tasks
  batch = tasks.generate('arithmetic', n=100, seed=0, difficulty=2)
  tasks.check(batch[0], 'Step 1: 12 + 5 = 17\nAnswer: 17')  # True or False

Each task is a dict {'id', 'kind', 'prompt', 'question', 'answer', 'difficulty', ...}:
`question` is the problem alone, `prompt` adds the answer-format instruction (what the model
is asked), `answer` is program-computed. Kind-specific fields: arithmetic has `program` (the
computation as an expression) and `steps` (its intermediate values); countdown has `numbers`
and `target`. `check` extracts a free-form final answer (answers.py) and compares it with the
program's truth; for countdown any expression that reaches the target with the given numbers
(each at most once) is correct, not only the stored one.
"""

import collections
import json
import random
from typing import Dict, Iterable, List, Optional, Sequence, Union

from srlm_jax.tasks import answers, arithmetic, countdown

KINDS = {'arithmetic': arithmetic, 'countdown': countdown}


def _module(kind: str):
  """Returns the generator module of a task kind, or raises naming the known kinds."""
  if kind not in KINDS:
    raise ValueError(f'unknown task kind {kind!r}; known: {sorted(KINDS)}')
  return KINDS[kind]


def levels(kind: str) -> List[int]:
  """Returns the difficulty levels of a task kind (1..max)."""
  return list(range(1, _module(kind).MAX_DIFFICULTY + 1))


def generate(kind: str, n: int, seed: int,
             difficulty: Union[None, int, Sequence[int]] = None) -> List[Dict]:
  """Returns n tasks of `kind` from `seed`; difficulty: a level, a list cycled, or None (all)."""
  module = _module(kind)
  if difficulty is None:
    difficulties = levels(kind)
  elif isinstance(difficulty, int):
    difficulties = [difficulty]
  else:
    difficulties = list(difficulty)
  if not difficulties:
    raise ValueError(f'{kind}: empty difficulty list')
  rng = random.Random(f'{kind}:{seed}')
  out = []
  for i, task in enumerate(module.generate(rng, n, difficulties)):
    question = task.pop('prompt')
    out.append({'id': f'{kind}-{seed}-{i:05d}', 'kind': kind,
                'prompt': f'{question}\n{module.format_instruction()}', 'question': question,
                **task})
  return out


def _countdown_correct(task: Dict, text: str) -> bool:
  """Returns whether the final expression reaches the target with the given numbers."""
  expr = answers.final_expression(text)
  result = answers.evaluate(expr) if expr else None
  if result is None:
    return False
  value, used = result
  available = collections.Counter(answers.Fraction(x) for x in task['numbers'])
  return value == task['target'] and not collections.Counter(used) - available


def check(task: Dict, response: str) -> bool:
  """Returns whether a free-form response's final answer is the task's true answer."""
  kind = task.get('kind')
  if kind == 'countdown':
    return _countdown_correct(task, response)
  if kind == 'arithmetic':
    got = answers.final_number(response)
    return got is not None and got == answers.parse_number(str(task['answer']))
  raise ValueError(f'task {task.get("id")!r}: unknown kind {kind!r}; known: {sorted(KINDS)}')


def step_errors(response: str) -> Optional[int]:
  """Returns how many equations written in a step are wrong (None when it has none)."""
  found = answers.equations(response)
  return sum(not ok for _, ok in found) if found else None


_REQUIRED = {'id': str, 'kind': str, 'prompt': str, 'answer': str}


def load(path: str) -> List[Dict]:
  """Returns the tasks of a JSONL file, raising on a bad record with file:line and field."""
  out = []
  with open(path) as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        task = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}:{line_no}: not JSON ({e})') from e
      for field, typ in _REQUIRED.items():
        if not isinstance(task.get(field), typ):
          raise ValueError(f'{path}:{line_no}: field {field!r} must be a {typ.__name__}, got '
                           f'{task.get(field)!r}')
      _module(task['kind'])
      if task['kind'] == 'countdown' and not (isinstance(task.get('numbers'), list)
                                              and isinstance(task.get('target'), int)):
        raise ValueError(f'{path}:{line_no}: a countdown task needs numbers (list) and '
                         f'target (int)')
      out.append(task)
  return out


def write(path: str, batch: Iterable[Dict]) -> int:
  """Writes tasks as JSONL and returns how many."""
  count = 0
  with open(path, 'w') as f:
    for task in batch:
      f.write(json.dumps(task) + '\n')
      count += 1
  return count
