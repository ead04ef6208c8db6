"""The run's seed data: IFT (prompt, response) and EFT (prompt, response, judgment) records."""

import os

from srlm_jax import data as data_lib
from srlm_jax import data_io
from srlm_jax import judges

EMBEDDED = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'data')


def data_path(path: str) -> str:
  """Returns path, with 'embedded:<name>' resolved to the package's own seed data."""
  if path.startswith('embedded:'):
    return os.path.join(EMBEDDED, path.split(':', 1)[1])
  return path


def read_seed_data(config) -> dict:
  """Returns the validated seed records; any bad line raises naming its file and line."""
  ift = [(data_io.text_field(r, 'prompt'), data_io.text_field(r, 'response'))
         for r in data_lib.read_source(data_path(config.data.ift))]
  eft, judge = [], judges.get(config.creation.judge.kind)
  for r in data_lib.read_source(data_path(config.data.eft)):
    path, line, _ = r
    judgment = data_io.text_field(r, 'judgment')
    if judge.parse_host(judgment) is None:
      raise ValueError(f'{path}:{line}: EFT judgment has no final '
                       f'"{judge.grammar.keyword}: X" verdict of judge {judge.name!r}')
    eft.append((data_io.text_field(r, 'prompt'), data_io.text_field(r, 'response'), judgment))
  if config.data.max_ift:
    ift = ift[:config.data.max_ift]
  if config.data.max_eft:
    eft = eft[:config.data.max_eft]
  return {'ift': ift, 'eft': eft, 'seed_prompts': [p for p, _ in ift]}
