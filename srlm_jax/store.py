"""What stages leave in the work directory, and how a resumed run finds it again.

One resume mechanism for every stage (training stages add Orbax checkpoints inside theirs):
  <stage>/DONE            written last, atomically: the stage's info plus `outputs`, the record
                          count (JSONL) or size and the sha256 of each file at its top level
  <stage>/shards/NNNNN.*  a sharded stage's work, shard by shard: NNNNN.jsonl (records),
                          NNNNN.npz (arrays, when the shard returned any) and NNNNN.json, the
                          digests of both, written after them; a shard without its digests was
                          cut off and is done again (its seed depends only on its index)
  <stage>/arrays.npz      the arrays a stage publishes for the stages after it

Every reader checks a file against the digest recorded for it. Multi-host: process 0 writes,
every process reads, and `exists` answers the same on all of them.
"""

import json
import logging
import os
from typing import Callable, Optional

import jax
import numpy as np

from srlm_jax import data_io
from srlm_jax import distributed
from srlm_jax import workdir as workdir_lib

ARRAYS = 'arrays.npz'
# (items, shard index) -> (records, {name: array}) or (records, arrays, info: a JSON object)
ShardFn = Callable[[list, int], tuple]


def exists(path: str) -> bool:
  """Returns os.path.exists(path), the same answer on every process of a multi-host run.

  Every process looks before any may go on (a barrier), so none sees a file that process 0
  wrote after the others looked and takes a different branch.
  """
  found = os.path.exists(path)
  distributed.barrier(f'exists {path}')
  return found


def is_done(stage_dir: str) -> bool:
  """Returns whether the stage in stage_dir has completed."""
  return exists(os.path.join(stage_dir, 'DONE'))


def done_info(stage_dir: str) -> dict:
  """Returns the info a finished stage recorded in its DONE ({} while it has none)."""
  path = os.path.join(stage_dir, 'DONE')
  if not os.path.exists(path):
    return {}
  return workdir_lib.read_json(path)  # a truncated DONE is an error naming it


def mark_done(stage_dir: str, info: Optional[dict] = None) -> None:
  """Marks the stage complete, atomically (a temp file renamed to DONE); process 0 writes it.

  DONE holds info plus `outputs`: the record count and sha256 of each file at the top of
  stage_dir, which `read_records`, `load_arrays` and the next run's start check.
  """
  if distributed.is_writer():
    os.makedirs(stage_dir, exist_ok=True)
    write_json(os.path.join(stage_dir, 'DONE'),
               {**(info or {}), 'outputs': workdir_lib.stage_outputs(stage_dir)})
  distributed.barrier(f'done {stage_dir}')


def write_json(path: str, obj) -> None:
  """Writes obj as JSON atomically (a temp file, then a rename); the caller is the writer."""
  tmp = f'{path}.tmp.{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(obj, f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_records(path: str) -> list:
  """Returns the JSON objects of a JSONL file the run wrote (empty file: no records).

  A file its stage's DONE records is checked against its digest first; a truncated or edited
  file, like a malformed line, is an error naming it.
  """
  workdir_lib.verify_output(path)
  return [obj for _, _, obj in data_io.read_jsonl(path, allow_empty=True)]


def save_arrays(path: str, arrays: dict) -> None:
  """Writes {name: array} as one .npz atomically; process 0 writes, every process waits."""
  host = distributed.to_host(dict(arrays))
  if distributed.is_writer():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f'{path[:-len(".npz")]}.tmp.{os.getpid()}.npz'
    with open(tmp, 'wb') as f:
      np.savez(f, **host)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  distributed.barrier(f'arrays {path}')


def load_arrays(path: str, digest: Optional[dict] = None, recorded_in: str = '') -> dict:
  """Returns the arrays of an .npz on the host, checked against digest (else its DONE)."""
  if digest is not None:
    workdir_lib.verify_file(path, digest, recorded_in)
  else:
    workdir_lib.verify_output(path)
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def to_device(arrays: dict) -> dict:
  """Returns {name: jax.Array} of host (or device) arrays, placed explicitly.

  One process: on the default device. Several: replicated over every device of the run (each
  process holds the same host value), so a jitted function over the global mesh can take it.
  """
  if not distributed.multi_process():
    return {k: jax.device_put(v) for k, v in arrays.items()}
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('all',))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  host = distributed.to_host(dict(arrays))
  return {k: jax.make_array_from_callback(v.shape, replicated, lambda i, v=v: v[i])
          for k, v in host.items()}


def concat_shards(parts: list) -> dict:
  """Returns each array concatenated over shards along axis 0, axis 1 right-padded with zeros
  (False for bools) to the widest shard; every shard must name the same arrays."""
  parts = [p for p in parts if p]
  if not parts:
    return {}
  names = sorted(parts[0])
  out = {}
  for name in names:
    pieces = []
    for s, p in enumerate(parts):
      if sorted(p) != names:
        raise ValueError(f'shard {s}: arrays {sorted(p)}, but shard 0 has {names}')
      pieces.append(np.asarray(p[name]))
    if pieces[0].ndim >= 2:
      width = max(x.shape[1] for x in pieces)
      pieces = [np.pad(x, [(0, 0), (0, width - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
                for x in pieces]
    out[name] = np.concatenate(pieces, axis=0)
  return out


def sharded(stage_dir: str, items: list, shard_size: int, fn: ShardFn, desc: str,
            crash_point: Callable[[str], None] = lambda name: None,
            infos: Optional[list] = None) -> tuple:
  """Returns (records, arrays) of fn applied shard by shard; finished shards are read back.

  fn(items of one shard, shard index) returns (records, {name: array}); arrays are
  concatenated over shards (`concat_shards`) and returned on the device. fn may also return a
  third item, a small JSON object about the shard's work (prefill counts, say): it is kept in
  the shard's sidecar, and each shard's (read back too, {} when none) is appended to `infos`.
  """
  shard_dir = os.path.join(stage_dir, 'shards')
  if distributed.is_writer():
    os.makedirs(shard_dir, exist_ok=True)
  records, parts = [], []
  n_shards = max(1, -(-len(items) // shard_size))
  for s in range(n_shards):
    path = os.path.join(shard_dir, f'{s:05d}.jsonl')
    npz = path[:-len('.jsonl')] + '.npz'
    sidecar = workdir_lib.shard_sidecar(path)
    # A shard without its digests was cut off before they were recorded: written again.
    if not exists(sidecar):
      logging.info('%s: shard %d/%d', desc, s + 1, n_shards)
      shard_records, shard_arrays, *info = fn(items[s * shard_size:(s + 1) * shard_size], s)
      data_io.write_jsonl(path, shard_records)
      if shard_arrays:
        save_arrays(npz, shard_arrays)
      if distributed.is_writer():
        digests = {os.path.basename(path): workdir_lib.file_digest(path)}
        if shard_arrays:
          digests[os.path.basename(npz)] = workdir_lib.file_digest(npz)
        if info and info[0]:
          digests[workdir_lib.SHARD_INFO] = info[0]
        write_json(sidecar, digests)
      distributed.barrier(f'digest {sidecar}')
      crash_point(f'{desc}:shard')
    expected = workdir_lib.shard_digests(sidecar)
    workdir_lib.verify_file(path, expected[path], sidecar)
    records.extend(obj for _, _, obj in data_io.read_jsonl(path, allow_empty=True))
    if npz in expected:
      parts.append(load_arrays(npz, expected[npz], sidecar))
    if infos is not None:
      infos.append(workdir_lib.read_json(sidecar).get(workdir_lib.SHARD_INFO, {}))
  return records, to_device(concat_shards(parts))
