"""The self-rewarding loop end to end on the tiny config, and its input validation."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import multihost
from srlm_jax import checkpoint
from srlm_jax import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  """Returns configs/tiny.py's config with dotted-key overrides ('creation.judge.k': 2)."""
  return loop_config('tiny', **overrides)


def loop_config(name: str, **overrides):
  """Returns configs/<name>.py's config with dotted-key overrides."""
  spec = importlib.util.spec_from_file_location(f'cfg_{name}',
                                                os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def load_model(name):
  return loop.default_loader(tiny_config())(name)


@pytest.fixture(scope='module')
def two_iterations(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('tiny_loop'))
  reports = loop.Loop(tiny_config(), workdir, load_model=load_model, progress=False).run()
  return workdir, reports


def test_two_iterations_write_every_stage(two_iterations):
  workdir, reports = two_iterations
  assert loop.is_done(os.path.join(workdir, 'm1_sft'))
  assert [r['iteration'] for r in reports] == [1, 2]
  for t in (1, 2):
    d = os.path.join(workdir, f'iter_{t}')
    for stage in loop.STAGES:
      assert loop.is_done(os.path.join(d, stage)), (t, stage)
    report = json.load(open(os.path.join(d, 'report.json')))
    assert report['prompts']['generated'] == 4
    kept = report['prompts']['kept']
    assert report['candidates'] == 2 * kept
    assert report['judgments']['total'] == 3 * 2 * kept
    assert os.path.exists(os.path.join(d, 'report.md'))
    pairs = loop.read_records(os.path.join(d, 'pairs', 'pairs.jsonl'))
    assert report['pairs'] == len(pairs)
    for p in pairs:
      assert p['chosen_score'] > p['rejected_score']
    decisions = loop.read_records(os.path.join(d, 'pairs', 'decisions.jsonl'))
    assert len(decisions) == kept
    # Forced verdicts (configs/tiny.py): every judgment has a score, so the iteration makes
    # pairs and trains with DPO.
    judged = loop.read_records(os.path.join(d, 'judgments', 'judgments.jsonl'))
    assert all(all(r['valid']) and r['n_valid'] == 3 for r in judged)
    for r in judged:
      for verdict, score, best, mass in zip(r['verdicts'], r['scores'], r['forced_argmax'],
                                            r['score_mass']):
        assert 0.0 <= score <= 5.0
        if verdict == 'forced':
          assert best in (0, 1, 2, 3, 4, 5) and 0.0 < mass <= 1.0
        else:
          assert verdict == 'sampled' and best is None and mass is None
    stats = report['judge_stats']
    assert stats['valid_fraction'] == 1.0 and stats['judgments'] == 3 * 2 * kept
    assert stats == {k: v for k, v in json.load(open(os.path.join(d, 'judgments', 'DONE'))).items()
                     if k != 'outputs'}
    assert 0.0 <= stats['tie_rate'] <= 1.0 and stats['within_candidate_var'] >= 0.0
    assert pairs and report['pairs'] > 0
    dpo_info = json.load(open(os.path.join(d, 'dpo', 'DONE')))
    assert dpo_info['skipped'] is False
    assert report['dpo']['step'] >= 2  # more than one step: a checkpoint lies between them
    # Each sampling stage's prefill counts, added over its shards, and their padded share.
    for stage in ('prompts', 'candidates', 'judgments'):
      prefill = json.load(open(os.path.join(d, stage, 'DONE')))['prefill']
      assert 0 < prefill['prompt_tokens'] <= prefill['prefill_slots'], (stage, prefill)
      assert prefill['padded_fraction'] == round(
          1 - prefill['prompt_tokens'] / prefill['prefill_slots'], 4)
      assert report['padded_fraction'][stage] == prefill['padded_fraction']
    # The judge rubric every request starts with is prefilled once per shard.
    assert json.load(open(os.path.join(d, 'judgments', 'DONE')))['prefill'][
        'shared_prefix_tokens'] > 0
    assert '| prefill padded fraction: prompts / candidates / judgments |' in open(
        os.path.join(d, 'report.md')).read()


def test_resume_after_a_finished_run_recomputes_nothing(two_iterations):
  workdir, _ = two_iterations
  before = {p: os.path.getmtime(p) for p in _files(workdir)}
  loop.Loop(tiny_config(), workdir, load_model=load_model, progress=False).run()
  after = {p: os.path.getmtime(p) for p in _files(workdir) if p in before}
  changed = [p for p in before if before[p] != after.get(p) and 'report' not in p
             and not p.endswith(('.png', 'config.json', 'history.jsonl', 'LOCK'))]
  assert not changed


def test_eval_stage_measures_the_new_models_judge_agreement(two_iterations, tmp_path):
  """config.eval.pairs: the eval stage judges human pairs with M_{t+1} and reports agreement."""
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'w')
  shutil.copytree(two_iterations[0], workdir)
  shutil.rmtree(os.path.join(workdir, 'iter_1', 'eval'))  # only this stage runs again
  pairs = tmp_path / 'human_pairs.jsonl'
  pairs.write_text(''.join(json.dumps(r) + '\n' for r in [
      {'prompt': 'Name a prime number.', 'chosen': '7 is prime.', 'rejected': 'Dogs bark.'},
      {'prompt': 'Name a prime number.', 'chosen': '7 is prime.', 'rejected': '8.'},
      {'prompt': 'What is 2 + 2?', 'chosen': '4', 'rejected': 'It is 5.'}]))
  # Other eval settings on a resume need the override (the eval stage was removed: it reruns).
  config = tiny_config(**{'iterations': 1, 'eval.pairs': str(pairs), 'eval.k': 2,
                          'allow_config_change': True})
  loop.Loop(config, workdir, load_model=load_model, progress=False).run()
  result = json.load(open(os.path.join(workdir, 'iter_1', 'eval', 'eval.json')))
  agreement = result['judge_agreement']
  assert agreement['model'] == 'M2'
  assert agreement['counts']['pairs'] == 3 and agreement['counts']['prompts'] == 2
  assert 0.0 <= agreement['pairwise_accuracy'] <= 1.0  # ties and invalid count 1/2
  judged = loop.read_records(os.path.join(workdir, 'iter_1', 'eval', 'judgments_M2.jsonl'))
  assert len(judged) == 5 and all(len(r['judgments']) == 2 for r in judged)
  assert 'pairwise_accuracy' in open(os.path.join(workdir, 'iter_1', 'report.md')).read()
  assert result['lengths']['all']['mean'] > 0


