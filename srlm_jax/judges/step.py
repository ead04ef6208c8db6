"""Step judges: the model judges one candidate next step of a step-by-step solution.

Two judges (process-based self-rewarding, Zhang et al. 2025, arXiv 2503.03746):
  * 'step' (pointwise): the question and the steps so far, then ONE candidate next step;
    the verdict `Score: X`, X in 0..5 (how sound and useful the step is).
  * 'step_pair' (pairwise): the question and the steps so far, then TWO candidate next steps;
    the verdict `Better: X`, X in {1, 2} (which candidate is the better next step). The
    process search asks for both orders of every pair, so a judge that always says "1" gives
    each candidate half its comparisons (position bias cancels instead of deciding).

Both are ordinary Judges: the rubric's {prompt} holds the question and the steps so far
(`context`), {response} the candidate step (or the two candidates, `pair_response`), so
judging, forced verdicts and records work as for any judge. Candidate texts are quoted with
base.quote. The expected score of a forced 'step_pair' verdict is 1 + P(candidate 2 better).
"""

from typing import Sequence

from srlm_jax.judges import base
from srlm_jax.judges import parser

STEP_RUBRIC = """\
Below is a problem, the solution steps written so far, and one proposed next step. Judge \
only the proposed next step: is its arithmetic correct, does it follow from the problem and \
the steps so far, and does it make progress towards the answer?

<question>
{prompt}
</question>

<response>
{response}
</response>

Check the step's calculations briefly, then end with a final line "Score: <points>" from 0 \
(wrong or useless) to 5 (correct and a clear step forward)."""

STEP_COMPACT = """\
Rate the proposed next step from 0 (wrong) to 5 (correct and useful).
<question>
{prompt}
</question>
<response>
{response}
</response>
End with a line "Score: <points>"."""

PAIR_RUBRIC = """\
Below is a problem, the solution steps written so far, and two candidate next steps. Decide \
which candidate is the better next step: correct arithmetic first, then whether it follows \
from the steps so far and moves towards the answer.

<question>
{prompt}
</question>

<response>
{response}
</response>

Compare them briefly, then end with a final line "Better: 1" or "Better: 2"."""

STEP = base.register(base.Judge(
    name='step', grammar=parser.SCORE,
    templates={'step': STEP_RUBRIC, 'compact': STEP_COMPACT}, default_template='step',
    verdict_prefix='\nScore: '))

PAIR_GRAMMAR = parser.Grammar('Better', 1, 2, decimals=False)
STEP_PAIR = base.register(base.Judge(
    name='step_pair', grammar=PAIR_GRAMMAR, templates={'step_pair': PAIR_RUBRIC},
    default_template='step_pair', verdict_prefix='\nBetter: '))


def context(question: str, steps: Sequence[str]) -> str:
  """Returns the judge's {prompt} text: the question and the numbered steps so far."""
  done = '\n'.join(f'({k}) {s.strip()}' for k, s in enumerate(steps, 1)) or '(none yet)'
  return f'{question.strip()}\n\nSteps so far:\n{done}'


def pair_response(first: str, second: str) -> str:
  """Returns the judge's {response} text holding two candidate next steps, numbered 1 and 2."""
  return f'Candidate 1:\n{first.strip()}\n\nCandidate 2:\n{second.strip()}'


def second_wins(score: float) -> float:
  """Returns P(candidate 2 is better) from a 'step_pair' score in [1, 2] (1: candidate 1)."""
  return float(score) - 1.0
