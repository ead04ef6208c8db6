"""The review sample, human label records, their import into a run, and EFT from them.

A review item is one DPO pair of iteration t shown as responses A and B (their order drawn
per item, so the judge's choice is not always on one side), with the self-judge's scores and
reasons and the frozen reference judge's scores. A label is a person's verdict on an item:

  {pair_id, prompt, chosen, rejected, choice: 'a'|'b'|'tie', reviewer, time, judge_choice,
   iteration}

chosen is the response the person preferred (A on a tie); judge_choice is the side the
self-judge scored higher. A run reads the labels of iteration t from
<workdir>/human_labels/iter_<t>.jsonl.
"""

import datetime
import json
import os
from typing import Optional, Sequence

import numpy as np

from srlm_jax import data_io

LABELS_DIR = 'human_labels'
CHOICES = ('a', 'b', 'tie')
_TEXT_FIELDS = ('pair_id', 'prompt', 'chosen', 'rejected', 'reviewer', 'time')


def labels_path(workdir: str, t: int) -> str:
  """Returns the file holding the labels of iteration t's pairs in a run's workdir."""
  return os.path.join(workdir, LABELS_DIR, f'iter_{t}.jsonl')


def build_sample(pair_records: Sequence[dict], judgment_records: Sequence[dict],
                 reference: dict, t: int, n: int, seed: int = 0) -> list:
  """Returns up to n review items of iteration t's pairs, disagreements first.

  reference maps (prompt id, candidate index) to the frozen judge's mean score (None: no
  valid judgment). A pair the frozen judge orders the other way is a disagreement; those come
  first, the largest reversal first, then ties of the frozen judge, then agreements (smallest
  margin first).
  """
  reasons = {(j['id'], j['candidate']): j['judgments'] for j in judgment_records}
  items = []
  for p in pair_records:
    c, r = (p['id'], p['chosen_index']), (p['id'], p['rejected_index'])
    ref_c, ref_r = reference.get(c), reference.get(r)
    margin = None if ref_c is None or ref_r is None else ref_c - ref_r
    items.append((p, margin, ref_c, ref_r))
  # disagreements (margin < 0, most negative first), frozen ties, agreements, unscored last
  items.sort(key=lambda x: (3, 0) if x[1] is None else (0 if x[1] < 0 else 1 if x[1] == 0
                                                         else 2, x[1]))
  out = []
  for k, (p, margin, ref_c, ref_r) in enumerate(items[:n]):
    flip = bool(np.random.default_rng([seed, t, k]).integers(2))
    sides = {'a': ('rejected', ref_r), 'b': ('chosen', ref_c)} if flip else {
        'a': ('chosen', ref_c), 'b': ('rejected', ref_r)}
    item = {'pair_id': f'iter_{t}/{p["id"]}', 'iteration': t, 'id': p['id'],
            'prompt': p['prompt'], 'judge_choice': 'b' if flip else 'a',
            'disagreement': margin is not None and margin < 0}
    for side, (which, ref) in sides.items():
      item[side] = p[which]
      item[f'{side}_self_score'] = p[f'{which}_score']
      item[f'{side}_reference_score'] = ref
      item[f'{side}_reasons'] = reasons.get((p['id'], p[f'{which}_index']), [])
    out.append(item)
  return out


def now() -> str:
  """Returns the current UTC time, ISO 8601 to the second (a label's time)."""
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def label_record(item: dict, choice: str, reviewer: str, time: Optional[str] = None) -> dict:
  """Returns the label of a review item: the person's choice of A, B or a tie."""
  if choice not in CHOICES:
    raise ValueError(f'label of {item.get("pair_id")!r}: choice {choice!r}, expected one of '
                     f'{CHOICES}')
  if not isinstance(reviewer, str) or not reviewer.strip():
    raise ValueError(f'label of {item.get("pair_id")!r}: a reviewer name is required')
  chosen, rejected = (item['b'], item['a']) if choice == 'b' else (item['a'], item['b'])
  return {'pair_id': item['pair_id'], 'prompt': item['prompt'], 'chosen': chosen,
          'rejected': rejected, 'choice': choice, 'reviewer': reviewer.strip(),
          'time': time or now(), 'judge_choice': item['judge_choice'],
          'iteration': item['iteration']}


