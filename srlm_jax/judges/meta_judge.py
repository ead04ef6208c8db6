"""The meta-judge (Meta-Rewarding, Wu et al. 2024, arXiv 2407.19594): the model compares two of
its own judgments of one response, and battles rank the judgments.

A battle is two judgments (a, b) of the same response, a < b in judgment order. It is asked in
both orders (a first, then b first), so a judge that always prefers one position gives a tie.
The meta-judge request shows the judging task the judgments answered (the judge's own
request: question, response and rubric), then the two judgments, and asks which is more
accurate; its verdict line is `Better: 1` or `Better: 2` (the parser's Grammar('Better', 1, 2),
read on the device; forced verdicts read the model's distribution over '1' and '2').

Per request with verdict v (the mean of its valid samples; a forced verdict's expectation),
the first-shown judgment wins with probability 2 - v. The battle's outcome for a is the mean
over the valid orders of P(a wins): (2 - v_ab) and (v_ba - 1); NaN when neither order has a
valid verdict (the battle then does not count). A judge that always answers 1 gives
(1 + 0) / 2 = 0.5.

Aggregation per response (`aggregate`): 'wins', the sum of each judgment's battle outcomes (a
tie is half a win each); 'elo', Elo ratings from 1000, updated battle by battle in
`battle_pairs` order with factor `elo_k`: r_a += k (s - E_a), r_b -= k (s - E_a), E_a = 1 /
(1 + 10^((r_b - r_a) / 400)). Only judgments with a valid score take part. The best and worst
rated judgments of a response (lowest index among equals) make a judge-preference pair when
best > worst.

Axis legend: R judged responses, K judgments per response, B battles per response
(K (K - 1) / 2), S meta samples per request.
"""

import functools
import itertools
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from srlm_jax.judges import base
from srlm_jax.judges import parser

AGGREGATES = ('elo', 'wins')
ELO_START = 1000.0

META_RUBRIC = """\
Below is a judging task and two judgments written for it. Decide which judgment is more \
accurate: the one that applies the task's rubric more faithfully, reasons more correctly \
about the response, and gives the better justified score. Do not prefer a judgment for its \
position or its length.

<task>
{prompt}
</task>

{response}

Explain your choice briefly, then end with a final line of the form "Better: <1 or 2>"."""

_TAG = re.compile(r'<(/?)(task|judgment_[12])>', re.IGNORECASE)


def _quote(text: str) -> str:
  """Returns text with tags that could close the meta request's blocks neutralised."""
  return _TAG.sub(lambda m: f'<{m.group(1)}{m.group(2)}\u200b>', text.strip())


class MetaJudge(base.Judge):
  """A judge of two judgments: the task goes in as is, the judgments quoted (see `block`)."""

  def prompt_text(self, prompt: str, response: str, template=None) -> str:
    """Returns the meta request: `prompt` the judging task, `response` the two judgments."""
    template = template or self.template()
    return template.rubric.format(prompt=_quote(prompt), response=response)


def block(first: str, second: str) -> str:
  """Returns the two judgments as the meta request's quoted blocks, `first` as judgment 1."""
  return (f'<judgment_1>\n{_quote(first)}\n</judgment_1>\n\n'
          f'<judgment_2>\n{_quote(second)}\n</judgment_2>')


JUDGE = MetaJudge(name='meta_pairwise', grammar=parser.Grammar('Better', 1, 2, decimals=False),
                  templates={'meta_pairwise': META_RUBRIC}, default_template='meta_pairwise',
                  verdict_prefix='\nBetter: ')


def battle_pairs(k: int) -> np.ndarray:
  """Returns the [B, 2] int32 judgment indices (a, b), a < b, of every battle, in order."""
  return np.asarray(list(itertools.combinations(range(k), 2)), np.int32).reshape(-1, 2)


@jax.jit
def outcomes(scores_RxBx2xS: jax.Array, valid_RxBx2xS: jax.Array) -> jax.Array:
  """Returns [R, B] float32 P(a beats b) of each battle from its two orders' verdicts (order
  0: a shown first, order 1: b first; verdicts in [1, 2]); NaN where neither is valid."""
  ok = valid_RxBx2xS & ~jnp.isnan(scores_RxBx2xS)
  count_RxBx2 = ok.sum(axis=-1)
  v_RxBx2 = jnp.where(ok, scores_RxBx2xS, 0.0).sum(axis=-1) / jnp.maximum(count_RxBx2, 1)
  first_wins_RxBx2 = 2.0 - v_RxBx2
  a_wins_RxBx2 = jnp.stack([first_wins_RxBx2[..., 0], 1.0 - first_wins_RxBx2[..., 1]], -1)
  has_RxBx2 = count_RxBx2 > 0
  n_RxB = has_RxBx2.sum(axis=-1)
  total_RxB = jnp.where(has_RxBx2, a_wins_RxBx2, 0.0).sum(axis=-1)
  return jnp.where(n_RxB > 0, total_RxB / jnp.maximum(n_RxB, 1), jnp.nan)


