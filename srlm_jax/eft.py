"""Model-written EFT data: a judge model's judgments of human-rated responses, kept when they
agree with the people (Self-Rewarding LMs, Yuan et al. 2024, section 2: the EFT targets are a
model's judgments, filtered by the human ranking).

Input groups (`groups_from_records` builds them from EFT or EFT-eval records):
  {'id', 'prompt', 'responses': [{'id', 'response', 'score', optional 'rank'}, ...]}
where `score` is the human label on the judge's scale (builders map OASST ranks and quality
labels there, data.py) and `rank` the human rank (0 = best) when the source has one.

`model_written` has a judge model write settings.k reasons-then-score judgments of every
response (sampled with the judge's rubric; verdict 'forced' or 'forced_always' give a
judgment without a verdict line the model's most likely score token), then keeps those that
agree with the human labels. Each judgment's *stated* score is the score its EFT target ends
with: the parsed verdict of a sampled judgment, the argmax score token of a forced one (the
target is then its reasons, the verdict prefix and that token: what the model was read after).

Agreement (`agree_GxNxK`), for judgment k of response n of group g with stated score s:
  * a group of two or more responses: the human order is h = -rank when every response of the
    group has a rank, else h = score. For every other response o of the group with h_o != h_n
    and at least one valid judgment, let m_o be the mean stated score of o's valid judgments.
    The judgment agrees iff s > m_o for every such o that people rank below n and s < m_o for
    every such o they rank above n (strict: equal scores do not order), and at least one such
    o exists;
  * a group of one response (the embedded eft_seed.jsonl: one human score per prompt):
    |s - score| <= tolerance (the default 0.5 asks for the human score itself on an integer
    scale).
  An invalid judgment never agrees. keep rate = kept / all judgments written.

Axis legend: G groups, N responses per group (padded), K judgments per response, R responses.
"""

import collections
import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from srlm_jax import distributed
from srlm_jax import judges
from srlm_jax.judges import forced as forced_lib

SOURCES = ('given', 'model')


def _normalize(text: str) -> str:
  return ' '.join(text.split()).casefold()


def groups_from_records(records: Sequence[dict], where: str = 'EFT records') -> list:
  """Returns EFT groups from EFT records {id, prompt, response, score[, rank]} (grouped by
  prompt, case and whitespace folded) or EFT-eval records {id, prompt, responses: [...]}."""
  groups, index = [], {}
  for i, r in enumerate(records, start=1):
    if 'responses' in r:
      groups.append({'id': str(r.get('id', f'g{i}')), 'prompt': r['prompt'],
                     'responses': [_response(x, f'{where}: record {i}') for x in r['responses']]})
      continue
    key = _normalize(r['prompt'])
    if key not in index:
      index[key] = len(groups)
      groups.append({'id': str(r.get('id', f'g{i}')), 'prompt': r['prompt'], 'responses': []})
    groups[index[key]]['responses'].append(_response(r, f'{where}: record {i}'))
  return groups


def _response(r: dict, where: str) -> dict:
  for field, kinds in (('response', str), ('score', (int, float))):
    if field not in r or isinstance(r[field], bool) or not isinstance(r[field], kinds):
      raise ValueError(f'{where}: model-written EFT needs field {field!r} '
                       f'({"a string" if kinds is str else "the human score, a number"}); '
                       f'got {r.get(field)!r:.60}')
  out = {'id': str(r.get('id', '')), 'response': r['response'], 'score': float(r['score'])}
  if r.get('rank') is not None:
    out['rank'] = int(r['rank'])
  return out


@functools.partial(jax.jit, static_argnames='tolerance')
def agree_GxNxK(stated_GxNxK: jax.Array, valid_GxNxK: jax.Array, human_GxN: jax.Array,
                score_GxN: jax.Array, present_GxN: jax.Array, *,
                tolerance: float = 0.5) -> jax.Array:
  """Returns bool [G, N, K]: which judgments agree with the human labels (module docstring).

  human_GxN orders a group's responses (higher = better), score_GxN is the human score (read
  for single-response groups), present_GxN marks real responses (not padding).
  """
  valid_GxNxK = valid_GxNxK & ~jnp.isnan(stated_GxNxK) & present_GxN[..., None]
  count_GxN = valid_GxNxK.sum(axis=-1)
  mean_GxN = (jnp.where(valid_GxNxK, stated_GxNxK, 0.0).sum(axis=-1)
              / jnp.maximum(count_GxN, 1))
  # Other response o of the same group, compared with response n: [G, N, O].
  order_GxNxO = jnp.sign(human_GxN[:, :, None] - human_GxN[:, None, :])
  comparable_GxNxO = (present_GxN[:, :, None] & present_GxN[:, None, :]
                      & (count_GxN > 0)[:, None, :] & (order_GxNxO != 0))
  diff_GxNxKxO = stated_GxNxK[..., None] - mean_GxN[:, None, None, :]
  ok_GxNxKxO = jnp.sign(diff_GxNxKxO) == order_GxNxO[:, :, None, :]
  ordered_GxNxK = (jnp.all(ok_GxNxKxO | ~comparable_GxNxO[:, :, None, :], axis=-1)
                   & jnp.any(comparable_GxNxO, axis=-1)[..., None])
  single_G = present_GxN.sum(axis=-1) == 1
  close_GxNxK = jnp.abs(stated_GxNxK - score_GxN[..., None]) <= tolerance
  return valid_GxNxK & jnp.where(single_G[:, None, None], close_GxNxK, ordered_GxNxK)


