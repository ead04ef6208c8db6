"""Run identity (issue 21, cases 2, 4, 7, 9): content-keyed caches, config fingerprint, output
digests, the workdir lock, and unreadable input named by file and line."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import pytest

from srlm_jax import data_io
from srlm_jax import evaluate
from srlm_jax import judges
from srlm_jax import loop
from srlm_jax import workdir as workdir_lib
from test_loop import load_model, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'configs', 'tiny.py')


def no_model(name):
  raise AssertionError(f'a model ({name}) was loaded before the workdir was checked')


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """A finished one-iteration tiny run (every stage DONE with its output digests)."""
  workdir = str(tmp_path_factory.mktemp('finished'))
  loop.Loop(tiny_config(iterations=1), workdir, load_model=load_model, progress=False).run()
  return workdir


@pytest.fixture
def copy(finished, tmp_path):
  workdir = str(tmp_path / 'w')
  shutil.copytree(finished, workdir)
  return workdir


# --- case 4: missing records and changed configs ----------------------------------------------

def test_done_records_the_count_and_digest_of_each_output(finished):
  info = json.load(open(os.path.join(finished, 'iter_1', 'candidates', 'DONE')))
  path = os.path.join(finished, 'iter_1', 'candidates', 'candidates.jsonl')
  assert info['outputs']['candidates.jsonl'] == workdir_lib.file_digest(path)
  assert info['outputs']['candidates.jsonl']['records'] == len(loop.read_records(path)) > 0
  for shard in os.listdir(os.path.join(finished, 'iter_1', 'candidates', 'shards')):
    if shard.endswith('.jsonl'):
      path = os.path.join(finished, 'iter_1', 'candidates', 'shards', shard)
      digests = workdir_lib.shard_digests(workdir_lib.shard_sidecar(path))
      assert digests[path]['records'] > 0  # and the arrays beside it
      assert digests[path[:-len('.jsonl')] + '.npz'] == workdir_lib.file_digest(
          path[:-len('.jsonl')] + '.npz')
  history = loop.read_records(os.path.join(finished, 'history.jsonl'))
  assert [h['event'] for h in history] == ['start']


def test_dropping_the_last_candidate_line_is_an_error_naming_the_file(copy):
  path = os.path.join(copy, 'iter_1', 'candidates', 'candidates.jsonl')
  lines = open(path, encoding='utf-8').readlines()
  open(path, 'w', encoding='utf-8').writelines(lines[:-1])
  with pytest.raises(workdir_lib.WorkdirError, match=f'{path}: {len(lines) - 1} records'):
    loop.Loop(tiny_config(iterations=1), copy, load_model=no_model, progress=False).run()
  with pytest.raises(workdir_lib.WorkdirError, match=path):  # and any later reader
    loop.read_records(path)


def test_an_edited_shard_is_an_error_naming_it(copy):
  path = os.path.join(copy, 'iter_1', 'judgments', 'shards', '00000.jsonl')
  text = open(path, encoding='utf-8').read()
  open(path, 'w', encoding='utf-8').write(text.replace(': "', ': "x', 1))  # same line count
  with pytest.raises(workdir_lib.WorkdirError, match=f'{path}: .*00000.json recorded'):
    loop.Loop(tiny_config(iterations=1), copy, load_model=no_model, progress=False).run()


def test_deleted_shard_and_new_temperature_is_refused_naming_the_field(copy):
  os.remove(os.path.join(copy, 'iter_1', 'candidates', 'shards', '00001.jsonl'))
  config = tiny_config(**{'iterations': 1, 'creation.temperature': 1.5})
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r'(?s)these fields differ:\n  creation.temperature: 0.7 -> 1.5\n'):
    loop.Loop(config, copy, load_model=no_model, progress=False).run()
  assert json.load(open(os.path.join(copy, 'config.json')))['creation']['temperature'] == 0.7


def test_changed_n_candidates_is_refused_before_any_compute(copy):
  config = tiny_config(**{'iterations': 1, 'creation.n_candidates': 3})
  with pytest.raises(workdir_lib.WorkdirError, match='creation.n_candidates: 2 -> 3'):
    loop.Loop(config, copy, load_model=no_model, progress=False).run()


def test_the_override_is_recorded_in_the_history(copy):
  config = tiny_config(**{'iterations': 2, 'creation.temperature': 1.5,
                          'allow_config_change': True})
  changed = workdir_lib.check_config(copy, config, allow_change=True)
  assert changed == {'creation.temperature': [0.7, 1.5]}  # iterations may change freely
  last = loop.read_records(os.path.join(copy, 'history.jsonl'))[-1]
  assert last['event'] == 'config_change' and last['changed'] == changed
  assert last['pid'] == os.getpid()
  assert json.load(open(os.path.join(copy, 'config.json')))['creation']['temperature'] == 1.5
  # The same config again is a plain resume.
  assert workdir_lib.check_config(copy, config) == {}
  assert loop.read_records(os.path.join(copy, 'history.jsonl'))[-1]['event'] == 'resume'


def test_fingerprint_ignores_only_the_free_fields():
  a = json.loads(tiny_config().to_json_best_effort())
  b = json.loads(tiny_config(iterations=5, distributed=True).to_json_best_effort())
  c = json.loads(tiny_config(**{'dpo.beta': 0.2}).to_json_best_effort())
  assert workdir_lib.fingerprint(a) == workdir_lib.fingerprint(b) != workdir_lib.fingerprint(c)
  assert workdir_lib.config_diff(a, c) == {'dpo.beta': [0.1, 0.2]}


# --- case 9: unreadable input says where ------------------------------------------------------

def test_non_utf8_jsonl_names_file_and_line(tmp_path):
  path = tmp_path / 'ift.jsonl'
  path.write_bytes(b'{"prompt": "Say hi.", "response": "Hi!"}\n'
                   b'{"prompt": "Caf\xe9?", "response": "Oui."}\n')
  with pytest.raises(ValueError, match=f'{path}:2: not UTF-8 \\(byte 0xe9 at column 16\\)'):
    data_io.read_jsonl(str(path))
  with pytest.raises(ValueError, match=f'{path}:2: not UTF-8'):
    loop.read_records(str(path))
  with pytest.raises(ValueError, match=f'{path}:2: not UTF-8'):
    loop.Loop(tiny_config(**{'data.ift': str(path)}), str(tmp_path / 'w'), load_model=no_model)


def test_config_json_that_is_not_json_names_the_path(copy, tmp_path):
  path = os.path.join(copy, 'config.json')
  text = open(path, encoding='utf-8').read()
  open(path, 'w', encoding='utf-8').write(text[:len(text) // 2])
  with pytest.raises(ValueError, match=f'{path}: malformed JSON'):
    loop.Loop(tiny_config(iterations=1), copy, load_model=no_model, progress=False).run()
  # A model directory's config.json too.
  import srlm_jax  # pylint: disable=g-import-not-at-top
  model_dir = tmp_path / 'model'
  model_dir.mkdir()
  (model_dir / 'config.json').write_text('{"architectures": ["LlamaForCausalLM"], "hidden_')
  with pytest.raises(ValueError, match=f'{model_dir / "config.json"}: malformed JSON'):
    srlm_jax.load(str(model_dir))


@pytest.mark.parametrize('name', ['DONE', 'shard'])
def test_truncated_done_or_shard_names_the_file(copy, name):
  stage = os.path.join(copy, 'iter_1', 'prompts')
  path = os.path.join(stage, 'DONE' if name == 'DONE' else 'shards/00000.jsonl')
  raw = open(path, 'rb').read()
  open(path, 'wb').write(raw[:len(raw) // 2])
  with pytest.raises(ValueError, match=path):  # WorkdirError (the shard) is a ValueError
    loop.Loop(tiny_config(iterations=1), copy, load_model=no_model, progress=False).run()


# --- case 7: the workdir lock -----------------------------------------------------------------

HOLD = ('import sys, time\n'
        'from srlm_jax import workdir\n'
        'held = workdir.lock(sys.argv[1])\n'
        'print("held", flush=True)\n'
        'time.sleep(600)\n')


def _launch(workdir, *args):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'srlm.py'),
                         f'--config={TINY}', f'--workdir={workdir}', '--config.iterations=1',
                         *args], capture_output=True, text=True, timeout=300, check=False)


def test_second_launch_on_a_live_workdir_exits_and_a_dead_holder_is_taken_over(tmp_path):
  workdir = str(tmp_path / 'w')
  workdir_lib.check_config(workdir, tiny_config(iterations=1))  # as a first run leaves it
  holder = subprocess.Popen([sys.executable, '-c', HOLD, workdir], stdout=subprocess.PIPE,
                            text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    start = time.perf_counter()
    proc = _launch(workdir)
    took = time.perf_counter() - start
    assert proc.returncode != 0
    assert f'is in use by pid {holder.pid} on host' in proc.stderr, proc.stderr[-2000:]
    assert not os.path.exists(os.path.join(workdir, 'm1_sft'))
    assert took < 120, took  # no stage ran (the tiny run's SFT alone takes longer)
    with pytest.raises(workdir_lib.WorkdirError, match=f'pid {holder.pid}'):
      workdir_lib.lock(workdir)  # the library refuses too, in this process
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # The holder died without releasing: the next launch takes the lock and goes on to the
  # config check (here refused, which needs no compute).
  proc = _launch(workdir, '--config.creation.n_candidates=3')
  assert proc.returncode != 0
  assert 'is in use' not in proc.stderr
  assert 'creation.n_candidates: 2 -> 3' in proc.stderr, proc.stderr[-2000:]
  assert 'taking over the lock of pid' in proc.stderr
  held = workdir_lib.lock(workdir)
  assert json.load(open(os.path.join(workdir, 'LOCK')))['pid'] == os.getpid()
  held.release()
  assert open(os.path.join(workdir, 'LOCK')).read() == ''


def test_lock_is_released_when_a_run_fails(copy):
  path = os.path.join(copy, 'iter_1', 'candidates', 'candidates.jsonl')
  open(path, 'a', encoding='utf-8').write('{"extra": 1}\n')
  with pytest.raises(workdir_lib.WorkdirError):
    loop.Loop(tiny_config(iterations=1), copy, load_model=no_model, progress=False).run()
  workdir_lib.lock(copy).release()  # not held by the failed run


# --- case 2: caches keyed by content ----------------------------------------------------------

def _groups():
  return [{'id': 'p0', 'prompt': 'Name a prime.', 'responses': ['7', 'Dogs bark.'],
           'ranks': [0.0, 1.0], 'pairs': [[0, 1]]}]


def test_judgment_cache_is_keyed_by_judge_weights_and_seed(tmp_path, monkeypatch):
  import srlm_jax  # pylint: disable=g-import-not-at-top
  calls = []
  real = judges.judge_responses  # evaluate calls it through the judges package
  monkeypatch.setattr(judges, 'judge_responses',
                      lambda model, prompts, *a, **k: calls.append(len(prompts)) or real(
                          model, prompts, *a, **k))
  settings = judges.JudgeSettings(
      k=1, max_new_tokens=4, template=judges.get_template(tiny_config().creation.judge.template))
  cache = str(tmp_path / 'judgments')  # shards per judge key below it
  tiny0, tiny1 = srlm_jax.load('tiny:0'), srlm_jax.load('tiny:1')

  def judged(model, judge_id, seed=0):
    calls.clear()
    _, records = evaluate.judge_groups(model, _groups(), settings, seed=seed, progress=False,
                                       cache_dir=cache, judge_id=judge_id)
    return sum(calls), records

  n, first = judged(tiny0, 'tiny:0')
  assert n == 2
  assert judged(tiny0, 'tiny:0') == (0, json.loads(json.dumps(first)))  # same judge: read back
  n, second = judged(tiny1, 'tiny:1')  # issue 21 case 2: another judge judges again
  assert n == 2 and all(r['settings']['judge'] == 'tiny:1' for r in second)
  assert second[0]['settings']['weights'] != first[0]['settings']['weights']
  # The same name with other weights (a retrained judge), or another seed: judged again.
  changed = dataclasses_replace(tiny0, jax.tree.map(lambda x: x * 1.001, tiny0.params))
  assert judged(changed, 'tiny:0')[0] == 2
  assert judged(tiny0, 'tiny:0', seed=1)[0] == 2
  assert judged(tiny0, 'tiny:0')[0] == 0  # each key's records are still there
  assert len(os.listdir(cache)) == 4  # one folder of shards per key (and its key.json)


def dataclasses_replace(model, params):
  import dataclasses  # pylint: disable=g-import-not-at-top
  return dataclasses.replace(model, params=params)


def test_params_digest_sees_one_changed_value():
  import srlm_jax  # pylint: disable=g-import-not-at-top
  params = srlm_jax.load('tiny:0').params
  digest = workdir_lib.params_digest(params)
  assert workdir_lib.params_digest(params) == digest
  leaves, tree = jax.tree.flatten(params)
  flipped = leaves[0].reshape(-1).at[7].set(leaves[0].reshape(-1)[7] + 1e-3)
  leaves[0] = flipped.reshape(leaves[0].shape)
  assert workdir_lib.params_digest(jax.tree.unflatten(tree, leaves)) != digest
  swapped = jax.tree.map(lambda x: x[::-1], params)  # same sums, other order
  assert workdir_lib.params_digest(swapped) != digest


def test_evaluate_launch_with_another_judge_judges_again(tmp_path):
  """Issue 21 case 2: --judge=tiny:0, then --judge=tiny:1 on the same --out."""
  pairs = tmp_path / 'pairs.jsonl'
  pairs.write_text(json.dumps({'prompt': 'Name a prime.', 'chosen': '7', 'rejected': 'Dogs.'})
                   + '\n')
  out = str(tmp_path / 'x.json')
  texts = {}
  for name in ('tiny:0', 'tiny:1'):
    subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'evaluate.py'),
                    f'--pairs={pairs}', '--k=1', f'--out={out}', f'--judge={name}',
                    '--max_new_tokens=6', '--n_boot=10'],
                   check=True, capture_output=True, text=True, timeout=300)
    assert json.load(open(out))['judge'] == name
    records = loop.read_records(out + '.judgments.jsonl')
    assert len(records) == 2 and {r['settings']['judge'] for r in records} == {name}
    texts[name] = [r['judgments'] for r in records]
  assert texts['tiny:0'] != texts['tiny:1']  # tiny:1 wrote its own judgments


@pytest.mark.parametrize('kind', ['sft', 'dpo'])
def test_training_launch_on_a_live_workdir_exits(tmp_path, kind):
  workdir = str(tmp_path / 'w')
  holder = subprocess.Popen([sys.executable, '-c', HOLD, workdir], stdout=subprocess.PIPE,
                            text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'launch', f'{kind}.py'),
         f'--config={os.path.join(ROOT, "configs", f"{kind}.py")}', f'--workdir={workdir}',
         '--config.model=tiny:0', f'--config.train_data={tmp_path / "data.jsonl"}'],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0
    assert f'is in use by pid {holder.pid} on host' in proc.stderr, proc.stderr[-2000:]
    assert sorted(os.listdir(workdir)) == ['LOCK']  # no checkpoint, no metrics
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
