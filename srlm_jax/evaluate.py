"""Evaluation: judge agreement with human rankings, head-to-head win rates, response lengths.

The metric functions (first half) are pure numpy and take no model; the functions after
`# model calls` run a model and hand its outputs to them.

**Judge agreement** (Self-Rewarding LMs, Table 4). Per prompt: the human ranks r of its
responses (0 = best, lower is better) and the judge's score s of each (the mean of its valid
judgments; NaN when none is valid). All rates are fractions in [0, 1].
  * pairwise_accuracy: over the human pairs (i preferred to j): 1 if s_i > s_j, 0 if s_i < s_j,
    and 1/2 when the judge ties them or either score is NaN (it shows no preference). Pooled
    over all pairs. `strict_pairwise_accuracy` counts ties and NaN as 0.
  * five_best ("5-best %"): among the responses the judge gives a perfect 5 (mean score 5, i.e.
    every valid judgment said 5), the fraction that are their prompt's human-best. NaN when the
    judge gives no 5. `top1` is the related per-prompt view: whether the judge's top-scored
    response is the human-best (1/m when m responses tie for the top; 0 when none is valid).
  * exact_match: the fraction of prompts whose responses the judge orders exactly as the humans
    do: every score valid and sign(s_i - s_j) == sign(r_j - r_i) for every i, j (so a judge tie
    between two differently ranked responses is no match).
  * spearman, kendall_tau: per prompt, Spearman's rho (average ranks for ties) and Kendall's
    tau-b between s and -r over the responses with a valid score, averaged over prompts. Where
    undefined (fewer than two valid scores, or all of them equal) a prompt counts as 0, and the
    number of such prompts is reported.
Intervals are bootstrap percentile intervals resampling prompts (pooled metrics are recomputed
as ratios of sums on each resample).

**Head-to-head.** Model A's and model B's responses to the same prompts are judged by one fixed
judge model. Outcome per prompt: +1 A wins, 0 tie, -1 B wins. Two methods:
  * 'pointwise' (default): each response gets k additive-rubric judgments alone (no position
    bias possible); outcome = sign(mean_A - mean_B), a tie when either has no valid score;
  * 'pairwise': the judge sees both responses and ends with `Verdict: 1|2|tie`, once with A
    first and once with B first; each order's k verdicts vote (invalid = tie), and the outcome
    is the sign of the two orders' preferences added (disagreeing orders give a tie).
win_rate = (wins + ties / 2) / n. The length-controlled view keeps only the prompts whose two
responses are of similar length (longer / shorter <= max_ratio, in tokens).
"""

import collections
import hashlib
import json
import logging
import os
import re
from typing import Any, Optional, Sequence

import numpy as np

from srlm_jax import data as data_lib
from srlm_jax import distributed
from srlm_jax import judges as judge_lib
from srlm_jax.judges import parser as judge_parser
from srlm_jax import rollout
from srlm_jax import sampler
from srlm_jax import store
from srlm_jax import workdir

LENGTH_EDGES = (0, 32, 64, 128, 256, 512, 1024, 2048)  # histogram bin edges (tokens), then inf
AGREEMENT_KEYS = ('pairwise_accuracy', 'five_best', 'exact_match', 'spearman', 'kendall_tau',
                  'top1', 'strict_pairwise_accuracy')


