"""Multi-host runs: one process per host, one program (SPMD), records written once.

Every process runs the same host code on the same inputs, so each holds the same records at
the same point. The numeric work is global: batches are placed on the mesh from host arrays
with each process copying only the rows its own devices hold (`sharding.shard_batch`), and
results come back to every host with `to_host` (an all-gather across processes when an array
spans hosts). Files are written by process 0 alone (`is_writer`), followed by a `barrier` so
that no process reads a file before it exists. The work directory must be one filesystem that
every host sees (NFS, a gcsfuse mount). Orbax checkpoints are written by all processes
together, as Orbax requires.

  distributed.initialize()                        # TPU pods, SLURM: found automatically
  distributed.initialize('10.0.0.1:1234', 2, 0)   # or given explicitly, once per process

With one process every function here is a no-op (or plain `jax.device_get`).
"""

import logging
from typing import Any, Optional

import jax
import numpy as np


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
  """Joins the processes into one JAX runtime (`jax.distributed.initialize`).

  On CPU the cross-process collectives are Gloo's (JAX's default `jax_cpu_collectives_
  implementation`); the tests run two local processes this way.
  """
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  logging.info('process %d of %d; %d local of %d devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def define_flags():
  """Defines --coordinator_address, --num_processes and --process_id for a launch script.

  Returns `init(enabled)`, which calls `initialize` with them when enabled (the config's
  `distributed` field) or when --coordinator_address is given.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  address = flags.DEFINE_string('coordinator_address', None,
                                "Multi-host: process 0's host:port (default: auto-detected).")
  count = flags.DEFINE_integer('num_processes', None, 'Multi-host: the number of processes.')
  index = flags.DEFINE_integer('process_id', None, "Multi-host: this process's index.")

  def init(enabled: bool) -> None:
    if enabled or address.value:
      initialize(address.value, count.value, index.value)
  return init


def multi_process() -> bool:
  """Returns whether this is one of several processes (without starting a backend otherwise)."""
  return jax.distributed.is_initialized() and jax.process_count() > 1


def is_writer() -> bool:
  """Returns whether this process writes the shared records (process 0; the only one alone)."""
  return not multi_process() or jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches barrier `name` (the names must agree; no-op alone)."""
  if multi_process():
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def to_host(tree: Any) -> Any:
  """Returns a tree of arrays as host NumPy arrays, the whole global value on every process."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(get, tree)
