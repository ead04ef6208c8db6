"""The meta RM (SPCT's meta filter, DeepSeek-GRM): a pointwise judge of one judgment.

It reads a question, a response and one judgment of that response (principles, critique,
score) and rates how sound the judgment is, from 1 (unsound) to 5 (sound), ending with
`Score: N`. judging.meta_filtered asks it about each of a response's K judgments and keeps the
top k_meta (voting.meta_select). Its scores are forced verdicts (`settings`): one greedy token,
cut unless it starts a verdict line, then '\nScore: ' and the expectation over 1..5, so each
costs a prefill and one forward pass and is always valid. The response and the judgment go in
the request's {response} slot, each quoted in its own tags (`pack`).
"""

import re

from srlm_jax.judges import base
from srlm_jax.judges import parser

GRAMMAR = parser.Grammar('Score', 1, 5, decimals=False)

RUBRIC = """\
A judge evaluated a response to a user's question: it wrote principles, a critique and a \
score. Rate how sound that evaluation is: are its principles relevant to the question, is \
its critique accurate about the response, and does its score follow from the critique?

<question>
{prompt}
</question>

{response}

End with a final line of the form "Score: <n>", where <n> is an integer from 1 (the \
evaluation is unsound) to 5 (it is accurate and well justified)."""

JUDGE = base.register(base.Judge(
    name='meta_rm', grammar=GRAMMAR, templates={'meta_rm': RUBRIC}, default_template='meta_rm',
    verdict_prefix='\nScore: '))

_TAGS = re.compile(r'<(/?)(answer|evaluation)>', re.IGNORECASE)


def _quote(text: str) -> str:
  return _TAGS.sub(lambda m: f'<{m.group(1)}{m.group(2)}\u200b>', text.strip())


def pack(response: str, judgment: str) -> str:
  """Returns the meta RM's {response} slot: the response and the judgment in their own tags."""
  return (f'<answer>\n{_quote(response)}\n</answer>\n\n'
          f'<evaluation>\n{_quote(judgment)}\n</evaluation>')


def settings(judge_settings: base.JudgeSettings) -> base.JudgeSettings:
  """Returns how the meta RM judges for `judge_settings.meta_filter`: one forced verdict per
  judgment, read right after the request (max_new_tokens=1, its one token cut as no reasons)."""
  return base.JudgeSettings(kind=judge_settings.meta_kind, k=1, temperature=0.0,
                            max_new_tokens=1, verdict='forced_always')
