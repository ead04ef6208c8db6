"""A run's identity in its work directory: the lock, the config fingerprint, output digests.

  LOCK            the live run's {pid, host, since}, held with flock(2) while it runs: a second
                  launch on the directory is refused naming the holder; a lock whose process has
                  died (flock released, or its pid gone on this host) is taken over
  config.json     the run's config; a resume compares its own config with it, field by field
  history.jsonl   one line per start, resume and accepted config change (with the fields)
  <stage>/DONE    the stage's info plus `outputs`: per file it wrote, its record count (JSONL)
                  or size, and sha256; a reader checks a file against it
  shards/N.json   the digests of a sharded stage's shard N: N.jsonl and, if written, N.npz

A resume with a changed config is refused unless config.allow_config_change is set, except
for the fields in FREE_ON_RESUME (how far or how a run executes, not what a stage holds).
Multi-host: process 0 holds the lock and writes; every process reads and decides the same.
"""

import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import socket
from typing import Any, Optional

from srlm_jax import data_io
from srlm_jax import distributed

LOCK = 'LOCK'
CONFIG = 'config.json'
HISTORY = 'history.jsonl'
# Fields a resume may change without the override: they decide how far a run goes or how it
# executes, never what a finished stage holds. A new field of that kind needs one entry here.
FREE_ON_RESUME = ('iterations', 'distributed', 'allow_config_change', 'logging')
# Files a stage's DONE records the digests of (top level of the stage directory).
OUTPUT_SUFFIXES = ('.jsonl', '.json', '.npz')


class WorkdirError(ValueError):
  """The work directory cannot be used as asked (locked, changed config, damaged output)."""


# --- reading what the run wrote ----------------------------------------------------------------

read_json = data_io.read_json  # a malformed DONE, digest or config.json: ValueError naming it


def file_digest(path: str) -> dict:
  """Returns {'records' (non-blank lines; JSONL) or 'bytes', 'sha256'} of a file."""
  h, records, size = hashlib.sha256(), 0, 0
  with open(path, 'rb') as f:
    for line in f:
      h.update(line)
      size += len(line)
      records += bool(line.strip())
  out = {'records': records} if path.endswith('.jsonl') else {'bytes': size}
  out['sha256'] = h.hexdigest()
  return out


def verify_file(path: str, expected: dict, recorded_in: str) -> None:
  """Raises WorkdirError naming path unless its digest is the one recorded_in holds."""
  if not os.path.exists(path):
    raise WorkdirError(f'{path}: missing, but {recorded_in} records it')
  got = file_digest(path)
  if got != expected:
    count = ('records', 'bytes')['bytes' in expected]
    raise WorkdirError(
        f'{path}: {got.get(count)} {count}, sha256 {got["sha256"][:12]}..., but {recorded_in} '
        f'recorded {expected.get(count)} {count}, sha256 {expected.get("sha256", "")[:12]}...: '
        'the file was truncated or edited after it was written. Restore it, or delete it and '
        'its stage (its folder) to recompute.')


def stage_outputs(stage_dir: str) -> dict:
  """Returns {file name: digest} of the record files at the top of a stage directory."""
  if not os.path.isdir(stage_dir):
    return {}
  return {name: file_digest(os.path.join(stage_dir, name))
          for name in sorted(os.listdir(stage_dir))
          if name.endswith(OUTPUT_SUFFIXES) and not name.startswith('.')
          and '.tmp.' not in name and os.path.isfile(os.path.join(stage_dir, name))}


def verify_output(path: str) -> None:
  """Checks a stage's output file against its stage's DONE (no DONE or no entry: unchecked)."""
  done = os.path.join(os.path.dirname(path), 'DONE')
  if not os.path.exists(done):
    return
  info = read_json(done)
  expected = (info.get('outputs') or {}).get(os.path.basename(path)) if isinstance(
      info, dict) else None
  if expected is not None:
    verify_file(path, expected, done)


SHARD_INFO = 'info'  # a shard sidecar's key for the shard's info (store.sharded), not a file


def shard_sidecar(shard_path: str) -> str:
  """Returns the path of the digest file beside a shard (NNNNN.jsonl -> NNNNN.json)."""
  return shard_path[:-len('.jsonl')] + '.json'


