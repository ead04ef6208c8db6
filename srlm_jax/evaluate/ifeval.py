"""Verifiable instruction following (IFEval-style): prompts whose constraints a program checks.

A prompt record (srlm_jax/data/ifeval_prompts.jsonl) is {"id", "prompt", "instructions":
[{"type": <a CHECKERS name>, ...its arguments}]}: the prompt text states the constraints in
words, the instructions restate them for the checkers. A response follows a prompt when it
passes every instruction.

Accuracies (as IFEval reports them; all fractions in [0, 1]):
  * prompt_strict: the fraction of prompts whose response passes every instruction;
  * instruction_strict: the fraction of all instructions passed;
  * prompt_loose, instruction_loose: the same, where an instruction passes when any of the
    response's loose variants passes it (markdown '*' removed, first line dropped, last line
    dropped, and their combinations: a chatty preamble or sign-off is forgiven).
prompt_strict and prompt_loose carry bootstrap percentile intervals over prompts.
"""

import json
import re
from typing import Callable, Sequence

import numpy as np

from srlm_jax.evaluate.metrics import bootstrap_weights

_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)*")
_BULLET = re.compile(r'^\s*(?:[*\-•]|\d+[.)])\s+\S', re.M)


def words(text: str) -> list[str]:
  """Returns the words of text (runs of letters and digits, with inner apostrophes)."""
  return _WORD.findall(text)


def _relation(count: int, relation: str, n: int) -> bool:
  if relation == 'at_least':
    return count >= n
  if relation == 'at_most':
    return count <= n
  if relation == 'exactly':
    return count == n
  raise ValueError(f'relation {relation!r}: expected at_least, at_most or exactly')


def _contains_word(text: str, word: str) -> bool:
  return re.search(r'(?<![A-Za-z0-9])' + re.escape(word) + r'(?![A-Za-z0-9])', text,
                   re.I) is not None


def _json_body(text: str) -> str:
  body = text.strip()
  fenced = re.fullmatch(r'```(?:json)?\s*(.*?)\s*```', body, re.S | re.I)
  return fenced.group(1) if fenced else body


def _is_json(text: str) -> bool:
  try:
    json.loads(_json_body(text))
  except ValueError:
    return False
  return True


def _paragraphs(text: str) -> list[str]:
  return [p for p in re.split(r'\n\s*\n', text.strip()) if p.strip()]


# name -> (check(response, **args) -> bool, the argument names it needs)
CHECKERS: dict[str, tuple[Callable[..., bool], tuple[str, ...]]] = {
    'word_count': (lambda r, relation, n: _relation(len(words(r)), relation, n),
                   ('relation', 'n')),
    'bullet_count': (lambda r, n: len(_BULLET.findall(r)) == n, ('n',)),
    'paragraph_count': (lambda r, n: len(_paragraphs(r)) == n, ('n',)),
    'keywords': (lambda r, words: all(_contains_word(r, w) for w in words), ('words',)),
    'forbidden_words': (lambda r, words: not any(_contains_word(r, w) for w in words),
                        ('words',)),
    'keyword_frequency': (lambda r, word, relation, n: _relation(
        len(re.findall(r'(?<![A-Za-z0-9])' + re.escape(word) + r'(?![A-Za-z0-9])', r, re.I)),
        relation, n), ('word', 'relation', 'n')),
    'lowercase': (lambda r: bool(r.strip()) and r == r.lower(), ()),
    'uppercase': (lambda r: bool(r.strip()) and r == r.upper(), ()),
    'no_commas': (lambda r: ',' not in r, ()),
    'json_format': (_is_json, ()),
    'title': (lambda r: re.search(r'<<[^\n<>]+>>', r) is not None, ()),
    'end_phrase': (lambda r, phrase: r.strip().endswith(phrase), ('phrase',)),
    'start_phrase': (lambda r, phrase: r.strip().startswith(phrase), ('phrase',)),
    'postscript': (lambda r, marker: re.search(r'^\s*' + re.escape(marker), r, re.M) is not None,
                   ('marker',)),
    'placeholders': (lambda r, n: len(re.findall(r'\[[^\[\]\n]+\]', r)) >= n, ('n',)),
    'highlights': (lambda r, n: len(re.findall(r'\*[^\n*]+\*', r)) >= n, ('n',)),
    'quotation': (lambda r: len(r.strip()) > 1 and r.strip()[0] == '"' and r.strip()[-1] == '"',
                  ()),
}