def average_ranks(x: np.ndarray) -> np.ndarray:
  """Returns the 1-based ranks of x in ascending order, ties sharing their average rank."""
  _, inverse, counts = np.unique(np.asarray(x, np.float64), return_inverse=True,
                                 return_counts=True)
  return (np.cumsum(counts) - (counts - 1) / 2)[inverse.reshape(-1)]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
  """Returns Spearman's rho of x and y (average ranks for ties), NaN if undefined."""
  rx, ry = average_ranks(x) - (len(x) + 1) / 2, average_ranks(y) - (len(y) + 1) / 2
  denom = np.sqrt((rx * rx).sum() * (ry * ry).sum())
  return float((rx * ry).sum() / denom) if len(x) >= 2 and denom > 0 else float('nan')


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
  """Returns Kendall's tau-b of x and y, NaN if undefined."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  i, j = np.triu_indices(len(x), k=1)
  dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
  denom = np.sqrt(np.count_nonzero(dx) * np.count_nonzero(dy))
  return float((dx * dy).sum() / denom) if denom > 0 else float('nan')


def all_pairs(ranks: np.ndarray) -> np.ndarray:
  """Returns the [M, 2] (preferred, other) index pairs of responses with different ranks."""
  ranks = np.asarray(ranks)
  i, j = np.triu_indices(len(ranks), k=1)
  keep = ranks[i] != ranks[j]
  i, j = i[keep], j[keep]
  swap = ranks[i] > ranks[j]
  return np.stack([np.where(swap, j, i), np.where(swap, i, j)], axis=1).astype(np.int64)


def prompt_stats(ranks, scores, pairs=None, top: float = 5.0) -> dict:
  """Returns one prompt's agreement numbers (sums and counts for pooling, per-prompt values);
  `top` is the judge scale's highest score (five_best counts responses scored at it)."""
  r = np.asarray(ranks, np.float64)
  s = np.asarray(scores, np.float64)
  pairs = all_pairs(r) if pairs is None else np.asarray(pairs, np.int64).reshape(-1, 2)
  a, b = s[pairs[:, 0]], s[pairs[:, 1]]
  decided = ~np.isnan(a) & ~np.isnan(b) & (a != b)
  valid = ~np.isnan(s)
  best = r == r.min()
  five = valid & (s >= top)
  top = valid & (s == np.max(s[valid])) if valid.any() else valid
  i, j = np.triu_indices(len(r), k=1)
  exact = bool(valid.all() and np.all(np.sign(s[i] - s[j]) == np.sign(r[j] - r[i])))
  rho = spearman(s[valid], -r[valid]) if valid.sum() >= 2 else float('nan')
  tau = kendall_tau_b(s[valid], -r[valid]) if valid.sum() >= 2 else float('nan')
  return {
      'pairs': len(pairs), 'pairs_correct': float((decided & (a > b)).sum()
                                                   + 0.5 * (~decided).sum()),
      'pairs_strict': float((decided & (a > b)).sum()), 'pairs_undecided': int((~decided).sum()),
      'scored_5': int(five.sum()), 'scored_5_best': int((five & best).sum()),
      'top1': float((top & best).sum() / top.sum()) if top.any() else 0.0,
      'exact_match': float(exact),
      'spearman': 0.0 if np.isnan(rho) else rho, 'kendall_tau': 0.0 if np.isnan(tau) else tau,
      'undefined_correlation': int(np.isnan(rho)), 'responses': len(r),
      'valid_responses': int(valid.sum()),
  }


# metric -> (numerator field, denominator field or None for a mean over prompts)
_POOLED = {'pairwise_accuracy': ('pairs_correct', 'pairs'),
           'strict_pairwise_accuracy': ('pairs_strict', 'pairs'),
           'five_best': ('scored_5_best', 'scored_5'), 'exact_match': ('exact_match', None),
           'spearman': ('spearman', None), 'kendall_tau': ('kendall_tau', None),
           'top1': ('top1', None)}


def bootstrap_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
  """Returns [n_boot, n] counts: how often each of n units is drawn in each resample."""
  rng = np.random.default_rng(seed)
  return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _interval(values: np.ndarray, level: float) -> list:
  values = values[~np.isnan(values)]
  if not len(values):
    return [float('nan'), float('nan')]
  lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
  return [float(lo), float(hi)]


