"""Checkpoints: params-only export and import (onto a mesh, cast on read), the manager's save
schedule and retention, and restores straight into target shardings; digest manifests
(verified on load and restore, a corrupt checkpoint moved aside) and pruning.

Resuming a training run from a checkpoint is tested with the loop in test_train.py.
"""

import functools
import json
import os
import re

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


# --- integrity: digests written after each save, checked on every restore and load ------------

def flip_bytes(path, offset=None, n=64):
  """Inverts n bytes of the file at path (from its middle unless offset is given)."""
  data = bytearray(open(path, 'rb').read())
  start = len(data) // 2 if offset is None else offset
  for i in range(start, min(start + n, len(data))):
    data[i] ^= 0xFF
  open(path, 'wb').write(bytes(data))


def largest_file(directory):
  files = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs
           if f != checkpoint.MANIFEST]
  return max(files, key=os.path.getsize)


def test_params_folder_digests_are_verified_on_load(tmp_path):
  path = checkpoint.save_params(str(tmp_path / 'params'), _params())
  manifest = json.load(open(os.path.join(path, checkpoint.MANIFEST)))
  assert manifest['files'] and all(len(f['sha256']) == 64 for f in manifest['files'].values())
  _assert_equal(checkpoint.load_params(path), _params())
  data = largest_file(path)
  flip_bytes(data)
  with pytest.raises(checkpoint.IntegrityError, match=re.escape(data)):
    checkpoint.load_params(path)
  checkpoint.save_params(path, _params())  # a new save gets a new manifest
  os.remove(os.path.join(path, checkpoint.MANIFEST))  # as if killed before it was written
  with pytest.raises(checkpoint.IntegrityError, match=f'{checkpoint.MANIFEST}: missing'):
    checkpoint.load_params(path)


def _state(step):
  params = jax.tree.map(lambda x: x + step, _params())
  return train.TrainState(step=np.int32(step), params=params,
                          opt_state=optax.adamw(1e-3).init(params))


def test_restore_good_moves_a_corrupt_checkpoint_aside_and_falls_back(tmp_path, caplog):
  directory = str(tmp_path / 'ckpt')
  with checkpoint.Checkpoints(directory, every=2) as ckpts:
    for step in (2, 4, 6):
      ckpts.save(step, _state(step))
  for step in (2, 4, 6):
    checkpoint.verify(os.path.join(directory, str(step)))  # each one got its manifest
  bad = largest_file(os.path.join(directory, '6'))
  flip_bytes(bad)
  os.remove(os.path.join(directory, '4', checkpoint.MANIFEST))  # a save killed before sealing
  target = checkpoint.abstract(jax.eval_shape(lambda: _state(0)))
  with checkpoint.Checkpoints(directory, every=2) as ckpts:
    with pytest.raises(checkpoint.IntegrityError, match=re.escape(bad)):
      ckpts.restore(target, step=6)
    with caplog.at_level('WARNING'):
      step, state = ckpts.restore_good(target)
    assert step == 2 and int(state.step) == 2
    _assert_equal(state.params, _state(2).params)
    assert ckpts.all_steps() == [2]
    assert sorted(os.listdir(directory + '.corrupt')) == ['4', '6']
    assert bad in caplog.text and 'step 6' in caplog.text and 'step 4' in caplog.text
    assert ckpts.save(4, _state(4))  # the steps after the fallback are saved again
  with checkpoint.Checkpoints(directory, every=2) as ckpts:
    assert ckpts.restore_good(target)[0] == 4


def test_prune_keeps_the_newest(tmp_path):
  directory = str(tmp_path / 'ckpt')
  with checkpoint.Checkpoints(directory, every=1, keep=5) as ckpts:
    for step in (1, 2, 3):
      ckpts.save(step, _state(step))
  assert checkpoint.prune(directory, 1) == [1, 2]
  assert sorted(os.listdir(directory)) == ['3']
  assert checkpoint.prune(directory, 0) == [3] and not os.listdir(directory)
  assert checkpoint.prune(str(tmp_path / 'none'), 0) == []
