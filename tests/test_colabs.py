"""The Colab notebooks in colabs/ run top to bottom on a CPU, with small sizes.

Each notebook has one cell tagged `parameters` (its Colab sizes). The test inserts after it a
cell tagged `injected-parameters` with the small sizes in SMALL, then runs every cell in a fresh
python3 kernel (nbclient; the kernel is this interpreter, cwd is a temporary directory, one CPU
device). Any cell error fails the test. The committed notebooks hold the outputs of such a run;
to refresh them (see colabs/README.md):

  python tests/test_colabs.py            # every notebook; or name some: quickstart judge_study

The injected cell only takes effect when SRLM_JAX_COLAB_SMALL is set, which the runner here does.
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
ENV_FLAG = 'SRLM_JAX_COLAB_SMALL'

# Per notebook, the small sizes: real models and data, just less of them.
SMALL = {
    'quickstart': '''\
MAX_NEW_TOKENS = 32
JUDGE_K = 2
JUDGE_MAX_NEW_TOKENS = 32''',
    # A random 2-layer model that a short SFT on score-only EFT targets teaches to write
    # "Score: N", so that its judgments parse, its candidates get scores and DPO has pairs.
    'one_iteration': '''\
CONFIG = 'tiny'
OVERRIDES = {
    'shard_size': 8, 'creation.num_requests': 6, 'creation.n_candidates': 4,
    'creation.judge.k': 5, 'creation.few_shot': 2, 'data.max_ift': 2, 'data.max_eft': 120,
    'sft.num_steps': 24, 'sft.batch_size': 8, 'sft.lr': 1e-2, 'sft.end_lr': 1e-3,
    'sft.max_len': 128, 'sft.log_every': 2, 'dpo.num_steps': 8, 'dpo.log_every': 1}''',
    'custom_loss': '''\
MODEL = 'tiny:0'
N_TRAIN, N_EVAL = 64, 16
STEPS = 20
BATCH_SIZE = 8
LR = 1e-3
MAX_LEN = 64
EVAL_EVERY = 5''',
    'judge_study': '''\
OASST1 = os.path.join(os.environ['SRLM_JAX_SHARED_DATA'], 'oasst1', 'en-validation.jsonl')
MAX_PAIRS = 3
KS = (1, 3)
RUBRIC_K = 3
MAX_NEW_TOKENS = 32
N_BOOT = 200''',
}


def injected_cell(name: str):
  """Returns the cell with notebook `name`'s small sizes, tagged injected-parameters."""
  body = '\n'.join('  ' + line if line else line for line in SMALL[name].splitlines())
  source = ('# Injected by tests/test_colabs.py: the small CPU sizes that produced the outputs '
            'saved here.\n# Inert unless SRLM_JAX_COLAB_SMALL is set, so on Colab the sizes '
            'above apply.\nimport os\n\n'
            f"if os.environ.get('{ENV_FLAG}'):\n{body}")
  return nbformat.v4.new_code_cell(source, metadata={'tags': ['injected-parameters']},
                                   id='injected-parameters')


def with_small_sizes(nb, name: str):
  """Returns a copy of nb without outputs, its small-size cell after the `parameters` cell."""
  nb = copy.deepcopy(nb)
  nb.cells = [c for c in nb.cells if 'injected-parameters' not in c.metadata.get('tags', [])]
  tagged = [i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', [])]
  assert len(tagged) == 1, f'{name}: expected one cell tagged parameters, found {len(tagged)}'
  nb.cells.insert(tagged[0] + 1, injected_cell(name))
  for cell in nb.cells:
    if cell.cell_type == 'code':
      cell.outputs, cell.execution_count = [], None
  return nb


@contextlib.contextmanager
def kernel_env():
  """Sets the environment the kernel inherits: small sizes on, one CPU device, the repo first."""
  saved = dict(os.environ)
  os.environ[ENV_FLAG] = '1'
  os.environ['SRLM_JAX_SHARED_DATA'] = SHARED_DATA
  # One device: conftest's 8 fake devices are for the sharding tests.
  os.environ['XLA_FLAGS'] = multihost.xla_flags(1)
  os.environ['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, saved.get('PYTHONPATH')) if p)
  try:
    yield
  finally:
    os.environ.clear()
    os.environ.update(saved)


def execute(name: str, cwd: str):
  """Returns (the executed notebook, seconds); raises CellExecutionError on a failing cell."""
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  with open(os.path.join(COLABS, f'{name}.ipynb'), encoding='utf-8') as f:
    nb = with_small_sizes(nbformat.read(f, as_version=4), name)
  start = time.perf_counter()
  with kernel_env():
    NotebookClient(nb, kernel_name='python3', timeout=900, record_timing=False,
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
  """Executes notebook `name` with its small sizes and writes it back with its outputs."""
  nb, seconds = execute(name, cwd)
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
  assert '%pip install' in code[0].source and "find_spec('srlm_jax')" in code[0].source
  assert 'jax.default_backend()' in code[1].source
  assert 'parameters' in code[2].metadata.get('tags', [])
  assert 'injected-parameters' in code[3].metadata.get('tags', []), 'saved without its run'
  assert code[3].source == injected_cell(name).source, 'saved with other small sizes'
  assert all(c.execution_count for c in code), 'some cells were not run'
  assert sum(len(c.outputs) for c in code) >= len(code) // 2
  assert not [o for c in code for o in c.outputs if o.output_type == 'error']
  assert any('image/png' in o.get('data', {}) for c in code for o in c.outputs) or \
      name == 'quickstart'


if __name__ == '__main__':
  import tempfile  # pylint: disable=g-import-not-at-top
  for notebook in sys.argv[1:] or NOTEBOOKS:
    with tempfile.TemporaryDirectory() as tmp:
      print(f'{notebook}: saved after {save(notebook, tmp):.0f} s', flush=True)
