"""Judge agreement with human rankings: the judge model's scores of human-ranked responses.

`load_judge_groups` reads a pairs or rankings file, `judge_groups` has the judge score each
distinct response k times (resumable: shards of srlm_jax/store.py per judge key), and
`evaluate_judge` hands the scores to metrics.judge_agreement.
"""

import collections
import hashlib
import json
import logging
import os
from typing import Any, Optional, Sequence

import numpy as np

from srlm_jax import data as data_lib
from srlm_jax import distributed
from srlm_jax import judges as judge_lib
from srlm_jax import store
from srlm_jax import workdir
from srlm_jax.judges import spct
from srlm_jax.evaluate.metrics import all_pairs
from srlm_jax.evaluate.metrics import judge_agreement

def load_judge_groups(path: str, max_pairs: Optional[int] = None,
                      subset_seed: Optional[int] = None) -> list[dict]:
  """Returns per prompt {'id', 'prompt', 'responses', 'ranks', 'pairs'} of a pairs/rankings file.

  A line is a human pair {"prompt", "chosen", "rejected"} (optional "prompt_id", "chosen_rank",
  "rejected_rank") or a ranking {"prompt", "responses": [{"response", "rank"}, ...]}. Pairs are
  grouped by prompt_id (else prompt text), responses told apart by chosen_id / rejected_id (else
  text); responses without ranks are ranked by how many of
  their prompt's pairs they lose. `max_pairs` keeps whole prompts in file order, skipping any
  that would take the total past max_pairs (the first prompt is always kept); with
  `subset_seed` the prompts are taken in a random order of that seed instead (a random subset),
  and the kept ones are returned in file order.
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
  ordered = list(groups.values())
  if subset_seed is not None:
    ordered = [ordered[i] for i in np.random.default_rng(subset_seed).permutation(len(ordered))]
  for g in ordered:
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
  if subset_seed is not None:
    position = {id(g): i for i, g in enumerate(groups.values())}
    out.sort(key=lambda g: position[id(g)])
  return out


def judge_groups(model: Any, groups: Sequence[dict], settings: judge_lib.JudgeSettings, *,
                 seed: int = 0, progress: bool = True, cache_dir: Optional[str] = None,
                 chunk: Optional[int] = None, judge_id: Optional[str] = None,
                 together: bool = False) -> tuple[list, list]:
  """Returns (per group its judge scores, per-response judgment records); each response once.

  Responses are judged longest first in chunks of `chunk` (default: the largest power of two
  <= 64 / k, one unpadded device batch of the sampler). With `cache_dir`, each chunk is a
  shard of the run's one resume mechanism (srlm_jax/store.py: written atomically with its
  digests, read back on a rerun) under cache_dir/<key digest>/, so an interrupted run resumes.
  The key (`cache_key`, in that folder's key.json) is everything that decides a judgment's
  content: the judge (`judge_id`, default model.path, and a digest of its weights), the
  template, the sampling settings and the seed; shards under any other key are never read.
  `together` (SPCT): each question's responses are judged in one request per judgment
  (judges/spct.py judge_together, shown in a seeded order per sample; chunks of questions).
  """
  tag = cache_key(model, settings, seed, judge_id, together)
  flat = [(gi, ri) for gi, g in enumerate(groups) for ri in range(len(g['responses']))]
  if together:  # one item per question: its responses are judged in one request
    order = sorted(range(len(groups)), key=lambda gi: (
        -len(groups[gi]['prompt']) - sum(len(r) for r in groups[gi]['responses'])))
  else:
    order = sorted(flat, key=lambda f: -len(groups[f[0]]['prompt'])
                   - len(groups[f[0]]['responses'][f[1]]))
  chunk = chunk or 1 << (max(1, 64 // settings.k).bit_length() - 1)
  tag['chunk'] = chunk  # each chunk's sampling seed is offset by its start

  def records(result, part):
    # The response's score: its valid judgments' mean or sum (settings.aggregate), on the device.
    value_R, _ = distributed.to_host(judge_lib.aggregate(result.scores_RxK, result.valid_RxK,
                                                         settings.aggregate))
    optional = lambda name, key, f, conv: ({key: [conv(x) for x in getattr(result, name)[f]]}
                                      if getattr(result, name, None) is not None else {})
    return [{'prompt_id': groups[gi]['id'], 'response_index': ri,
             'human_rank': groups[gi]['ranks'][ri], 'judgments': result.texts[f],
             'scores': [judge_lib.score_json(x) for x in result.scores_RxK[f]],
             'valid': [bool(x) for x in result.valid_RxK[f]],
             **optional('kept_RxK', 'kept', f, bool),
             **optional('meta_RxK', 'meta', f, judge_lib.score_json),
             'mean': judge_lib.score_json(result.mean_R[f]),
             'value': judge_lib.score_json(value_R[f]),
             'settings': tag} for f, (gi, ri) in enumerate(part)]

  def judge_chunk(part, shard):
    start = shard * chunk  # the chunk's seed offset: the same with or without a cache
    if not together:
      result = judge_lib.judge_responses(
          model, [groups[gi]['prompt'] for gi, _ in part],
          [groups[gi]['responses'][ri] for gi, ri in part], settings=settings,
          seed=seed + start, progress=progress)
      logging.info('judged %d of %d responses', start + len(part), len(order))
      return records(result, part), {}
    out = []
    for n in sorted({len(groups[gi]['responses']) for gi in part}):  # one call per N
      bucket = [gi for gi in part if len(groups[gi]['responses']) == n]
      texts, scores = spct.judge_together(
          model, [groups[gi]['prompt'] for gi in bucket],
          [groups[gi]['responses'] for gi in bucket], settings,
          seed=(seed + start) * 16 + n, progress=progress, truncate=True)
      out += records(judge_lib.to_host(texts, scores),
                     [(gi, ri) for gi in bucket for ri in range(n)])
    logging.info('judged %d of %d questions', start + len(part), len(order))
    return out, {}

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
    scores[gi][ri] = np.nan if r['value'] is None else r['value']
  return scores, records


def cache_key(model: Any, settings: judge_lib.JudgeSettings, seed: int,
              judge_id: Optional[str] = None, together: bool = False) -> dict:
  """Returns what decides a judgment's content: judge, weights digest, settings, seed."""
  return {'judge': judge_id if judge_id is not None else str(getattr(model, 'path', '')),
          'weights': workdir.params_digest(model.params)[:32],
          'k': settings.k, 'temperature': settings.temperature, 'top_p': settings.top_p,
          'max_new_tokens': settings.max_new_tokens,
          'template': hashlib.sha256(repr(settings.template).encode()).hexdigest()[:16],
          'kind': settings.kind,
          'verdict': settings.verdict, 'verdict_prefix': settings.verdict_prefix,
          'aggregate': settings.aggregate, 'meta_filter': settings.meta_filter,
          'meta_kind': settings.meta_kind if settings.meta_filter else None,
          'together': together, 'seed': seed}


def evaluate_judge(model: Any, groups: Sequence[dict], settings: judge_lib.JudgeSettings,
                   *, n_boot: int = 1000, seed: int = 0, progress: bool = True,
                   cache_dir: Optional[str] = None, judge_id: Optional[str] = None,
                   together: bool = False, chunk: Optional[int] = None) -> tuple[dict, list]:
  """Returns (the judge-agreement metrics, the per-response judgment records)."""
  scores, records = judge_groups(model, groups, settings, seed=seed, progress=progress,
                                 cache_dir=cache_dir, judge_id=judge_id, together=together,
                                 chunk=chunk)
  best = judge_lib.get(settings.kind).score_values[-1]
  # A perfect vote: every counted judgment gave the top score.
  top = lambda k: best * k if settings.aggregate == 'sum' else best
  metrics = judge_agreement([(g['ranks'], s, g['pairs']) for g, s in zip(groups, scores)],
                            n_boot=n_boot, seed=seed, top=top(settings.meta_filter or settings.k))
  if settings.meta_filter:
    # The same judgments voted without the filter (every judgment with a score): the meta RM
    # only chooses among judgments already sampled, so one run measures both.
    unfiltered = unfiltered_scores(groups, records, settings.aggregate)
    metrics['without_meta_filter'] = judge_agreement(
        [(g['ranks'], s, g['pairs']) for g, s in zip(groups, unfiltered)],
        n_boot=n_boot, seed=seed, top=top(settings.k))
  # Judgments with a score of their own (sampled or forced), before any meta filter.
  valid = [v is not None for r in records for v in r['scores']]
  metrics['counts']['valid_judgment_fraction'] = float(np.mean(valid)) if valid else float('nan')
  return metrics, records


def unfiltered_scores(groups: Sequence[dict], records: Sequence[dict],
                      how: str) -> list[np.ndarray]:
  """Returns per group each response's vote over all of its judgments with a score (the mean or
  sum, `how`), ignoring a meta filter's choice; NaN where none has a score."""
  by_key = {(r['prompt_id'], r['response_index']): r for r in records}
  out = []
  for g in groups:
    values = []
    for ri in range(len(g['responses'])):
      scored = [x for x in by_key[(g['id'], ri)]['scores'] if x is not None]
      values.append(np.nan if not scored else
                    float(np.sum(scored, dtype=np.float32)) / (len(scored) if how == 'mean' else 1))
    out.append(np.asarray(values))
  return out