def shard_digests(sidecar: str) -> dict:
  """Returns {path: digest} of the shard files a sidecar (NNNNN.json) records.

  A sidecar holds {file name: digest} (and the shard's info under 'info', not a file); one
  written before shards had arrays holds the digest of its NNNNN.jsonl alone, and is read as
  such.
  """
  info = read_json(sidecar)
  folder = os.path.dirname(sidecar)
  if not isinstance(info, dict):
    raise WorkdirError(f'{sidecar}: expected a JSON object of shard digests, got '
                       f'{type(info).__name__}')
  if 'sha256' in info:
    return {sidecar[:-len('.json')] + '.jsonl': info}
  return {os.path.join(folder, name): digest for name, digest in info.items()
          if name != SHARD_INFO}


def verify_workdir(workdir: str) -> int:
  """Checks every output a finished stage or shard recorded; returns how many were checked."""
  checked = 0
  for dirpath, _, names in os.walk(workdir):
    if 'DONE' in names:
      done = os.path.join(dirpath, 'DONE')
      info = read_json(done)
      for name, expected in ((info.get('outputs') or {}) if isinstance(info, dict) else
                             {}).items():
        verify_file(os.path.join(dirpath, name), expected, done)
        checked += 1
    if os.path.basename(dirpath) == 'shards':
      for name in names:
        if name.endswith('.json') and '.tmp.' not in name:
          sidecar = os.path.join(dirpath, name)
          for path, expected in shard_digests(sidecar).items():
            verify_file(path, expected, sidecar)
            checked += 1
  return checked


# --- the lock -----------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    return True
  return True


class Lock:
  """The work directory's lock: `acquire()` or WorkdirError naming the live holder."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK)
    self._fd = None

  def _holder(self, fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
      holder = json.loads(raw.decode('utf-8')) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
      holder = {}  # torn by a process killed while writing it: nobody's
    return holder if isinstance(holder, dict) else {}

  def acquire(self) -> 'Lock':
    """Takes the lock (a dead holder's is taken over); returns self."""
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    host = socket.gethostname()
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = self._holder(fd)
      os.close(fd)
      raise WorkdirError(
          f'{os.path.dirname(self.path)} is in use by pid {holder.get("pid", "?")} on host '
          f'{holder.get("host", "?")} (since {holder.get("since", "?")}; lock file '
          f'{self.path}). Wait for it to finish or stop that process.') from None
    holder = self._holder(fd)
    pid = holder.get('pid')
    # flock is the lock; the pid check catches a filesystem where flock is not shared.
    if (holder.get('host') == host and isinstance(pid, int) and pid != os.getpid()
        and _pid_alive(pid)):
      os.close(fd)
      raise WorkdirError(f'{os.path.dirname(self.path)} is in use by pid {pid} on host {host} '
                         f'(lock file {self.path}; it holds no flock: is this filesystem '
                         'shared without locking?)')
    if pid is not None:
      logging.warning('%s: taking over the lock of pid %s on host %s (since %s), which is no '
                      'longer running', self.path, pid, holder.get('host'), holder.get('since'))
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps({'pid': os.getpid(), 'host': host, 'since': _now()}).encode())
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self) -> None:
    """Empties the lock file and releases it (the file stays: no unlink race)."""
    if self._fd is None:
      return
    os.ftruncate(self._fd, 0)
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def lock(workdir: str) -> Optional[Lock]:
  """Returns the held Lock of workdir on process 0 (None on the others); refused: WorkdirError.

  In a multi-host run every process learns whether process 0 got it, so all stop together.
  """
  held, error = None, ''
  if distributed.is_writer():
    try:
      held = Lock(workdir).acquire()
    except WorkdirError as e:
      error = str(e)
  if distributed.multi_process():
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    refused = multihost_utils.broadcast_one_to_all(np.int32(bool(error)))
    if int(refused) and not error:
      error = f'{workdir}: process 0 could not take the work directory lock (see its log)'
  if error:
    raise WorkdirError(error)
  return held


@contextlib.contextmanager
def locked(workdir: str):
  """Yields while holding workdir's lock (see `lock`), released however the block ends."""
  held = lock(workdir)
  try:
    yield held
  finally:
    if held:
      held.release()


# --- the config's fingerprint and the run's history --------------------------------------------