def check_label(obj, where: str) -> dict:
  """Returns obj when it is a valid label record; else ValueError naming `where` and the field."""
  if not isinstance(obj, dict):
    raise ValueError(f'{where}: expected a JSON object, got {type(obj).__name__}')
  for field in _TEXT_FIELDS:
    if not isinstance(obj.get(field), str) or not obj[field].strip():
      raise ValueError(f'{where}: field {field!r} must be a non-empty string')
  if obj.get('choice') not in CHOICES:
    raise ValueError(f'{where}: field "choice" is {obj.get("choice")!r}, expected one of '
                     f'{CHOICES}')
  if obj.get('judge_choice') not in ('a', 'b'):
    raise ValueError(f'{where}: field "judge_choice" is {obj.get("judge_choice")!r}, expected '
                     "'a' or 'b' (the side the self-judge scored higher)")
  return obj


def read_labels(path: str) -> list:
  """Returns the label records of a JSONL file ([] when it does not exist); a bad line raises
  naming file:line and the field."""
  if not os.path.exists(path):
    return []
  return [check_label(obj, f'{where}:{n}')
          for where, n, obj in data_io.read_jsonl(path, allow_empty=True)]


def write_labels(path: str, labels: Sequence[dict]) -> str:
  """Writes label records as JSONL atomically (a temp file, then a rename); returns path."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = f'{path}.tmp.{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    for label in labels:
      f.write(json.dumps(label, ensure_ascii=False) + '\n')
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return path


def merge(old: Sequence[dict], new: Sequence[dict]) -> list:
  """Returns old labels updated by new ones: one per pair_id, a later label replacing it."""
  out = {label['pair_id']: label for label in old}
  for label in new:
    out.pop(label['pair_id'], None)
    out[label['pair_id']] = label
  return list(out.values())


def import_labels(labels: Sequence[dict], workdir: str, t: int) -> str:
  """Adds labels of iteration t's pairs to the run in workdir; returns the run's labels file.

  A label for another iteration's pair (pair_id 'iter_<s>/...') is an error, so labels are
  never counted against the wrong iteration's judge.
  """
  for k, label in enumerate(labels):
    check_label(label, f'label {k + 1}')
    if not label['pair_id'].startswith(f'iter_{t}/'):
      raise ValueError(f'label {k + 1}: pair_id {label["pair_id"]!r} is not a pair of '
                       f'iteration {t} (iter_{t}/<id>)')
  path = labels_path(workdir, t)
  return write_labels(path, merge(read_labels(path), labels))


def eft_records(labels: Sequence[dict], judge) -> list:
  """Returns EFT (prompt, response, judgment) triples whose targets follow the person's choice.

  The preferred response gets the judge's score for human rank 0, the other the score for
  rank 1 (judge.rank_score, as the OASST EFT builder scores ranked replies), in that order
  per label; a tie says nothing about either response's quality and adds no example.
  """
  out = []
  for label in labels:
    if label['choice'] == 'tie':
      continue
    out.append((label['prompt'], label['chosen'], judge.eft_judgment(judge.rank_score(0))))
    out.append((label['prompt'], label['rejected'], judge.eft_judgment(judge.rank_score(1))))
  return out


def sample_from_workdir(workdir: str, t: int, n: int, seed: Optional[int] = None) -> list:
  """Returns up to n review items of iteration t of a finished run in workdir.

  The frozen judge's scores come from the review stage's or the guard stage's arrays.npz
  (reference_scores_RxK; without either, no pair counts as a disagreement). seed (default:
  the run's config.json seed, as the review stage) draws the A/B sides.
  """
  from srlm_jax import judges  # pylint: disable=g-import-not-at-top
  from srlm_jax import store  # pylint: disable=g-import-not-at-top
  if seed is None:
    seed = int(data_io.read_json(os.path.join(workdir, 'config.json')).get('seed', 0))
  iter_dir = os.path.join(workdir, f'iter_{t}')
  cands = store.read_records(os.path.join(iter_dir, 'candidates', 'candidates.jsonl'))
  reference = {}
  for stage in ('review', 'guard'):
    path = os.path.join(iter_dir, stage, store.ARRAYS)
    arrays = store.load_arrays(path) if os.path.exists(path) else {}
    if 'reference_scores_RxK' in arrays:
      scores, valid = arrays['reference_scores_RxK'], arrays['reference_valid_RxK']
      mean_R = np.asarray(judges.mean_valid(scores, valid)[0])
      n_cand = len(mean_R) // max(1, len(cands))
      reference = {(r['id'], j): judges.score_json(mean_R[i * n_cand + j])
                   for i, r in enumerate(cands) for j in range(n_cand)}
      break
  return build_sample(
      store.read_records(os.path.join(iter_dir, 'pairs', 'pairs.jsonl')),
      store.read_records(os.path.join(iter_dir, 'judgments', 'judgments.jsonl')),
      reference, t, n, seed)
