"""Keeps a long-lived process under the kernel's limit on memory maps by dropping jit's programs.

Each program XLA:CPU compiles keeps its JIT-ed kernels in memory maps of their own for as long
as jit's caches hold it, and a Linux process may have at most vm.max_map_count maps (65530 by
default). Past it mmap fails and the process dies by SIGSEGV, wherever its threads are. A process
that compiles many shapes gets there: the CPU-sized experiment's loop, two iterations, held
54,082 maps at its end (83% of the limit; 2026-12-04), and four of the test files in one pytest
process left 27,362 after their 56 tests (CI's workers, which run ~340 tests each, segfaulted
late in the suite). `release_if_crowded` empties jit's caches when the count passes a fraction of
the limit; the programs still needed are compiled again.
"""

import gc
import logging

import jax

DEFAULT_LIMIT = 65530  # Linux's vm.max_map_count default


def memory_maps() -> int:
  """Returns how many memory maps this process holds (0 where /proc is not there)."""
  try:
    with open('/proc/self/maps', 'rb') as f:
      return sum(1 for _ in f)
  except OSError:
    return 0


def map_limit() -> int:
  """Returns the kernel's limit on a process's memory maps (vm.max_map_count)."""
  try:
    with open('/proc/sys/vm/max_map_count', encoding='ascii') as f:
      return int(f.read().strip())
  except (OSError, ValueError):
    return DEFAULT_LIMIT


def release() -> None:
  """Drops every compiled program jit's caches hold and the arrays only they kept."""
  jax.clear_caches()
  gc.collect()


def release_if_crowded(fraction: float = 0.5) -> bool:
  """Releases the compiled programs when the maps pass `fraction` of the limit; says if it did."""
  maps, limit = memory_maps(), map_limit()
  if maps <= fraction * limit:
    return False
  release()
  logging.info('%d memory maps of at most %d: dropped jit\'s compiled programs (%d maps now)',
               maps, limit, memory_maps())
  return True
