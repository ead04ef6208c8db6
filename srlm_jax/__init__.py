"""srlm_jax: Self-Rewarding Language Models in JAX.

Public entry points:
  load(path, *, mesh=None, dtype=None) -> Model     a Hugging Face directory, a .gguf file or
                                                    the name 'smollm2-135m-instruct'
  forward(config, params, tokens, positions=None, mask=None) -> float32 logits [B, T, V]
  generate(model, prompts, *, n=1, max_new_tokens, ...) -> per prompt, n completion strings
"""

import dataclasses
import os
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
        f'config.json, a .gguf file, or the name {SMOLLM2!r})')
  return path


def load(path: str, *, mesh=None, dtype=None) -> Model:
  """Returns the Model at path, its params placed on mesh's devices when a mesh is given."""
  from srlm_jax import hf_io, tokenizer  # pylint: disable=g-import-not-at-top
  path = resolve_model_path(path)
  if path.endswith('.gguf'):
    config, params = hf_io.load_gguf(path, mesh=mesh, dtype=dtype)
  else:
    config, params = hf_io.load_hf_dir(path, mesh=mesh, dtype=dtype)
  return Model(config, params, tokenizer.from_pretrained(path), mesh, path)


def generate(model: Model, prompts, **kwargs):
  """Returns, per prompt, a list of n completion strings (see sampler.generate)."""
  from srlm_jax import sampler  # pylint: disable=g-import-not-at-top
  return sampler.generate(model, prompts, **kwargs)
