"""The OASST configs read their seed and eval data through TFDS exactly as from JSONL.

launch/build_data.py builds both forms from the same (cut) OASST files; the loop's seed reader
and the eval pairs loader then get the same records from `<dir>` and from `tfds:<dir>`.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

from srlm_jax import data
from srlm_jax import evaluate
from srlm_jax import loop

pytest.importorskip('tensorflow_datasets')
pytest.importorskip('array_record')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINES = {'oasst1': 900, 'ranked': 500, 'quality': 400}  # source lines kept: seconds to build


def load_config(name: str):
  spec = importlib.util.spec_from_file_location(f'test_tfds_{name}',
                                                os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def head(src: str, dst: str, n: int) -> str:
  with open(src, encoding='utf-8') as f, open(dst, 'w', encoding='utf-8') as out:
    for _, line in zip(range(n), f):
      out.write(line)
  return dst


@pytest.fixture(scope='module')
def built(tmp_path_factory, shared_data):
  """Returns (JSONL dir, TFDS dir) built by launch/build_data.py from cut OASST files."""
  tmp = tmp_path_factory.mktemp('tfds_sources')
  flat = os.path.join(shared_data, 'oasst2_en_first_turn')
  sources = {
      'oasst1': head(os.path.join(shared_data, 'oasst1', 'en-validation.jsonl'),
                     str(tmp / 'oasst1.jsonl'), LINES['oasst1']),
      'oasst2_ranked': head(os.path.join(flat, '0_EFT_seed_data_input.jsonl'),
                            str(tmp / 'ranked.jsonl'), LINES['ranked']),
      'oasst2_quality': head(os.path.join(flat, 'oasst2_evaluation_fine_tuning.jsonl'),
                             str(tmp / 'quality.jsonl'), LINES['quality'])}
  jsonl_dir, tfds_dir = str(tmp / 'jsonl'), str(tmp / 'tfds')
  subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'build_data.py'),
                  f'--out_dir={jsonl_dir}', f'--tfds_dir={tfds_dir}',
                  *(f'--{k}={v}' for k, v in sources.items())],
                 check=True, capture_output=True, timeout=600)
  return jsonl_dir, tfds_dir


def no_model(name):
  raise AssertionError(f'a model ({name}) was loaded while only reading data')


@pytest.mark.parametrize('name', ['smollm2_oasst', 'llama3_8b', 'paper_llama2_70b'])
def test_oasst_config_reads_the_same_seed_and_eval_data_through_tfds(built, name, tmp_path):
  jsonl_dir, tfds_dir = built
  from_jsonl = load_config(name).get_config(jsonl_dir)
  from_tfds = load_config(name).get_config(f'tfds:{tfds_dir}')
  assert from_tfds.data.ift == f'tfds:ift/train@{tfds_dir}'
  assert from_tfds.eval.pairs == f'tfds:human_pairs/validation@{tfds_dir}'
  seeds = loop.read_seed_data(from_jsonl)
  n_ift = len(data.read_jsonl(os.path.join(jsonl_dir, 'ift.jsonl')))
  assert len(seeds['ift']) == min(n_ift, from_jsonl.data.max_ift or n_ift) > 10
  assert len(seeds['eft']) > 10
  assert loop.read_seed_data(from_tfds) == seeds
  for config in (from_jsonl, from_tfds):  # small enough to validate and build a Loop
    config.creation.few_shot = 2
  runs = [loop.Loop(c, str(tmp_path / f'w{i}'), load_model=no_model)
          for i, c in enumerate((from_jsonl, from_tfds))]
  assert runs[0].eval_groups and runs[1].eval_groups == runs[0].eval_groups
  assert runs[1].seeds == runs[0].seeds


def test_eval_pairs_and_rankings_through_tfds_equal_the_jsonl(built):
  jsonl_dir, tfds_dir = built
  pairs = os.path.join(jsonl_dir, 'human_pairs.jsonl')
  source = f'tfds:human_pairs/validation@{tfds_dir}'
  assert evaluate.load_judge_groups(source) == evaluate.load_judge_groups(pairs)
  assert evaluate.load_judge_groups(source, 7) == evaluate.load_judge_groups(pairs, 7)
  # Rankings: each record's replies come back as a list of dicts, as in the JSONL.
  rankings = [obj for _, _, obj in data.read_jsonl(os.path.join(jsonl_dir, 'eft_eval.jsonl'))]
  got = data.read_source(f'tfds:eft_eval/validation@{tfds_dir}')
  assert [w for w, _, _ in got[:1]] == [f'tfds:eft_eval/validation@{tfds_dir}']
  assert [n for _, n, _ in got] == list(range(1, len(rankings) + 1))
  keep = ('id', 'response', 'rank', 'score')
  assert [obj for _, _, obj in got] == [
      {'id': r['id'], 'prompt': r['prompt'],
       'responses': [{k: x[k] for k in keep} for x in r['responses']]} for r in rankings]
  # A ranking without prompt_id gets its group id from where it was read: that alone differs.
  without_id = lambda groups: [{k: v for k, v in g.items() if k != 'id'} for g in groups]
  assert without_id(evaluate.load_judge_groups(f'tfds:eft_eval/validation@{tfds_dir}')) == \
      without_id(evaluate.load_judge_groups(os.path.join(jsonl_dir, 'eft_eval.jsonl')))


def test_bad_tfds_sources_name_what_is_wrong(built, tmp_path):
  _, tfds_dir = built
  with pytest.raises(ValueError, match=r"'tfds:ift@/x': a TFDS source is "
                     r'tfds:<config>/<split>@<data_dir>'):
    data.read_source('tfds:ift@/x')
  empty = str(tmp_path / 'nothing_here')
  with pytest.raises(FileNotFoundError, match=f'{empty}: no built TFDS dataset oasst_srlm/ift.*'
                     f'--tfds_dir={empty}'):
    data.read_source(f'tfds:ift/train@{empty}')
  with pytest.raises(ValueError, match=r"has no split 'validation' \(splits: train\)"):
    data.read_source(f'tfds:ift/validation@{tfds_dir}')
  with pytest.raises(ValueError, match=r"no TFDS config 'ifft' in oasst_srlm"):
    data.read_source(f'tfds:ifft/train@{tfds_dir}')
  config = load_config('smollm2_oasst').get_config(f'tfds:{empty}')
  with pytest.raises(FileNotFoundError, match=empty):
    loop.read_seed_data(config)


def test_tfds_source_without_tensorflow_datasets_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)  # import fails, as uninstalled
  monkeypatch.delitem(sys.modules, 'srlm_jax.tfds_builders', raising=False)
  monkeypatch.delattr(sys.modules['srlm_jax'], 'tfds_builders', raising=False)
  with pytest.raises(ImportError, match='tfds:ift/train@/x: reading TFDS needs '
                     'tensorflow-datasets, array_record and importlib_resources'):
    data.read_source('tfds:ift/train@/x')
  assert data.read_source(os.path.join(loop.EMBEDDED, 'ift_seed.jsonl'))  # JSONL needs none
