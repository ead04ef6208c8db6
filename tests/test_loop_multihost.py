"""The loop as a two-host job (two local processes, one JAX runtime) against one process.

A file of its own so that it runs beside tests/test_loop.py's SIGKILL test in the two workers.
"""

import os

import pytest

import multihost
from srlm_jax import loop
from test_loop import assert_same_records, load_model, ROOT, tiny_config


@pytest.fixture(scope='module')
def one_iteration(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('tiny_one_iteration'))
  loop.Loop(tiny_config(iterations=1), workdir, load_model=load_model, progress=False).run()
  return workdir


def test_two_processes_write_each_record_once_and_match_one_process(tmp_path, one_iteration):
  """A two-host run of iteration 1 (the batch split over both) ends with the same records."""
  reference = one_iteration
  workdir = tmp_path / 'two_hosts'
  multihost.run([os.path.join(ROOT, 'launch', 'srlm.py'),
                 f'--config={os.path.join(ROOT, "configs", "tiny.py")}', f'--workdir={workdir}',
                 '--config.iterations=1', '--config.mesh=(2,1,1)', '--config.distributed=True'],
                processes=2, devices_per_process=1)
  assert_same_records(workdir, reference)
  sft = lambda w: loop.read_records(os.path.join(w, 'm1_sft', 'train', 'metrics.jsonl'))
  assert [l['step'] for l in sft(workdir)] == [l['step'] for l in sft(reference)]
  assert os.path.exists(os.path.join(workdir, 'iter_1', 'report.md'))
