"""A second judge, for the plug-in tests: 'Rating: N' on a 1..9 scale, whole numbers only.

The whole judge is this one registration: its rubric, verdict grammar, scale and forced
verdict prefix. Nothing else in the package names it (tests/test_judge_plugin.py).
"""

from srlm_jax import judges
from srlm_jax.judges import parser

RUBRIC = """\
Rate how well the response answers the question, from 1 (useless) to 9 (perfect).
<question>
{prompt}
</question>
<response>
{response}
</response>
End with a line "Rating: <1 to 9>"."""

JUDGE = judges.register(judges.Judge(
    name='rating', grammar=parser.Grammar('Rating', low=1, high=9, decimals=False),
    templates={'rating': RUBRIC}, default_template='rating', verdict_prefix='\nRating: '))
