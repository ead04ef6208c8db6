"""The additive judge: the paper's 5-point rubric, its `Score: X` verdict, the 0..5 scale.

The judge reads a question and a candidate response and awards points cumulatively, ending
with a line `Score: <points>` (the grammar, in parser.py, reads X in [0, 5], decimals
allowed). Templates: 'additive' (the paper's rubric), 'choice' (the multiple-choice form the
paper compared against), 'compact' (the rubric in a few lines, for small models and CPU
demos), or any rubric text with {prompt} and {response}. EFT targets: the whole judgment
('judgment') or its verdict line only ('score_only'); EFT judgments built from human scores
walk the rubric's points (`judgment_text`). Forced verdicts append '\nScore: ' and read the
next-token distribution over the score tokens 0..5 (forced.py).

The candidate response is quoted inside <response> ... </response> tags, and any tag-like
text inside it that could close the quote is neutralised (base.quote), so a response cannot
pass text of its own off as the judge's verdict. The verdict is parsed only from the tokens
the judge generates, never from the prompt, so a response that itself contains `Score: 5`
does not change the score.
"""

from srlm_jax.judges import base
from srlm_jax.judges import parser

ADDITIVE_RUBRIC = """\
Review the user's question and the candidate response below, then score the response with \
the additive 5-point system described here. Points add up as each criterion is met:

- Award 1 point if the response is relevant to the question and offers some related \
information, even if it is incomplete or carries some unrelated material.
- Award a 2nd point if the response covers a substantial part of the question, even if it \
does not resolve it fully or answer it directly.
- Award a 3rd point if the response usefully answers the basic elements of the question, \
whether or not it reads like an AI assistant's answer or contains material typical of blogs \
and search results.
- Award a 4th point if the response is clearly written from an AI assistant's perspective, \
addresses the question directly and comprehensively, and is well organised and helpful, even \
if there is slight room for more clarity, concision or focus.
- Award a 5th point if the response is tailored to the question without extraneous content, \
reflects expert knowledge, and is engaging, insightful and of the highest quality.

<question>
{prompt}
</question>

<response>
{response}
</response>

After examining the question and the response, justify your total score briefly, in at most \
100 words. End with a final line of the form "Score: <points>", where <points> is your total \
from 0 to 5."""

# The multiple-choice form the paper compared against (26.6% pairwise accuracy vs 65.1%):
# kept as an alternative wording for judge studies.
CHOICE_RUBRIC = """\
Read the user's question and the candidate response below, and rate the response by choosing \
the one description that fits it best:

0: The response is irrelevant to the question or empty.
1: The response is relevant and gives some related information.
2: The response covers a substantial part of the question.
3: The response usefully answers the basic elements of the question.
4: The response is direct, comprehensive, well organised and written as an AI assistant.
5: The response is expert, tailored to the question, engaging, with no extraneous content.

<question>
{prompt}
</question>

<response>
{response}
</response>

Explain your choice briefly, then end with a final line of the form "Score: <points>"."""

# The additive rubric in a few lines, for small models and CPU demos: judge prompts about 300
# tokens shorter, so SFT on EFT examples and judging cost less and fit short context windows.
COMPACT_RUBRIC = """\
Score the response to the question from 0 to 5, adding one point for each that holds: it is \
relevant; it covers much of the question; it usefully answers the basics; it is a clear, \
organised, helpful assistant answer; it is expert and tailored, with nothing extraneous.
<question>
{prompt}
</question>
<response>
{response}
</response>
End with a line "Score: <points>"."""

_AWARDED = ('is relevant and offers related information (1 point)',
            'covers a substantial part of the question (2nd point)',
            'usefully answers its basic elements (3rd point)',
            'is direct, comprehensive and well organised, written as an AI assistant '
            '(4th point)',
            'is tailored to the question, expert and engaging, with nothing extraneous '
            '(5th point)')
_MISSING = ('The response is not relevant to the question and offers no related information',
            'It does not cover a substantial part of the question',
            'It does not usefully answer the basic elements of the question',
            'It is not yet a direct, comprehensive and well-organised assistant answer',
            'It is not yet expert and tailored to the question without extraneous content')


def judgment_text(score: int) -> str:
  """Returns a short rubric justification of `score` (0..5) ending in the line `Score: N`."""
  if not 0 <= score <= 5 or int(score) != score:
    raise ValueError(f'judgment_text: score must be an integer in 0..5, got {score!r}')
  score = int(score)
  if score == 0:
    body = f'{_MISSING[0]}, so it earns no points.'
  else:
    awarded = _AWARDED[:score]
    listed = awarded[0] if score == 1 else ', '.join(awarded[:-1]) + ' and ' + awarded[-1]
    tail = ('It meets every criterion.' if score == 5 else
            f'{_MISSING[score]}, so the total is {score}.')
    body = f'The response {listed}. {tail}'
  return f'{body}\n\nScore: {score}'



TEMPLATES = {'additive': ADDITIVE_RUBRIC, 'choice': CHOICE_RUBRIC, 'compact': COMPACT_RUBRIC}

JUDGE = base.register(base.Judge(
    name='additive', grammar=parser.SCORE, templates=TEMPLATES, default_template='additive',
    verdict_prefix='\nScore: ', justification=judgment_text))
