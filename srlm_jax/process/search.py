"""Step search: per step, N candidate next steps from one prefix, judged, best extends the prefix.

Process-based self-rewarding (Zhang et al. 2025, arXiv 2503.03746), one iteration's data:
for each problem, the model writes its solution one step at a time. At step s every unfinished
problem's prefix (chat-formatted prompt ids + the token ids of the steps chosen so far) is
sampled N times as one Rollout that stops at the step boundary (process/steps.py stop
strings). The model's own step judge scores the N candidates: pointwise ('step': each
candidate alone, K judgments averaged) or pairwise ('step_pair': every ordered pair of
candidates, both orders, a candidate's score its mean win probability). The best and worst
usable candidates make a step pair (rewards/pairs.select_pairs: ties and fewer than two usable
candidates make none), the best extends the prefix, and the step pair's DPO rows are built from
the Rollout on the device (rewards/pairs.preference_dataset): the prompt is the prefix, the
completion the step, so the loss covers the step's tokens only, and the reference log-probs
are the Rollout's, conditioned on the same prefix. A problem ends when its chosen step stops
at eos, holds the final-answer marker, or after max_steps.

Host edges: the per-step token ids of the chosen steps (the next prefixes), the candidate
texts (for the judge requests and the records), the chosen indices.

Axis legend: A active problems at a step, N candidates per prefix, K judgments per candidate
(pointwise) or per comparison (pairwise), C comparisons = A * N * (N - 1), Q step pairs.
"""

import dataclasses
import functools
from typing import Any, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from srlm_jax import judges
from srlm_jax import rollout as rollout_lib
from srlm_jax import sampler
from srlm_jax.judges import step as step_judges
from srlm_jax.process import steps as steps_lib
from srlm_jax.rewards import pairs as pairs_lib


@dataclasses.dataclass(frozen=True)
class SearchSettings:
  """How the step search samples, judges and pairs candidate steps."""
  split: steps_lib.SplitRule = steps_lib.SplitRule()
  n: int = 4  # candidate next steps per prefix
  max_steps: int = 6  # steps per solution at most
  max_new_tokens: int = 48  # tokens per step at most
  temperature: float = 0.7
  top_p: float = 0.9
  judge: judges.JudgeSettings = judges.JudgeSettings(kind='step')
  min_gap: float = 0.0  # a step pair needs best - worst > min_gap
  pair_truncated: bool = False  # whether a step cut by max_new_tokens may be paired
  final_marker: str = 'Answer:'  # a chosen step holding it ends the solution


@functools.partial(jax.jit, static_argnames=('num_rows',))
def pairwise_scores(value_C: jax.Array, first_C: jax.Array, second_C: jax.Array, *,
                    num_rows: int) -> tuple[jax.Array, jax.Array]:
  """Returns (score_R: each candidate's mean win probability over its valid comparisons, NaN
  where none; count_R int32) from 'step_pair' verdicts value_C in [1, 2] (NaN: invalid)."""
  ok_C = ~jnp.isnan(value_C)
  p2_C = jnp.where(ok_C, value_C - 1.0, 0.0)  # P(the second-listed candidate is better)
  wins_R = (jnp.zeros(num_rows, jnp.float32).at[first_C].add(jnp.where(ok_C, 1.0 - p2_C, 0.0))
            .at[second_C].add(p2_C))
  count_R = (jnp.zeros(num_rows, jnp.int32).at[first_C].add(ok_C.astype(jnp.int32))
             .at[second_C].add(ok_C.astype(jnp.int32)))
  return jnp.where(count_R > 0, wins_R / jnp.maximum(count_R, 1), jnp.nan), count_R


