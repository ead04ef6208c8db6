"""Timing helpers shared by the launch/bench_*.py scripts (imported from beside them)."""

import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


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


def torch_model(config, params):
  """Returns a float32 transformers LlamaForCausalLM holding params (kernel.T per layer)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from srlm_jax import hf_io  # pylint: disable=g-import-not-at-top
  p = jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(params))
  lay = p['layers']
  names = {'self_attn.q_proj': ('attn', 'q_proj'), 'self_attn.k_proj': ('attn', 'k_proj'),
           'self_attn.v_proj': ('attn', 'v_proj'), 'self_attn.o_proj': ('attn', 'o_proj'),
           'mlp.gate_proj': ('mlp', 'gate_proj'), 'mlp.up_proj': ('mlp', 'up_proj'),
           'mlp.down_proj': ('mlp', 'down_proj')}
  state = {'model.embed_tokens.weight': p['embed']['embedding'],
           'model.norm.weight': p['final_norm']['scale'],
           'lm_head.weight': (p['embed']['embedding'] if config.tie_embeddings
                              else p['lm_head']['kernel'].T)}
  for i in range(config.n_layers):
    pre = f'model.layers.{i}.'
    state[pre + 'input_layernorm.weight'] = lay['attn_norm']['scale'][i]
    state[pre + 'post_attention_layernorm.weight'] = lay['mlp_norm']['scale'][i]
    for hf, (group, name) in names.items():
      state[pre + hf + '.weight'] = lay[group][name]['kernel'][i].T
  hf_config = transformers.LlamaConfig(**{**hf_io.config_to_hf(config), 'dtype': 'float32'})
  model = transformers.LlamaForCausalLM(hf_config).float().eval()
  model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
  model.generation_config.eos_token_id = None  # every row makes exactly max_new_tokens
  return model


def load_model(path: str, random_init: bool, dtype: str = 'float32', mesh=None):
  """Returns srlm_jax.load(path), or with `random_init` a model of the architecture and
  tokenizer in directory `path` (config.json + tokenizer files) with random weights: the same
  work at the same sizes where the weights cannot travel (a GPU machine without network)."""
  import srlm_jax  # pylint: disable=g-import-not-at-top
  from srlm_jax import hf_config, llama, sharding, tokenizer  # pylint: disable=g-import-not-at-top
  if not random_init:
    return srlm_jax.load(path, mesh=mesh, dtype=dtype)
  with open(os.path.join(path, 'config.json'), encoding='utf-8') as f:
    config = hf_config.config_from_hf(json.load(f))
  config = config.replace(dtype=dtype, param_dtype=dtype)
  init = lambda rng: llama.init_params(config, rng)
  params = (jax.jit(init)(jax.random.key(0)) if mesh is None
            else sharding.init_params(init, mesh, jax.random.key(0)))
  return srlm_jax.Model(config, params, tokenizer.from_pretrained(path), mesh, path)