def layout(groups: Sequence[dict]) -> dict:
  """Returns the groups' host arrays: row_GxN (flat response index, -1 padding), human_GxN,
  score_GxN, present_GxN."""
  g, n = len(groups), max([len(x['responses']) for x in groups], default=1)
  row = np.full((g, max(n, 1)), -1, np.int32)
  human = np.zeros(row.shape, np.float32)
  score = np.zeros(row.shape, np.float32)
  r = 0
  for i, group in enumerate(groups):
    ranked = all('rank' in x for x in group['responses'])
    for j, x in enumerate(group['responses']):
      row[i, j], score[i, j] = r, x['score']
      human[i, j] = -x['rank'] if ranked else x['score']
      r += 1
  return {'row_GxN': row, 'human_GxN': human, 'score_GxN': score, 'present_GxN': row >= 0}


@jax.jit
def _stated(scores: judges.JudgeScores) -> jax.Array:
  """Returns [R, K] the score each judgment's EFT target states (argmax where forced)."""
  return jnp.where(scores.forced_RxK, scores.argmax_RxK, scores.scores_RxK)


@jax.jit
def _gather(x_RxK: jax.Array, row_GxN: jax.Array, fill) -> jax.Array:
  return jnp.where((row_GxN >= 0)[..., None], x_RxK[jnp.maximum(row_GxN, 0)], fill)


def reasons_text(text: str) -> str:
  """Returns a judgment's text before its final line (where a forced verdict was read)."""
  end = len(text.rstrip(forced_lib.BLANK))
  return text[:max(text.rfind('\n', 0, end), 0)]


def target_text(judge: Any, text: str, forced: bool, had_verdict: bool, stated: float,
                prefix: str) -> str:
  """Returns a judgment's EFT target: the sampled text, or for a forced verdict its reasons,
  the verdict prefix and the stated (argmax) score."""
  if not forced:
    return text
  body = reasons_text(text) if had_verdict else text
  return f'{body.rstrip()}{prefix}{stated:g}' if body.strip() else judge.verdict_line(stated)


def model_written(model: Any, judge: Any, groups: Sequence[dict], settings: Any, *,
                  seed: int = 0, tolerance: float = 0.5, progress: Any = True,
                  truncate: bool = False) -> tuple[list, dict]:
  """Returns (one record per judgment written, a report) of `model` judging every response of
  the groups settings.k times as judge `judge` (a Judge or a registered name).

  Records: {id, group, prompt, response, judgment (the EFT target), score (stated),
  human_score, valid, verdict, kept}. Report: {keep_rate, kept, judgments, valid, responses,
  responses_kept, groups, tolerance, verdict}.
  """
  judge = judges.get(judge) if isinstance(judge, str) else judge
  flat = [(g, x) for g in groups for x in g['responses']]
  texts, scores = judges.judge(
      model, judge, [g['prompt'] for g, _ in flat], [x['response'] for _, x in flat],
      settings, seed, progress=progress, truncate=truncate,
      where=[f'EFT response {x["id"] or i} of group {g["id"]}' for i, (g, x) in enumerate(flat)])
  records = []
  if flat:
    lay = layout(groups)
    row = jax.device_put(lay['row_GxN'])
    stated_RxK = _stated(scores)
    keep = agree_GxNxK(_gather(stated_RxK, row, jnp.nan), _gather(scores.valid_RxK, row, False),
                       jax.device_put(lay['human_GxN']), jax.device_put(lay['score_GxN']),
                       jax.device_put(lay['present_GxN']), tolerance=float(tolerance))
    host = distributed.to_host({'keep': keep, 'stated': stated_RxK, 'valid': scores.valid_RxK,
                                'forced': scores.forced_RxK})
    keep_RxK = np.zeros(host['stated'].shape, bool)
    for gi, ni in zip(*np.nonzero(lay['present_GxN'])):
      keep_RxK[lay['row_GxN'][gi, ni]] = host['keep'][gi, ni]
    prefix = (judge.verdict_prefix if getattr(settings, 'verdict_prefix', None) is None
              else settings.verdict_prefix)
    for r, (g, x) in enumerate(flat):
      for k, text in enumerate(texts[r]):
        stated, valid = host['stated'][r, k], bool(host['valid'][r, k])
        forced = bool(host['forced'][r, k])
        judgment = (target_text(judge, text, forced, judge.parse_host(text) is not None,
                                float(stated), prefix) if valid else text)
        # A target the judge cannot read back is no EFT example (a stated score off the scale).
        kept = bool(keep_RxK[r, k]) and judge.parse_host(judgment) is not None
        records.append({'id': f'{x["id"] or r}:{k}', 'group': g['id'], 'prompt': g['prompt'],
                        'response': x['response'], 'judgment': judgment,
                        'score': judges.score_json(stated), 'human_score': x['score'],
                        'valid': valid, 'verdict': 'forced' if forced else 'sampled',
                        'kept': kept})
  return records, report(records, len(groups), tolerance, settings.verdict)


def report(records: Sequence[dict], num_groups: int, tolerance: float, verdict: str) -> dict:
  """Returns the keep rate and counts of model-written EFT records (keep_rate first)."""
  kept = sum(r['kept'] for r in records)
  responses = collections.Counter((r['group'], r['response']) for r in records)
  covered = {(r['group'], r['response']) for r in records if r['kept']}
  return {'keep_rate': round(kept / len(records), 4) if records else 0.0, 'kept': kept,
          'judgments': len(records), 'valid': sum(r['valid'] for r in records),
          'responses': len(responses), 'responses_kept': len(covered), 'groups': num_groups,
          'tolerance': float(tolerance), 'verdict': verdict}


def kept_examples(records: Sequence[dict]) -> list:
  """Returns the kept records as EFT seed tuples (prompt, response, judgment)."""
  return [(r['prompt'], r['response'], r['judgment']) for r in records if r['kept']]
