"""JSONL training data -> padded token arrays, and deterministic batches from them.

SFT records are `{"prompt": str, "response": str}` or `{"messages": [{"role", "content"}, ...]}`
(the loss covers the assistant turns only); DPO records are
`{"prompt": str, "chosen": str, "rejected": str}`. Every error names `file:line`.

A tokenised sequence is four [N, T] arrays (T = max_len), shifted for next-token prediction:
  inputs     int32  the tokens the model reads (right-padded with pad_id)
  targets    int32  inputs shifted left by one: targets[:, t] is predicted at position t
  loss_mask  bool   targets that are response tokens (the loss is taken on these only)
  mask       bool   real (non-padding) input tokens
An SFT dataset is that dict; a DPO dataset is {'chosen': seq, 'rejected': seq} (plus
'ref_chosen_logps', 'ref_rejected_logps' [N] once `train.compute_ref_logps` has run).
"""

import json
import logging
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from srlm_jax import distributed

Record = tuple[str, int, dict]  # (file, 1-based line, the parsed object)


def read_jsonl(path: str, allow_empty: bool = False) -> list[Record]:
  """Returns the (path, line, object) of every non-blank line; a bad line raises ValueError.

  Undecodable bytes, malformed JSON and non-objects are errors naming `file:line`; so is an
  empty file unless allow_empty.
  """
  records = []
  with open(path, 'rb') as f:  # bytes, so that a non-UTF-8 line can be named
    for n, raw in enumerate(f, start=1):
      try:
        line = raw.decode('utf-8')
      except UnicodeDecodeError as e:
        raise ValueError(f'{path}:{n}: not UTF-8 (byte 0x{raw[e.start]:02x} at column '
                         f'{e.start + 1})') from None
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}:{n}: malformed JSON ({e.msg} at column {e.colno})') from None
      if not isinstance(obj, dict):
        raise ValueError(f'{path}:{n}: expected a JSON object, got {type(obj).__name__}')
      records.append((path, n, obj))
  if not records and not allow_empty:
    raise ValueError(f'{path}: no records (the file is empty)')
  return records


def read_json(path: str) -> Any:
  """Returns the parsed JSON file at path; non-UTF-8 or malformed JSON raises naming the path."""
  with open(path, 'rb') as f:
    raw = f.read()
  try:
    return json.loads(raw.decode('utf-8'))
  except UnicodeDecodeError as e:
    raise ValueError(f'{path}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})') from None
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno}); '
                     'is the file truncated or damaged?') from None


def write_jsonl(path: str, records) -> str:
  """Writes records as JSONL atomically (a temp file, then a rename) and returns the path.

  In a multi-host run process 0 writes and every process waits until the file is there.
  """
  if distributed.is_writer():
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    tmp = f'{path}.tmp.{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
      for record in records:
        f.write(json.dumps(record, ensure_ascii=False) + '\n')
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  distributed.barrier(f'write {path}')
  return path


def text_field(record: Record, field: str) -> str:
  """Returns record[field], raising ValueError (file:line) unless it is a non-empty string."""
  path, n, obj = record
  if field not in obj:
    raise ValueError(f'{path}:{n}: missing field {field!r} (fields present: {sorted(obj)})')
  value = obj[field]
  if not isinstance(value, str):
    raise ValueError(f'{path}:{n}: field {field!r} must be a string, got {type(value).__name__}')
  if not value.strip():
    raise ValueError(f'{path}:{n}: field {field!r} is empty')
  return value


def sft_messages(record: Record) -> list[dict]:
  """Returns an SFT record as a validated chat (prompt/response become user/assistant turns)."""
  path, n, obj = record
  if 'messages' not in obj:
    return [{'role': 'user', 'content': text_field(record, 'prompt')},
            {'role': 'assistant', 'content': text_field(record, 'response')}]
  messages = obj['messages']
  if not isinstance(messages, list) or not messages:
    raise ValueError(f'{path}:{n}: field "messages" must be a non-empty list')
  for i, m in enumerate(messages):
    if not isinstance(m, dict) or not isinstance(m.get('role'), str) or not isinstance(
        m.get('content'), str):
      raise ValueError(f'{path}:{n}: messages[{i}] must be {{"role": str, "content": str}}')
    if not m['content'].strip():
      raise ValueError(f'{path}:{n}: messages[{i}] ({m["role"]}) has empty content')
  if not any(m['role'] == 'assistant' for m in messages):
    raise ValueError(f'{path}:{n}: no assistant turn to train on')
  return [{'role': m['role'], 'content': m['content']} for m in messages]


