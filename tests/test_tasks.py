"""Generated tasks: answers against independent computations, checkers on hand-written replies."""

import json
import os
import re
import subprocess
import sys

import pytest

from srlm_jax import tasks
from srlm_jax.tasks import answers, countdown

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The story's sentences, read back independently of the generator's templates table.
_WORD_PARTS = {'half': 2, 'a third': 3, 'a quarter': 4, 'a fifth': 5, 'a sixth': 6}


def _solve_story(question):
  """Returns the answer of an arithmetic word problem by reading its sentences."""
  sentences = [s.strip() for s in re.split(r'(?<=[.?])\s+', question) if s.strip()]
  value = int(re.search(r' has (\d+) ', sentences[0]).group(1))
  for s in sentences[1:-1]:
    nums = [int(x) for x in re.findall(r'\d+', s)]
    if re.search(r'gives away|loses|uses up', s):
      value -= nums[0]
    elif re.search(r'more|gives \w+ \d', s):
      value += nums[0]
    elif re.search(r'times as large|multiplies', s):
      value *= nums[0]
    elif 'equal groups' in s:
      assert value % nums[0] == 0, s
      value //= nums[0]
    else:
      part = next(k for w, k in _WORD_PARTS.items() if f'only {w} of' in s)
      assert value % part == 0, s
      value //= part
    assert value >= 0, (question, s)
  assert sentences[-1].startswith('How many'), question
  return value


def _brute_force(values, target):
  """Returns whether target is reachable: the classic pick-two-and-combine recursion."""
  if any(abs(v - target) < 1e-9 for v in values):
    return True
  for i in range(len(values)):
    for j in range(len(values)):
      if i == j:
        continue
      a, b = values[i], values[j]
      rest = [values[k] for k in range(len(values)) if k not in (i, j)]
      options = [a + b, a - b, a * b] + ([a / b] if b != 0 else [])
      if any(_brute_force(rest + [c], target) for c in options):
        return True
  return False


def test_arithmetic_answers_match_the_story_and_the_program():
  batch = tasks.generate('arithmetic', 60, seed=3)
  assert {t['difficulty'] for t in batch} == {1, 2, 3, 4, 5}
  for t in batch:
    want = _solve_story(t['question'])
    assert t['answer'] == str(want), t
    # The program string is a plain Python expression of the same computation.
    assert eval(t['program']) == want, t  # pylint: disable=eval-used
    assert len(t['steps']) == t['difficulty'] and t['steps'][-1] == want
    assert all(isinstance(v, int) and v >= 0 for v in t['steps'])
    assert t['prompt'].startswith(t['question']) and 'Answer:' in t['prompt']


def test_arithmetic_difficulty_is_graded():
  by_level = {d: tasks.generate('arithmetic', 30, seed=0, difficulty=d) for d in (1, 3, 5)}
  ops = {d: sum(t['program'].count('(') for t in b) / len(b) for d, b in by_level.items()}
  assert ops[1] == 1 and ops[3] == 3 and ops[5] == 5
  biggest = {d: max(max(t['steps']) for t in b) for d, b in by_level.items()}
  assert biggest[1] < biggest[5]


def test_countdown_puzzles_are_solvable_and_answers_reach_the_target():
  batch = tasks.generate('countdown', 12, seed=5, difficulty=[1, 2])
  for t in batch:
    assert len(t['numbers']) == t['difficulty'] + 2
    assert _brute_force([float(x) for x in t['numbers']], float(t['target'])), t
    assert abs(eval(t['answer']) - t['target']) < 1e-9, t  # pylint: disable=eval-used
    used = sorted(int(x) for x in re.findall(r'\d+', t['answer']))
    pool = list(t['numbers'])
    for x in used:
      pool.remove(x)  # raises if a number is used more often than given
    assert tasks.check(t, f'Answer: {t["answer"]}')


def test_countdown_solver_agrees_with_brute_force_on_fixed_cases():
  for numbers, target in [([1, 1], 5), ([2, 3], 7), ([3, 3, 8, 8], 24), ([4, 6], 10),
                          ([5, 5, 5, 1], 24), ([1, 2, 3], 50), ([7, 7], 1)]:
    found = countdown.solve(numbers, target)
    assert (found is not None) == _brute_force([float(x) for x in numbers], float(target))
    if found is not None:
      assert abs(eval(found) - target) < 1e-9  # pylint: disable=eval-used