def _pairwise_accuracy(groups, judged):
  """The paper's pairwise accuracy, written out: 1, 0 or 1/2 (tie or no score) per pair."""
  score = {(r['prompt_id'], r['response_index']): r['mean'] for r in judged}
  hits = []
  for g in groups:
    for i, j in g['pairs']:
      a, b = score[(g['id'], i)], score[(g['id'], j)]
      hits.append(0.5 if a is None or b is None or a == b else float(a > b))
  return float(np.mean(hits))


def _dpo_loss(config, params, arrays, beta):
  """DPO's sigmoid loss over every pair, float64 numpy over a full forward pass."""
  import srlm_jax  # pylint: disable=g-import-not-at-top
  logps = {}
  for side in ('chosen', 'rejected'):
    logits = np.asarray(srlm_jax.forward(config, params, arrays[f'{side}/inputs'],
                                         mask=arrays[f'{side}/mask']), np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, arrays[f'{side}/targets'][..., None].astype(int), -1)[..., 0]
    logps[side] = (picked * arrays[f'{side}/loss_mask']).sum(-1)
  margin = ((logps['chosen'] - arrays['ref_chosen_logps'])
            - (logps['rejected'] - arrays['ref_rejected_logps']))
  return float(np.mean(np.logaddexp(0.0, -beta * margin)))