def win_counts(outcome_RxB: jax.Array, pairs_Bx2: jax.Array, k: int) -> jax.Array:
  """Returns [R, K] float32: each judgment's summed battle outcomes (its soft wins)."""
  ok = ~jnp.isnan(outcome_RxB)
  s_RxB = jnp.where(ok, outcome_RxB, 0.0)
  a_BxK = jax.nn.one_hot(pairs_Bx2[:, 0], k, dtype=jnp.float32)
  b_BxK = jax.nn.one_hot(pairs_Bx2[:, 1], k, dtype=jnp.float32)
  return s_RxB @ a_BxK + jnp.where(ok, 1.0 - s_RxB, 0.0) @ b_BxK


def elo(outcome_RxB: jax.Array, pairs_Bx2: jax.Array, k: int, elo_k: float = 32.0) -> jax.Array:
  """Returns [R, K] float32 Elo ratings after the battles, in order (module docstring)."""
  r = outcome_RxB.shape[0]

  def step(ratings_RxK, battle):
    s_R, (a, b) = battle
    ra, rb = ratings_RxK[:, a], ratings_RxK[:, b]
    expected_R = 1.0 / (1.0 + 10.0 ** ((rb - ra) / 400.0))
    delta_R = jnp.where(jnp.isnan(s_R), 0.0, elo_k * (s_R - expected_R))
    return ratings_RxK.at[:, a].add(delta_R).at[:, b].add(-delta_R), None

  start = jnp.full((r, k), ELO_START, jnp.float32)
  out, _ = jax.lax.scan(step, start, (outcome_RxB.T, (pairs_Bx2[:, 0], pairs_Bx2[:, 1])))
  return out


@functools.partial(jax.jit, static_argnames=('k', 'how', 'elo_k'))
def ratings(outcome_RxB: jax.Array, pairs_Bx2: jax.Array, k: int, how: str,
            elo_k: float = 32.0) -> jax.Array:
  """Returns [R, K] the judgments' ratings by `how` ('elo' or 'wins')."""
  if how == 'elo':
    return elo(outcome_RxB, pairs_Bx2, k, elo_k)
  if how == 'wins':
    return win_counts(outcome_RxB, pairs_Bx2, k)
  raise ValueError(f'meta-judge aggregate {how!r}: expected one of {AGGREGATES}')


@jax.jit
def best_and_worst(ratings_RxK: jax.Array, fought_RxK: jax.Array) -> dict:
  """Returns per response the best and worst judgment among those that fought: [R] int32
  `chosen`, `rejected` (lowest index among equals), `gap` (NaN where none) and bool
  `has_pair` (best > worst)."""
  hi = jnp.where(fought_RxK, ratings_RxK, -jnp.inf)
  lo = jnp.where(fought_RxK, ratings_RxK, jnp.inf)
  chosen_R = jnp.argmax(hi, axis=-1).astype(jnp.int32)
  rejected_R = jnp.argmin(lo, axis=-1).astype(jnp.int32)
  gap_R = jnp.max(hi, axis=-1) - jnp.min(lo, axis=-1)
  has_R = jnp.isfinite(gap_R) & (gap_R > 0)
  return {'chosen': chosen_R, 'rejected': rejected_R, 'has_pair': has_R,
          'gap': jnp.where(has_R, gap_R, jnp.nan)}


def fought(outcome_RxB: jax.Array, pairs_Bx2: jax.Array, k: int) -> jax.Array:
  """Returns [R, K] bool: the judgments that took part in at least one counted battle."""
  ok_RxB = ~jnp.isnan(outcome_RxB)
  return (ok_RxB.astype(jnp.float32) @ (jax.nn.one_hot(pairs_Bx2[:, 0], k)
                                        + jax.nn.one_hot(pairs_Bx2[:, 1], k))) > 0


def requests(tasks: Sequence[str], judgments: Sequence[Sequence[str]],
             valid: np.ndarray) -> tuple[list, list, list]:
  """Returns (tasks, blocks, where) of every meta request, and the [R, B, 2] row index of each
  (-1 where a judgment of the battle has no valid score: no request).

  Requests are per response, per battle, order 0 (a first) then order 1 (b first).
  """
  k = len(judgments[0]) if judgments else 0
  pairs = battle_pairs(k)
  index = np.full((len(tasks), len(pairs), 2), -1, np.int32)
  out_tasks, blocks = [], []
  for r, task in enumerate(tasks):
    for b, (i, j) in enumerate(pairs):
      if not (valid[r, i] and valid[r, j]):
        continue
      for order, (x, y) in enumerate(((i, j), (j, i))):
        index[r, b, order] = len(blocks)
        out_tasks.append(task)
        blocks.append(block(judgments[r][x], judgments[r][y]))
  return out_tasks, blocks, index


@jax.jit
def scatter(scores_QxS: jax.Array, valid_QxS: jax.Array, index_RxBx2: jax.Array) -> tuple:
  """Returns the meta verdicts laid out [R, B, 2, S] (NaN / False where no request)."""
  has = (index_RxBx2 >= 0)[..., None]
  at = jnp.maximum(index_RxBx2, 0)
  if scores_QxS.shape[0] == 0:  # no request at all: every battle is missing
    s = scores_QxS.shape[1]
    shape = index_RxBx2.shape + (s,)
    return jnp.full(shape, jnp.nan, jnp.float32), jnp.zeros(shape, bool)
  return (jnp.where(has, scores_QxS[at], jnp.nan), has & valid_QxS[at])
