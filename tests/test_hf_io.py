"""hf_io against transformers' PyTorch Llama: random tiny configs, the real SmolLM2 GGUF, export.

Logits are compared with relative L2 error over real (non-pad) positions only.
"""

import json
import os

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
import safetensors.numpy
import torch
import transformers

from srlm_jax import hf_io
from srlm_jax import llama
from srlm_jax import sharding

ROPE_DEFAULT = {'rope_type': 'default', 'rope_theta': 10000.0}
# Tiny transformers configs (on top of _hf_model's defaults). With head_dim 8 and theta 1e4 the
# wavelengths are 6, 63, 628 and 6283 positions, so llama3 scaling hits all three of its bands.
HF_CONFIGS = {
    'mha_tied': dict(num_key_value_heads=4, tie_word_embeddings=True),
    'gqa_untied': dict(),
    'gqa_llama3': dict(max_position_embeddings=512, rope_parameters=dict(
        ROPE_DEFAULT, rope_type='llama3', factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=64)),
    'linear_head_dim16': dict(head_dim=16, tie_word_embeddings=True,
                              rope_parameters=dict(ROPE_DEFAULT, rope_type='linear', factor=4.0)),
}
MESSAGES = (
    'Hi!',
    'What is the capital of France? Answer in one word.',
    'Write a haiku about the sea, then explain in two sentences why you chose its images.',
)


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _hf_model(seed=0, **overrides) -> transformers.LlamaForCausalLM:
  kw = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-5, tie_word_embeddings=False, rope_parameters=ROPE_DEFAULT)
  kw.update(overrides)
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw)).float().eval()
  with torch.no_grad():  # larger-than-default weights and non-unit norms, so mistakes show
    for name, p in model.named_parameters():
      p.copy_(1 + 0.2 * torch.randn_like(p) if 'norm' in name else 0.3 * torch.randn_like(p))
  return model


