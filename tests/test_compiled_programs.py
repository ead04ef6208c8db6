"""Dropping jit's compiled programs gives their memory maps back (srlm_jax/compiled_programs.py)."""

import jax
import jax.numpy as jnp

from srlm_jax import compiled_programs


def _compile_shapes(n: int):
  f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(axis=0) + 1.0)
  for size in range(1, n + 1):
    f(jnp.ones((size, 3))).block_until_ready()
  return f


def test_compiled_programs_hold_maps_and_release_gives_them_back():
  compiled_programs.release()
  before = compiled_programs.memory_maps()
  f = _compile_shapes(24)
  held = compiled_programs.memory_maps()
  assert f._cache_size() == 24  # pylint: disable=protected-access
  assert held > before + 24, (before, held)  # at least one map per program
  compiled_programs.release()
  assert f._cache_size() == 0  # pylint: disable=protected-access
  assert compiled_programs.memory_maps() < held - 24, (before, held)


def test_release_if_crowded_acts_only_past_the_fraction(monkeypatch):
  assert compiled_programs.map_limit() > 0
  f = _compile_shapes(2)
  monkeypatch.setattr(compiled_programs, 'map_limit', lambda: 1000)
  monkeypatch.setattr(compiled_programs, 'memory_maps', lambda: 500)
  assert not compiled_programs.release_if_crowded(0.5)
  assert f._cache_size() == 2  # pylint: disable=protected-access
  monkeypatch.setattr(compiled_programs, 'memory_maps', lambda: 501)
  assert compiled_programs.release_if_crowded(0.5)
  assert f._cache_size() == 0  # pylint: disable=protected-access
