"""Seed and evaluation data from Open Assistant (OASST) files, and evaluation prompt sets.

Inputs are local files (nothing is downloaded), in two OASST forms:
  * message trees: OASST1's flat message table, one message per line with `message_id`,
    `parent_id`, `text`, `role`, `lang`, `rank`, `deleted`, `review_result` (for example
    `oasst1/en-validation.jsonl`); first turns are root prompts and their direct replies;
  * flat first turns: `{"question", "answer", "rank"}` rows, or
    `{"prompt_id", "prompt_text", "response_id", "response_text", "language", "quality_score"}`.
Outputs are JSONL records:
  IFT          {"id", "prompt", "response"}
  EFT          {"id", "prompt", "response", "judgment", "score"}  (the judge task as SFT data)
  EFT eval     {"id", "prompt", "responses": [{"id", "response", "rank", "score"}, ...]}
  human pairs  {"id", "prompt", "chosen", "rejected", ...}  (the human-preferred = chosen)

EFT target scores come from human labels, since there are no judge-model outputs to keep or
drop as the paper did (it kept the judgments of a model that agreed with the human ranking):
  * from a rank (0 = the best reply of its prompt): score = max(1, 5 - rank), so ranks 0, 1, 2, 3
    give 5, 4, 3, 2 and lower ranks 1; a ranked human reply is never scored 0 ("irrelevant").
    The number of ranked siblings is not used, as the flat rank file does not keep it;
  * from `quality_score` q in [0, 1] (OASST's mean "quality" label): score = floor(5 q + 0.5),
    so [0, .1) -> 0, [.1, .3) -> 1, ..., [.9, 1] -> 5; a null q drops the reply.
Any decreasing map of the rank agrees with the human ranking, which is what the paper asked of
its EFT judgments. `judgment_text(score)` is the templated justification: it walks the additive
rubric's points (srlm_jax.judges.additive) and ends with the line `Score: N`. The scores and
judgments follow a judge (`judge=`, default the additive one): its scale and verdict line.

A record of the wrong shape (missing field, wrong type) raises ValueError naming `file:line`;
records that are well formed but filtered out (deleted, failed review, not English, unranked,
duplicates, held-out prompts) are counted per reason in each builder's report and logged.
"""

import collections
import json
import logging
import math
import os
from typing import Iterable, Optional, Sequence

from srlm_jax import judges
from srlm_jax.data_io import Record, read_jsonl, write_jsonl  # pylint: disable=unused-import

Report = dict  # {'source', 'read', 'kept', 'dropped': {reason: count}}

def _judge(judge):
  """Returns the judge whose scale and judgment format EFT records follow (default additive)."""
  return judges.get('additive') if judge is None else judge


def judgment_text(score: int, judge=None) -> str:
  """Returns the judge's EFT judgment of `score` (additive: a short rubric justification of a
  score 0..5 ending in the line `Score: N`)."""
  return _judge(judge).eft_judgment(score)


def rank_score(rank: int, judge=None) -> int:
  """Returns the EFT target score of a human rank (0 = best): additive max(1, 5 - rank)."""
  return _judge(judge).rank_score(rank)


def quality_score_to_score(q: float, judge=None) -> int:
  """Returns the EFT target score of an OASST quality label in [0, 1]: additive
  floor(5 q + 0.5)."""
  return _judge(judge).quality_score(q)


TFDS_PREFIX = 'tfds:'


def read_source(source: str) -> list[Record]:
  """Returns the (where, 1-based index, object) records of a JSONL path or a TFDS source.

  A TFDS source is `tfds:<config>/<split>@<data_dir>` (for example
  `tfds:ift/train@/tmp/srlm_tfds`), a split that srlm_jax.tfds_builders built under data_dir
  (launch/build_data.py --tfds_dir); its records are the JSONL builders' records, and `where`
  is the source string, so errors name it and the example's 1-based index.
  """
  if not source.startswith(TFDS_PREFIX):
    return read_jsonl(source)
  spec, at, data_dir = source[len(TFDS_PREFIX):].partition('@')
  name, slash, split = spec.partition('/')
  if not (at and slash and name and split and data_dir):
    raise ValueError(f'{source!r}: a TFDS source is tfds:<config>/<split>@<data_dir>, for '
                     'example tfds:ift/train@/tmp/srlm_tfds')
  try:
    from srlm_jax import tfds_builders  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'{source}: reading TFDS needs tensorflow-datasets, array_record and '
                      f'importlib_resources installed ({e})') from e
  examples = tfds_builders.records(name, split, data_dir)
  if not examples:
    raise ValueError(f'{source}: no records (the split is empty)')
  return [(source, i, obj) for i, obj in enumerate(examples, start=1)]


