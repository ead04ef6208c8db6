"""Checkpoints: params-only export and import (onto a mesh, cast on read), the manager's save
schedule and retention, and restores straight into target shardings.

Resuming a training run from a checkpoint is tested with the loop in test_train.py.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from srlm_jax import checkpoint, llama, sharding, train

CFG = llama.LlamaConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64)


def _params(seed=0):
  """Returns host params of CFG's shapes with random values (no compilation needed)."""
  shapes = jax.eval_shape(functools.partial(llama.init_params, CFG), jax.random.key(0))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


def _assert_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_params_roundtrip_onto_a_mesh(tmp_path):
  params = _params()
  path = checkpoint.save_params(str(tmp_path / 'params'), params)
  mesh = sharding.make_mesh(2, 2, 2)
  loaded = checkpoint.load_params(path, mesh)
  _assert_equal(loaded, params)
  expected = sharding.param_shardings(mesh, params)
  assert jax.tree.leaves(jax.tree.map(lambda x, s: x.sharding == s, loaded, expected)) == [
      True] * len(jax.tree.leaves(params))
  assert len(loaded['embed']['embedding'].addressable_shards) == 8
  _assert_equal(checkpoint.load_params(path), params)  # onto the default device
  bf16 = checkpoint.load_params(path, dtype='bfloat16')
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(bf16))
  _assert_equal(bf16, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))
  checkpoint.save_params(path, _params(1))  # replaces what was there
  _assert_equal(checkpoint.load_params(path), _params(1))


def test_load_params_missing_directory_names_it(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / 'nothing')):
    checkpoint.load_params(str(tmp_path / 'nothing'))


def test_manager_saves_every_k_keeps_n_and_restores_into_shardings(tmp_path):
  params = _params()
  optimizer = optax.adamw(1e-3)
  state = train.TrainState(step=np.zeros((), np.int32), params=params,
                           opt_state=optimizer.init(params))
  with checkpoint.Checkpoints(str(tmp_path / 'ckpt'), every=2, keep=2) as ckpts:
    assert ckpts.latest_step() is None
    saved = [ckpts.save(i, state.replace(step=np.int32(i))) for i in range(1, 6)]
    assert saved == [False, True, False, True, False]
    assert ckpts.save(5, state.replace(step=np.int32(5)), force=True)  # e.g. the last step
    ckpts.wait()
    assert ckpts.all_steps() == [4, 5]
  mesh = sharding.make_mesh(2, 2, 2)
  shardings = train.state_shardings(jax.eval_shape(lambda: state), mesh)
  with checkpoint.Checkpoints(str(tmp_path / 'ckpt'), every=2) as ckpts:
    assert ckpts.latest_step() == 5
    restored = ckpts.restore(checkpoint.abstract(jax.eval_shape(lambda: state), shardings))
    older = ckpts.restore(checkpoint.abstract(jax.eval_shape(lambda: state), shardings), step=4)
  assert isinstance(restored, train.TrainState) and int(restored.step) == 5
  assert int(older.step) == 4
  _assert_equal(restored.params, params)
  _assert_equal(restored.opt_state, state.opt_state)
  mu = restored.opt_state[0].mu['layers']['mlp']['up_proj']['kernel']
  assert mu.sharding == shardings.opt_state[0].mu['layers']['mlp']['up_proj']['kernel']
  assert mu.sharding.spec == sharding.fit_spec(sharding.PARAM_RULES[3][1], mu.shape, mesh)


def test_restore_without_checkpoint_raises(tmp_path):
  with checkpoint.Checkpoints(str(tmp_path / 'empty'), every=1) as ckpts:
    with pytest.raises(FileNotFoundError, match='no checkpoint'):
      ckpts.restore({'x': jax.ShapeDtypeStruct((2,), jnp.float32)})


def test_metrics_writer_appends_and_a_resume_drops_lines_past_the_checkpoint(tmp_path):
  log = checkpoint.MetricsWriter(str(tmp_path))
  for step in range(1, 6):
    log.write(step, {'loss': np.float32(1.0 / step)})
  log.close()
  checkpoint.MetricsWriter(str(tmp_path), resume_step=3).close()
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert [l['step'] for l in lines] == [1, 2, 3] and lines[1]['loss'] == 0.5
