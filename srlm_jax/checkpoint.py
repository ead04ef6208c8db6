"""Orbax checkpoints: the train state every K steps (keep N, resume the latest), params-only
exports that the next stage (the next iteration, the HF export) loads, and the metrics record.

Restores go straight into the target shardings: a checkpoint is read into sharded arrays
described by an abstract target (ShapeDtypeStructs carrying their sharding), so no full copy
of the state sits on one device.

Integrity: once a save is on disk (after Orbax's asynchronous write has finished), the sha256
of every file it wrote goes into `srlm_digests.json` beside them, written atomically. Restores
and `load_params` check those digests first; a checkpoint that fails (or that has no manifest:
its save never finished) is an IntegrityError naming the file, and `Checkpoints.restore_good`
moves it aside into `<checkpoints>.corrupt/` and falls back to the previous one.
"""

import concurrent.futures
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from srlm_jax import distributed
from srlm_jax import sharding


def abstract(tree, shardings=None):
  """Returns a tree of ShapeDtypeStructs (with the given shardings, or each array's own)."""
  if shardings is None:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)),
        tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


# --- file digests -----------------------------------------------------------------------------

MANIFEST = 'srlm_digests.json'
# Orbax may rewrite its step metadata (timestamps, no weights) after a save has finished.
_UNHASHED = frozenset({MANIFEST, '_CHECKPOINT_METADATA'})


class IntegrityError(ValueError):
  """A checkpoint or params folder whose files do not match the digests recorded at save."""


def file_digest(path: str, chunk: int = 1 << 24) -> str:
  """Returns the sha256 hex digest of the file at path, read in 16 MiB chunks."""
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


def _sha256_all(paths: list) -> list:
  """Returns the sha256 of each file, several at a time (hashlib releases the GIL)."""
  with concurrent.futures.ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
    return list(pool.map(file_digest, paths))


def digests(directory: str) -> dict:
  """Returns {relative path: {'sha256', 'bytes'}} of every file under directory."""
  paths = sorted(os.path.join(root, name) for root, _, files in os.walk(directory)
                 for name in files if os.path.relpath(os.path.join(root, name), directory)
                 not in _UNHASHED and not name.startswith(f'.{MANIFEST}'))
  return {os.path.relpath(full, directory): {'sha256': h, 'bytes': os.path.getsize(full)}
          for full, h in zip(paths, _sha256_all(paths))}


def write_manifest(directory: str, **info) -> str:
  """Returns the path of directory's digest manifest, written atomically by process 0.

  Call it once the directory is complete (after an asynchronous save has finished); `info`
  (e.g. the step) is stored beside the digests.
  """
  path = os.path.join(directory, MANIFEST)
  if distributed.is_writer():
    manifest = {**info, 'files': digests(directory)}
    tmp = os.path.join(directory, f'.{MANIFEST}.tmp.{os.getpid()}')
    with open(tmp, 'w', encoding='utf-8') as f:
      json.dump(manifest, f, indent=1)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  distributed.barrier(f'manifest {directory}')
  return path


def verify(directory: str) -> dict:
  """Returns directory's manifest after checking every file it lists; else IntegrityError.

  The error names the first file that is missing, resized or changed (or the missing
  manifest). Files the manifest does not list (Orbax's own later metadata) are not read.
  """
  path = os.path.join(directory, MANIFEST)
  try:
    with open(path, encoding='utf-8') as f:
      manifest = json.load(f)
  except FileNotFoundError:
    raise IntegrityError(f'{path}: missing; the save of {directory} did not finish (or it '
                         'predates digests: checkpoint.write_manifest blesses it)') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise IntegrityError(f'{path}: unreadable digest manifest ({e})') from e
  files = manifest.get('files', {})
  for rel, want in files.items():
    full = os.path.join(directory, rel)
    if not os.path.isfile(full):
      raise IntegrityError(f'{full}: missing (listed in {path})')
    size = os.path.getsize(full)
    if size != want['bytes']:
      raise IntegrityError(f'{full}: {size} bytes, {want["bytes"]} when saved (per {path})')
  got = _sha256_all([os.path.join(directory, rel) for rel in files])
  for (rel, want), h in zip(files.items(), got):
    if h != want['sha256']:
      raise IntegrityError(f'{os.path.join(directory, rel)}: contents changed since the save '
                           f'(sha256 differs from {path})')
  return manifest