def normalize_prompt(text: str) -> str:
  """Returns the text case-folded with runs of whitespace collapsed (to match prompts)."""
  return ' '.join(text.split()).casefold()


def _get(record: Record, field: str, kind: type, optional: bool = False):
  """Returns record[field] checked to be of `kind` (None allowed if optional), else ValueError."""
  path, n, obj = record
  if field not in obj:
    raise ValueError(f'{path}:{n}: missing field {field!r} (fields present: {sorted(obj)})')
  value = obj[field]
  if value is None and optional:
    return None
  if kind is int:  # an integral number (OASST ranks are sometimes written as 1.0)
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and value == int(value) and value >= 0)
    value = int(value) if ok else value
  elif kind is float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  else:
    ok = isinstance(value, kind)
  if not ok:
    want = {int: 'a non-negative integer', float: 'a number', str: 'a string',
            bool: 'true or false'}[kind]
    raise ValueError(f'{path}:{n}: field {field!r} must be {want}'
                     f'{" or null" if optional else ""}, got {value!r:.60}')
  return value


def _report(source: str, read: int, kept: int, dropped: collections.Counter) -> Report:
  report = {'source': source, 'read': read, 'kept': kept, 'dropped': dict(dropped)}
  logging.info('%s: read %d, kept %d, dropped %s', source, read, kept,
               ', '.join(f'{k}: {v}' for k, v in dropped.items()) or 'none')
  return report


# ---------------------------------------------------------------------------- message trees

def read_messages(path: str) -> list[dict]:
  """Returns the validated messages of an OASST1 message-table JSONL file."""
  messages, seen = [], {}
  for record in read_jsonl(path):
    m = {'message_id': _get(record, 'message_id', str),
         'parent_id': _get(record, 'parent_id', str, optional=True),
         'text': _get(record, 'text', str), 'role': _get(record, 'role', str),
         'lang': _get(record, 'lang', str), 'rank': _get(record, 'rank', int, optional=True),
         'deleted': _get(record, 'deleted', bool),
         'review_result': _get(record, 'review_result', bool, optional=True),
         'where': f'{record[0]}:{record[1]}'}
    if m['role'] not in ('prompter', 'assistant'):
      raise ValueError(f'{m["where"]}: field "role" must be "prompter" or "assistant", '
                       f'got {m["role"]!r}')
    if m['message_id'] in seen:
      raise ValueError(f'{m["where"]}: duplicate message_id {m["message_id"]!r} '
                       f'(first at line {seen[m["message_id"]]})')
    seen[m['message_id']] = record[1]
    messages.append(m)
  return messages


def _message_drop(m: dict, role: str, lang: str) -> Optional[str]:
  """Returns why a message fails the first-turn filters, or None when it passes."""
  if m['role'] != role:
    return f'{m["role"]} where {role} expected'
  if m['lang'] != lang:
    return 'not ' + lang
  if m['deleted']:
    return 'deleted'
  if m['review_result'] is not True:
    return 'review not passed'
  if not m['text'].strip():
    return 'empty text'
  return None


def first_turns(path: str, lang: str = 'en') -> tuple[list[dict], Report]:
  """Returns per kept root prompt {'id', 'prompt', 'replies': [{id, response, rank}]}, and a report.

  Roots and replies must be in `lang`, not deleted, with review passed; replies keep their
  rank (None when unranked). The report counts messages: read, and dropped per reason.
  """
  messages = read_messages(path)
  children = collections.defaultdict(list)
  for m in messages:
    if m['parent_id'] is not None:
      children[m['parent_id']].append(m)
  groups, dropped = [], collections.Counter()
  roots = {m['message_id'] for m in messages if m['parent_id'] is None}
  dropped['later turn (not a root or its reply)'] = sum(
      m['parent_id'] is not None and m['parent_id'] not in roots for m in messages)
  for root in (m for m in messages if m['parent_id'] is None):
    why = _message_drop(root, 'prompter', lang)
    if why:
      dropped[f'root prompt: {why}'] += 1
      continue
    replies = []
    for reply in children[root['message_id']]:
      why = _message_drop(reply, 'assistant', lang)
      if why:
        dropped[f'reply: {why}'] += 1
      else:
        replies.append({'id': reply['message_id'], 'response': reply['text'],
                        'rank': reply['rank']})
    groups.append({'id': root['message_id'], 'prompt': root['text'], 'replies': replies})
  return groups, _report(f'{path} (first turns)', len(messages), len(groups), dropped)