def _left_padded(rows, pad=0):
  length = max(len(r) for r in rows)
  tokens = np.full((len(rows), length), pad, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    tokens[i, length - len(r):] = r
    mask[i, length - len(r):] = 1
  return tokens, mask


def _random_batch(vocab, lengths=(16, 11, 5, 1), seed=0):
  rng = np.random.default_rng(seed)
  return _left_padded([rng.integers(1, vocab, n) for n in lengths])


def _assert_logits_match(config, params, torch_model, tokens, mask, offset=0, tol=1e-4):
  positions = np.asarray(llama.default_positions(mask)) + offset
  got = np.asarray(llama.forward(config, params, tokens, positions=positions, mask=mask))
  want = reference.torch_logits(torch_model, tokens, mask, positions)
  real = mask.astype(bool)
  assert _rel(got[real], want[real]) < tol
  return got


def _save(model, path, **kw):
  model.save_pretrained(str(path), **kw)
  return str(path)


def _leaves(params) -> dict:
  return {sharding.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def _assert_rule_shardings(params, mesh):
  want = _leaves(sharding.param_shardings(mesh, params))
  for name, x in _leaves(params).items():
    assert x.sharding.mesh == mesh, name
    assert x.sharding.spec == want[name].spec, name


# --- safetensors directories: random tiny configs against transformers ---


@pytest.mark.parametrize('name', list(HF_CONFIGS))
def test_load_hf_dir_matches_transformers(tmp_path, name):
  model = _hf_model(**HF_CONFIGS[name])
  config, params = hf_io.load_hf_dir(_save(model, tmp_path))
  assert config.param_dtype == 'float32'
  assert config.tie_embeddings == model.config.tie_word_embeddings
  assert ('lm_head' in params) != config.tie_embeddings
  hf_io.check_params(config, params)
  tokens, mask = _random_batch(config.vocab_size)
  _assert_logits_match(config, params, model, tokens, mask)
  # Far-off positions make the low rotary frequencies (where scaling acts) matter.
  far = _assert_logits_match(config, params, model, tokens, mask, offset=200)
  if config.rope_scaling is not None:  # the scaling is really exercised
    unscaled = llama.forward(config.replace(rope_scaling=None), params, tokens,
                             positions=np.asarray(llama.default_positions(mask)) + 200, mask=mask)
    assert _rel(unscaled, far) > 1e-3


def test_sharded_checkpoint_loads_like_single_file(tmp_path):
  model = _hf_model()
  single = _save(model, tmp_path / 'single')
  shards = _save(model, tmp_path / 'shards', max_shard_size='10KB')
  assert os.path.isfile(os.path.join(shards, 'model.safetensors.index.json'))
  assert len([f for f in os.listdir(shards) if f.endswith('.safetensors')]) > 1
  config1, params1 = hf_io.load_hf_dir(single)
  config2, params2 = hf_io.load_hf_dir(shards)
  assert config1 == config2
  jax.tree.map(np.testing.assert_array_equal, params1, params2)


def test_load_hf_dir_into_mesh(tmp_path):
  path = _save(_hf_model(**HF_CONFIGS['gqa_llama3']), tmp_path)
  config, params = hf_io.load_hf_dir(path)
  mesh = sharding.make_mesh(2, 2, 2)
  config_m, params_m = hf_io.load_hf_dir(path, mesh=mesh)
  assert config_m == config
  _assert_rule_shardings(params_m, mesh)
  assert _leaves(params_m)['layers/mlp/up_proj/kernel'].sharding.spec == jax.P(
      None, 'fsdp', 'tensor')  # really split, not replicated
  jax.tree.map(np.testing.assert_array_equal, params, params_m)
  tokens, mask = _random_batch(config.vocab_size)
  want = llama.forward(config, params, tokens, mask=mask)
  tokens_m, mask_m = sharding.shard_batch(mesh, tokens, mask)
  with jax.set_mesh(mesh):
    got = llama.forward(config, params_m, tokens_m, mask=mask_m)
  assert _rel(got, want) < 1e-5


def test_load_hf_dir_dtypes(tmp_path):
  model = _hf_model()
  path = _save(model, tmp_path / 'f32')
  config, params = hf_io.load_hf_dir(path, dtype='bfloat16')
  assert config.param_dtype == 'bfloat16'
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  bf16_path = _save(model.to(torch.bfloat16), tmp_path / 'bf16')
  config, params_bf16 = hf_io.load_hf_dir(bf16_path)
  assert config.param_dtype == 'bfloat16'
  jax.tree.map(np.testing.assert_array_equal, params, params_bf16)
  config, params = hf_io.load_hf_dir(bf16_path, dtype=jnp.float32)
  assert config.param_dtype == 'float32'
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}


def test_config_round_trip():
  for overrides in HF_CONFIGS.values():
    config = hf_io.config_from_hf(_hf_model(**overrides).config.to_dict())
    assert hf_io.config_from_hf(hf_io.config_to_hf(config)) == config
  legacy = {'architectures': ['LlamaForCausalLM'], 'vocab_size': 10, 'hidden_size': 8,
            'intermediate_size': 16, 'num_hidden_layers': 1, 'num_attention_heads': 2,
            'rope_theta': 5e5, 'rope_scaling': {'type': 'linear', 'factor': 2.0}}
  config = hf_io.config_from_hf(legacy)  # transformers 4.x spelling
  assert (config.rope_theta, config.rope_scaling) == (5e5, llama.RopeScaling('linear', 2.0))
  assert (config.n_kv_heads, config.head_dim, config.tie_embeddings) == (2, 4, False)


# --- the real SmolLM2-135M-Instruct GGUF ---


@pytest.fixture(scope='module')
def smollm2(smollm2_gguf):
  return hf_io.load_gguf(smollm2_gguf)


@pytest.fixture(scope='module')
def chat_batch():
  tokenizer = reference.smollm2_hf_tokenizer()
  rows = []
  for text in MESSAGES:
    prompt = tokenizer.apply_chat_template([{'role': 'user', 'content': text}], tokenize=False,
                                           add_generation_prompt=True)
    rows.append(tokenizer(prompt, add_special_tokens=False)['input_ids'])
  assert len({len(r) for r in rows}) == len(rows)
  return _left_padded(rows, pad=tokenizer.pad_token_id or 0)


def test_gguf_config(smollm2):
  config, params = smollm2
  assert config == llama.LlamaConfig(
      vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_dim=1536,
      head_dim=64, norm_eps=1e-5, rope_theta=1e5, tie_embeddings=True, max_seq_len=8192)
  hf_io.check_params(config, params)
  assert config.num_params == sum(x.size for x in jax.tree.leaves(params))


def test_gguf_matches_torch_reference(smollm2, chat_batch):
  config, params = smollm2
  tokens, mask = chat_batch
  _assert_logits_match(config, params, reference.torch_smollm2(), tokens, mask)


def test_torch_reference_matches_transformers_gguf_loader(smollm2_gguf, chat_batch):
  # transformers' own GGUF loader undoes llama.cpp's q/k order its own way: agreeing with it
  # shows the reference (and so load_gguf, tested against the reference) is right.
  model = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(smollm2_gguf), gguf_file=os.path.basename(smollm2_gguf),
      dtype=torch.float32).eval()
  tokens, mask = chat_batch
  real = mask.astype(bool)
  want = reference.torch_logits(model, tokens, mask)[real]
  assert _rel(reference.torch_logits(reference.torch_smollm2(), tokens, mask)[real], want) < 1e-5


