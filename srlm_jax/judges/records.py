"""Judgment records (JSONL, for audit) from one judging call, and what they say of the judge.

One record per judged (prompt, candidate): its K judgment texts, scores (None where invalid),
validity, mean, verdict kinds and forced-verdict details (and, with a meta filter, which
judgments were kept and their meta scores). `judgment_stats` summarises records
for the judgments stage's DONE info and the report.
"""

from typing import Sequence

import numpy as np

from srlm_jax.judges import base
from srlm_jax.judges import judging


def judgment_records(items: Sequence[dict], result: judging.Judgments, judge_name: str,
                     truncated: bool = False) -> list:
  """Returns per item (a dict of the fields to keep: id, candidate, prompt, response, ...) its
  record with the K judgments of row i of `result`; `truncated` adds judge_prompt_truncated."""
  records = []
  for i, item in enumerate(items):
    records.append(dict(
        item, judge=judge_name, judgments=result.texts[i],
        scores=[base.score_json(s) for s in result.scores_RxK[i]],
        valid=[bool(v) for v in result.valid_RxK[i]],
        mean=base.score_json(result.mean_R[i]), n_valid=int(result.n_valid_R[i]),
        verdicts=['forced' if f else 'sampled' for f in result.forced_RxK[i]],
        forced_argmax=[base.score_json(a) for a in result.argmax_RxK[i]],
        score_mass=[base.score_json(m) for m in result.mass_RxK[i]],
        **({'kept': [bool(k) for k in result.kept_RxK[i]],
            'meta': [base.score_json(m) for m in result.meta_RxK[i]]}
           if result.meta_RxK is not None and not np.isnan(result.meta_RxK[i]).all() else {}),
        **({'judge_prompt_truncated': int(result.truncated_R[i])} if truncated else {})))
  return records


def judgment_stats(judgment_records: Sequence[dict]) -> dict:
  """Returns how well the judgments separate candidates: valid and forced fractions, the tie
  rate, and within- against between-candidate score variance.

  tie_rate: over every two candidates of one prompt that both have a mean score, the fraction
  whose means are equal (a tie never pairs). within_candidate_var: the mean over candidates
  with two or more valid scores of their sample variance; between_candidate_var: the sample
  variance of the candidates' mean scores. Judgments that are pure noise give between about
  within / k; a judge that tells candidates apart gives between well above it.
  """
  # A judgment the meta filter dropped is not valid (it does not count) but has its score.
  valid = [v or s is not None for r in judgment_records for v, s in zip(r['valid'], r['scores'])]
  kept = [k for r in judgment_records for k in r.get('kept', ())]
  verdicts = [v for r in judgment_records
              for v in r.get('verdicts', ['sampled'] * len(r['valid']))]
  masses = [m for r in judgment_records for m in r.get('score_mass', []) if m is not None]
  within = [np.var(s, ddof=1) for s in (
      [x for x, v in zip(r['scores'], r['valid']) if v and x is not None]
      for r in judgment_records) if len(s) >= 2]
  means = [r['mean'] for r in judgment_records if r['mean'] is not None]
  by_prompt = {}
  for r in judgment_records:
    if r['mean'] is not None:
      by_prompt.setdefault(r['id'], []).append(r['mean'])
  two = [(a, b) for ms in by_prompt.values() for k, a in enumerate(ms) for b in ms[k + 1:]]
  rnd = lambda x: float(f'{x:.4g}')  # 4 significant digits: forced scores differ by little
  return {
      'judgments': len(valid),
      'valid_fraction': rnd(np.mean(valid)) if valid else None,
      'forced_fraction': rnd(np.mean([v == 'forced' for v in verdicts])) if verdicts else None,
      'forced_score_mass': rnd(np.mean(masses)) if masses else None,
      **({'meta_kept_fraction': rnd(np.mean(kept))} if kept else {}),
      'tie_rate': rnd(np.mean([a == b for a, b in two])) if two else None,
      'within_candidate_var': rnd(np.mean(within)) if within else None,
      'between_candidate_var': rnd(np.var(means, ddof=1)) if len(means) >= 2 else None,
  }


def score_histogram(judgment_records: Sequence[dict], values: Sequence[int]) -> dict:
  """Returns counts of valid judgment scores by nearest integer of the scale `values` (a judge's
  score_values, consecutive integers), plus invalid ones."""
  hist = {str(v): 0 for v in values}
  invalid = 0
  for j in judgment_records:
    for s, v in zip(j['scores'], j['valid']):
      if v and s is not None:
        hist[str(min(max(int(round(s)), values[0]), values[-1]))] += 1
      else:
        invalid += 1
  hist['invalid'] = invalid
  return hist