def test_eval_stage_fills_every_metric(two_iterations):
  """M2 and M3 (and M0, M1 in iteration 1): each metric recomputed from the stage's records."""
  from srlm_jax import evaluate, store  # pylint: disable=g-import-not-at-top
  from srlm_jax.evaluate import ifeval  # pylint: disable=g-import-not-at-top
  from srlm_jax.pipeline import seeds  # pylint: disable=g-import-not-at-top
  workdir, _ = two_iterations
  config = tiny_config()
  groups = evaluate.load_judge_groups(seeds.data_path(config.eval.pairs), config.eval.max_pairs)
  if_records = ifeval.load_prompts(seeds.data_path(config.eval.ifeval), config.eval.max_ifeval)
  for t in (1, 2):
    d = os.path.join(workdir, f'iter_{t}', 'eval')
    result = json.load(open(os.path.join(d, 'eval.json')))
    assert result['model'] == f'M{t + 1}'
    measured = [result] + ([result['baselines']['M0'], result['baselines']['M1']] if t == 1
                           else [])
    assert 'baselines' in result if t == 1 else 'baselines' not in result
    for r in measured:
      name = r['model']
      a = r['judge_agreement']
      for key in ('pairwise_accuracy', 'exact_match', 'spearman', 'kendall_tau', 'five_best'):
        assert key in a and len(a[f'{key}_ci']) == 2, (name, key)
      judged = loop.read_records(os.path.join(d, f'judgments_{name}.jsonl'))
      # every model judges with the same draws, in either iteration: rows differ by the model
      assert {j['settings']['seed'] for j in judged} == {config.seed}, name
      assert a['pairwise_accuracy'] == pytest.approx(_pairwise_accuracy(groups, judged))
      scores = [s for j in judged for s in j['scores']]
      assert a['valid_fraction'] == pytest.approx(np.mean([s is not None for s in scores]))
      responses = loop.read_records(os.path.join(d, f'responses_{name}.jsonl'))
      assert len(responses) == config.eval.max_prompts
      assert r['lengths']['responses']['mean'] == pytest.approx(
          np.mean([x['length'] for x in responses]))
      answers = loop.read_records(os.path.join(d, f'ifeval_{name}.jsonl'))
      follow = r['instruction_following']
      strict = [all(ifeval.check(i, x['response']) for i in rec['instructions'])
                for rec, x in zip(if_records, answers)]
      assert follow['n_prompts'] == len(if_records) == len(answers)
      assert follow['prompt_strict'] == pytest.approx(np.mean(strict))
    assert result['lengths']['all']['mean'] > 0  # this iteration's candidates, as before
    pairs_h2h = [(result['head_to_head'], f'M{t + 1}', f'M{t}')]
    if t == 1:
      pairs_h2h.append((result['baselines']['M1']['head_to_head'], 'M1', 'M0'))
    for h, a_name, b_name in pairs_h2h:
      assert (h['a'], h['b'], h['judge'], h['method']) == (a_name, b_name, 'M0', 'pairwise')
      rows = loop.read_records(os.path.join(d, f'head_to_head_{a_name}_vs_{b_name}.jsonl'))
      outcomes = np.array([x['outcome'] for x in rows], float)
      assert h['win_rate'] == pytest.approx(np.mean((outcomes > 0) + 0.5 * (outcomes == 0)))
      assert 'win_rate' in h['length_controlled'] and 'valid_verdicts' in h['position']
    # DPO's metrics after its last update: the loss of M_{t+1} over every pair, recomputed
    after = result['dpo_after']
    arrays = store.load_arrays(os.path.join(workdir, f'iter_{t}', 'pairs', 'arrays.npz'))
    m = srlm_jax_load(os.path.join(workdir, f'iter_{t}', 'dpo', 'params'))
    assert after['pairs'] == len(arrays['ref_chosen_logps']) >= 1
    assert after['loss'] == pytest.approx(_dpo_loss(m.config, m.params, arrays,
                                                    config.dpo.beta), rel=1e-4, abs=1e-5)
    metrics = loop.read_records(os.path.join(workdir, f'iter_{t}', 'dpo', 'metrics.jsonl'))
    assert max(x['step'] for x in metrics) >= 1  # DPO took at least one step
  # iteration 2's M2 is iteration 1's: its responses were read back, not sampled again
  assert not os.path.exists(os.path.join(workdir, 'iter_2', 'eval', 'responses_M2.jsonl'))


def srlm_jax_load(path):
  import srlm_jax  # pylint: disable=g-import-not-at-top
  return srlm_jax.load(path)