class Checkpoints:
  """A CheckpointManager over `directory`: saves every `every` steps, keeps the last `keep`.

  Each save gets its digest manifest once it is on disk: at the next save, `wait` or `close`
  (so an asynchronous save still overlaps the training steps that follow it).
  """

  def __init__(self, directory: str, every: int, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.every = every
    self._unsealed = []  # steps saved whose manifest is not written yet
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=1, create=True,
        enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def step_dir(self, step: int) -> str:
    """Returns the directory of checkpoint `step`."""
    return os.path.join(self.directory, str(step))

  def latest_step(self) -> Optional[int]:
    """Returns the newest complete checkpoint's step, or None when there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Returns the steps of the checkpoints on disk, oldest first."""
    return sorted(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    """Returns whether `step` is a checkpoint step (a positive multiple of `every`)."""
    return self.every > 0 and step > 0 and step % self.every == 0

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    """Saves `state` as checkpoint `step` when due (or forced); returns whether it did."""
    if not (force or self.should_save(step)) or step in self._manager.all_steps():
      return False
    self._seal()
    saved = self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    if saved:
      self._unsealed.append(step)
    return saved

  def _seal(self) -> None:
    """Waits for pending saves, then writes each one's digest manifest."""
    self._manager.wait_until_finished()
    for step in self._unsealed:
      if os.path.isdir(self.step_dir(step)):  # max_to_keep may have deleted it already
        write_manifest(self.step_dir(step), step=step)
    self._unsealed = []

  def restore(self, target: Any, step: Optional[int] = None) -> Any:
    """Returns checkpoint `step` (default: the latest) read into the abstract `target`.

    Its files are checked against their digests first (IntegrityError naming the file).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'{self.directory}: no checkpoint to restore')
    self._seal()
    verify(self.step_dir(step))
    return self._manager.restore(step, args=ocp.args.StandardRestore(target))

  def restore_good(self, target: Any) -> tuple[Optional[int], Any]:
    """Returns (step, state) of the newest checkpoint whose digests match, or (None, None).

    Each newer one that fails is logged and moved aside into `<directory>.corrupt/<step>`
    (kept for inspection; out of the way of the steps that will be saved again).
    """
    self._seal()
    for step in reversed(self.all_steps()):
      try:
        return step, self.restore(target, step)
      except IntegrityError as e:
        logging.warning('checkpoint step %d is not usable, falling back to an earlier one: %s',
                        step, e)
        self._quarantine(step)
    return None, None

  def _quarantine(self, step: int) -> None:
    """Moves checkpoint `step` into `<directory>.corrupt/` (process 0) and rescans the rest."""
    if distributed.is_writer():
      aside = os.path.join(f'{self.directory}.corrupt', str(step))
      if os.path.exists(aside):
        shutil.rmtree(aside)
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      shutil.move(self.step_dir(step), aside)
    distributed.barrier(f'quarantine {self.step_dir(step)}')
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk with their digests."""
    self._seal()

  def close(self) -> None:
    """Waits for pending saves (and writes their digests), then releases the manager."""
    self._seal()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def prune(directory: str, keep: int) -> list[int]:
  """Deletes all but the newest `keep` checkpoints in directory; returns the steps deleted.

  For a finished stage, whose exported params replace its checkpoints (process 0 deletes).
  """
  if not os.path.isdir(directory):
    return []
  steps = sorted(int(n) for n in os.listdir(directory)
                 if n.isdigit() and os.path.isdir(os.path.join(directory, n)))
  gone = steps[:max(len(steps) - keep, 0)]
  if distributed.is_writer():
    for step in gone:  # oldest first: a kill part-way leaves the newest ones
      shutil.rmtree(os.path.join(directory, str(step)))
  distributed.barrier(f'prune {directory}')
  return gone


def save_params(path: str, params: Any) -> str:
  """Writes a params tree to `path` (an orbax directory, replaced if present); returns the path.

  The digest manifest is written once Orbax has finished, so a folder with one is complete.
  """
  path = os.path.abspath(path)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, params, force=True)
    ckptr.wait_until_finished()
  write_manifest(path)
  return path


def params_metadata(path: str) -> Any:
  """Returns the tree of ShapeDtypeStructs (no sharding) of the params stored at `path`."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path}: no params directory (expected one written by save_params)')
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(path)
  tree = getattr(meta, 'item_metadata', meta)
  tree = getattr(tree, 'tree', tree)
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), np.dtype(m.dtype)), tree,
                      is_leaf=lambda m: hasattr(m, 'shape') and hasattr(m, 'dtype'))


def load_params(path: str, mesh: Optional[Mesh] = None, dtype=None) -> Any:
  """Returns the params saved at `path`, laid out by sharding.PARAM_RULES on `mesh`.

  Without a mesh they land on the default device. `dtype` (e.g. 'bfloat16') casts on read.
  The files are checked against their digests first (IntegrityError naming the file).
  """
  shapes = params_metadata(path)
  verify(os.path.abspath(path))
  if dtype is not None:
    shapes = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.dtype(dtype)), shapes)
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: device, shapes)
  else:
    shardings = sharding.param_shardings(mesh, shapes)
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(os.path.abspath(path), abstract(shapes, shardings))


class MetricsWriter:
  """Appends metrics to workdir/metrics.jsonl, and to TensorBoard when it is importable."""

  def __init__(self, workdir: str, resume_step: int = 0):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.enabled = distributed.is_writer()  # a multi-host run logs once, from process 0
    self.tb = None
    if not self.enabled:
      return
    if os.path.exists(self.path):  # a resumed run drops the lines logged after its checkpoint
      with open(self.path, encoding='utf-8') as f:
        kept = [l for l in f if l.strip() and json.loads(l).get('step', 0) <= resume_step]
      with open(self.path, 'w', encoding='utf-8') as f:
        f.writelines(kept)
    found = lambda name: importlib.util.find_spec(name) is not None
    if found('tensorboardX'):  # optional: event files only when a writer is installed
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self.tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
    elif found('tensorboard') and found('torch'):
      from torch.utils.tensorboard import SummaryWriter  # pylint: disable=g-import-not-at-top
      self.tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, metrics: dict) -> None:
    """Appends one line {'step': step, **metrics} (and TensorBoard scalars)."""
    if not self.enabled:
      return
    metrics = {k: float(v) for k, v in metrics.items()}
    with open(self.path, 'a', encoding='utf-8') as f:
      f.write(json.dumps({'step': step, **metrics}) + '\n')
    if self.tb is not None:
      for k, v in metrics.items():
        self.tb.add_scalar(k, v, step)

  def close(self) -> None:
    """Flushes and closes the TensorBoard writer."""
    if self.tb is not None:
      self.tb.close()
