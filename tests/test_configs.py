"""Every loop config loads, documents its fields, and passes the loop's validation."""

import glob
import importlib.util
import os
import re
import subprocess
import sys

import pytest

from srlm_jax import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOP_CONFIGS = ('demo', 'tiny', 'paper_llama2_70b', 'llama3_8b', 'smollm2_oasst')
OASST_CONFIGS = ('paper_llama2_70b', 'llama3_8b', 'smollm2_oasst')


def load(name):
  spec = importlib.util.spec_from_file_location(f'cfg_{name}',
                                                os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def no_model(name):
  raise AssertionError(f'a model ({name}) was loaded while only validating a config')


@pytest.fixture(scope='module')
def oasst_dir(tmp_path_factory, shared_data):
  out = tmp_path_factory.mktemp('oasst')
  subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'build_data.py'),
                  f'--out_dir={out}'], check=True, capture_output=True, timeout=600)
  return str(out)


def test_every_config_file_is_listed():
  names = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))}
  assert names - {'common', 'sft', 'dpo'} == set(LOOP_CONFIGS)


@pytest.mark.parametrize('name', LOOP_CONFIGS + ('common', 'sft', 'dpo'))
def test_every_field_is_commented_at_its_default(name):
  """Each `c.<field> = ...` in common/sft/dpo has a comment on its line or just above it; the
  loop configs that change fields say why in their docstrings."""
  if name not in ('common', 'sft', 'dpo'):
    assert load(name).__doc__.strip()
    return
  source = open(os.path.join(ROOT, 'configs', f'{name}.py'), encoding='utf-8').read()
  lines = source.splitlines()
  for before, line in zip([''] + lines, lines):
    if re.match(r'\s*c(\.\w+)+ = (?!ml_collections\.ConfigDict\(\)$)', line):
      assert '#' in line or before.strip().startswith('#'), (
          f'configs/{name}.py: uncommented field: {line.strip()}')


@pytest.mark.parametrize('name', LOOP_CONFIGS)
def test_loop_config_validates_without_compute(name, oasst_dir, tmp_path):
  config = load(name).get_config(oasst_dir if name in OASST_CONFIGS else '')
  run = loop.Loop(config, str(tmp_path / 'w'), load_model=no_model)
  assert run.seeds['ift'] and run.seeds['eft']
  assert len(run.seeds['seed_prompts']) >= config.creation.few_shot


def test_paper_config_has_the_papers_settings(oasst_dir):
  c = load('paper_llama2_70b').get_config(oasst_dir)
  assert (c.iterations, c.creation.n_candidates, c.creation.judge.k) == (2, 4, 3)
  assert (c.creation.temperature, c.creation.top_p, c.dpo.beta) == (0.7, 0.9, 0.1)
  assert (c.sft.lr, c.sft.end_lr, c.dpo.lr, c.dpo.end_lr) == (5.5e-6, 1.1e-6, 1e-6, 1e-7)
  assert (c.sft.batch_size, c.dpo.batch_size, c.data.max_ift, c.data.max_eft) == (
      16, 16, 3200, 1630)


def test_missing_oasst_data_names_the_file(tmp_path):
  config = load('smollm2_oasst').get_config(str(tmp_path))
  with pytest.raises((FileNotFoundError, ValueError), match=re.escape(str(tmp_path))):
    loop.Loop(config, str(tmp_path / 'w'), load_model=no_model)