def test_every_model_the_loop_wrote_loads_and_chats(two_iterations):
  """M1, M2 and M3 are model directories: srlm_jax.load gives their params, chat.py answers."""
  import srlm_jax  # pylint: disable=g-import-not-at-top
  workdir, _ = two_iterations
  dirs = [os.path.join(workdir, 'm1_sft', 'train', 'params')] + [
      os.path.join(workdir, f'iter_{t}', 'dpo', 'params') for t in (1, 2)]
  base = load_model('tiny:0')
  for d in dirs:
    model = srlm_jax.load(d)
    assert model.config.replace(param_dtype='float32') == base.config
    want = checkpoint.load_params(d)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(model.params),
                            jax.tree.leaves(want)):
      np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  prompt = 'Name a colour.'
  [[expected]] = srlm_jax.generate(srlm_jax.load(dirs[-1]), [[{'role': 'user',
                                                                'content': prompt}]],
                                   max_new_tokens=6, progress=False)
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'chat.py'),
                         f'--model={dirs[-1]}', f'--prompt={prompt}', '--max_new_tokens=6'],
                        env=dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS=multihost.xla_flags(1)),
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout == expected + '\n'  # the greedy reply, printed


def test_evaluate_workdir_writes_the_run_table(two_iterations, tmp_path):
  """launch/evaluate.py --workdir on the finished tiny run: a row per model M0..M3."""
  workdir, _ = two_iterations
  out = tmp_path / 'table.json'
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'evaluate.py'),
                         f'--workdir={workdir}', f'--out={out}'],
                        env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = json.load(open(out))
  assert [r['model'] for r in table['rows']] == ['M0', 'M1', 'M2', 'M3']
  for r, (t, name) in zip(table['rows'][2:], ((1, 'M2'), (2, 'M3'))):
    result = json.load(open(os.path.join(workdir, f'iter_{t}', 'eval', 'eval.json')))
    assert r['judge']['pairwise_accuracy'] == result['judge_agreement']['pairwise_accuracy']
    assert r['vs_previous']['win_rate'] == result['head_to_head']['win_rate']
    assert r['params'] == os.path.join(workdir, f'iter_{t}', 'dpo', 'params')
  md = open(tmp_path / 'table.md').read()
  assert md.count('\n| M') == 4 and '| M3 |' in proc.stdout


# The tiny config's stages with tests/token_count_stage.py after candidates: a stage from
# outside the package, named by its module path (tests/ is importable under pytest).
WITH_TOKEN_COUNT = ('prompts', 'candidates', 'token_count_stage', 'judgments', 'pairs', 'dpo',
                    'eval')


