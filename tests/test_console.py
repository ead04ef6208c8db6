"""The run's console (summary, stage lines, bars, end table), its metrics logs, --dry_run and
--help; the launch-script tests run launch/srlm.py on the tiny config in subprocesses."""

import importlib.util
import io
import json
import os
import re
import struct
import subprocess
import sys
import time

import pytest

import multihost
from srlm_jax import config_help
from srlm_jax import console
from srlm_jax import metrics_log
from test_loop import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'configs', 'tiny.py')




def write_jsonl(path, records):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)


def read_events(logdir):
  """Returns [(tag, step, kind, value)] of every summary value in the event files in logdir.

  Event files are TFRecords (u64 length, u32 crc, data, u32 crc) of Event protos; tensorboardX
  ships the proto, so no TensorFlow or TensorBoard is needed to read them back.
  """
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = []
  for name in sorted(os.listdir(logdir)):
    with open(os.path.join(logdir, name), 'rb') as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        kind = value.WhichOneof('value')
        out.append((value.tag, event.step, kind, value))
  return out


# --- pure parts ---------------------------------------------------------------------------------

def test_summary_names_model_sizes_stages_and_workdir():
  text = '\n'.join(console.summary_lines(tiny_config(), '/tmp/somewhere', 16, 12))
  for expected in ('workdir     /tmp/somewhere', 'tiny:0 (M0)', '16 IFT + 12 EFT',
                   '4 few-shot requests', '2 per prompt, <= 16 tokens', 'k=3 per candidate',
                   '4 steps x batch 4, max_len 160', 'batch 2, max_len 64',
                   'sft, then ' + ', '.join(tiny_config().stages),
                   'M1 -> M2 -> M3'):
    assert expected in text, expected


def test_run_eta_scales_unmeasured_kinds_by_their_prior_cost():
  plans = [console.StagePlan(0, 'sft', 'train', 100, frac=1.0, done=True),
           console.StagePlan(1, 'candidates', 'sample', 50, frac=0.5),
           console.StagePlan(1, 'dpo', 'train', 10)]
  assert console.run_eta(plans, {}, {}) is None  # nothing timed yet
  # Training timed at 0.2 s/token: DPO costs 10 * 0.2; sampling is unmeasured, so its rate is
  # 0.2 * PRIOR_COST['sample'] / PRIOR_COST['train'], for the half left.
  eta = console.run_eta(plans, {'train': 20.0}, {'train': 100.0})
  sample_rate = 0.2 * console.PRIOR_COST['sample'] / console.PRIOR_COST['train']
  assert eta == pytest.approx(10 * 0.2 + 25 * sample_rate)
  # Once sampling is timed its own rate counts.
  eta = console.run_eta(plans, {'train': 20.0, 'sample': 5.0}, {'train': 100.0, 'sample': 25.0})
  assert eta == pytest.approx(10 * 0.2 + 25 * 0.2)


def test_plan_run_sizes_every_stage_from_the_config():
  plans = console.plan_run(tiny_config(iterations=1), n_sft_examples=32)
  units = {p.name: (p.kind, p.units) for p in plans}
  assert units['sft'] == ('train', 4 * 4 * 160)  # num_steps x batch x max_len
  assert units['prompts'] == ('sample', 4 * 16)
  assert units['candidates'] == ('sample', 4 * 2 * 16)
  assert units['judgments'] == ('sample', 4 * 2 * 3 * 8)
  assert [p.name for p in plans] == ['sft', *tiny_config().stages]


def test_the_plan_and_the_text_follow_config_stages(tmp_path):
  config = tiny_config(iterations=1)
  config.stages = ('prompts', 'candidates', 'token_count')
  plans = console.plan_run(config, n_sft_examples=32)
  # A stage the plan cannot size is listed with no weight in the ETA.
  assert [(p.name, p.units) for p in plans[1:]] == [('prompts', 4 * 16),
                                                      ('candidates', 4 * 2 * 16),
                                                      ('token_count', 0)]
  assert 'sft, then prompts, candidates, token_count\n' in '\n'.join(
      console.summary_lines(config, str(tmp_path))) + '\n'
  # Its result line reports the numbers of its DONE info.
  assert console.stage_result(str(tmp_path), 'token_count', {'tokens': 12, 'rows': 4,
                                                             'outputs': {}}) == 'tokens 12, rows 4'
  assert console.stage_result(str(tmp_path), 'token_count', {}) == 'done'


def test_format_seconds():
  assert [console.format_seconds(s) for s in (None, 4.4, 65, 3725)] == ['?', '4s', '1m05s',
                                                                         '1h02m']