def _chat_ids(tokenizer, messages, record: Record) -> tuple[list[int], list[bool]]:
  """Returns the chat's ids and, per id, whether it belongs to an assistant turn."""
  ids, is_target = [], []
  for i, m in enumerate(messages):
    if m['role'] != 'assistant':
      continue
    prefix = tokenizer.encode_chat(messages[:i], add_generation_prompt=True)
    full = tokenizer.encode_chat(messages[:i + 1], add_generation_prompt=False)
    if prefix[:len(ids)] != ids or full[:len(prefix)] != prefix:
      raise ValueError(f'{record[0]}:{record[1]}: the chat template does not render turn {i} '
                       'as an extension of the turns before it; cannot mask the loss by turn')
    is_target += [False] * (len(prefix) - len(ids)) + [True] * (len(full) - len(prefix))
    ids = full
  return ids, is_target


def _raw_ids(tokenizer, prompt: str, response: str) -> tuple[list[int], list[bool]]:
  """Returns BOS + prompt + response + EOS ids (no chat template) and the response flags."""
  p = tokenizer.encode(prompt, add_bos=True)
  r = tokenizer.encode(response, add_bos=False) + [tokenizer.eos_id]
  return p + r, [False] * len(p) + [True] * len(r)


def pack(rows: Sequence[tuple[list[int], list[bool]]], max_len: int, pad_id: int) -> dict:
  """Returns the padded inputs/targets/loss_mask/mask arrays of (ids, is_target) rows."""
  n = len(rows)
  out = {'inputs': np.full((n, max_len), pad_id, np.int32),
         'targets': np.full((n, max_len), pad_id, np.int32),
         'loss_mask': np.zeros((n, max_len), bool), 'mask': np.zeros((n, max_len), bool)}
  for i, (ids, is_target) in enumerate(rows):
    ids, is_target = ids[:max_len + 1], is_target[:max_len + 1]
    k = len(ids) - 1
    out['inputs'][i, :k], out['targets'][i, :k] = ids[:-1], ids[1:]
    out['loss_mask'][i, :k], out['mask'][i, :k] = is_target[1:], True
  return out


def _sequence(tokenizer, record, messages, chat_template):
  if chat_template:
    return _chat_ids(tokenizer, messages, record)
  if len(messages) != 2:
    raise ValueError(f'{record[0]}:{record[1]}: "messages" needs chat_template=True')
  return _raw_ids(tokenizer, messages[0]['content'], messages[1]['content'])


def _trainable(ids_flags, max_len) -> bool:
  """Returns whether a sequence keeps at least one target token after truncation."""
  return any(ids_flags[1][1:max_len + 1])


def tokenize_sft(records: Sequence[Record], tokenizer, max_len: int,
                 chat_template: bool = True) -> dict:
  """Returns the padded SFT arrays; rows with no response token within max_len are dropped."""
  chats = [sft_messages(record) for record in records]  # every record is checked first
  rows, dropped = [], []
  for record, messages in zip(records, chats):
    row = _sequence(tokenizer, record, messages, chat_template)
    if _trainable(row, max_len):
      rows.append(row)
    else:
      dropped.append(f'{record[0]}:{record[1]}')
  _report(dropped, len(records), max_len)
  return pack(rows, max_len, tokenizer.pad_id)


