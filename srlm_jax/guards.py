"""Guards against reward hacking and drift: what each iteration measures, and the policy.

The measurements are device functions of the iteration's arrays (the self-judge's and the
frozen reference judge's mean scores of every candidate, the candidates' token lengths); the
policy (`decide`) is a pure host function: numbers in, a decision out. The guard stage
(srlm_jax/pipeline/stages/guard.py) reads and writes the files.

Axes: P prompts, N candidates per prompt, R = P * N candidate rows (prompt-major).

A decision is one of ACTIONS: 'continue'; 'warn' (recorded only); 'rollback' (the next
iteration starts from the best model kept so far, by agreement with people); 'stop' (no
further iteration). When several rules trigger, the most severe action wins.
"""

import dataclasses
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

ACTIONS = ('continue', 'warn', 'rollback', 'stop')  # least to most severe
RULE_ACTIONS = ('off', 'warn', 'rollback', 'stop')  # what a rule does when it triggers


@jax.jit
def score_length_correlation(scores_R: jax.Array, lengths_R: jax.Array) -> jax.Array:
  """Returns the Pearson correlation of score and length over rows with a score (NaN: none).

  NaN scores (no valid judgment) are left out; fewer than two rows or a constant column give
  NaN.
  """
  valid_R = ~jnp.isnan(scores_R)
  n = valid_R.sum()
  s = jnp.where(valid_R, scores_R, 0.0).astype(jnp.float32)
  x = jnp.where(valid_R, lengths_R, 0).astype(jnp.float32)
  ms, mx = s.sum() / jnp.maximum(n, 1), x.sum() / jnp.maximum(n, 1)
  ds, dx = jnp.where(valid_R, s - ms, 0.0), jnp.where(valid_R, x - mx, 0.0)
  den = jnp.sqrt((ds * ds).sum() * (dx * dx).sum())
  return jnp.where((n >= 2) & (den > 0), (ds * dx).sum() / jnp.where(den > 0, den, 1.0),
                   jnp.nan)


@jax.jit
def judge_agreement(self_PxN: jax.Array, ref_PxN: jax.Array) -> tuple:
  """Returns (agreements, count): how often the reference judge orders two candidates of one
  prompt as the self-judge does.

  Counted: every pair i < j of a prompt's candidates that both judges scored and the self-judge
  does not tie (a tie never makes a DPO pair). Agreement 1 when the reference orders them the
  same way, 0.5 when it ties them, 0 when it orders them the other way.
  """
  ds_PxNxN = self_PxN[:, :, None] - self_PxN[:, None, :]
  dr_PxNxN = ref_PxN[:, :, None] - ref_PxN[:, None, :]
  n = self_PxN.shape[1]
  upper_1xNxN = jnp.triu(jnp.ones((n, n), bool), k=1)[None]
  counted = upper_1xNxN & ~jnp.isnan(ds_PxNxN) & ~jnp.isnan(dr_PxNxN) & (ds_PxNxN != 0)
  same = jnp.where(dr_PxNxN == 0, 0.5, (jnp.sign(ds_PxNxN) == jnp.sign(dr_PxNxN)) * 1.0)
  return jnp.where(counted, same, 0.0).sum(), counted.sum()


@jax.jit
def chosen_agreement(ref_PxN: jax.Array, chosen_P: jax.Array, rejected_P: jax.Array,
                     has_pair_P: jax.Array) -> tuple:
  """Returns (agreements, count) of the reference judge with the DPO pairs: 1 when it scores
  the chosen candidate above the rejected one, 0.5 on a tie, 0 below (NaN scores: uncounted)."""
  rows = jnp.arange(ref_PxN.shape[0])
  c, r = ref_PxN[rows, chosen_P], ref_PxN[rows, rejected_P]
  counted = has_pair_P & ~jnp.isnan(c) & ~jnp.isnan(r)
  same = jnp.where(c == r, 0.5, (c > r) * 1.0)
  return jnp.where(counted, same, 0.0).sum(), counted.sum()


def label_agreement(labels: Sequence[dict]) -> tuple[float, int]:
  """Returns (agreements, count) of the self-judge with human labels: 1 when the person chose
  the response the judge scored higher, 0.5 for the person's tie, 0 otherwise."""
  total = 0.0
  for label in labels:
    total += 0.5 if label['choice'] == 'tie' else float(label['choice'] == label['judge_choice'])
  return total, len(labels)


def pooled(parts: Sequence[tuple]) -> Optional[float]:
  """Returns sum(value * count) / sum(count) of (value, count) parts (None when no count)."""
  parts = [(v, c) for v, c in parts if v is not None and c]
  count = sum(c for _, c in parts)
  return sum(v * c for v, c in parts) / count if count else None


@dataclasses.dataclass(frozen=True)
class Policy:
  """When the guard acts, and how (config `guard.*`)."""
  max_human_drop: float = 0.1  # agreement with people may fall this much below the best kept
  max_disagreement: float = 0.5  # self vs frozen judge: disagreement above this triggers
  max_length_growth: float = 0.5  # mean candidate length may grow this fraction per iteration
  on_human_drop: str = 'rollback'
  on_disagreement: str = 'rollback'
  on_length_growth: str = 'stop'

  def __post_init__(self):
    for name in ('on_human_drop', 'on_disagreement', 'on_length_growth'):
      if getattr(self, name) not in RULE_ACTIONS:
        raise ValueError(f'guard.{name}={getattr(self, name)!r}: expected one of {RULE_ACTIONS}')