def check(instruction: dict, response: str) -> bool:
  """Returns whether response follows one instruction {"type", ...its arguments}."""
  fn, names = CHECKERS[instruction['type']]
  return bool(fn(response, **{k: instruction[k] for k in names}))


def loose_variants(response: str) -> list[str]:
  """Returns the response and its loose variants (no '*', no first line, no last line)."""
  lines = response.split('\n')
  cuts = [response, '\n'.join(lines[1:]).strip(), '\n'.join(lines[:-1]).strip(),
          '\n'.join(lines[1:-1]).strip()]
  return cuts + [c.replace('*', '') for c in cuts]


def validate_record(record: dict, where: str) -> dict:
  """Returns a prompt record after checking its fields; ValueError naming where and what."""
  if not isinstance(record.get('prompt'), str) or not record['prompt'].strip():
    raise ValueError(f'{where}: field "prompt" must be a non-empty string')
  items = record.get('instructions')
  if not isinstance(items, list) or not items:
    raise ValueError(f'{where}: field "instructions" must be a non-empty list')
  for i, item in enumerate(items):
    kind = item.get('type') if isinstance(item, dict) else None
    if kind not in CHECKERS:
      raise ValueError(f'{where}: instructions[{i}].type {kind!r}: expected one of '
                       f'{", ".join(sorted(CHECKERS))}')
    missing = [k for k in CHECKERS[kind][1] if k not in item]
    if missing:
      raise ValueError(f'{where}: instructions[{i}] ({kind}) lacks {", ".join(missing)}')
    try:
      check(item, 'probe')
    except (TypeError, ValueError, re.error) as e:
      raise ValueError(f'{where}: instructions[{i}] ({kind}) has bad arguments ({e})') from e
  return record


def load_prompts(path: str, max_prompts: int = 0) -> list[dict]:
  """Returns the validated prompt records of a JSONL file (the first max_prompts; 0: all)."""
  out = []
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}:{n}: not valid JSON ({e})') from e
      out.append(validate_record(record, f'{path}:{n}'))
  if not out:
    raise ValueError(f'{path}: no prompts')
  ids = [r.get('id', i) for i, r in enumerate(out)]
  if len(set(map(str, ids))) != len(ids):
    raise ValueError(f'{path}: duplicate ids')
  return out[:max_prompts] if max_prompts else out


def follows(record: dict, response: str) -> dict:
  """Returns per instruction its strict and loose verdicts for one response."""
  variants = loose_variants(response)
  strict = [check(i, response) for i in record['instructions']]
  loose = [any(check(i, v) for v in variants) for i in record['instructions']]
  return {'strict': strict, 'loose': loose}


def _interval(x: np.ndarray, n_boot: int, seed: int) -> list:
  if not len(x):
    return [float('nan')] * 2
  means = bootstrap_weights(len(x), n_boot, seed) @ x / len(x)
  return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def score(records: Sequence[dict], responses: Sequence[str], *, n_boot: int = 1000,
          seed: int = 0) -> tuple[dict, list]:
  """Returns (the four accuracies with intervals, one audit record per prompt)."""
  if len(records) != len(responses):
    raise ValueError(f'ifeval.score: {len(records)} prompts, {len(responses)} responses')
  audit = []
  for r, text in zip(records, responses):
    verdicts = follows(r, text)
    audit.append({'id': r.get('id'), 'prompt': r['prompt'], 'response': text,
                  'types': [i['type'] for i in r['instructions']], **verdicts})
  out = {'n_prompts': len(records)}
  for mode in ('strict', 'loose'):
    per_prompt = np.array([all(a[mode]) for a in audit], np.float64)
    flat = [v for a in audit for v in a[mode]]
    out[f'prompt_{mode}'] = float(per_prompt.mean()) if len(audit) else float('nan')
    out[f'prompt_{mode}_ci'] = _interval(per_prompt, n_boot, seed)
    out[f'instruction_{mode}'] = float(np.mean(flat)) if flat else float('nan')
  out['n_instructions'] = sum(len(a['strict']) for a in audit)
  return out, audit