def ift_from_trees(path: str, lang: str = 'en', exclude: Iterable[str] = ()
                   ) -> tuple[list[dict], Report]:
  """Returns IFT records (first-turn prompt, its rank-0 reply) of a message-tree file."""
  groups, _ = first_turns(path, lang)
  exclude = {normalize_prompt(p) for p in exclude}
  records, dropped = [], collections.Counter()
  for g in groups:
    best = [r for r in g['replies'] if r['rank'] == 0]
    if not best:
      dropped['no kept rank-0 reply'] += 1
    elif normalize_prompt(g['prompt']) in exclude:
      dropped['held-out prompt'] += 1
    else:
      records.append({'id': g['id'], 'prompt': g['prompt'], 'response': best[0]['response']})
  return records, _report(f'{path} (IFT)', len(groups), len(records), dropped)


def eft_eval_from_trees(path: str, lang: str = 'en', judge=None) -> tuple[list[dict], Report]:
  """Returns EFT eval records: per prompt with >= 2 ranked kept replies, those replies ranked."""
  groups, _ = first_turns(path, lang)
  records, dropped = [], collections.Counter()
  for g in groups:
    ranked = sorted((r for r in g['replies'] if r['rank'] is not None), key=lambda r: r['rank'])
    if len(ranked) < 2:
      dropped['fewer than 2 ranked replies'] += 1
      continue
    records.append({'id': g['id'], 'prompt': g['prompt'], 'responses': [
        dict(r, score=rank_score(r['rank'], judge)) for r in ranked]})
  return records, _report(f'{path} (EFT eval)', len(groups), len(records), dropped)


def eft_from_rankings(rankings: Sequence[dict], judge=None) -> list[dict]:
  """Returns EFT records (one per ranked response) of EFT eval records."""
  return [{'id': r['id'], 'prompt': g['prompt'], 'response': r['response'],
           'judgment': judgment_text(r['score'], judge), 'score': r['score']}
          for g in rankings for r in g['responses']]


def pairs_from_rankings(rankings: Sequence[dict]) -> list[dict]:
  """Returns every human preference pair (lower rank = chosen) within each ranked prompt."""
  out = []
  for g in rankings:
    rs = g['responses']
    for i, a in enumerate(rs):
      for b in rs[i + 1:]:
        if a['rank'] == b['rank']:
          continue
        c, r = (a, b) if a['rank'] < b['rank'] else (b, a)
        out.append({'id': f'{g["id"]}:{c["id"]}>{r["id"]}', 'prompt_id': g['id'],
                    'prompt': g['prompt'], 'chosen': c['response'], 'rejected': r['response'],
                    'chosen_id': c['id'], 'rejected_id': r['id'],
                    'chosen_rank': c['rank'], 'rejected_rank': r['rank']})
  return out


# ------------------------------------------------------------------------ flat first turns

_FLAT = {'ranked': ('question', 'answer', 'rank', int),
         'quality': ('prompt_text', 'response_text', 'quality_score', float)}


def read_flat(path: str, kind: str, exclude: Iterable[str] = ()
              ) -> tuple[list[tuple[Record, str, str, float]], collections.Counter, int]:
  """Returns the (record, prompt, response, label) rows that pass the filters, drops, rows read.

  `kind` is 'ranked' (question, answer, rank) or 'quality' (prompt_text, response_text,
  quality_score, with prompt_id and response_id). Rows whose prompt is in `exclude`, that repeat
  an earlier (prompt, response), have empty text, a null quality_score or a language other than
  English are dropped.
  """
  prompt_f, response_f, label_f, label_kind = _FLAT[kind]
  exclude = {normalize_prompt(p) for p in exclude}
  rows, dropped, seen = [], collections.Counter(), set()
  records = read_jsonl(path)
  for record in records:
    prompt, response = _get(record, prompt_f, str), _get(record, response_f, str)
    label = _get(record, label_f, label_kind, optional=kind == 'quality')
    if kind == 'quality':
      _get(record, 'prompt_id', str)
      _get(record, 'response_id', str)
      if label is not None and not 0 <= label <= 1:
        raise ValueError(f'{record[0]}:{record[1]}: field {label_f!r} must be in [0, 1], '
                         f'got {label}')
    key = (normalize_prompt(prompt), normalize_prompt(response))
    if record[2].get('language', 'en') != 'en':
      dropped['not en'] += 1
    elif not key[0] or not key[1]:
      dropped['empty text'] += 1
    elif label is None:
      dropped[f'{label_f} null'] += 1
    elif key[0] in exclude:
      dropped['held-out prompt'] += 1
    elif key in seen:
      dropped['duplicate (prompt, response)'] += 1
    else:
      seen.add(key)
      rows.append((record, prompt, response, label))
  return rows, dropped, len(records)


