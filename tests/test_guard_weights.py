"""Weights integrity (issue 21, cases 1, 3 and 10; issue 22's workdir size), on their
reproductions: an infinite learning rate, flipped bytes in a checkpoint and a params folder, a
block of 0xFF in a safetensors file, config.json fields the model does not implement, and a
tokenizer larger than the embedding.
"""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import multihost
import srlm_jax
from srlm_jax import checkpoint, data_io, hf_io, llama, loop, sharding, train, validate
from srlm_jax.pipeline import stage as stage_lib
from test_checkpoint import flip_bytes, largest_file
from test_loop import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = llama.LlamaConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                        max_seq_len=256)


def _params(config=CFG, seed=0):
  shapes = jax.eval_shape(functools.partial(llama.init_params, config), jax.random.key(0))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32), shapes)


# --- case 1: finiteness -------------------------------------------------------------------------

INF_LR = {'iterations': 1, 'sft.lr': float('inf'), 'sft.end_lr': float('inf'),
          'sft.schedule': 'constant', 'sft.num_steps': 1}


def _assert_no_m1(workdir):
  """Asserts that M1's stage wrote no DONE, no params export and no checkpoint."""
  stage = os.path.join(workdir, 'm1_sft')
  assert not os.path.exists(os.path.join(stage, 'DONE'))
  assert not os.path.exists(os.path.join(stage, 'train', 'params'))
  ckpts = os.path.join(stage, 'train', 'checkpoints')
  assert not os.path.exists(ckpts) or not [n for n in os.listdir(ckpts) if n.isdigit()]
  assert not os.path.exists(os.path.join(workdir, 'iter_1'))


def test_infinite_lr_run_exits_nonzero_without_done(tmp_path):
  """The reproduction as given: one SFT update at lr=inf (config validation refuses it now)."""
  workdir = str(tmp_path / 'w')
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'launch', 'srlm.py'),
       f'--config={os.path.join(ROOT, "configs", "tiny.py")}', f'--workdir={workdir}',
       '--config.iterations=1', '--config.sft.lr=inf', '--config.sft.end_lr=inf',
       '--config.sft.schedule=constant', '--config.sft.num_steps=1'],
      env=dict(os.environ, XLA_FLAGS=multihost.xla_flags(1)), capture_output=True, text=True,
      timeout=600, check=False)
  assert proc.returncode != 0, proc.stderr[-3000:]
  assert 'sft.lr=inf' in proc.stderr or 'non-finite params' in proc.stderr, proc.stderr[-3000:]
  _assert_no_m1(workdir)


def test_infinite_lr_last_update_is_caught_after_it(tmp_path, monkeypatch):
  """The same run past config validation: every param is inf after the only update."""
  monkeypatch.setattr(validate, 'check_loop_config', lambda *a, **k: None)
  monkeypatch.setattr(validate, 'check_train_config', lambda *a, **k: None)
  workdir = str(tmp_path / 'w')
  config = tiny_config(**INF_LR)
  run = loop.Loop(config, workdir, load_model=loop.default_loader(config), progress=False)
  with pytest.raises(FloatingPointError, match=r'm1_sft/train: step 1: non-finite params after '
                     r'the update: embed/embedding \((\d+) of \1\), .*\(no checkpoint in '):
    run.run()
  _assert_no_m1(workdir)


def test_nonfinite_params_names_each_tensor_and_count():
  params = _params()
  assert not train.nonfinite_params(params)
  params['layers']['mlp']['up_proj']['kernel'][1, 3, :5] = np.nan
  params['embed']['embedding'][7, 0] = -np.inf
  mesh = sharding.make_mesh(2, 2, 2)
  sharded = jax.device_put(params, sharding.param_shardings(mesh, params))
  for tree in (params, sharded):
    assert train.nonfinite_params(tree) == {'embed/embedding': 1,
                                            'layers/mlp/up_proj/kernel': 5}
  with pytest.raises(FloatingPointError, match=r'run: step 9: non-finite params after the '
                     r'update: embed/embedding \(1 of 2048\), layers/mlp/up_proj/kernel '
                     r'\(5 of 4096\); .*\(no checkpoint\)'):
    train.check_finite_params(sharded, 9, where='run')