def test_generation_is_deterministic_per_seed():
  assert tasks.generate('countdown', 4, seed=1) == tasks.generate('countdown', 4, seed=1)
  assert tasks.generate('arithmetic', 4, seed=1) != tasks.generate('arithmetic', 4, seed=2)
  ids = [t['id'] for t in tasks.generate('arithmetic', 5, seed=9)]
  assert len(set(ids)) == 5


_ARITH = {'id': 'a', 'kind': 'arithmetic', 'prompt': 'q', 'answer': '42'}
_CD = {'id': 'c', 'kind': 'countdown', 'prompt': 'q', 'answer': '(25 - 5) * 3',
       'numbers': [25, 5, 3, 7], 'target': 60}


@pytest.mark.parametrize('response,want', [
    ('Step 1: 40 + 2 = 42\nAnswer: 42', True),
    ('6 * 7 = 42. The answer is 42.', True),
    ('The total is \\boxed{42}', True),
    ('Answer: 42.0', True),
    ('We get 42 apples in total', True),       # no marker: the last number
    ('Answer: 41\nWait, recount: Answer: 42', True),  # the last marker wins
    ('Step 1: 40 + 2 = 42\nAnswer: 43', False),  # the marker beats the last number
    ('Answer: 42 1', True),
    ('42 is wrong, it is 24', False),
    ('Answer: -42', False),
    ('I do not know.', False),
    ('', False),
    ('Answer: ????', False),
])
def test_arithmetic_checker(response, want):
  assert tasks.check(_ARITH, response) is want


@pytest.mark.parametrize('response,want', [
    ('Step 1: 25 - 5 = 20\nStep 2: 20 * 3 = 60\nAnswer: (25 - 5) * 3', True),
    ('Answer: 3 * (25 - 5) = 60', True),
    ('Answer: (7 - 5) * 25 + 3 * 3 + 1', False),  # 3 used twice and 1 not given
    ('Answer: 25*3 - 7 - 5 - 3', False),          # 3 used twice (the pool has one 3)
    ('Answer: 60', False),                        # a number, not an expression
    ('Answer: (25 - 5) * 3 * 1', False),          # 1 is not among the numbers
    ('Answer: 25 * 3 - 5 * 3', False),            # 3 twice
    ('Answer: (25 + 5) * 3', False),              # 90
    ('(25 - 5) × 3 = 60', True),                  # no marker: the last expression line
    ('Answer: __import__("os").system("true")', False),
    ('Answer: (25 - 5) * 3)', False),             # unbalanced
    ('Answer: 25 / (5 - 5)', False),              # division by zero
    ('', False),
])
def test_countdown_checker(response, want):
  assert tasks.check(_CD, response) is want


def test_answers_helpers():
  assert answers.evaluate('2 * (3 + 4) / 7')[0] == 2
  assert answers.evaluate('2 ** 3') is None
  assert answers.final_number('sum: 1,234 items') == 1234
  assert [ok for _, ok in answers.equations('3 + 4 = 7, then 2 * 5 = 11')] == [True, False]
  assert answers.equations('2x + 3 = 16 so x = 6.5') == []  # algebra, not arithmetic
  assert tasks.step_errors('Step 1: 12 + 5 = 17') == 0
  assert tasks.step_errors('Step 1: 12 + 5 = 18') == 1
  assert tasks.step_errors('Step 1: think about it') is None


def test_load_names_the_bad_record(tmp_path):
  path = tmp_path / 't.jsonl'
  tasks.write(str(path), tasks.generate('arithmetic', 2, seed=0))
  assert len(tasks.load(str(path))) == 2
  with open(path, 'a') as f:
    f.write(json.dumps({'id': 'x', 'kind': 'arithmetic', 'prompt': 'p'}) + '\n')
  with pytest.raises(ValueError, match=r't.jsonl:3: field .answer.'):
    tasks.load(str(path))
  with pytest.raises(ValueError, match='unknown task kind'):
    tasks.generate('sudoku', 1, seed=0)


def test_build_tasks_launch(tmp_path):
  out = tmp_path / 'cd.jsonl'
  subprocess.run([sys.executable, os.path.join(_REPO, 'launch', 'build_tasks.py'),
                  '--kind=countdown', '--n=3', '--seed=2', '--difficulty=1', f'--out={out}'],
                 check=True, cwd=_REPO, env={**os.environ, 'PYTHONPATH': _REPO},
                 capture_output=True)
  loaded = tasks.load(str(out))
  assert loaded == tasks.generate('countdown', 3, seed=2, difficulty=1)
