"""Runs a launch script as a multi-host job on this machine: N local processes, one JAX runtime.

Each process gets its own fake CPU devices and joins the others through a local coordinator
(jax.distributed with Gloo collectives), as the hosts of a pod would. `xla_flags` gives the XLA
flags of every test process: this one's (conftest), these jobs', the notebook kernels'.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time


# LLVM's optimisation of XLA:CPU's generated loops is much of a small program's compile time, and
# tests compile many small programs: at level 0, tests/test_train.py took 64 s, not 91 s. The
# matmuls are library calls either way and the HLO is the same. The whole suite at XLA's default
# level (2026-12-06, 2-core AMD) took 22:48 rather than 21:23, and five tests that require a row's
# tokens to be the same however rows are batched or sharded failed there (tests/test_rollout.py,
# test_grpo_loop.py).
# A process that computes more than it compiles is the exception: it keeps the optimisations
# (`fast_compile=False`; the GRPO run and the custom_loss notebook, which train for many steps).
FAST_COMPILE = '--xla_backend_optimization_level=0'
# jaxlib 0.10.2 and 0.11.0 send some CPU fusions to YNNPACK, which can crash (SIGSEGV on a worker
# thread, the Python traceback wherever the main thread was) or hang on some shapes (jax-ml/jax
# #39257, #40412). A CI run of this suite fits that: an xdist worker segfaulted at about 95%,
# and the run then timed out, as `--dist loadfile` can after it replaces a crashed worker
# (pytest-xdist #784). The tests turn those fusions off; XLA's own CPU code computes the same
# HLO.
NO_YNN_FUSION = '--xla_cpu_experimental_ynn_fusion_type='


def xla_flags(devices: int = 1, fast_compile: bool = True) -> str:
  """Returns the XLA_FLAGS of a test process with `devices` fake CPU devices; `fast_compile`
  turns LLVM's optimisations off (FAST_COMPILE)."""
  fast = FAST_COMPILE if fast_compile else ''
  return f'--xla_force_host_platform_device_count={devices} {fast} {NO_YNN_FUSION}'


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run(argv: list, *, processes: int = 2, devices_per_process: int = 1,
        timeout: int = 600) -> list:
  """Runs `python argv...` as `processes` processes of one job; returns their output texts.

  Fails (AssertionError with every process's log tail) unless all exit with status 0 within
  `timeout` seconds in all; processes still running then are killed, their logs kept.
  """
  address = f'localhost:{free_port()}'
  env = dict(os.environ, XLA_FLAGS=xla_flags(devices_per_process))
  # Output goes to files, not pipes: a process blocked on a full pipe would stall the others
  # at their next barrier.
  outs = [tempfile.TemporaryFile('w+') for _ in range(processes)]
  procs = [subprocess.Popen(
      [sys.executable, *argv, f'--coordinator_address={address}',
       f'--num_processes={processes}', f'--process_id={i}'],
      env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
           for i, out in enumerate(outs)]
  deadline, timed_out = time.monotonic() + timeout, False
  try:
    for p in procs:
      p.wait(timeout=max(deadline - time.monotonic(), 0.1))
  except subprocess.TimeoutExpired:
    timed_out = True
  finally:
    for p in procs:
      p.kill()
      p.wait()
  logs = []
  for out in outs:
    out.seek(0)
    logs.append(out.read())
    out.close()
  failed = [i for i, p in enumerate(procs) if timed_out or p.returncode != 0]
  assert not failed, (f'timed out after {timeout} s; ' if timed_out else '') + '\n'.join(
      f'process {i} exited with {procs[i].returncode}:\n{logs[i][-3000:]}' for i in failed)
  return logs
