"""Every loop config loads, documents its fields, and passes the loop's validation."""

import glob
import os
import re
import subprocess
import sys

import pytest

from srlm_jax import config_files
from srlm_jax import loop
from srlm_jax import train
from srlm_jax import validate
from test_loop import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOP_CONFIGS = ('demo', 'tiny', 'paper_llama2_70b', 'llama3_8b', 'smollm2_oasst',
                'tiny_process', 'tiny_irpo', 'smollm2_process', 'smollm2_irpo',
                'smollm2_experiment', 'tiny_grpo', 'smollm2_rlsr')
OASST_CONFIGS = ('paper_llama2_70b', 'llama3_8b', 'smollm2_oasst', 'smollm2_experiment')


def load(name):
  return config_files.module(os.path.join(ROOT, 'configs', f'{name}.py'))


def no_model(name):
  raise AssertionError(f'a model ({name}) was loaded while only validating a config')


@pytest.fixture(scope='module')
def oasst_dir(tmp_path_factory, shared_data):
  out = tmp_path_factory.mktemp('oasst')
  subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'build_data.py'),
                  f'--out_dir={out}'], check=True, capture_output=True, timeout=600)
  return str(out)


def test_config_files_load_by_path_with_an_arg_and_name_a_missing_file(tmp_path):
  assert config_files.CONFIGS == os.path.join(ROOT, 'configs')
  tiny = config_files.get_config(os.path.join(ROOT, 'configs', 'tiny.py'))
  assert tiny.model == 'tiny:0' and tiny.dpo.loss == load('dpo').get_config().loss
  # 'path.py:arg' passes arg to get_config: the OASST configs read their data folder from it.
  oasst = config_files.get_config(os.path.join(ROOT, 'configs', 'smollm2_oasst.py') + ':/d')
  assert oasst.data.ift.startswith('/d/') and oasst.data.eft.startswith('/d/')
  missing = str(tmp_path / 'nope.py')
  with pytest.raises(FileNotFoundError, match=f'config file {missing} does not exist'):
    config_files.get_config(missing)


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
def test_loop_config_validates_without_compute(name, request, tmp_path):
  # Only the OASST configs need ../shared/data (through the oasst_dir fixture).
  arg = request.getfixturevalue('oasst_dir') if name in OASST_CONFIGS else ''
  config = load(name).get_config(arg)
  run = loop.Loop(config, str(tmp_path / 'w'), load_model=no_model)
  # model-written EFT (data.eft_source='model'): human-scored groups the judge model labels
  assert run.seeds['ift'] and (run.seeds['eft'] or run.seeds.get('eft_groups'))
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




# Issue 21, case 8: each reproduction is refused before any model loads, naming its field.
@pytest.mark.parametrize('field, value, expected', [
    ('creation.n_candidates', 0, 'an int >= 2'),
    ('creation.n_candidates', 1, r'an int >= 2 \(a preference pair needs two candidates\)'),
    ('creation.judge.k', 0, 'an int >= 1'),
    ('shard_size', 0, 'an int >= 1'),
    ('creation.num_requests', 0, 'an int >= 1'),
    ('creation.few_shot', 0, r'an int >= 1 \(a request with no examples'),
    ('sft.num_steps', -1, 'an int >= 0'),
    ('creation.temperature', -1.0, 'a finite number >= 0'),
    ('creation.top_p', 0.0, r'a finite number in \(0, 1\]'),
    ('creation.judge.top_p', 1.5, r'a finite number in \(0, 1\]'),
    ('sft.lr', -1e-3, 'a finite number >= 0'),
    ('dpo.lr', float('inf'), 'a finite number >= 0'),
    ('dpo.end_lr', float('nan'), 'a finite number >= 0'),
    ('sft.batch_size', 0, 'an int >= 1'),
    ('dpo.batch_size', -2, 'an int >= 1'),
    ('dpo.beta', 0.0, 'a finite number > 0'),
    ('sft.schedule', 'cosin', "one of 'cosine', 'linear', 'constant'"),
    ('dpo.loss', 'dpoo', 'one of .*sigmoid'),
    ('mesh', (1, 0, 1), r'\(data, fsdp, tensor\)'),
    ('creation.filters.max_words', 0, 'an int >= 1'),
    ('creation.top_p', None, 'type float'),  # ml_collections lets None through
    ('sft.num_steps', True, 'type int'),  # and a bool for an int
    ('grpo.num_generations', 1, r'an int >= 2 \(a group needs two samples\)'),
    ('grpo.reward', 'jugde', r"one of \['id_range', 'judge', 'task', 'token_count'\]"),
    ('grpo.beta', -0.1, 'a finite number >= 0'),
    ('grpo.prompts', 'tasks:sudoku', "'tasks:<kind>' with a kind of"),
])
def test_each_bad_field_is_named_before_any_model_loads(tmp_path, field, value, expected):
  with pytest.raises(validate.ConfigError, match=f'{re.escape(field)}={re.escape(repr(value))}'
                     f': expected {expected}'):
    loop.Loop(tiny_config(**{field: value}), str(tmp_path / 'w'), load_model=no_model)
  assert not os.path.exists(tmp_path / 'w')


