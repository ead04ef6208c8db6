"""Arithmetic word problems of graded difficulty, with program-computed answers.

A problem is a story about one quantity: a start value, then `difficulty` events, each one
operation (+, -, *, / exact) with a small operand, then "How many ... now?". Difficulty sets
the number of operations (1..5) and the operand range, so higher levels need more steps and
larger intermediate values. Every intermediate value is a non-negative integer (subtractions
never go below zero, divisions are exact), so the answer and each step are whole numbers.

Each task holds `program` (the same computation as a fully parenthesised expression, e.g.
"((12 + 5) * 3)") and `steps` (the intermediate values), for checks and step truth.
"""

import random
from typing import Dict, List

MAX_DIFFICULTY = 5

_NAMES = ('Ava', 'Ben', 'Chloe', 'Dev', 'Emma', 'Farid', 'Grace', 'Hugo', 'Iris', 'Jonas')
_ITEMS = ('apples', 'stamps', 'marbles', 'books', 'coins', 'stickers', 'shells', 'pencils')
_TEMPLATES = {
    '+': ('{name} then gets {k} more {item}.', '{name} finds {k} more {item}.',
          'A friend gives {name} {k} {item}.'),
    '-': ('{name} then gives away {k} {item}.', '{name} loses {k} {item}.',
          '{name} uses up {k} {item}.'),
    '*': ('Then the number of {item} {name} has becomes {k} times as large.',
          '{name} multiplies the collection of {item} by {k}.'),
    '/': ('{name} splits the {item} into {k} equal groups and keeps one group.',
          '{name} keeps only {part} of the {item}.'),
}
_PARTS = {2: 'half', 3: 'a third', 4: 'a quarter', 5: 'a fifth', 6: 'a sixth'}


def _operand_range(difficulty: int):
  """Returns (start max, add/sub max, mul/div max) for a difficulty level."""
  return 10 * difficulty + 10, 5 * difficulty + 5, 2 + (difficulty + 1) // 2


def _next_op(rng: random.Random, value: int, difficulty: int):
  """Returns (op, k) with a non-negative whole result from `value`."""
  _, add_max, mul_max = _operand_range(difficulty)
  choices = ['+', '*']
  if value >= 2:
    choices.append('-')
  divisors = [k for k in range(2, mul_max + 1) if value % k == 0 and value > 0]
  if divisors:
    choices.append('/')
  op = rng.choice(choices)
  if op == '+':
    return op, rng.randint(1, add_max)
  if op == '-':
    return op, rng.randint(1, min(add_max, value - 1))
  if op == '*':
    return op, rng.randint(2, mul_max)
  return op, rng.choice(divisors)


def _apply(op: str, value: int, k: int) -> int:
  """Returns value op k (exact: the generator only makes exact divisions)."""
  return {'+': value + k, '-': value - k, '*': value * k, '/': value // k}[op]


def make(rng: random.Random, difficulty: int) -> Dict:
  """Returns one task dict (without id): prompt, answer, program, steps, difficulty."""
  if not 1 <= difficulty <= MAX_DIFFICULTY:
    raise ValueError(f'arithmetic difficulty must be 1..{MAX_DIFFICULTY}, got {difficulty}')
  name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
  value = rng.randint(2, _operand_range(difficulty)[0])
  sentences = [f'{name} has {value} {item}.']
  program, steps = str(value), []
  for _ in range(difficulty):
    op, k = _next_op(rng, value, difficulty)
    sentences.append(rng.choice(_TEMPLATES[op]).format(name=name, item=item, k=k,
                                                          part=_PARTS.get(k)))
    program = f'({program} {op} {k})'
    value = _apply(op, value, k)
    steps.append(value)
  sentences.append(f'How many {item} does {name} have now?')
  return {'prompt': ' '.join(sentences), 'answer': str(value), 'program': program,
          'steps': steps, 'difficulty': difficulty}


def format_instruction() -> str:
  """Returns the answer-format line appended to each prompt."""
  return 'Solve it step by step, one step per line, then end with "Answer: <number>".'


def generate(rng: random.Random, n: int, difficulties: List[int]) -> List[Dict]:
  """Returns n tasks, task i at difficulty difficulties[i % len(difficulties)]."""
  return [make(rng, difficulties[i % len(difficulties)]) for i in range(n)]
