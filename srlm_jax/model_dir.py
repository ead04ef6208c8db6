"""Model directories: the params a training stage saved, with what it takes to use them.

A model directory is the Orbax params folder `checkpoint.save_params` writes (M1's
`<workdir>/m1_sft/train/params`, M_{t+1}'s `<workdir>/iter_<t>/<stage>/params`) plus:

  config.json       the architecture in Hugging Face's Llama form (hf_config.config_to_hf),
                    with `dtype` the params' dtype
  tokenizer files   the base model's tokenizer (its `save_pretrained`), or, for a tokenizer that
                    cannot be saved (sentencepiece), `tokenizer_source` in srlm_model.json: the
                    base model's tokenizer file, checked to exist when the directory is loaded
  srlm_model.json   {'format': 'orbax-params', 'base': the model it was trained from (M0's name
                    or path), 'dtype', 'tokenizer_source' or null}

`srlm_jax.load(dir)` (and so launch/chat.py, sample.py and evaluate.py) reads it; launch/
export.py turns it into a Hugging Face safetensors directory. The digest manifest of the
folder (checkpoint.MANIFEST) is rewritten to cover the added files, so `load` checks them too.
"""

import json
import os
from typing import Any, Optional

import jax
import numpy as np

from srlm_jax import checkpoint
from srlm_jax import distributed
from srlm_jax import hf_config

MARKER = 'srlm_model.json'
FORMAT = 'orbax-params'


def is_model_dir(path: str) -> bool:
  """Returns whether path is a model directory this module wrote (its marker file is there)."""
  return os.path.isfile(os.path.join(path, MARKER))


def _saver(tokenizer: Any):
  """Returns the object whose save_pretrained writes the tokenizer's files, or None."""
  if hasattr(tokenizer, 'save_pretrained'):
    return tokenizer
  hf = getattr(tokenizer, 'hf', None)
  return hf if hasattr(hf, 'save_pretrained') else None


def write(params_dir: str, base_model: Any, *, base: Optional[str] = None) -> str:
  """Returns params_dir after making it a model directory of base_model's architecture.

  `base_model` is the model the params were trained from (anything with .config and
  .tokenizer, e.g. an srlm_jax.Model); `base` names it in srlm_model.json (default
  base_model.path). Process 0 writes; in a multi-host run every process calls it.
  """
  params_dir = os.path.abspath(params_dir)
  if not os.path.isdir(params_dir):
    raise FileNotFoundError(f'{params_dir}: no params directory (checkpoint.save_params writes '
                            'one; model_dir.write adds config and tokenizer beside it)')
  shapes = checkpoint.params_metadata(params_dir)
  dtypes = sorted({np.dtype(s.dtype).name for s in jax.tree.leaves(shapes)})
  dtype = dtypes[0] if len(dtypes) == 1 else 'float32'
  saver = _saver(base_model.tokenizer)
  source = None
  if saver is None:  # e.g. a sentencepiece model: point at the base model's file
    source = os.path.abspath(getattr(base_model.tokenizer, 'source', '') or '')
    if not os.path.exists(source):
      raise ValueError(f'model_dir.write({params_dir}): the tokenizer '
                       f'{type(base_model.tokenizer).__name__} has no save_pretrained and no '
                       f'existing source file ({source!r})')
  if distributed.is_writer():
    config = hf_config.config_to_hf(base_model.config.replace(param_dtype=dtype))
    config['dtype'] = config['torch_dtype'] = dtype
    _write_json(os.path.join(params_dir, 'config.json'), config)
    if saver is not None:
      saver.save_pretrained(params_dir)
    _write_json(os.path.join(params_dir, MARKER), {
        'format': FORMAT, 'base': base if base is not None else str(getattr(base_model, 'path',
                                                                            '')),
        'dtype': dtype, 'tokenizer_source': source})
  distributed.barrier(f'model_dir {params_dir}')
  checkpoint.write_manifest(params_dir)  # now it covers config and tokenizer too
  return params_dir


def _write_json(path: str, obj: dict) -> None:
  tmp = f'{path}.tmp.{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def info(path: str) -> dict:
  """Returns a model directory's srlm_model.json; a clear error when it is not one."""
  marker = os.path.join(path, MARKER)
  if not os.path.isfile(marker):
    hint = (' (an Orbax params folder without config and tokenizer: written before model '
            'directories existed; srlm_jax.model_dir.write(path, srlm_jax.load(<base model>)) '
            'makes it one)') if os.path.isfile(os.path.join(path, checkpoint.MANIFEST)) else ''
    raise FileNotFoundError(f'{marker}: missing; {path} is not a model directory{hint}')
  with open(marker, encoding='utf-8') as f:
    out = json.load(f)
  if out.get('format') != FORMAT:
    raise ValueError(f'{marker}: format {out.get("format")!r}, expected {FORMAT!r}')
  return out


def load(path: str, *, mesh=None, dtype=None) -> tuple:
  """Returns (LlamaConfig, params, tokenizer) of a model directory, params on mesh if given.

  Every file is checked against the folder's digest manifest first (IntegrityError naming it).
  """
  from srlm_jax import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  meta = info(path)
  params = checkpoint.load_params(path, mesh=mesh, dtype=dtype)  # every file's digest first
  config_file = os.path.join(path, 'config.json')
  with open(config_file, encoding='utf-8') as f:
    config = hf_config.config_from_hf(json.load(f), source=config_file)
  name = jax.tree.leaves(params)[0].dtype
  config = config.replace(param_dtype=np.dtype(name).name)
  source = meta.get('tokenizer_source')
  if source and not os.path.exists(source):
    raise FileNotFoundError(f'{os.path.join(path, MARKER)}: tokenizer_source {source} is '
                            'missing (the base model\'s tokenizer moved?)')
  tok = tokenizer_lib.from_pretrained(source or path)
  if tok.vocab_size > config.vocab_size:
    raise ValueError(f'{path}: the tokenizer has {tok.vocab_size} tokens but the embedding has '
                     f'{config.vocab_size} rows')
  return config, params, tok