def _row_id(record: Record) -> str:
  return f'{os.path.basename(record[0])}:{record[1]}'


def ift_from_ranked(path: str, exclude: Iterable[str] = ()) -> tuple[list[dict], Report]:
  """Returns IFT records (question, its rank-0 answer) of a flat ranked file, one per prompt."""
  rows, dropped, read = read_flat(path, 'ranked', exclude)
  records, seen = [], set()
  for record, prompt, response, rank in rows:
    if rank != 0:
      dropped['not rank 0'] += 1
    elif normalize_prompt(prompt) in seen:
      dropped['duplicate prompt'] += 1
    else:
      seen.add(normalize_prompt(prompt))
      records.append({'id': _row_id(record), 'prompt': prompt, 'response': response})
  return records, _report(f'{path} (IFT)', read, len(records), dropped)


def eft_from_flat(path: str, kind: str, exclude: Iterable[str] = (), judge=None
                  ) -> tuple[list[dict], Report]:
  """Returns EFT records of a flat file, the score from the rank or the quality label."""
  rows, dropped, read = read_flat(path, kind, exclude)
  records = []
  for record, prompt, response, label in rows:
    score = rank_score(label, judge) if kind == 'ranked' else quality_score_to_score(label, judge)
    rid = _row_id(record) if kind == 'ranked' else record[2]['response_id']
    records.append({'id': rid, 'prompt': prompt, 'response': response,
                    'judgment': judgment_text(score, judge), 'score': score})
  return records, _report(f'{path} (EFT)', read, len(records), dropped)


def eft_train(ranked_path: Optional[str], quality_path: Optional[str],
              exclude: Iterable[str] = (), judge=None) -> tuple[list[dict], list[Report]]:
  """Returns EFT train records from the flat ranked and/or quality files, without repeats."""
  exclude = list(exclude)
  records, reports, seen = [], [], set()
  for path, kind in ((ranked_path, 'ranked'), (quality_path, 'quality')):
    if not path:
      continue
    part, report = eft_from_flat(path, kind, exclude, judge)
    fresh = []
    for r in part:
      key = (normalize_prompt(r['prompt']), normalize_prompt(r['response']))
      if key not in seen:
        seen.add(key)
        fresh.append(r)
    if len(fresh) < len(part):
      report['dropped']['in an earlier source'] = len(part) - len(fresh)
      report['kept'] = len(fresh)
      logging.info('%s: %d (prompt, response) rows were in an earlier source', path,
                   len(part) - len(fresh))
    records += fresh
    reports.append(report)
  return records, reports


def score_histogram(records: Sequence[dict]) -> dict:
  """Returns {score: count} over EFT records."""
  return dict(sorted(collections.Counter(r['score'] for r in records).items()))


# ------------------------------------------------------------------ evaluation prompt sets

def alpaca_eval_prompts(path: str) -> list[dict]:
  """Returns {'id', 'prompt', 'dataset', 'reference'} per entry of an AlpacaEval outputs JSON."""
  with open(path, encoding='utf-8') as f:
    try:
      entries = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}:{e.lineno}: malformed JSON ({e.msg})') from None
  if not isinstance(entries, list):
    raise ValueError(f'{path}: expected a JSON list of {{"instruction", "output"}} entries')
  out = []
  for i, entry in enumerate(entries):
    record = (path, f'entry {i}', entry if isinstance(entry, dict) else {})
    out.append({'id': f'alpaca_eval:{i}', 'prompt': _get(record, 'instruction', str),
                'dataset': entry.get('dataset', ''), 'reference': _get(record, 'output', str)})
  return out


def mt_bench_prompts(path: str) -> list[dict]:
  """Returns {'id', 'prompt', 'category'} per MT-Bench question, its first turn as prompt."""
  out = []
  for record in read_jsonl(path):
    turns = record[2].get('turns')
    if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
      raise ValueError(f'{record[0]}:{record[1]}: field "turns" must be a non-empty list of '
                       'strings')
    out.append({'id': f'mt_bench:{_get(record, "question_id", int)}', 'prompt': turns[0],
                'category': record[2].get('category', '')})
  return out