def test_every_bad_field_is_listed_at_once(tmp_path):
  config = tiny_config(**{'creation.judge.k': 0, 'shard_size': 0, 'sft.lr': float('inf')})
  with pytest.raises(validate.ConfigError, match='3 invalid fields') as e:
    loop.Loop(config, str(tmp_path / 'w'), load_model=no_model)
  for field in ('creation.judge.k=0', 'shard_size=0', 'sft.lr=inf'):
    assert field in str(e.value)


def test_few_shot_beyond_the_seed_prompts_is_refused(tmp_path):
  config = tiny_config(**{'creation.few_shot': 17, 'data.max_ift': 16})
  with pytest.raises(validate.ConfigError, match='creation.few_shot=17: expected at most the 16 '
                     'seed prompts'):
    loop.Loop(config, str(tmp_path / 'w'), load_model=no_model)
  loop.Loop(tiny_config(**{'creation.few_shot': 16, 'data.max_ift': 16}), str(tmp_path / 'w'),
            load_model=no_model)


@pytest.mark.parametrize('template, expected', [
    ('Rate it.\n{prompt}\n{response}\nAnswer as JSON: {"score": N}', r'\{"score"\}'),
    ('Rate it.\n{prompt}\n{response}\nUse a { brace', 'write a literal brace as'),
    ('Rate {prompt} and {answer}', r'\{answer\}'),
])
def test_judge_template_braces_are_named(tmp_path, template, expected):
  with pytest.raises(validate.ConfigError, match=f'creation.judge.template=.*{expected}'):
    loop.Loop(tiny_config(**{'creation.judge.template': template}), str(tmp_path / 'w'),
              load_model=no_model)


def test_escaped_braces_in_a_template_pass():
  validate.check_loop_config(tiny_config(**{'creation.judge.template':
                                     '{prompt}\n{response}\nEnd with {{"score": N}}.'}))


def test_unknown_fields_get_the_type_check():
  defaults = {'logging.samples': 4, 'console.style': 'plain'}
  assert validate.errors({'logging.samples': '4', 'console.style': 'rich'}, defaults) == [
      "logging.samples='4': expected type int (the default is 4)"]
  assert validate.rule_for('creation.judge.k') is validate.rule_for('judge.k')
  assert validate.rule_for('dpo.lr') is validate.rule_for('lr')
  assert validate.rule_for('some.new_field') is None


def test_training_config_is_validated_before_the_model_loads(tmp_path):
  cfg = load('sft').get_config()
  cfg.model, cfg.train_data, cfg.num_steps = 'no-such-model', str(tmp_path / 'x.jsonl'), -1
  with pytest.raises(validate.ConfigError, match='(?s)sft config: .*num_steps=-1'):
    train.run_sft(cfg, str(tmp_path / 'w'))
  cfg = load('dpo').get_config()
  cfg.model, cfg.batch_size = 'no-such-model', 0
  with pytest.raises(validate.ConfigError, match='(?s)dpo config: .*batch_size=0'):
    train.run_dpo(cfg, str(tmp_path / 'w'))


def test_launch_refuses_a_bad_field_naming_it(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'launch', 'srlm.py'),
       f'--config={os.path.join(ROOT, "configs", "tiny.py")}', f'--workdir={tmp_path / "w"}',
       '--config.creation.n_candidates=1'],
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode != 0
  assert 'creation.n_candidates=1: expected an int >= 2' in proc.stderr
  assert not os.path.exists(tmp_path / 'w')


def test_evaluate_launch_refuses_bad_judge_flags_naming_them(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'launch', 'evaluate.py'), '--judge=no-such-model',
       f'--pairs={tmp_path / "none.jsonl"}', f'--out={tmp_path / "x.json"}', '--k=0',
       '--top_p=1.5', '--template=Rate {prompt} and {response} as {"score": 1}'],
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode != 0
  for expected in ('--k=0: expected an int >= 1', '--top_p=1.5: expected a finite number',
                   '--template=', '{"score"}'):
    assert expected in proc.stderr, proc.stderr[-2000:]
  assert not os.listdir(tmp_path)


def test_self_instruct_launch_refuses_bad_flags_naming_them(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'launch', 'self_instruct.py'), '--model=no-such-model',
       f'--out_dir={tmp_path / "out"}', '--n=1', '--k=0'],
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode != 0
  assert '--n=1: expected an int >= 2' in proc.stderr, proc.stderr[-2000:]
  assert '--k=0: expected an int >= 1' in proc.stderr
  assert not os.path.exists(tmp_path / 'out')
