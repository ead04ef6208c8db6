"""Config files: configs/*.py are Python files named by path (`--config=configs/demo.py`), not
an installed package. This loads them, and lets one config build on another beside it:

  from srlm_jax import config_files

  def get_config(arg: str = ''):
    c = config_files.beside(__file__, 'common.py').get_config(arg)
    c.model = 'smollm2-135m-instruct'
    ...
"""

import importlib.util
import os
import re
import types

# This checkout's configs/ folder (the repository root's, beside the package).
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def module(path: str) -> types.ModuleType:
  """Returns the config file at `path` executed as a module (its get_config and helpers)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config file {path} does not exist')
  stem = re.sub(r'\W', '_', os.path.splitext(os.path.basename(path))[0])
  spec = importlib.util.spec_from_file_location(f'srlm_configs_{stem}', path)
  loaded = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(loaded)
  return loaded


def beside(here: str, file: str) -> types.ModuleType:
  """Returns the config file `file` in the folder of `here` (a config file's __file__)."""
  return module(os.path.join(os.path.dirname(os.path.abspath(here)), file))


def get_config(spec: str):
  """Returns the ConfigDict of a --config value: 'path.py', or 'path.py:arg' for get_config(arg)."""
  path, _, arg = spec.partition(':')
  loaded = module(path)
  return loaded.get_config(arg) if arg else loaded.get_config()