def judge_agreement(groups: Sequence[tuple], *, n_boot: int = 1000, seed: int = 0,
                    level: float = 0.95, top: float = 5.0) -> dict:
  """Returns the metrics, `<metric>_ci` intervals and counts of (ranks, scores[, pairs]) groups
  (`top`: the judge scale's highest score)."""
  if not groups:
    raise ValueError('judge_agreement: no prompts to evaluate')
  stats = [prompt_stats(*g, top=top) for g in groups]
  col = {k: np.array([st[k] for st in stats], np.float64) for k in stats[0]}
  weights = bootstrap_weights(len(stats), n_boot, seed)
  out = {}
  for name, (num, den) in _POOLED.items():
    d = col[den] if den else np.ones(len(stats))
    out[name] = float(_ratio(col[num].sum(), d.sum()))
    out[f'{name}_ci'] = _interval(_ratio(weights @ col[num], weights @ d), level)
  out['counts'] = {'prompts': len(stats), 'pairs': int(col['pairs'].sum()),
                   'responses': int(col['responses'].sum()),
                   'valid_responses': int(col['valid_responses'].sum()),
                   'undecided_pairs': int(col['pairs_undecided'].sum()),
                   'scored_5': int(col['scored_5'].sum()),
                   'undefined_correlation_prompts': int(col['undefined_correlation'].sum())}
  out['ci_level'], out['n_boot'] = level, n_boot
  return out