def _console(tmp_path, **overrides):
  stream = io.StringIO()
  c = console.Console(tiny_config(**overrides), str(tmp_path), stream=stream, log_metrics=False)
  c.start(16, 16)
  return c, stream


def test_console_says_which_stages_are_skipped_and_where_a_run_resumes(tmp_path):
  c, stream = _console(tmp_path, iterations=1)
  it = tmp_path / 'iter_1'
  write_jsonl(str(it / 'prompts' / 'prompts.jsonl'), [{'id': i} for i in range(3)])
  write_jsonl(str(it / 'candidates' / 'candidates.jsonl'),
              [{'id': i, 'candidates': ['a', 'b']} for i in range(3)])
  (it / 'candidates' / 'DONE').write_text('{}')
  c.stage_skipped(1, 'candidates', str(it / 'candidates'))
  # judgments: one of two shards (2 candidate records, 2 responses each) already on disk
  write_jsonl(str(it / 'judgments' / 'shards' / '00000.jsonl'), [{}] * 4)
  (it / 'judgments' / 'shards' / '00000.json').write_text('{}')  # its digest: complete
  write_jsonl(str(it / 'judgments' / 'shards' / '00001.jsonl'), [{}])  # cut off: no digest
  c.stage_start(1, 'judgments', str(it / 'judgments'))
  bar = c.progress(total=2, unit='prompt')
  bar.update(2)
  c.stage_end(1, 'judgments', str(it / 'judgments'), {}, 3.0)
  # dpo: resumed from its checkpoint at step 4 of 12
  c.stage_start(1, 'dpo', str(it / 'dpo'))
  bar = c.progress(total=12, initial=4, unit='step')
  for _ in range(8):
    bar.update(1)
  write_jsonl(str(it / 'dpo' / 'metrics.jsonl'), [{'step': 12, 'loss': 0.5}])
  c.stage_end(1, 'dpo', str(it / 'dpo'), {'skipped': False}, 2.0)
  c.finish([])
  out = stream.getvalue()
  assert 'candidates: done, 3 prompts, 6 candidates, skipped' in out
  assert 'judgments: resuming at shard 2 (4/6 done)' in out
  assert 'dpo: resuming at step 4/12' in out
  assert 'dpo: 12 steps, loss 0.5000 in 2s' in out
  table = out[out.index('stage'):]
  assert re.search(r'candidates\s+skipped\s+3 prompts, 6 candidates', table)
  assert re.search(r'judgments\s+3s\s+0 responses judged, 0/0 judgments valid', table)
  assert 'total' in table


def test_console_bars_carry_the_stage_name(tmp_path):
  c, _ = _console(tmp_path, iterations=2)
  c.stage_start(2, 'candidates', str(tmp_path / 'iter_2' / 'candidates'))
  handle = c.progress(total=5, desc='generate', unit='prompt')
  assert c._stage.bar.desc.startswith('candidates #2')
  with handle as bar:  # as the sampler uses it: closing a shard's bar keeps the stage's open
    bar.update(5)
  assert c._stage.bar.n == 5
  c.close()
  # Outside the loop a plain bar gets the caller's label.
  bar = console.progress_bar(True, 3, desc='sft', unit='step')
  assert bar.desc == 'sft'
  bar.close()


def test_only_process_0_prints_and_logs(tmp_path, monkeypatch):
  from srlm_jax import distributed  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(distributed, 'is_writer', lambda: False)  # process 1 of a multi-host run
  stream = io.StringIO()
  c = console.Console(tiny_config(), str(tmp_path), stream=stream)
  c.start(16, 16)
  c.stage_start(1, 'dpo', str(tmp_path / 'iter_1' / 'dpo'))
  c.progress(total=4, initial=2, unit='step').update(2)
  c.stage_end(1, 'dpo', str(tmp_path / 'iter_1' / 'dpo'), {}, 1.0)
  c.finish([])
  assert stream.getvalue() == ''
  assert c.run_log.tb is None and not (tmp_path / 'tensorboard').exists()


def test_field_comments_follow_the_configs_a_file_builds_on():
  comments = config_help.field_comments(TINY)
  assert comments['creation.n_candidates'] == 'N responses per prompt (paper: 4)'
  assert comments['sft.lr'].startswith('peak learning rate')  # from configs/sft.py
  assert comments['dpo.beta'] == 'KL strength of the implicit reward'  # from configs/dpo.py
  assert comments['eval.pairs'].startswith('Human-preference pairs JSONL')  # a block above
  assert '[tiny.py: A random model writes no real instructions' in (
      comments['creation.filters.min_words'])
  fields = {line.split(' = ')[0].strip() for line in config_help.field_lines(TINY)}
  assert {'model', 'creation.judge.k', 'sft.batch_size', 'logging.wandb_project'} <= fields


