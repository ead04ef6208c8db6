"""Countdown-style puzzles: reach a target from given numbers with + - * /, each number at
most once; only solvable puzzles are generated, each verified by an exhaustive solver.

Difficulty sets how many numbers are given (difficulty + 2: 3, 4 or 5) and the target range.
The solver enumerates, for every subset of the numbers (a bitmask), every exact value
(fractions allowed mid-way, as in the game's usual rules only the final value must equal the
target) reachable by combining two disjoint subsets' values, with one expression per value.
A task's `answer` is one solution expression; any other valid expression is also accepted.
"""

import fractions
import random
from typing import Dict, List, Optional

Fraction = fractions.Fraction

MAX_DIFFICULTY = 3
_SMALL = tuple(range(1, 11))
_LARGE = (12, 15, 20, 25, 50, 75, 100)


def reachable(numbers: List[int]) -> List[Dict[Fraction, str]]:
  """Returns per bitmask of `numbers` a dict {exact value: one expression reaching it}."""
  n = len(numbers)
  table: List[Dict[Fraction, str]] = [dict() for _ in range(1 << n)]
  for i, x in enumerate(numbers):
    table[1 << i][Fraction(x)] = str(x)
  for mask in range(1, 1 << n):
    if mask & (mask - 1) == 0:
      continue
    out = table[mask]
    sub = (mask - 1) & mask
    while sub:
      rest = mask ^ sub
      if sub < rest:  # each unordered split once; both orders are built below
        for a, ea in table[sub].items():
          for b, eb in table[rest].items():
            out.setdefault(a + b, f'({ea} + {eb})')
            out.setdefault(a * b, f'({ea} * {eb})')
            out.setdefault(a - b, f'({ea} - {eb})')
            out.setdefault(b - a, f'({eb} - {ea})')
            if b != 0:
              out.setdefault(a / b, f'({ea} / {eb})')
            if a != 0:
              out.setdefault(b / a, f'({eb} / {ea})')
      sub = (sub - 1) & mask
  return table


def solve(numbers: List[int], target: int) -> Optional[str]:
  """Returns an expression using each number at most once that equals target, or None."""
  for values in reachable(numbers)[1:]:
    if Fraction(target) in values:
      return _strip_outer(values[Fraction(target)])
  return None


def _strip_outer(expr: str) -> str:
  """Returns expr without one pair of parentheses around the whole of it."""
  if expr.startswith('(') and expr.endswith(')'):
    depth = 0
    for i, ch in enumerate(expr):
      depth += ch == '('
      depth -= ch == ')'
      if depth == 0 and i < len(expr) - 1:
        return expr
    return expr[1:-1]
  return expr


def _target_range(difficulty: int):
  """Returns the (low, high) target range of a difficulty level."""
  return 10, (100, 300, 999)[difficulty - 1]


def make(rng: random.Random, difficulty: int) -> Dict:
  """Returns one solvable puzzle (without id): prompt, answer, numbers, target, difficulty."""
  if not 1 <= difficulty <= MAX_DIFFICULTY:
    raise ValueError(f'countdown difficulty must be 1..{MAX_DIFFICULTY}, got {difficulty}')
  count = difficulty + 2
  low, high = _target_range(difficulty)
  while True:
    large = rng.randint(0, min(2, count - 2))
    numbers = rng.sample(_LARGE, large) + [rng.choice(_SMALL) for _ in range(count - large)]
    rng.shuffle(numbers)
    table = reachable(numbers)
    everything = table[-1]
    # Targets that need all the numbers: a smaller subset would make the puzzle easier.
    smaller = set()
    for values in table[1:-1]:
      smaller.update(values)
    targets = sorted(int(v) for v in everything
                     if v.denominator == 1 and low <= v <= high and v not in smaller
                     and int(v) not in numbers)
    if targets:
      target = rng.choice(targets)
      break
  return {'prompt': (f'Using the numbers {numbers}, each at most once, and the operations '
                     f'+, -, *, /, make {target}.'),
          'answer': _strip_outer(everything[Fraction(target)]), 'numbers': numbers,
          'target': target, 'difficulty': difficulty}


def format_instruction() -> str:
  """Returns the answer-format line appended to each prompt."""
  return ('Work it out step by step, one step per line, then end with '
          '"Answer: <expression>" using the given numbers.')


def generate(rng: random.Random, n: int, difficulties: List[int]) -> List[Dict]:
  """Returns n puzzles, puzzle i at difficulty difficulties[i % len(difficulties)]."""
  return [make(rng, difficulties[i % len(difficulties)]) for i in range(n)]