def comparisons(a: int, n: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns (first_C, second_C) candidate rows of every ordered pair within each prefix."""
  first, second = [], []
  for p in range(a):
    for i in range(n):
      for j in range(n):
        if i != j:
          first.append(p * n + i)
          second.append(p * n + j)
  return np.asarray(first, np.int32), np.asarray(second, np.int32)


def judge_steps(model: Any, contexts: Sequence[str], texts: Sequence[Sequence[str]],
                settings: SearchSettings, seed: int,
                progress: Any = False) -> tuple[jax.Array, jax.Array, list]:
  """Returns (score_AxN float32 on the device, NaN where unjudged; count_AxN int32; per
  candidate its K judgment texts, or None for the pairwise judge, whose texts are per
  comparison) of each candidate step by the model's step judge (pointwise or pairwise)."""
  a, n = len(texts), settings.n
  kind = settings.judge.kind
  judge_ = judges.get(kind)
  if judge_.grammar.keyword.lower() == 'better':  # pairwise: both orders of every pair
    first, second = comparisons(a, n)
    flat = [t for row in texts for t in row]
    prompts = [contexts[i // n] for i in first]
    responses = [step_judges.pair_response(flat[i], flat[j]) for i, j in zip(first, second)]
    _, scores = judges.judge(model, judge_, prompts, responses, settings.judge, seed,
                             progress=progress, truncate=True)
    value_C, _ = judges.aggregate(scores.scores_RxK, scores.valid_RxK, settings.judge.aggregate)
    score_R, count_R = pairwise_scores(value_C, jax.device_put(first), jax.device_put(second),
                                       num_rows=a * n)
    return score_R.reshape(a, n), count_R.reshape(a, n), None
  prompts = [contexts[i] for i in range(a) for _ in range(n)]
  responses = [t for row in texts for t in row]
  out_texts, scores = judges.judge(model, judge_, prompts, responses, settings.judge, seed,
                                   progress=progress, truncate=True)
  value_R, count_R = judges.aggregate(scores.scores_RxK, scores.valid_RxK,
                                      settings.judge.aggregate)
  return value_R.reshape(a, n), count_R.reshape(a, n), out_texts


@functools.partial(jax.jit, static_argnames=('min_gap',))
def _choose(score_AxN, count_AxN, usable_AxN, *, min_gap):
  """Returns select_pairs' arrays plus `extend` [A]: the step that extends each prefix."""
  out = pairs_lib.select_pairs(score_AxN, (count_AxN > 0) & usable_AxN, min_gap=min_gap)
  # Without a pair the best scored usable step (if any) still extends the prefix, else step 0.
  counted = (count_AxN > 0) & usable_AxN & ~jnp.isnan(score_AxN)
  best = jnp.argmax(jnp.where(counted, score_AxN, -jnp.inf), axis=-1).astype(jnp.int32)
  extend = jnp.where(counted.any(axis=-1), best, 0)
  return {**out, 'extend': jnp.where(out['has_pair'], out['chosen'], extend)}


def join_datasets(parts: Sequence[dict], pad_id: int = 0) -> Optional[dict]:
  """Returns the steps' pair datasets joined along the pair axis (rewards/pairs
  concat_datasets: [Q, S] right-padded to the widest), or None when no step made a pair."""
  parts = [p for p in parts if p['chosen']['inputs'].shape[0]]
  return pairs_lib.concat_datasets(parts, pad_id=pad_id) if parts else None


def search(model: Any, problems: Sequence[dict], settings: SearchSettings, *, seed: int = 0,
           progress: Any = False) -> tuple[list, Optional[dict]]:
  """Returns (one record per problem with its steps, candidates, scores and pairs; the step
  pairs' DPO dataset on the device, or None without pairs) of the step search.

  `problems` are task dicts ({'id', 'prompt'}; 'question' used in judge requests when present).
  """
  tok, n = model.tokenizer, settings.n
  budget = settings.max_steps * settings.max_new_tokens
  prompt_ids, _ = rollout_lib.encode_prompts(
      model, [p['prompt'] for p in problems], max_new_tokens=budget,
      where=[f'task {p["id"]}' for p in problems])
  prefixes = [list(np.asarray(x)) for x in prompt_ids]
  chosen_steps: List[List[str]] = [[] for _ in problems]
  records = [{'id': p['id'], 'prompt': p['prompt'], 'steps': []} for p in problems]
  done = [False] * len(problems)
  stop = steps_lib.stop_strings(settings.split, tok)
  parts = []
  for s in range(settings.max_steps):
    active = [i for i in range(len(problems)) if not done[i]]
    if not active:
      break
    roll = rollout_lib.sample(
        model, [np.asarray(prefixes[i], np.int32) for i in active], n=n,
        max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
        top_p=settings.top_p, stop=stop, seed=seed * 1_000_003 + s, progress=progress)
    texts = [[t.strip() for t in row] for row in rollout_lib.texts(roll, tok)]
    contexts = [step_judges.context(problems[i].get('question', problems[i]['prompt']),
                                    chosen_steps[i]) for i in active]
    score_AxN, count_AxN, judge_texts = judge_steps(
        model, contexts, texts, settings, seed=(seed + 1) * 1_000_003 + s, progress=progress)
    # Host edge: blank candidates are no step (their texts decide it).
    nonempty = jax.device_put(np.array([bool(t) for row in texts for t in row]))
    usable_AxN = pairs_lib.usable(roll.stop_reason, nonempty, n=n,
                                  pair_truncated=settings.pair_truncated)
    out = _choose(score_AxN, count_AxN, usable_AxN, min_gap=float(settings.min_gap))
    rows_Q = pairs_lib.pair_rows(out['has_pair'])
    parts.append(pairs_lib.preference_dataset(roll, out['chosen'], out['rejected'], rows_Q,
                                              pad_id=tok.pad_id))
    host = jax.device_get({**out, 'score': score_AxN, 'usable': usable_AxN})
    sampled = rollout_lib.to_host(roll)
    for a, i in enumerate(active):
      e = int(host['extend'][a])
      r = a * n + e
      length = int(sampled['lengths'][r])
      prefixes[i] += [int(x) for x in sampled['tokens'][r, :length]]
      chosen_steps[i].append(texts[a][e])
      reason = int(sampled['stop_reason'][r])
      records[i]['steps'].append({
          'step': s, 'candidates': texts[a],
          'scores': [judges.score_json(x) for x in host['score'][a]],
          'usable': [bool(x) for x in host['usable'][a]],
          'stop_reasons': [sampler.StopReason(int(x)).name.lower()
                           for x in sampled['stop_reason'][a * n:(a + 1) * n]],
          'extended_by': e, 'pair': bool(host['has_pair'][a]),
          'decision': pairs_lib.REASONS[int(host['reason'][a])],
          'chosen': int(host['chosen'][a]), 'rejected': int(host['rejected'][a]),
          'judgments': None if judge_texts is None else judge_texts[a * n:(a + 1) * n]})
      done[i] = (reason == int(sampler.StopReason.EOS)
                 or settings.final_marker in texts[a][e]
                 or len(prefixes[i]) - len(prompt_ids[i]) + settings.max_new_tokens > budget)
  for i, rec in enumerate(records):
    rec['solution'] = steps_lib.render(chosen_steps[i], settings.split)
  return records, join_datasets(parts, tok.pad_id)