def win_rates(outcomes, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
  """Returns n, win, tie, loss and win_rate (wins + ties / 2) fractions with bootstrap intervals."""
  o = np.asarray(outcomes, np.float64)
  if not len(o):
    return {'n': 0}
  cols = {'win': o > 0, 'tie': o == 0, 'loss': o < 0, 'win_rate': (o > 0) + 0.5 * (o == 0)}
  weights = bootstrap_weights(len(o), n_boot, seed)
  out = {'n': len(o)}
  for k, v in cols.items():
    v = v.astype(np.float64)
    out[k] = float(v.mean())
    out[f'{k}_ci'] = _interval(weights @ v / len(o), level)
  return out


def length_controlled(outcomes, lengths_a, lengths_b, *, max_ratio: float = 1.25,
                      **kwargs) -> dict:
  """Returns win_rates over the prompts whose two responses' lengths are within max_ratio."""
  la = np.maximum(np.asarray(lengths_a, np.float64), 1)
  lb = np.maximum(np.asarray(lengths_b, np.float64), 1)
  similar = np.maximum(la, lb) / np.minimum(la, lb) <= max_ratio
  out = win_rates(np.asarray(outcomes)[similar], **kwargs)
  out.update(max_ratio=max_ratio, fraction_kept=float(similar.mean()) if len(la) else 0.0,
             a_longer=float((la > lb).mean()) if len(la) else 0.0)
  return out


def length_stats(lengths) -> dict:
  """Returns the mean, quantiles and a fixed-bin histogram of response lengths (tokens)."""
  x = np.asarray(lengths, np.float64)
  if not len(x):
    return {'n': 0}
  counts, _ = np.histogram(x, bins=np.array(LENGTH_EDGES + (np.inf,)))
  return {'n': len(x), 'mean': float(x.mean()), 'median': float(np.median(x)),
          'p10': float(np.percentile(x, 10)), 'p90': float(np.percentile(x, 90)),
          'max': float(x.max()), 'histogram': {'edges': list(LENGTH_EDGES),
                                               'counts': counts.tolist()}}


# ------------------------------------------------------------------------------ model calls

def load_judge_groups(path: str, max_pairs: Optional[int] = None) -> list[dict]:
  """Returns per prompt {'id', 'prompt', 'responses', 'ranks', 'pairs'} of a pairs/rankings file.

  A line is a human pair {"prompt", "chosen", "rejected"} (optional "prompt_id", "chosen_rank",
  "rejected_rank") or a ranking {"prompt", "responses": [{"response", "rank"}, ...]}. Pairs are
  grouped by prompt_id (else prompt text), responses told apart by chosen_id / rejected_id (else
  text); responses without ranks are ranked by how many of
  their prompt's pairs they lose. `max_pairs` keeps whole prompts in file order, skipping any
  that would take the total past max_pairs (the first prompt is always kept).
  """
  groups = collections.OrderedDict()
  for where, n, obj in data_lib.read_source(path):  # JSONL or tfds:<config>/<split>@<dir>
    prompt = obj.get('prompt')
    if not isinstance(prompt, str) or not prompt.strip():
      raise ValueError(f'{where}:{n}: field "prompt" must be a non-empty string')
    g = groups.setdefault(obj.get('prompt_id', prompt), {
        'id': str(obj.get('prompt_id', f'{where}:{n}')), 'prompt': prompt, 'responses': [],
        'keys': [], 'ranks': [], 'pairs': []})
    if 'responses' in obj:
      items = obj['responses']
      if not isinstance(items, list) or not all(
          isinstance(x, dict) and isinstance(x.get('response'), str)
          and isinstance(x.get('rank'), (int, float)) for x in items):
        raise ValueError(f'{where}:{n}: "responses" must be a list of {{"response", "rank"}}')
      g['responses'] += [x['response'] for x in items]
      g['keys'] += [x.get('id', len(g['keys']) + i) for i, x in enumerate(items)]
      g['ranks'] += [float(x['rank']) for x in items]
      continue
    index = []
    for side in ('chosen', 'rejected'):
      text = obj.get(side)
      if not isinstance(text, str) or not text.strip():
        raise ValueError(f'{where}:{n}: field {side!r} must be a non-empty string')
      key = obj.get(f'{side}_id', text)  # replies with the same text but ids stay apart
      if key not in g['keys']:
        g['keys'].append(key)
        g['responses'].append(text)
        g['ranks'].append(obj.get(f'{side}_rank'))
      index.append(g['keys'].index(key))
    g['pairs'].append(index)
  out, total = [], 0
  for g in groups.values():
    del g['keys']
    if any(rank is None for rank in g['ranks']):
      lost = collections.Counter(j for _, j in g['pairs'])
      g['ranks'] = [float(lost[i]) for i in range(len(g['responses']))]
    if not g['pairs']:
      g['pairs'] = all_pairs(np.asarray(g['ranks'])).tolist()
    if max_pairs is not None and out and total + len(g['pairs']) > max_pairs:
      continue
    total += len(g['pairs'])
    out.append(g)
  return out


def judge_groups(model: Any, groups: Sequence[dict], settings: judge_lib.JudgeSettings, *,
                 seed: int = 0, progress: bool = True, cache_dir: Optional[str] = None,
                 chunk: Optional[int] = None,
                 judge_id: Optional[str] = None) -> tuple[list, list]:
  """Returns (per group its judge scores, per-response judgment records); each response once.

  Responses are judged longest first in chunks of `chunk` (default: the largest power of two
  <= 64 / k, one unpadded device batch of the sampler). With `cache_dir`, each chunk is a
  shard of the run's one resume mechanism (srlm_jax/store.py: written atomically with its
  digests, read back on a rerun) under cache_dir/<key digest>/, so an interrupted run resumes.
  The key (`cache_key`, in that folder's key.json) is everything that decides a judgment's
  content: the judge (`judge_id`, default model.path, and a digest of its weights), the
  template, the sampling settings and the seed; shards under any other key are never read.
  """
  tag = cache_key(model, settings, seed, judge_id)
  flat = [(gi, ri) for gi, g in enumerate(groups) for ri in range(len(g['responses']))]
  order = sorted(flat, key=lambda f: -len(groups[f[0]]['prompt'])
                 - len(groups[f[0]]['responses'][f[1]]))
  chunk = chunk or 1 << (max(1, 64 // settings.k).bit_length() - 1)

  def judge_chunk(part, shard):
    start = shard * chunk  # the chunk's seed offset: the same with or without a cache
    result = judge_lib.judge_responses(
        model, [groups[gi]['prompt'] for gi, _ in part],
        [groups[gi]['responses'][ri] for gi, ri in part], settings=settings,
        seed=seed + start, progress=progress)
    logging.info('judged %d of %d responses', start + len(part), len(order))
    return [{'prompt_id': groups[gi]['id'], 'response_index': ri,
             'human_rank': groups[gi]['ranks'][ri], 'judgments': result.texts[f],
             'scores': [judge_lib.score_json(x) for x in result.scores_RxK[f]],
             'mean': judge_lib.score_json(result.mean_R[f]),
             'settings': tag} for f, (gi, ri) in enumerate(part)], {}

  if not order:
    judged = []
  elif cache_dir:
    key_dir = os.path.join(cache_dir, hashlib.sha256(
        json.dumps(tag, sort_keys=True).encode()).hexdigest()[:16])
    others = [d for d in os.listdir(cache_dir) if d != os.path.basename(key_dir)
              ] if os.path.isdir(cache_dir) else []
    if others:
      logging.warning('%s: judgments of %d other judges, weights, templates, sampling or seeds '
                      'are there; not reused', cache_dir, len(others))
    if distributed.is_writer():
      os.makedirs(key_dir, exist_ok=True)
      store.write_json(os.path.join(key_dir, 'key.json'), tag)
    judged, _ = store.sharded(key_dir, order, chunk, judge_chunk, 'eval judgments')
  else:
    judged = [r for s in range(-(-len(order) // chunk))
              for r in judge_chunk(order[s * chunk:(s + 1) * chunk], s)[0]]
  done = {(r['prompt_id'], r['response_index']): r for r in judged}
  records = [done[(groups[gi]['id'], ri)] for gi, ri in flat]
  scores = [np.full(len(g['responses']), np.nan) for g in groups]
  for (gi, ri), r in zip(flat, records):
    scores[gi][ri] = np.nan if r['mean'] is None else r['mean']
  return scores, records


def cache_key(model: Any, settings: judge_lib.JudgeSettings, seed: int,
              judge_id: Optional[str] = None) -> dict:
  """Returns what decides a judgment's content: judge, weights digest, settings, seed."""
  return {'judge': judge_id if judge_id is not None else str(getattr(model, 'path', '')),
          'weights': workdir.params_digest(model.params)[:32],
          'k': settings.k, 'temperature': settings.temperature, 'top_p': settings.top_p,
          'max_new_tokens': settings.max_new_tokens,
          'template': hashlib.sha256(repr(settings.template).encode()).hexdigest()[:16],
          'kind': settings.kind,
          'verdict': settings.verdict, 'verdict_prefix': settings.verdict_prefix,
          'seed': seed}


def evaluate_judge(model: Any, groups: Sequence[dict], settings: judge_lib.JudgeSettings,
                   *, n_boot: int = 1000, seed: int = 0, progress: bool = True,
                   cache_dir: Optional[str] = None,
                   judge_id: Optional[str] = None) -> tuple[dict, list]:
  """Returns (the judge-agreement metrics, the per-response judgment records)."""
  scores, records = judge_groups(model, groups, settings, seed=seed, progress=progress,
                                 cache_dir=cache_dir, judge_id=judge_id)
  metrics = judge_agreement([(g['ranks'], s, g['pairs']) for g, s in zip(groups, scores)],
                            n_boot=n_boot, seed=seed,
                            top=judge_lib.get(settings.kind).score_values[-1])
  valid = [v for r in records for v in r['scores']]
  metrics['counts']['valid_judgment_fraction'] = float(np.mean([v is not None for v in valid]))
  return metrics, records


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
  out.update(win_rates(outcomes, n_boot=n_boot, seed=seed))
  out['length_controlled'] = length_controlled(outcomes, lengths_a, lengths_b,
                                               max_ratio=max_ratio, n_boot=n_boot, seed=seed)
  out['lengths_a'], out['lengths_b'] = length_stats(lengths_a), length_stats(lengths_b)
  out['outcomes'] = [int(o) for o in outcomes]
  return out
