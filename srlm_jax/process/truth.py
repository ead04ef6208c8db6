"""The program's truth about candidate steps, and how often the model's step judge agrees.

A candidate step is labelled by the task's program, never by a model:
  * 'wrong' when an equation it writes ("23 * 3 = 69") is arithmetically false
    (tasks.step_errors), or when it states the final answer and the solution so far plus this
    step does not check (tasks.check);
  * 'right' when it writes at least one equation and all are true, and, if it states the final
    answer, the answer checks;
  * None (unknown) otherwise: a step with no equation and no answer says nothing checkable.

`judge_agreement` compares the judge's scores with those labels within each step's candidate
set (one prefix): over every (right, wrong) pair of candidates, the fraction where the judge
scored the right one higher (ties count one half): a pairwise accuracy, 0.5 for a judge that
cannot tell them apart.
"""

from typing import Dict, List, Optional, Sequence

from srlm_jax import tasks as tasks_lib


def label(task: Dict, steps_before: Sequence[str], candidate: str,
          final_marker: str = 'Answer:') -> Optional[str]:
  """Returns 'right', 'wrong' or None (unknown) for one candidate next step (see above)."""
  errors = tasks_lib.step_errors(candidate)
  if errors:
    return 'wrong'
  if final_marker in candidate:
    solution = '\n'.join(list(steps_before) + [candidate])
    return 'right' if tasks_lib.check(task, solution) else 'wrong'
  return None if errors is None else 'right'


def label_records(records: List[Dict], problems: Sequence[Dict],
                  final_marker: str = 'Answer:') -> List[Dict]:
  """Returns the search records with 'truth' per step (labels of its candidates) and, per
  solution, 'correct' (tasks.check of the whole solution) and 'answer' (the program's)."""
  by_id = {p['id']: p for p in problems}
  for rec in records:
    task = by_id[rec['id']]
    chosen = []
    for step in rec['steps']:
      step['truth'] = [label(task, chosen, c, final_marker) for c in step['candidates']]
      chosen.append(step['candidates'][step['extended_by']])
    rec['correct'] = bool(tasks_lib.check(task, rec['solution']))
    rec['answer'] = task['answer']
  return records


def judge_agreement(records: Sequence[Dict]) -> Dict:
  """Returns the step judge's agreement with the program's labels over labelled records."""
  comparisons = hits = 0.0
  pairs = pairs_right = labelled = 0
  for rec in records:
    for step in rec['steps']:
      truth, scores = step['truth'], step['scores']
      labelled += sum(t is not None for t in truth)
      for i, ti in enumerate(truth):
        for j, tj in enumerate(truth):
          if ti == 'right' and tj == 'wrong' and None not in (scores[i], scores[j]):
            comparisons += 1
            hits += 1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0
      if step['pair']:
        c, r = truth[step['chosen']], truth[step['rejected']]
        if c is not None and r is not None and c != r:
          pairs += 1
          pairs_right += c == 'right'
  return {'pairwise_accuracy': hits / comparisons if comparisons else None,
          'comparisons': int(comparisons), 'labelled_candidates': labelled,
          'step_pairs_with_truth': pairs,
          'step_pairs_agreeing': pairs_right / pairs if pairs else None}


def solution_accuracy(records: Sequence[Dict]) -> Optional[float]:
  """Returns the fraction of solutions whose final answer checks (None without records)."""
  return sum(r['correct'] for r in records) / len(records) if records else None
