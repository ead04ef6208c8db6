"""Orbax checkpoints: the train state every K steps (keep N, resume the latest), params-only
exports that the next stage (the next iteration, the HF export) loads, and the metrics record.

Restores go straight into the target shardings: a checkpoint is read into sharded arrays
described by an abstract target (ShapeDtypeStructs carrying their sharding), so no full copy
of the state sits on one device.
"""

import importlib.util
import json
import os
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


class Checkpoints:
  """A CheckpointManager over `directory`: saves every `every` steps, keeps the last `keep`."""

  def __init__(self, directory: str, every: int, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.every = every
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=1, create=True,
        enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

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
    return self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def restore(self, target: Any, step: Optional[int] = None) -> Any:
    """Returns checkpoint `step` (default: the latest) read into the abstract `target`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'{self.directory}: no checkpoint to restore')
    return self._manager.restore(step, args=ocp.args.StandardRestore(target))

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def save_params(path: str, params: Any) -> str:
  """Writes a params tree to `path` (an orbax directory, replaced if present); returns the path."""
  path = os.path.abspath(path)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, params, force=True)
    ckptr.wait_until_finished()
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
  """
  shapes = params_metadata(path)
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