def test_third_party_info_logs_are_off_unless_verbosity_is_given():
  import logging  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  before = absl_logging.get_verbosity(), logging.getLogger().level
  try:
    absl_logging.set_verbosity(absl_logging.INFO)  # what absl sets after parsing flags
    logging.getLogger().setLevel(logging.INFO)
    # Orbax logs through absl's logger; jax and the loop through the standard root logger.
    loggers = (absl_logging.get_absl_logger(), logging.getLogger('jax._src.xla_bridge'))
    console.quiet_third_party(verbosity_given=True)
    assert all(lg.isEnabledFor(logging.INFO) for lg in loggers)
    console.quiet_third_party(verbosity_given=False)
    assert not any(lg.isEnabledFor(logging.INFO) for lg in loggers)
    assert all(lg.isEnabledFor(logging.WARNING) for lg in loggers)
  finally:
    absl_logging.set_verbosity(before[0])
    logging.getLogger().setLevel(before[1])


# --- metrics logs -------------------------------------------------------------------------------

def _judged_iteration(it):
  write_jsonl(str(it / 'judgments' / 'judgments.jsonl'),
              [{'prompt': f'p{i}', 'response': f'r{i}', 'judgments': ['Score: 4'],
                'scores': [4.0, 2.0], 'valid': [True, i % 2 == 0], 'mean': 3.0}
               for i in range(3)])
  write_jsonl(str(it / 'dpo' / 'metrics.jsonl'),
              [{'step': s, 'loss': 0.7 - 0.1 * s, 'rewards/accuracies': 0.5} for s in (1, 2)])


def test_tensorboard_holds_stage_scalars_histograms_and_tables(tmp_path):
  pytest.importorskip('tensorboardX')
  _judged_iteration(tmp_path / 'iter_1')
  log = metrics_log.RunLog(str(tmp_path), tensorboard=True, samples=2)
  log.stage(1, 'judgments', str(tmp_path / 'iter_1' / 'judgments'), 5.0)
  log.stage(1, 'dpo', str(tmp_path / 'iter_1' / 'dpo'), 7.0)
  log.close()
  events = read_events(str(tmp_path / 'tensorboard'))
  scalars = {(tag, step): v.simple_value for tag, step, kind, v in events
             if kind == 'simple_value'}
  assert scalars[('seconds/judgments', 1)] == 5.0
  assert scalars[('counts/judgments', 1)] == 6
  assert scalars[('counts/judgments_valid', 1)] == 5
  assert scalars[('iter_1/dpo/loss', 2)] == pytest.approx(0.5)
  assert scalars[('iter_1/dpo/rewards/accuracies', 1)] == 0.5
  hist = {tag: v.histo for tag, _, kind, v in events if kind == 'histo'}
  assert hist['judge_scores'].num == 5 and hist['judge_scores'].max == 4.0
  texts = [v for tag, _, _, v in events if tag.startswith('samples')]
  assert texts and b'| p0 | r0 | 3.0 | Score: 4 |' in texts[0].SerializeToString()


def test_missing_packages_are_named(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorboardX', None)  # import fails as if not installed
  log = metrics_log.RunLog(str(tmp_path), tensorboard=True)
  assert log.tb is None
  assert any('tensorboardX is not installed' in n and '[tensorboard]' in n for n in log.where())
  monkeypatch.setitem(sys.modules, 'wandb', None)
  with pytest.raises(ImportError,
                     match=r'config.logging.wandb_project=.proj.*pip install "srlm_jax\[wandb\]"'):
    metrics_log.RunLog(str(tmp_path), tensorboard=False, wandb_project='proj')


def test_wandb_offline_run_gets_the_stage_metrics(tmp_path, monkeypatch):
  wandb = pytest.importorskip('wandb')
  monkeypatch.setenv('WANDB_MODE', 'offline')
  monkeypatch.setenv('WANDB_SILENT', 'true')
  _judged_iteration(tmp_path / 'iter_1')
  log = metrics_log.RunLog(str(tmp_path), tensorboard=False, wandb_project='srlm-test',
                           config={'model': 'tiny:0'})
  log.stage(1, 'judgments', str(tmp_path / 'iter_1' / 'judgments'), 5.0)
  log.stage(1, 'dpo', str(tmp_path / 'iter_1' / 'dpo'), 7.0)
  run = log.wandb
  assert run.summary['counts/judgments_valid'] == 5
  assert run.summary['iter_1/dpo/loss'] == pytest.approx(0.5)
  assert run.summary['seconds/dpo'] == 7.0
  assert run.config['model'] == 'tiny:0'
  log.close()
  assert wandb.run is None
  assert [d for d in os.listdir(tmp_path / 'wandb') if d.startswith('offline-run-')]


# --- the launch scripts -------------------------------------------------------------------------

def _launch(args, timeout=900, **env_vars):
  env = {**os.environ, 'XLA_FLAGS': multihost.xla_flags(1), 'COLUMNS': '100', **env_vars}
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                        env=env, timeout=timeout, check=False)


