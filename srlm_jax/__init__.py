"""srlm_jax: Self-Rewarding Language Models in JAX.

Public entry points:
  load(path, *, mesh=None, dtype=None) -> Model     a Hugging Face directory, a model directory
                                                    the loop wrote (srlm_jax/model_dir.py), a
                                                    .gguf file or 'smollm2-135m-instruct'
  forward(config, params, tokens, positions=None, mask=None) -> float32 logits [B, T, V]
  generate(model, prompts, *, n=1, max_new_tokens, ...) -> per prompt, n completion strings
"""

import dataclasses
import os
import shutil
from typing import Any, Optional

from srlm_jax.llama import LlamaConfig, forward

__all__ = ['Model', 'LlamaConfig', 'load', 'forward', 'generate', 'resolve_model_path']

SMOLLM2 = 'smollm2-135m-instruct'


@dataclasses.dataclass
class Model:
  """A loaded model: its architecture, its param tree (maybe sharded), its tokenizer."""
  config: LlamaConfig
  params: Any
  tokenizer: Any
  mesh: Optional[Any] = None
  path: str = ''


def resolve_model_path(path: str) -> str:
  """Returns the local file or directory a model name or path refers to."""
  if path.lower() == SMOLLM2:
    from srlm_jax import hf_io  # pylint: disable=g-import-not-at-top
    return hf_io.smollm2_gguf_path()
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'model {path!r}: no such file or directory (expected a Hugging Face directory with '
        f'config.json, a model directory the loop wrote, a .gguf file, or the name {SMOLLM2!r})')
  return path


def cache_dir() -> str:
  """Returns where converted models are cached ($SRLM_JAX_CACHE, else ~/.cache/srlm_jax)."""
  return os.environ.get('SRLM_JAX_CACHE') or os.path.join(
      os.path.expanduser('~'), '.cache', 'srlm_jax')


def _converted_smollm2(gguf_path: str) -> str:
  """Returns a Hugging Face directory converted once from the SmolLM2 GGUF (fast to reload).

  Reading the GGUF means parsing its 49k-entry vocabulary twice (weights and tokenizer), about
  30 s on a laptop CPU; the safetensors copy loads in a few seconds. The cache key is the GGUF's
  size and modification time, and the directory is written to a temporary name and renamed.
  """
  from srlm_jax import hf_io, tokenizer  # pylint: disable=g-import-not-at-top
  stat = os.stat(gguf_path)
  target = os.path.join(cache_dir(), f'smollm2-135m-instruct-{stat.st_size}-{int(stat.st_mtime)}')
  if os.path.exists(os.path.join(target, 'config.json')):
    return target
  config, params = hf_io.load_gguf(gguf_path)
  tmp = f'{target}.tmp.{os.getpid()}'
  hf_io.export_hf(config, params, tmp, tokenizer=tokenizer.from_gguf(gguf_path))
  try:
    os.replace(tmp, target)
  except OSError:  # another process converted it first
    shutil.rmtree(tmp, ignore_errors=True)
  return target


def tiny_config(vocab_size: int) -> LlamaConfig:
  """Returns the architecture of the random 'tiny' model (for tests and quick experiments)."""
  return LlamaConfig(vocab_size=vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                     ffn_dim=128, rope_theta=10000.0, tie_embeddings=True, max_seq_len=2048)


def _tiny(name: str, mesh, dtype) -> Model:
  """Returns a randomly initialised tiny Llama that uses SmolLM2's real tokenizer."""
  import jax  # pylint: disable=g-import-not-at-top
  from srlm_jax import llama, sharding, tokenizer  # pylint: disable=g-import-not-at-top
  seed = int(name.split(':', 1)[1]) if ':' in name else 0
  tok = tokenizer.from_pretrained(_converted_smollm2(resolve_model_path(SMOLLM2)))
  config = tiny_config(tok.vocab_size)
  init = lambda rng: llama.init_params(config, rng)
  key = jax.random.key(seed)
  params = init(key) if mesh is None else sharding.init_params(init, mesh, key)
  if dtype is not None:
    params = jax.tree.map(lambda p: p.astype(dtype), params)
  return Model(config, params, tok, mesh, name)


def load(path: str, *, mesh=None, dtype=None) -> Model:
  """Returns the Model at path, its params placed on mesh's devices when a mesh is given.

  `path` is a Hugging Face directory, a model directory the loop wrote (Orbax params with
  config.json and tokenizer: srlm_jax/model_dir.py), a .gguf file, 'smollm2-135m-instruct', or
  'tiny[:seed]' (a random 2-layer Llama with SmolLM2's tokenizer, for tests and quick
  experiments).
  """
  from srlm_jax import hf_io, model_dir, tokenizer  # pylint: disable=g-import-not-at-top
  if path == 'tiny' or path.startswith('tiny:'):
    return _tiny(path, mesh, dtype)
  path = resolve_model_path(path)
  if os.path.isdir(path) and (model_dir.is_model_dir(path) or not os.path.exists(
      os.path.join(path, 'config.json')) and os.path.exists(os.path.join(path, 'srlm_digests.json'))):
    config, params, tok = model_dir.load(path, mesh=mesh, dtype=dtype)  # errors say what lacks
    return Model(config, params, tok, mesh, path)
  if os.path.abspath(path) == os.path.abspath(_smollm2_path_or_none() or ''):
    path = _converted_smollm2(path)
  if path.endswith('.gguf'):
    config, params = hf_io.load_gguf(path, mesh=mesh, dtype=dtype)
  else:
    config, params = hf_io.load_hf_dir(path, mesh=mesh, dtype=dtype)
  tok = tokenizer.from_pretrained(path)
  if tok.vocab_size > config.vocab_size:  # ids past the embedding would index out of range
    raise ValueError(f'{path}: the tokenizer has {tok.vocab_size} tokens but the embedding '
                     f'(vocab_size) has {config.vocab_size} rows')
  return Model(config, params, tok, mesh, path)


def _smollm2_path_or_none():
  from srlm_jax import hf_io  # pylint: disable=g-import-not-at-top
  try:
    return hf_io.smollm2_gguf_path()
  except FileNotFoundError:
    return None


def generate(model: Model, prompts, **kwargs):
  """Returns, per prompt, a list of n completion strings (see rollout.generate)."""
  from srlm_jax import rollout  # pylint: disable=g-import-not-at-top
  return rollout.generate(model, prompts, **kwargs)