def assert_token_counts(workdir, t=1):
  """Asserts token_count's records and arrays against transformers' own tokenizer."""
  from srlm_jax import store  # pylint: disable=g-import-not-at-top
  d = os.path.join(workdir, f'iter_{t}')
  hf = load_model('tiny:0').tokenizer.hf  # the transformers tokenizer under ours
  candidates = loop.read_records(os.path.join(d, 'candidates', 'candidates.jsonl'))
  want = [[len(hf(c, add_special_tokens=False)['input_ids']) for c in r['candidates']]
          for r in candidates]
  counted = loop.read_records(os.path.join(d, 'token_count', 'token_counts.jsonl'))
  assert [r['id'] for r in counted] == [r['id'] for r in candidates]
  assert [r['tokens'] for r in counted] == want
  arrays = store.load_arrays(os.path.join(d, 'token_count', 'arrays.npz'))  # digest checked
  np.testing.assert_array_equal(arrays['tokens_PxN'], np.array(want, np.int32))
  info = json.load(open(os.path.join(d, 'token_count', 'DONE')))
  assert info['candidates'] == sum(map(len, want)) and info['tokens'] == sum(map(sum, want))
  assert 'arrays.npz' in info['outputs'] and 'token_counts.jsonl' in info['outputs']
  assert len(os.listdir(os.path.join(d, 'token_count', 'shards'))) == 3 * (-(-len(want) // 2))


def test_a_new_stage_is_one_module_and_a_config_entry(two_iterations, tmp_path):
  """tests/token_count_stage.py joins config.stages; only it runs on the finished workdir."""
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'w')
  shutil.copytree(two_iterations[0], workdir)
  before = {p: os.path.getmtime(p) for p in _files(workdir)}
  config = tiny_config(**{'iterations': 1, 'stages': WITH_TOKEN_COUNT,
                          'allow_config_change': True})  # a stage added on resume: recorded
  loop.Loop(config, workdir, load_model=load_model, progress=False).run()
  assert_token_counts(workdir)
  changed = [p for p in before if before[p] != os.path.getmtime(p) and 'report' not in p
             and not p.endswith(('.png', 'config.json', 'history.jsonl', 'LOCK', 'DONE'))]
  assert not changed  # the other stages were done: not one of their files was written again
  assert 'token_count' in json.load(open(os.path.join(workdir, 'iter_1', 'timings', 'DONE')))


def test_config_stages_are_checked_before_any_compute(tmp_path):
  def no_model(name):
    raise AssertionError('a model was loaded before config.stages was validated')

  for stages, message in (
      (('prompts', 'candidatez'), "stage 'candidatez': not a registered stage"),
      (('candidates', 'prompts'), "'candidates' reads 'prompts', not listed before it"),
      (('prompts', 'prompts'), "'prompts' is listed twice")):
    with pytest.raises(ValueError, match=f'stages=.*{message}'):
      loop.Loop(tiny_config(stages=stages), str(tmp_path / 'w'), load_model=no_model)


def test_bad_eval_pairs_fail_before_any_compute(tmp_path):
  pairs = tmp_path / 'pairs.jsonl'
  pairs.write_text('{"prompt": "Hi", "chosen": "Hello"}\n')

  def no_model(name):
    raise AssertionError('a model was loaded before the eval pairs were validated')

  with pytest.raises(ValueError, match=f"{pairs}:1: .*rejected"):
    loop.Loop(tiny_config(**{'eval.pairs': str(pairs)}), str(tmp_path / 'w'), load_model=no_model)


def _files(root):
  for dirpath, _, names in os.walk(root):
    for n in names:
      yield os.path.join(dirpath, n)


@pytest.mark.parametrize('line, message', [
    ('{"prompt": "Hi", "response": "Hello"', 'malformed JSON'),
    ('{"prompt": "   ", "response": "Hello"}', "field 'prompt' is empty"),
    ('{"response": "Hello"}', "missing field 'prompt'"),
])
def test_bad_seed_data_fails_before_any_compute(tmp_path, line, message):
  seeds = tmp_path / 'ift.jsonl'
  seeds.write_text('{"prompt": "Say hi.", "response": "Hi!"}\n' + line + '\n')
  config = tiny_config(**{'data.ift': str(seeds)})

  def no_model(name):
    raise AssertionError('a model was loaded before the seed data was validated')

  with pytest.raises(ValueError, match=f'{seeds}:2: .*{message}'):
    loop.Loop(config, str(tmp_path / 'w'), load_model=no_model)


def test_unknown_config_key_is_an_error(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'launch', 'srlm.py'),
       f'--config={os.path.join(ROOT, "configs", "tiny.py")}', f'--workdir={tmp_path}',
       '--config.creation.n_candidate=8'],
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode != 0
  assert 'n_candidate' in proc.stderr
  assert not os.listdir(tmp_path)


def assert_same_records(workdir, reference, t=1, exact=False):
  """Asserts that iteration t wrote the same records in both work directories.

  Unless `exact`, non-integer numbers may differ in their last float32 bits: a forced
  verdict's score comes from a forward pass, whose sums round differently when the batch is
  split over devices differently (a two-host run against one host); everything else, texts,
  choices and counts included, must be equal.
  """
  for stage, name in (('prompts', 'prompts.jsonl'), ('prompts', 'rejected.jsonl'),
                      ('candidates', 'candidates.jsonl'), ('judgments', 'judgments.jsonl'),
                      ('pairs', 'pairs.jsonl'), ('pairs', 'decisions.jsonl')):
    got = loop.read_records(os.path.join(workdir, f'iter_{t}', stage, name))
    want = loop.read_records(os.path.join(reference, f'iter_{t}', stage, name))
    if exact:
      assert got == want, name
    else:
      _assert_close(got, want, name)