def test_gguf_into_mesh(smollm2, smollm2_gguf, chat_batch):
  config, params = smollm2
  mesh = sharding.make_mesh(2, 2, 2)
  config_m, params_m = hf_io.load_gguf(smollm2_gguf, mesh=mesh)
  assert config_m == config
  _assert_rule_shardings(params_m, mesh)
  tokens, mask = chat_batch
  want = llama.forward(config, params, tokens, mask=mask)
  with jax.set_mesh(mesh):
    got = llama.forward(config, params_m, tokens, mask=mask)
  assert _rel(np.asarray(got)[mask.astype(bool)], np.asarray(want)[mask.astype(bool)]) < 1e-5


# --- export ---


def test_export_smollm2_loads_in_transformers(smollm2, chat_batch, tmp_path):
  config, params = smollm2
  tokenizer = reference.smollm2_hf_tokenizer()
  out = hf_io.export_hf(config, params, str(tmp_path), tokenizer=tokenizer)
  model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert 'lm_head.weight' not in safetensors.numpy.load_file(
      os.path.join(out, 'model.safetensors'))
  tokens, mask = chat_batch
  _assert_logits_match(config, params, model, tokens, mask)
  assert transformers.AutoTokenizer.from_pretrained(out)('Hello there')['input_ids'] == tokenizer(
      'Hello there')['input_ids']


def test_export_round_trip_untied(tmp_path):
  config = llama.LlamaConfig(vocab_size=64, dim=32, n_layers=3, n_heads=4, n_kv_heads=2,
                             ffn_dim=48, rope_scaling=llama.RopeScaling(
                                 original_max_position_embeddings=64), max_seq_len=512)
  params = llama.init_params(config, jax.random.key(0))
  out = hf_io.export_hf(config, params, str(tmp_path / 'f32'))
  config2, params2 = hf_io.load_hf_dir(out)
  assert config2 == config
  jax.tree.map(np.testing.assert_array_equal, params, params2)
  model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  tokens, mask = _random_batch(config.vocab_size)
  _assert_logits_match(config, params, model, tokens, mask, offset=100)
  config3, params3 = hf_io.load_hf_dir(
      hf_io.export_hf(config, params, str(tmp_path / 'bf16'), dtype='bfloat16'))
  assert config3 == config.replace(param_dtype='bfloat16')
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a.astype(jnp.bfloat16), b), params,
               params3)


# --- GGUF files the tests write ---


def _llama_cpp_permute(w, n_head):
  # convert_hf_to_gguf.py's LlamaModel.permute, verbatim in numpy.
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
      w.shape)


