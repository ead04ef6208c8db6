"""Evaluation metrics, pure numpy (no model): judge agreement, win rates, response lengths.

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

Win rates (head_to_head.py makes the outcomes): per prompt +1 A wins, 0 tie, -1 B wins;
win_rate = (wins + ties / 2) / n. The length-controlled view keeps only the prompts whose two
responses are of similar length (longer / shorter <= max_ratio, in tokens).
"""

from typing import Sequence

import numpy as np

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