def _assert_close(got, want, where):
  """Asserts equal JSON values, floats within float32 rounding (relative 1e-5)."""
  if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6), where
  elif isinstance(want, dict) and isinstance(got, dict):
    assert sorted(got) == sorted(want), where
    for k in want:
      _assert_close(got[k], want[k], f'{where}.{k}')
  elif isinstance(want, list) and isinstance(got, list):
    assert len(got) == len(want), where
    for i, (a, b) in enumerate(zip(got, want)):
      _assert_close(a, b, f'{where}[{i}]')
  else:
    assert got == want, where


# One run is killed at each point in turn (in stage order), the next resumes: a shard of the
# stage from outside the package, a shard of a sampling stage, a stage whose work is done but
# not its DONE, and a training step with a checkpoint written (a fresh process each).
KILL_POINTS = ('token_count:shard', 'judgments:shard', 'pairs', 'dpo:checkpoint')


def test_sigkill_inside_each_stage_then_resume_gives_the_same_artifacts(tmp_path,
                                                                        two_iterations):
  """Each run is SIGKILLed at the next point, the next run resumes; the end equals no kills."""
  reference, _ = two_iterations
  workdir = str(tmp_path / 'killed')
  # One iteration (every kill point is in iteration 1) compared with the reference's first;
  # the token_count stage writes records of its own and changes no other stage's.
  cmd = [sys.executable, os.path.join(ROOT, 'launch', 'srlm.py'),
         f'--config={os.path.join(ROOT, "configs", "tiny.py")}', f'--workdir={workdir}',
         '--config.iterations=1', f'--config.stages={WITH_TOKEN_COUNT!r}']
  # The runs share the session's persistent compilation cache (conftest.py): each would
  # otherwise compile everything.
  env = dict(os.environ, XLA_FLAGS=multihost.xla_flags(8),
             PYTHONPATH=os.pathsep.join([os.path.join(ROOT, 'tests'), ROOT,
                                         os.environ.get('PYTHONPATH', '')]))
  dpo_dir = os.path.join(workdir, 'iter_1', 'dpo')
  for point in KILL_POINTS:
    proc = subprocess.run(cmd, env={**env, loop.KILL_AT_ENV: point}, capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == -9, (point, proc.stderr[-3000:])
    if point.endswith(':shard'):  # its first shard sealed, the stage unfinished
      stage_dir = os.path.join(workdir, 'iter_1', point.split(':')[0])
      assert os.path.exists(os.path.join(stage_dir, 'shards', '00000.json'))
      assert not os.path.exists(os.path.join(stage_dir, 'shards', '00001.json'))
      assert not os.path.exists(os.path.join(stage_dir, 'DONE'))
    if point == 'dpo:checkpoint':  # killed inside DPO's training loop, a checkpoint written
      assert os.listdir(os.path.join(dpo_dir, 'checkpoints'))
      assert not os.path.exists(os.path.join(dpo_dir, 'DONE'))
      assert not os.path.exists(os.path.join(dpo_dir, 'params'))
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert_same_records(workdir, reference, exact=True)  # the same batches as the reference
  assert_token_counts(workdir)
  assert loop.read_records(os.path.join(workdir, 'iter_1', 'pairs', 'pairs.jsonl'))
  assert json.load(open(os.path.join(dpo_dir, 'DONE')))['skipped'] is False
  # The DPO resumed from its checkpoint ends where the uninterrupted one did.
  got = checkpoint.load_params(os.path.join(dpo_dir, 'params'))
  want = checkpoint.load_params(os.path.join(reference, 'iter_1', 'dpo', 'params'))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
  # The prefill counts of shards done before a kill are read back from their sidecars.
  for stage in ('prompts', 'candidates', 'judgments'):
    got, want = (json.load(open(os.path.join(w, 'iter_1', stage, 'DONE')))['prefill']
                 for w in (workdir, reference))
    assert got == want, stage
  shards = os.listdir(os.path.join(workdir, 'iter_1', 'judgments', 'shards'))
  assert sorted(shards) == sorted(os.listdir(os.path.join(reference, 'iter_1', 'judgments',
                                                          'shards')))