def _write_gguf(path, config, params, arch='llama', raw=None):
  """Writes params as a llama.cpp-style GGUF; raw maps a tensor name to (bytes, quant type)."""
  tensors = safetensors.numpy.load_file(
      os.path.join(hf_io.export_hf(config, params, str(path) + '.hf'), 'model.safetensors'))
  hf_to_gguf = {v: k for k, v in reference._GGUF_TO_HF.items()}  # pylint: disable=protected-access
  writer = gguf.GGUFWriter(str(path), arch)
  writer.add_block_count(config.n_layers)
  writer.add_context_length(config.max_seq_len)
  writer.add_embedding_length(config.dim)
  writer.add_feed_forward_length(config.ffn_dim)
  writer.add_head_count(config.n_heads)
  writer.add_head_count_kv(config.n_kv_heads)
  writer.add_layer_norm_rms_eps(config.norm_eps)
  writer.add_rope_freq_base(config.rope_theta)
  for name, w in tensors.items():
    parts = name.split('.')
    if parts[0] == 'model' and parts[1] == 'layers':
      kind = hf_to_gguf['.'.join(parts[3:-1])]
      gguf_name = f'blk.{parts[2]}.{kind}.weight'
      if kind == 'attn_q':
        w = _llama_cpp_permute(w, config.n_heads)
      elif kind == 'attn_k':
        w = _llama_cpp_permute(w, config.n_kv_heads)
    else:
      gguf_name = {'model.embed_tokens.weight': 'token_embd.weight', 'lm_head.weight':
                   'output.weight', 'model.norm.weight': 'output_norm.weight'}[name]
    if raw and gguf_name in raw:
      data, qtype = raw[gguf_name]
      writer.add_tensor(gguf_name, data, raw_dtype=qtype)
    else:
      writer.add_tensor(gguf_name, np.ascontiguousarray(w, np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return str(path)


TINY = llama.LlamaConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48,
                         rope_theta=1e4, max_seq_len=128)


@pytest.mark.parametrize('tied', [False, True])
def test_gguf_round_trip_undoes_llama_cpp_permutation(tmp_path, tied):
  config = TINY.replace(tie_embeddings=tied)
  params = llama.init_params(config, jax.random.key(1))
  config2, params2 = hf_io.load_gguf(_write_gguf(tmp_path / 'tiny.gguf', config, params))
  assert config2 == config
  jax.tree.map(np.testing.assert_array_equal, params, params2)


# --- errors name the file and the problem ---


def test_error_missing_directory_and_config(tmp_path):
  with pytest.raises(FileNotFoundError, match='no-such-model'):
    hf_io.load_hf_dir(str(tmp_path / 'no-such-model'))
  with pytest.raises(FileNotFoundError, match='config.json'):
    hf_io.load_hf_dir(str(tmp_path))


def test_error_missing_shard(tmp_path):
  path = _save(_hf_model(), tmp_path, max_shard_size='10KB')
  with open(os.path.join(path, 'model.safetensors.index.json')) as f:
    victim = sorted(set(json.load(f)['weight_map'].values()))[-1]
  os.remove(os.path.join(path, victim))
  with pytest.raises(FileNotFoundError, match=f'{victim}.*model.safetensors.index.json'):
    hf_io.load_hf_dir(path)


def test_error_truncated_safetensors(tmp_path):
  path = _save(_hf_model(), tmp_path)
  file = os.path.join(path, 'model.safetensors')
  os.truncate(file, os.path.getsize(file) // 2)
  with pytest.raises(ValueError, match='model.safetensors.*truncated'):
    hf_io.load_hf_dir(path)


def test_error_missing_tensor_and_wrong_shape(tmp_path):
  path = _save(_hf_model(), tmp_path)
  file = os.path.join(path, 'model.safetensors')
  tensors = safetensors.numpy.load_file(file)
  del tensors['model.layers.1.mlp.up_proj.weight']
  safetensors.numpy.save_file(tensors, file, metadata={'format': 'pt'})
  with pytest.raises(ValueError, match='missing tensor model.layers.1.mlp.up_proj.weight'):
    hf_io.load_hf_dir(path)
  with open(os.path.join(path, 'config.json')) as f:
    hf_config = json.load(f)
  hf_config['intermediate_size'] = 40
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(hf_config, f)
  with pytest.raises(ValueError, match=r'model.safetensors: tensor .*gate_proj.weight has shape '
                                       r'\(48, 32\), expected \(40, 32\)'):
    hf_io.load_hf_dir(path)


@pytest.mark.parametrize('change, field', [
    ({'architectures': ['GPT2LMHeadModel']}, 'architectures'),
    ({'architectures': None, 'model_type': 'gpt2'}, 'model_type'),
    ({'attention_bias': True}, 'attention_bias'),
    ({'mlp_bias': True}, 'mlp_bias'),
    ({'rope_parameters': {'rope_type': 'yarn', 'factor': 4.0, 'rope_theta': 1e4}},
     'rope_parameters.rope_type'),
])
def test_error_unsupported_config(tmp_path, change, field):
  path = _save(_hf_model(), tmp_path)
  with open(os.path.join(path, 'config.json')) as f:
    hf_config = json.load(f)
  hf_config.update(change)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(hf_config, f)
  with pytest.raises(ValueError, match=f'config.json: {field}='):
    hf_io.load_hf_dir(path)


def test_error_gguf_of_another_architecture(tmp_path):
  path = str(tmp_path / 'gpt2.gguf')
  writer = gguf.GGUFWriter(path, 'gpt2')
  writer.add_block_count(1)
  writer.add_tensor('token_embd.weight', np.zeros((8, 4), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(ValueError, match="gpt2.gguf: general.architecture is 'gpt2'"):
    hf_io.load_gguf(path)


def test_error_gguf_quant_type_without_dequantiser(tmp_path):
  qtype = gguf.GGMLQuantizationType.Q8_1  # the gguf package can quantise-size it, not dequantise
  block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
  params = llama.init_params(TINY, jax.random.key(0))
  raw = np.zeros((TINY.n_heads * TINY.head_dim, TINY.dim // block * nbytes), np.uint8)
  path = _write_gguf(tmp_path / 'q8_1.gguf', TINY, params,
                     raw={'blk.1.attn_q.weight': (raw, qtype)})
  with pytest.raises(ValueError, match='q8_1.gguf: tensor blk.1.attn_q.weight .*Q8_1'):
    hf_io.load_gguf(path)


def test_check_params_lists_problems():
  params = jax.tree.map(np.asarray, llama.init_params(TINY, jax.random.key(0)))
  hf_io.check_params(TINY, params)
  del params['final_norm']
  params['embed']['embedding'] = np.zeros((65, 32), np.float32)
  params['extra'] = {'w': np.zeros(3)}
  with pytest.raises(ValueError, match=r'my.ckpt do not match the config: missing: '
                                       r'final_norm/scale; extra: extra/w; mis-shaped: '
                                       r'embed/embedding \(65, 32\) \(expected \(64, 32\)\)'):
    hf_io.check_params(TINY, params, source='my.ckpt')
