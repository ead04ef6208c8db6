"""M1's seed data for process-based self-rewarding, written by the program from tasks.

  * IFT: {prompt, response}: a task's prompt and a step-by-step solution, one step per line
    ("Step k: a op b = c"), then "Answer: X"; for arithmetic the steps are the task's own
    computation (its `program`), for countdown one line that evaluates the stored solution.
  * EFT: {prompt, response, judgment}: step-judge examples in the 'step' judge's terms: the
    prompt is the question and the steps so far (judges/step.context), the response one next
    step, the judgment a short reason ending in "Score: N": 5 for the program's true step,
    1 for the same step with a wrong result (off by a small non-zero amount).
Both come from tasks the loop does not train on (use a different seed than config.tasks).
"""

import random
import re
from typing import Dict, List, Sequence, Tuple

from srlm_jax.judges import step as step_judges

_OP = re.compile(r'^\((.*) ([-+*/]) (\d+)\)$')


def arithmetic_lines(task: Dict) -> List[Tuple[str, int, str, int, int]]:
  """Returns per operation (text 'a op b', a, op, b, result) of an arithmetic task's program."""
  ops, expr = [], task['program']
  while expr.startswith('('):
    m = _OP.match(expr)
    if not m:
      raise ValueError(f'task {task["id"]}: program {task["program"]!r} is not a left fold')
    ops.append((m.group(2), int(m.group(3))))
    expr = m.group(1)
  value, out = int(expr), []
  for op, k in reversed(ops):
    result = {'+': value + k, '-': value - k, '*': value * k, '/': value // k}[op]
    out.append((f'{value} {op} {k}', value, op, k, result))
    value = result
  return out


def solution_steps(task: Dict) -> List[str]:
  """Returns the program's step-by-step solution lines of a task, the last 'Answer: X'."""
  if task['kind'] == 'arithmetic':
    lines = [f'Step {i}: {text} = {result}'
             for i, (text, _, _, _, result) in enumerate(arithmetic_lines(task), 1)]
  else:
    lines = [f'Step 1: {task["answer"]} = {task["target"]}']
  return lines + [f'Answer: {task["answer"]}']


def _wrong(step: str, rng: random.Random) -> str:
  """Returns the step with its stated result changed by a small non-zero amount."""
  head, result = step.rsplit('= ', 1)
  return f'{head}= {int(result) + rng.choice([-3, -2, -1, 1, 2, 3])}'


def seed_records(batch: Sequence[Dict], seed: int = 0) -> Tuple[List[Dict], List[Dict]]:
  """Returns (IFT records, EFT records) of program-written solutions and step judgments."""
  rng = random.Random(seed)
  ift, eft = [], []
  for task in batch:
    lines = solution_steps(task)
    ift.append({'prompt': task['prompt'], 'response': '\n'.join(lines)})
    k = rng.randrange(len(lines) - 1)  # a computation step (not the answer line)
    context = step_judges.context(task['question'], lines[:k])
    eft.append({'prompt': context, 'response': lines[k],
                'judgment': 'The calculation is correct and moves towards the answer.\n'
                            'Score: 5'})
    eft.append({'prompt': context, 'response': _wrong(lines[k], rng),
                'judgment': 'The calculation is wrong.\nScore: 1'})
  return ift, eft