def test_dry_run_prints_config_and_stages_without_loading_a_model(tmp_path):
  workdir = tmp_path / 'w'
  start = time.perf_counter()
  # A model path that does not exist: loading it would fail.
  proc = _launch(['launch/srlm.py', f'--config={TINY}', f'--workdir={workdir}', '--dry_run',
                  '--config.model=/nonexistent/model.gguf'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert time.perf_counter() - start < 120
  out = proc.stdout
  assert 'model       /nonexistent/model.gguf (M0)' in out
  assert re.search(r'judgments #2\s+sample\s+192', out)
  assert "  creation.n_candidates = 2" in out and "  dpo.beta = 0.1" in out
  assert not workdir.exists()


@pytest.mark.parametrize('script,field', [('srlm.py', 'creation.judge.k = 3'),
                                          ('sft.py', 'batch_size = 16'),
                                          ('dpo.py', 'beta = 0.1')])
def test_help_lists_the_config_fields_without_absl_noise(script, field):
  proc = _launch([f'launch/{script}', '--help'], timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert field in out
  assert '--workdir' in out and '--config.<field>=<value>' in out
  assert not re.search(r'--(alsologtostderr|log_dir|jax_|only_check_args)', out)  # absl, jax
  # One line per config field and comment (about 250 with the guard, review, meta-judge, tasks,
  # process and GRPO blocks); absl's and jax's own flags would add hundreds more.
  assert len(out.splitlines()) < 400


def _assert_no_info_logs(text):
  info = [line for line in text.splitlines() if re.match(r'I\d{4} ', line)]
  assert not info, info[:5]


def test_console_of_a_run_its_resumes_and_a_finished_run(tmp_path):
  workdir = tmp_path / 'w'
  args = ['launch/srlm.py', f'--config={TINY}', f'--workdir={workdir}', '--config.iterations=1',
          '--config.creation.num_requests=2']
  # The three runs share the session's persistent compilation cache (conftest.py). Killed
  # inside M1's SFT after its step-2 checkpoint (of 4), then run to the end.
  killed = _launch(args, SRLM_JAX_KILL_AT='sft:checkpoint')
  assert killed.returncode == -9, killed.stderr[-3000:]
  proc = _launch(args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out, err = proc.stdout, proc.stderr
  assert out.startswith('srlm_jax: self-rewarding run')
  assert '\nsft: resuming at step 2/4\n' in out
  assert f'workdir     {workdir}' in out
  for label in ('sft', 'prompts', 'candidates', 'judgments'):
    assert re.search(rf'(^|\r){label}( \[run ETA [^\]]+\])?: +\d+%', err, re.M), label
  assert 'generate' not in err
  for name in ('sft', *tiny_config().stages):
    assert re.search(rf'^{name}: .* in \d[\dhms]*( \(run ETA \S+\))?$', out, re.M), name
  assert re.search(r'^stage +time +result', out, re.M)
  assert f'report: {workdir}/iter_1/report.md' in out
  _assert_no_info_logs(out + err)
  if importlib.util.find_spec('tensorboardX') is None:  # the [tensorboard] extra is missing
    assert 'tensorboardX is not installed' in out
  else:
    assert f'TensorBoard: tensorboard --logdir {workdir}/tensorboard' in out
    events = read_events(str(workdir / 'tensorboard'))
    tags = {tag for tag, _, _, _ in events}
    assert {'m1_sft/loss', 'seconds/sft', 'seconds/candidates', 'counts/candidates',
            'counts/judgments', 'candidate_lengths'} <= tags
    assert any(t.startswith('samples') for t in tags)

  again = _launch(args)
  assert again.returncode == 0, again.stderr[-3000:]
  out = again.stdout
  assert re.search(r'^sft: done, 32 examples, 4 steps, loss [\d.]+, skipped$', out, re.M)
  kept = int(re.search(r'^prompts: done, (\d+) prompts kept, \d+ rejected, skipped$', out,
                       re.M).group(1))
  assert f'\ncandidates: done, {kept} prompts, {2 * kept} candidates, skipped\n' in out
  assert re.search(rf'^judgments: done, {2 * kept} responses judged, \d+/{6 * kept} judgments '
                   'valid, skipped$', out, re.M)
  assert re.search(r'^dpo: done, .*skipped$', out, re.M)
  _assert_no_info_logs(out + again.stderr)
