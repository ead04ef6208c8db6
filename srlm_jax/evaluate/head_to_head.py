"""Head-to-head: model A's and model B's responses compared by a judge model.

Model A's and model B's responses to the same prompts are judged by one fixed
judge model. Outcome per prompt: +1 A wins, 0 tie, -1 B wins. Two methods:
  * 'pointwise' (default): each response gets k additive-rubric judgments alone (no position
    bias possible); outcome = sign(mean_A - mean_B), a tie when either has no valid score;
  * 'pairwise': the judge sees both responses and ends with `Verdict: 1|2|tie`, once with A
    first and once with B first; each order's k verdicts vote (invalid = tie), and the outcome
    is the sign of the two orders' preferences added (disagreeing orders give a tie).
Identical responses are ties (counted as `identical`). The outcomes go to metrics.win_rates and
metrics.length_controlled.
"""
import re
from typing import Any, Optional, Sequence

import numpy as np

from srlm_jax import judges as judge_lib
from srlm_jax import rollout
from srlm_jax import sampler
from srlm_jax.evaluate.metrics import length_controlled
from srlm_jax.evaluate.metrics import length_stats
from srlm_jax.evaluate.metrics import win_rates
from srlm_jax.judges import parser as judge_parser


def respond(model: Any, prompts: Sequence[str], *, max_new_tokens: int,
            temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
            progress: bool = True) -> tuple[list[str], list[int]]:
  """Returns (one response per prompt, its length in tokens without the end-of-turn token)."""
  out = rollout.generate_tokens(model, prompts, n=1, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_p=top_p, seed=seed,
                                progress=progress)
  lengths = [len(c.tokens) - int(c.stop_reason == sampler.StopReason.EOS) for [c] in out]
  return [c.text for [c] in out], lengths


def compare_pointwise(judge: Any, prompts: Sequence[str], responses_a: Sequence[str],
                      responses_b: Sequence[str], settings: judge_lib.JudgeSettings, *,
                      seed: int = 0, progress: bool = True) -> np.ndarray:
  """Returns per prompt +1 / 0 / -1 (A better / tie / B better) from rubric scores of each."""
  n = len(prompts)
  result = judge_lib.judge_responses(judge, list(prompts) * 2,
                                     list(responses_a) + list(responses_b), settings=settings,
                                     seed=seed, progress=progress)
  a, b = result.mean_R[:n], result.mean_R[n:]
  return np.where(np.isnan(a) | np.isnan(b), 0, np.sign(a - b)).astype(np.int64)


PAIRWISE_TEMPLATE = """\
Compare the two responses to the user's question below. Decide which one answers it better: \
more helpful, accurate, relevant and clear. Do not let the order of the responses or their \
length alone sway you.

<question>
{prompt}
</question>

Response 1:
<response>
{first}
</response>

Response 2:
<response>
{second}
</response>

Explain your choice in a few sentences, then end with a final line "Verdict: 1", \
"Verdict: 2" or "Verdict: tie"."""
# The verdict is the judge's own final line, as for scores (judge_parser.final_line): a verdict
# quoted from a response, or one inside the reasons, is not the judge's.
VERDICT = re.compile(r'[ \t*]*verdict[ \t*]*:[ \t*]*(1|2|tie)(?![A-Za-z0-9])', re.I)


def parse_verdict(text: str) -> Optional[int]:
  """Returns the final line's verdict: +1 (first response), -1 (second), 0 (tie), or None."""
  match = VERDICT.match(judge_parser.final_line(text) or '')
  return {'1': 1, '2': -1, 'tie': 0}[match.group(1).lower()] if match else None


def compare_pairwise(judge: Any, prompts: Sequence[str], responses_a: Sequence[str],
                     responses_b: Sequence[str], settings: judge_lib.JudgeSettings, *,
                     seed: int = 0, progress: bool = True) -> tuple[np.ndarray, dict]:
  """Returns (per prompt +1 / 0 / -1, position statistics), judging both orders."""
  requests = [[{'role': 'user', 'content': PAIRWISE_TEMPLATE.format(
      prompt=judge_lib.quote(p), first=judge_lib.quote(x), second=judge_lib.quote(y))}]
              for order in (0, 1) for p, a, b in zip(prompts, responses_a, responses_b)
              for x, y in [(a, b) if order == 0 else (b, a)]]
  texts = rollout.generate(judge, requests, n=settings.k, max_new_tokens=settings.max_new_tokens,
                           temperature=settings.temperature, top_p=settings.top_p, seed=seed,
                           progress=progress)
  parsed = [[parse_verdict(t) for t in ts] for ts in texts]
  valid = np.array([[v is not None for v in vs] for vs in parsed]).reshape(2, len(prompts), -1)
  votes = np.array([[v or 0 for v in vs] for vs in parsed]).reshape(2, len(prompts), -1)
  first = np.sign(votes.sum(-1))  # [2, n]: +1 when the first-shown response is preferred
  prefer_a = first[0] - first[1]  # the second order shows B first, so its +1 is a vote for B
  decided = votes != 0
  stats = {'valid_verdicts': float(valid.mean()) if valid.size else 0.0,
           'first_position_rate': float((votes == 1).sum() / max(decided.sum(), 1)),
           'orders_agree': float((first[0] == -first[1]).mean()) if len(prompts) else 0.0}
  return np.sign(prefer_a).astype(np.int64), stats


def head_to_head(judge: Any, prompts: Sequence[str], responses_a: Sequence[str],
                 responses_b: Sequence[str], lengths_a: Sequence[int], lengths_b: Sequence[int],
                 settings: judge_lib.JudgeSettings, *, method: str = 'pointwise',
                 max_ratio: float = 1.25, n_boot: int = 1000, seed: int = 0,
                 progress: bool = True) -> dict:
  """Returns A-vs-B win rates, the length-controlled view and both models' length statistics."""
  if not len(prompts) == len(responses_a) == len(responses_b):
    raise ValueError(f'head_to_head: {len(prompts)} prompts, {len(responses_a)} responses of A '
                     f'and {len(responses_b)} of B')
  out = {'method': method}
  if method == 'pointwise':
    outcomes = compare_pointwise(judge, prompts, responses_a, responses_b, settings, seed=seed,
                                 progress=progress)
  elif method == 'pairwise':
    outcomes, out['position'] = compare_pairwise(judge, prompts, responses_a, responses_b,
                                                 settings, seed=seed, progress=progress)
  else:
    raise ValueError(f"head_to_head: method must be 'pointwise' or 'pairwise', got {method!r}")
  # The same text is a tie whatever a sampled judge says of it (two judgments of one response
  # differ only by sampling noise); counted, so a model that barely changed shows as such.
  same = np.array([x == y for x, y in zip(responses_a, responses_b)], bool)
  outcomes = np.where(same, 0, outcomes).astype(np.int64)
  out['identical'] = int(same.sum())
  out.update(win_rates(outcomes, n_boot=n_boot, seed=seed))
  out['length_controlled'] = length_controlled(outcomes, lengths_a, lengths_b,
                                               max_ratio=max_ratio, n_boot=n_boot, seed=seed)
  out['lengths_a'], out['lengths_b'] = length_stats(lengths_a), length_stats(lengths_b)
  out['outcomes'] = [int(o) for o in outcomes]
  return out