def test_last_good_checkpoint_named_in_the_error_holds_finite_params(tmp_path):
  """More steps: update 4 makes the params inf; the checkpoint due at step 4 is refused."""
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  optimizer = train.make_optimizer(_opt_cfg())
  sft_step = train.make_sft_step(CFG, optimizer)

  def poisoned(state, batch, rng):
    state, metrics = sft_step(state, batch, rng)
    bad = state.step == 4  # the loss of update 4 was computed before it: it is finite
    return state.replace(params=jax.tree.map(lambda p: jnp.where(bad, jnp.inf, p),
                                             state.params)), metrics

  init_fn, shardings = train.make_init(_params(), optimizer, mesh)
  data = _sft_rows(16)
  with pytest.raises(FloatingPointError, match=r'step 4: non-finite params after the update: '
                     r'.*last good checkpoint: step 2 in .*checkpoints/2\)'):
    train.train_loop(poisoned, init_fn, lambda i: data_io.batch_at(data, i, 4), 6,
                     workdir=str(tmp_path), mesh=mesh, shardings=shardings, checkpoint_every=2,
                     progress=False)
  with checkpoint.Checkpoints(str(tmp_path / 'checkpoints'), 2) as ckpts:
    assert ckpts.all_steps() == [2]
    state = ckpts.restore(checkpoint.abstract(jax.eval_shape(init_fn), shardings))
  assert int(state.step) == 2 and not train.nonfinite_params(state.params)


def _opt_cfg():
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(dict(lr=1e-3, end_lr=1e-4, warmup_steps=0, schedule='cosine',
                                        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0,
                                        clip_norm=1.0, num_steps=6))


def _sft_rows(n):
  rng = np.random.default_rng(0)
  rows = [(rng.integers(1, 64, 10).tolist(), [False] * 4 + [True] * 6) for _ in range(n)]
  return data_io.pack(rows, 12, 0)


# --- case 3: integrity --------------------------------------------------------------------------

def test_corrupt_m1_checkpoint_resume_falls_back_and_prunes_when_done(tmp_path, monkeypatch,
                                                                      caplog):
  """The reproduction: the tiny loop's M1 SFT killed before DONE, 64 bytes flipped in its last
  checkpoint, resumed. Also issue 22: once DONE, the stage keeps no checkpoint."""
  workdir = str(tmp_path / 'w')
  config = tiny_config(iterations=1)
  run = loop.Loop(config, workdir, load_model=loop.default_loader(config), progress=False)

  class Killed(Exception):
    pass

  def crash(name):
    if name == 'm1_sft':
      raise Killed(name)
  with monkeypatch.context() as m:
    m.setattr(stage_lib, 'crash_point', crash)
    with pytest.raises(Killed):
      run.sft_m1()
  train_dir = os.path.join(workdir, 'm1_sft', 'train')
  ckpt_dir = os.path.join(train_dir, 'checkpoints')
  assert not loop.is_done(os.path.join(workdir, 'm1_sft'))
  assert sorted(os.listdir(ckpt_dir)) == ['4']  # a finished run keeps its final checkpoint
  first = jax.device_get(checkpoint.load_params(os.path.join(train_dir, 'params')))
  bad = largest_file(os.path.join(ckpt_dir, '4'))
  flip_bytes(bad)
  with caplog.at_level('WARNING'):
    params_dir = run.sft_m1()  # resumes: the corrupt step 4 is moved aside, SFT runs again
  assert bad in caplog.text and 'checkpoint step 4 is not usable' in caplog.text
  assert os.listdir(ckpt_dir + '.corrupt') == ['4']
  assert loop.is_done(os.path.join(workdir, 'm1_sft'))
  again = jax.device_get(checkpoint.load_params(params_dir))
  jax.tree.map(np.testing.assert_allclose, again, first)
  assert not os.listdir(ckpt_dir)  # DONE: sft.keep_after_done=0 keeps none, params/ remains
  stamp = {p: os.path.getmtime(os.path.join(params_dir, p)) for p in os.listdir(params_dir)}
  assert run.sft_m1() == params_dir  # resuming a DONE stage recomputes nothing
  assert stamp == {p: os.path.getmtime(os.path.join(params_dir, p)) for p in stamp}
  exported = largest_file(params_dir)
  flip_bytes(exported)
  with pytest.raises(checkpoint.IntegrityError, match=exported):
    run.models.at(params_dir)


def test_keep_after_done_one_keeps_the_final_checkpoint(tmp_path):
  workdir = str(tmp_path / 'w')
  config = tiny_config(**{'iterations': 1, 'sft.keep_after_done': 1,
                                'sft.checkpoint_every': 1, 'sft.keep': 4})
  loop.Loop(config, workdir, load_model=loop.default_loader(config), progress=False).sft_m1()
  assert os.listdir(os.path.join(workdir, 'm1_sft', 'train', 'checkpoints')) == ['4']


def _export(tmp_path, config=CFG, params=None, tokenizer=None):
  path = str(tmp_path / 'hf')
  hf_io.export_hf(config, _params(config) if params is None else params, path,
                  tokenizer=tokenizer)
  return path