def policy_from_config(guard_config) -> Policy:
  """Returns the Policy of a config's `guard` block."""
  return Policy(**{f.name: guard_config[f.name] for f in dataclasses.fields(Policy)})


def _kept(history: Sequence[dict]) -> list:
  return [h for h in history if h['decision']['action'] in ('continue', 'warn')]


def best_kept(history: Sequence[dict]) -> Optional[dict]:
  """Returns the kept record whose model agrees best with people (latest on ties; the latest
  kept one when none was measured against people), or None when none was kept."""
  kept = _kept(history)
  measured = [h for h in kept if h['measured'].get('human_agreement') is not None]
  if measured:
    return max(reversed(measured), key=lambda h: h['measured']['human_agreement'])
  return kept[-1] if kept else None


def decide(measured: dict, history: Sequence[dict], policy: Policy) -> dict:
  """Returns the decision on this iteration's model: {action, triggered, baselines, rollback_to}.

  measured: {'human_agreement', 'disagreement', 'mean_length'} (None: not measured) and
  'start_model' (the params this iteration started from; '' for M0); optionally
  'heldout_agreement' and 'start_heldout_agreement' (the run's starting model on the same
  held-out pairs). history: the earlier iterations' guard records ({'iteration', 'model',
  'measured', 'decision'}), in order. Baselines: the best agreement with people among kept
  iterations (none kept: the starting model's held-out agreement, against this model's), and
  the mean length of the latest kept one; a rule without a baseline or a measurement does not
  trigger.
  """
  kept = _kept(history)
  best_human = max([h['measured']['human_agreement'] for h in kept
                    if h['measured'].get('human_agreement') is not None], default=None)
  last_length = next((h['measured']['mean_length'] for h in reversed(kept)
                      if h['measured'].get('mean_length')), None)
  human, disagreement = measured.get('human_agreement'), measured.get('disagreement')
  length = measured.get('mean_length')
  checks = []
  start, heldout = measured.get('start_heldout_agreement'), measured.get('heldout_agreement')
  if human is not None and best_human is not None:
    checks.append(('human_drop', best_human - human, policy.max_human_drop,
                   policy.on_human_drop, best_human))
  elif start is not None and heldout is not None:  # nothing kept yet: the starting model's
    checks.append(('human_drop', start - heldout, policy.max_human_drop,  # held-out pairs
                   policy.on_human_drop, start))
  if disagreement is not None and not math.isnan(disagreement):
    checks.append(('disagreement', disagreement, policy.max_disagreement,
                   policy.on_disagreement, None))
  if length is not None and last_length:
    checks.append(('length_growth', length / last_length - 1.0, policy.max_length_growth,
                   policy.on_length_growth, last_length))
  triggered = [{'rule': rule, 'value': round(float(value), 6), 'threshold': threshold,
                'baseline': baseline, 'action': action}
               for rule, value, threshold, action, baseline in checks
               if action != 'off' and value > threshold]
  action = max([t['action'] for t in triggered] + ['continue'], key=ACTIONS.index)
  out = {'action': action, 'triggered': triggered,
         'baselines': {'human_agreement': best_human, 'mean_length': last_length,
                       'start_heldout_agreement': start},
         'checked': [rule for rule, *_ in checks]}
  if action == 'rollback':
    best = best_kept(history)
    out['rollback_to'] = best['model'] if best is not None else measured['start_model']
    out['rollback_iteration'] = best['iteration'] if best is not None else None
  return out


def _fmt(x) -> str:
  return 'n/a' if x is None or (isinstance(x, float) and math.isnan(x)) else (
      f'{x:.3f}' if isinstance(x, float) else str(x))


def markdown_lines(record: dict) -> list:
  """Returns report.md table rows of one iteration's guard record (guard.json)."""
  m, d = record['measured'], record['decision']
  lines = [
      f"| guard: agreement with people (held-out {_fmt(m['heldout_agreement'])} on "
      f"{m['heldout_pairs']} pairs, the starting model "
      f"{_fmt(m.get('start_heldout_agreement'))}; review {_fmt(m['review_agreement'])} on "
      f"{m['review_labels']} labels) | {_fmt(m['human_agreement'])} |",
      f"| guard: self vs frozen {record['reference']} judge, disagreement (candidate pairs / "
      f"DPO pairs) | {_fmt(m['disagreement'])} / {_fmt(m['pair_disagreement'])} |",
      f"| guard: mean candidate length (tokens) / score-length correlation | "
      f"{_fmt(m['mean_length'])} / {_fmt(m['score_length_correlation'])} |",
  ]
  why = '; '.join(f"{t['rule']} {t['value']:.3f} > {t['threshold']} -> {t['action']}"
                  for t in d['triggered']) or 'no rule triggered'
  target = f" (next iteration starts from {d['rollback_to'] or 'M0'})" if 'rollback_to' in d else ''
  lines.append(f"| guard decision | **{d['action']}**{target}: {why} |")
  return lines
