"""Model directories (srlm_jax/model_dir.py) and their export (launch/export.py) against
transformers: the params round-trip, a sharded multi-host export loads in transformers and
gives srlm_jax's logits."""

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers

import multihost
import srlm_jax
from srlm_jax import checkpoint
from srlm_jax import llama
from srlm_jax import model_dir
from srlm_jax import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory):
  """A model directory of the tiny model with perturbed params (seed 1: not tiny:0's)."""
  base = srlm_jax.load('tiny:0')
  params = jax.tree.map(lambda x: x * 1.5, srlm_jax.load('tiny:1').params)
  path = checkpoint.save_params(str(tmp_path_factory.mktemp('m') / 'params'), params)
  model_dir.write(path, base, base='tiny:0')
  return path, base, params


def _flat(params):
  return {sharding.path_str(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_model_dir_loads_the_saved_params_config_and_tokenizer(tiny_dir):
  path, base, params = tiny_dir
  model = srlm_jax.load(path)
  assert model.config.replace(param_dtype='float32') == base.config.replace(param_dtype='float32')
  got, want = _flat(model.params), _flat(params)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  text = 'Self-rewarding models judge their own answers.'
  assert model.tokenizer.encode(text) == base.tokenizer.encode(text)
  assert model.tokenizer.eos_id == base.tokenizer.eos_id
  info = json.load(open(os.path.join(path, model_dir.MARKER)))
  assert info['base'] == 'tiny:0' and info['dtype'] == 'float32'


def test_model_dir_errors_name_what_is_wrong(tiny_dir, tmp_path):
  path, _, params = tiny_dir
  bare = checkpoint.save_params(str(tmp_path / 'bare'), params)
  with pytest.raises(FileNotFoundError, match='srlm_model.json: missing.*model_dir.write'):
    srlm_jax.load(bare)
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(path, tmp_path / 'edited')
  config = tmp_path / 'edited' / 'config.json'
  config.write_text(config.read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers": 3'))
  with pytest.raises(checkpoint.IntegrityError, match='config.json: .*changed'):
    srlm_jax.load(str(tmp_path / 'edited'))


def test_multihost_sharded_export_loads_in_transformers_with_the_same_logits(tiny_dir, tmp_path,
                                                                           monkeypatch):
  """Two processes of two devices each: each writes its share of the files, one tensor at a
  time; the files' union is the params, and transformers' forward gives srlm_jax's logits."""
  path, base, params = tiny_dir
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
      p for p in (ROOT, os.environ.get('PYTHONPATH')) if p))  # the processes import srlm_jax
  out = tmp_path / 'hf'
  logs = multihost.run([os.path.join(ROOT, 'launch', 'export.py'), f'--model={path}',
                        f'--out={out}', '--mesh=1,4,1', '--max_shard_mb=0.05'],
                       processes=2, devices_per_process=2, timeout=600)
  index = json.load(open(out / 'model.safetensors.index.json'))
  files = sorted(set(index['weight_map'].values()))
  assert len(files) > 2
  assert sorted(f for f in os.listdir(out) if f.endswith('.safetensors')) == files
  for i, log in enumerate(logs):  # process i wrote files i, i + 2, ...
    assert f'process {i} wrote {len(files[i::2])} of the {len(files)} files' in log, log[-2000:]
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  union = {}
  for f in files:
    union.update(load_file(str(out / f)))
  flat = _flat(params)
  want = {'model.embed_tokens.weight': flat['embed/embedding'],
          'model.norm.weight': flat['final_norm/scale']}
  for i in range(base.config.n_layers):
    pre = f'model.layers.{i}.'
    want[pre + 'input_layernorm.weight'] = flat['layers/attn_norm/scale'][i]
    want[pre + 'post_attention_layernorm.weight'] = flat['layers/mlp_norm/scale'][i]
    for proj in 'qkvo':
      want[pre + f'self_attn.{proj}_proj.weight'] = flat[f'layers/attn/{proj}_proj/kernel'][i].T
    for proj in ('gate', 'up', 'down'):
      want[pre + f'mlp.{proj}_proj.weight'] = flat[f'layers/mlp/{proj}_proj/kernel'][i].T
  assert union.keys() == want.keys() == index['weight_map'].keys()
  for k in want:
    np.testing.assert_array_equal(union[k], want[k], err_msg=k)
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32)
  tokens = np.array([base.tokenizer.encode('The quick brown fox jumps over the lazy dog.')],
                    np.int32)
  with torch.no_grad():
    expected = hf(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
  got = np.asarray(llama.forward(base.config, params, tokens))
  assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-4
  tok = transformers.AutoTokenizer.from_pretrained(str(out))
  assert tok('hello world')['input_ids'] == base.tokenizer.hf('hello world')['input_ids']