def _tensor_offset(path, name):
  """Returns the byte offset of tensor `name`'s data in a safetensors file."""
  with open(path, 'rb') as f:
    n = int.from_bytes(f.read(8), 'little')
    header = json.loads(f.read(n))
  return 8 + n + header[name]['data_offsets'][0]


@pytest.mark.parametrize('mesh_shape', [None, (1, 2, 2)])
def test_block_of_ff_in_safetensors_is_an_error_naming_the_tensor(tmp_path, mesh_shape):
  """The reproduction: a block of 0xFF bytes (NaN as float32) in a safetensors file."""
  path = _export(tmp_path)
  weights = os.path.join(path, 'model.safetensors')
  name = 'model.layers.1.mlp.up_proj.weight'
  data = bytearray(open(weights, 'rb').read())
  start = _tensor_offset(weights, name) + 256
  data[start:start + 256] = b'\xff' * 256
  open(weights, 'wb').write(bytes(data))
  mesh = None if mesh_shape is None else sharding.make_mesh(*mesh_shape)
  with pytest.raises(ValueError, match=f'{weights}: tensor {name} holds \\d+ NaN or inf values'):
    hf_io.load_hf_dir(path, mesh=mesh)


def test_export_of_nonfinite_params_is_an_error_writing_nothing(tmp_path):
  params = _params()
  params['final_norm']['scale'][3] = np.inf
  with pytest.raises(ValueError, match=r'param final_norm/scale holds 1 NaN or inf values'):
    _export(tmp_path, params=params)
  assert not (tmp_path / 'hf').exists()


def test_clean_export_loads(tmp_path):
  config, params = hf_io.load_hf_dir(_export(tmp_path))
  assert config.vocab_size == CFG.vocab_size
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), _params())


# --- case 10: architecture mismatches -----------------------------------------------------------

@pytest.mark.parametrize('change, field', [
    ({'sliding_window': 64}, 'sliding_window'),
    ({'sliding_window': 64, 'use_sliding_window': True}, 'sliding_window'),
    ({'attention_bias': True}, 'attention_bias'),
    ({'mlp_bias': True}, 'mlp_bias'),
    ({'qkv_bias': True}, 'qkv_bias'),
    ({'pretraining_tp': 2}, 'pretraining_tp'),
    ({'rope_parameters': {'rope_type': 'yarn', 'factor': 4.0, 'rope_theta': 1e4}},
     'rope_parameters.rope_type'),
    ({'partial_rotary_factor': 0.5}, 'partial_rotary_factor'),
    ({'rope_parameters': {'rope_type': 'default', 'rope_theta': 1e4,
                          'partial_rotary_factor': 0.5}},
     'rope_parameters.partial_rotary_factor'),
    ({'num_key_value_heads': 3}, 'num_key_value_heads'),
    ({'head_dim': 7}, 'head_dim'),
])
def test_unimplemented_architecture_field_is_an_error_naming_it(tmp_path, change, field):
  path = _export(tmp_path)
  config_file = os.path.join(path, 'config.json')
  hf_config = json.load(open(config_file))
  hf_config.update(change)
  json.dump(hf_config, open(config_file, 'w'))
  with pytest.raises(ValueError, match=f'{config_file}: {field}='):
    hf_io.load_hf_dir(path)


@pytest.mark.parametrize('change', [
    {'sliding_window': None}, {'sliding_window': 256}, {'sliding_window': 4096},
    {'sliding_window': 64, 'use_sliding_window': False}, {'pretraining_tp': 1},
    {'attention_bias': False, 'mlp_bias': False}, {'partial_rotary_factor': 1.0},
])
def test_fields_that_change_nothing_still_load(tmp_path, change):
  path = _export(tmp_path)
  config_file = os.path.join(path, 'config.json')
  hf_config = json.load(open(config_file))
  hf_config.update(change)
  json.dump(hf_config, open(config_file, 'w'))
  assert hf_io.load_hf_dir(path)[0].n_layers == CFG.n_layers


def test_tokenizer_larger_than_the_embedding_is_an_error(tmp_path):
  """The reproduction: a 1,000-row embedding beside SmolLM2's 49,152-token tokenizer."""
  tok = srlm_jax.load('tiny').tokenizer
  small = CFG.replace(vocab_size=1000)
  path = _export(tmp_path, small, tokenizer=tok)
  with pytest.raises(ValueError, match=f'{path}: the tokenizer has {tok.vocab_size} tokens but '
                     'the embedding .vocab_size. has 1000 rows'):
    srlm_jax.load(path)
  fits = _export(tmp_path / 'fits', CFG.replace(vocab_size=tok.vocab_size), tokenizer=tok)
  assert srlm_jax.load(fits).config.vocab_size == tok.vocab_size