def tokenize_dpo(records: Sequence[Record], tokenizer, max_len: int,
                 chat_template: bool = True) -> dict:
  """Returns {'chosen': arrays, 'rejected': arrays}; pairs with a side cut to nothing dropped."""
  texts = [[text_field(r, k) for k in ('prompt', 'chosen', 'rejected')] for r in records]
  chosen, rejected, dropped = [], [], []
  for record, (prompt, *responses) in zip(records, texts):
    rows = [_sequence(tokenizer, record, [{'role': 'user', 'content': prompt},
                                          {'role': 'assistant', 'content': response}],
                      chat_template) for response in responses]
    if all(_trainable(r, max_len) for r in rows):
      chosen.append(rows[0])
      rejected.append(rows[1])
    else:
      dropped.append(f'{record[0]}:{record[1]}')
  _report(dropped, len(records), max_len)
  return {'chosen': pack(chosen, max_len, tokenizer.pad_id),
          'rejected': pack(rejected, max_len, tokenizer.pad_id)}


def _report(dropped: list[str], total: int, max_len: int) -> None:
  if len(dropped) == total:
    raise ValueError(f'every example leaves no response token within max_len={max_len} '
                     f'(first: {dropped[0]})')
  if dropped:
    logging.warning('dropped %d of %d examples whose prompt fills max_len=%d: %s%s',
                    len(dropped), total, max_len, ', '.join(dropped[:5]),
                    ' ...' if len(dropped) > 5 else '')


def load_sft(path: str, tokenizer, max_len: int, chat_template: bool = True) -> dict:
  """Returns the tokenised SFT dataset of a JSONL file."""
  return tokenize_sft(read_jsonl(path), tokenizer, max_len, chat_template)


def load_dpo(path: str, tokenizer, max_len: int, chat_template: bool = True) -> dict:
  """Returns the tokenised DPO dataset of a JSONL file."""
  return tokenize_dpo(read_jsonl(path), tokenizer, max_len, chat_template)


def num_examples(dataset: Mapping[str, Any]) -> int:
  """Returns the number of rows of a dataset (the leading dimension of its arrays)."""
  return int(jax.tree.leaves(dataset)[0].shape[0])


def batch_indices(n: int, step: int, batch_size: int, seed: int, shuffle: bool = True):
  """Returns the row indices of batch `step`: consecutive slices of per-epoch permutations.

  A pure function of its arguments, so a resumed run sees exactly the batches it would have.
  """
  start = step * batch_size
  out = []
  while len(out) < batch_size:
    epoch, offset = divmod(start + len(out), n)
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    out.extend(order[offset:offset + batch_size - len(out)].tolist())
  return np.asarray(out)


def batch_at(dataset, step: int, batch_size: int, seed: int = 0, shuffle: bool = True):
  """Returns batch number `step` of a dataset (a dict of host arrays)."""
  idx = batch_indices(num_examples(dataset), step, batch_size, seed, shuffle)
  return jax.tree.map(lambda x: x[idx], dataset)


def length_bucket(n: int, max_len: int, minimum: int = 32) -> int:
  """Returns the smallest of minimum * {1, 1.5} * 2^i that is >= n, capped at max_len."""
  size = minimum
  while size < n:
    size = size * 3 // 2 if (size & (size - 1)) == 0 else size // 3 * 4
  return min(size, max_len)


def trim_batch(batch, max_len: int):
  """Returns the batch with its [B, max_len] arrays cut to the length bucket of its longest row.

  Rows are right-padded (`pack`), so the cut drops only padding: a step gives the same numbers
  on the cut batch, on fewer positions (a jitted step compiles once per bucket, a few at most).
  """
  masks = [x for path, x in jax.tree_util.tree_leaves_with_path(batch)
           if getattr(path[-1], 'key', None) == 'mask']
  longest = max(int(np.max(np.sum(m, axis=1), initial=1)) for m in masks)
  n = length_bucket(longest, max_len)
  return jax.tree.map(lambda x: x[:, :n] if x.ndim >= 2 and x.shape[1] == max_len else x, batch)


def batches_in_order(dataset, batch_size: int):
  """Yields (batch, n_real) covering every row once in order; the last batch repeats rows."""
  n = num_examples(dataset)
  for start in range(0, n, batch_size):
    idx = np.minimum(np.arange(start, start + batch_size), n - 1)
    yield jax.tree.map(lambda x: x[idx], dataset), min(batch_size, n - start)
