"""Timing helpers shared by the launch/bench_*.py scripts (imported from beside them)."""

import json
import statistics
import time

import jax
import jax.numpy as jnp


def timed(fn):
  """Returns (fn(), seconds it took)."""
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def matmul_peak(dtype, repeats: int = 5) -> float:
  """Returns the median FLOP/s of large square matmuls in dtype on the default device."""
  n = 2048 if jax.default_backend() == 'cpu' else 8192
  # Random operands: zeros or ones can run faster than real data.
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda x: jnp.dot(x, x))
  f(a).block_until_ready()
  times = [timed(lambda: f(a).block_until_ready())[1] for _ in range(repeats)]
  return 2 * n ** 3 / statistics.median(times)


def write_json(path: str, result: dict) -> None:
  """Writes a benchmark's result as JSON to path ('' writes nothing)."""
  if path:
    with open(path, 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=1)
    print(f'wrote {path}')