def flatten(tree: Any, prefix: str = '') -> dict:
  """Returns {dotted field: value} of a nested dict (lists and tuples are values)."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for key, value in tree.items():
    out.update(flatten(value, f'{prefix}{key}.') if isinstance(value, dict) else
               {f'{prefix}{key}': value})
  return out


def _free(field: str) -> bool:
  return any(field == f or field.startswith(f + '.') for f in FREE_ON_RESUME)


def fingerprint(config_dict: dict) -> str:
  """Returns the sha256 of a config's fields, FREE_ON_RESUME left out."""
  fields = {k: v for k, v in flatten(config_dict).items() if not _free(k)}
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def config_diff(old: dict, new: dict) -> dict:
  """Returns {field: [old, new]} of the fields both configs have whose values differ.

  FREE_ON_RESUME is left out, and so are fields only one side has: those come from a code
  version that added or removed a field, not from the user (check_config records them).
  """
  a, b = flatten(old), flatten(new)
  return {k: [a[k], b[k]] for k in sorted(set(a) & set(b)) if not _free(k) and a[k] != b[k]}


def append_history(workdir: str, event: dict) -> None:
  """Appends one event (with time, pid and host) to workdir/history.jsonl; process 0 writes."""
  if distributed.is_writer():
    event = {'time': _now(), 'pid': os.getpid(), 'host': socket.gethostname(), **event}
    with open(os.path.join(workdir, HISTORY), 'a', encoding='utf-8') as f:
      f.write(json.dumps(event) + '\n')
      f.flush()
      os.fsync(f.fileno())


def check_config(workdir: str, config, allow_change: bool = False) -> dict:
  """Records config in a new workdir, or compares it with the recorded one on a resume.

  Returns the changed fields ({field: [old, new]}; empty when none). A change outside
  FREE_ON_RESUME raises WorkdirError listing the fields, unless allow_change, in which case the
  change is recorded in history.jsonl. Runs before any compute.
  """
  path = os.path.join(workdir, CONFIG)
  new = json.loads(config.to_json_best_effort())
  if distributed.is_writer():
    os.makedirs(workdir, exist_ok=True)
  found = os.path.exists(path)
  distributed.barrier(f'config {path}')  # all look before process 0 writes
  changed, added, removed = {}, [], []
  if found:
    old = read_json(path)
    if not isinstance(old, dict):
      raise WorkdirError(f'{path}: expected a JSON object (the run config), got '
                         f'{type(old).__name__}')
    changed = config_diff(old, new)
    added = sorted(set(flatten(new)) - set(flatten(old)))
    removed = sorted(set(flatten(old)) - set(flatten(new)))
    if changed and not allow_change:
      listing = '\n'.join(f'  {k}: {v[0]!r} -> {v[1]!r}' for k, v in changed.items())
      raise WorkdirError(
          f'{workdir} was run with another config ({path}); these fields differ:\n{listing}\n'
          'Resume with the recorded values, use a new workdir, or set '
          '--config.allow_config_change=True to go on anyway (recorded in '
          f'{os.path.join(workdir, HISTORY)}; records already written keep their old settings).')
  event = {'event': 'config_change' if changed else ('resume' if found else 'start'),
           'fingerprint': fingerprint(new)}
  if added or removed:  # another code version's fields: noted, not refused
    event.update(fields_added=added, fields_removed=removed)
  if changed:
    event['changed'] = changed
    logging.warning('%s: config changed on resume (allow_config_change): %s', workdir,
                    ', '.join(changed))
  append_history(workdir, event)
  if distributed.is_writer():
    tmp = f'{path}.tmp.{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(config.to_json_best_effort(indent=2))
    os.replace(tmp, path)
  distributed.barrier(f'config written {path}')
  return changed


# --- a model's identity ------------------------------------------------------------------------

def params_digest(params) -> str:
  """Returns a sha256 over each param's path, shape, dtype and three on-device reductions.

  The reductions (sum, sum of |x|, a position-weighted sum) run where the params are, so no
  weights are copied to the host; two param trees that differ anywhere almost surely differ in
  one of them. A cache keyed by it is recomputed (never reused) after any change.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  def reduce(x):
    x = x.astype(jnp.float32).reshape(-1)
    w = jnp.cos(jnp.arange(x.shape[0], dtype=jnp.float32))  # order-sensitive weights
    return jnp.stack([jnp.sum(x), jnp.sum(jnp.abs(x)), jnp.sum(x * w)])

  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  sums = distributed.to_host(jax.jit(lambda xs: [reduce(x) for x in xs])(
      [x for _, x in leaves]))
  h = hashlib.sha256()
  for (path, x), s in zip(leaves, sums):
    h.update(f'{jax.tree_util.keystr(path)}|{tuple(x.shape)}|{x.dtype}|'.encode())
    h.update(np.asarray(s, np.float32).tobytes())
  return h.hexdigest()


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
