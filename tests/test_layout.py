"""The package's shape: imports go one way, down the data flow, and no module is long.

LAYERS lists srlm_jax's layers in the order data flows through them. A module may import from
its own layer and the layers before it, never from a later one (nanodo's habit: main -> train ->
{model, data, loss}). Modules are placed by path prefix (the longest prefix wins), so a module
that moves into a layer's folder keeps its layer and a new module in a folder needs no entry;
a module no prefix matches is an error that says where to add it.

KNOWN_UPWARD and OVER_LINES are today's exceptions, each with who removes it: the lists are the
to-do. An exception that no longer occurs is an error too, so the lists only shrink.
"""

import ast
import os
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'srlm_jax'

# (layer, path prefixes relative to the repository root), in data-flow order.
LAYERS = (
    # Used by every layer and importing none of them: processes, sharding rules, files on disk,
    # run directories, checkpoints, logs, bars, config files and their help, the instruction
    # filter, the release of compiled programs.
    ('base', ('srlm_jax/distributed.py', 'srlm_jax/sharding.py', 'srlm_jax/data_io.py',
              'srlm_jax/workdir.py', 'srlm_jax/checkpoint.py', 'srlm_jax/metrics_log.py',
              'srlm_jax/bars.py', 'srlm_jax/config_files.py', 'srlm_jax/config_help.py',
              'srlm_jax/instructions.py', 'srlm_jax/compiled_programs.py',
              # The one resume mechanism (DONE, atomic shards): stages and evaluate both use it.
              'srlm_jax/store.py')),
    # One decoder and what reads weights and text into it.
    ('models', ('srlm_jax/models/', 'srlm_jax/llama.py', 'srlm_jax/attention.py',
                'srlm_jax/gemm.py', 'srlm_jax/sampler.py', 'srlm_jax/prompt_layout.py',
                'srlm_jax/token_draw.py',
                'srlm_jax/tokenizer.py',
                'srlm_jax/gguf_tokenizer.py',
                'srlm_jax/hf_io.py', 'srlm_jax/hf_config.py',
                # A model directory the loop writes: params, config and tokenizer together.
                'srlm_jax/model_dir.py')),
    # The package root's load() and generate() are the facade over models and rollouts.
    ('rollout', ('srlm_jax/rollout/', 'srlm_jax/__init__.py')),
    ('judges', ('srlm_jax/judges/',)),
    # The seed data (IFT, and EFT whose targets are written in a judge's format).
    # Generated verifiable tasks with their program-computed answers, and model-written EFT.
    ('data', ('srlm_jax/data.py', 'srlm_jax/data/', 'srlm_jax/tfds_builders.py',
              'srlm_jax/tasks/', 'srlm_jax/eft.py')),
    # Preference pairs from judged candidates, and step pairs from step-wise search.
    ('rewards', ('srlm_jax/rewards/', 'srlm_jax/process/')),
    ('objectives', ('srlm_jax/objectives/',)),
    # Offline training steps and runs, and online RL (GRPO on sampled, self-judged groups).
    ('train', ('srlm_jax/train/', 'srlm_jax/rl/')),
    # What the pipeline calls to measure, report and show a run: below it, as the code has it
    # (the runner drives the console; the eval stage calls evaluate and report), not above.
    ('evaluate', ('srlm_jax/evaluate/', 'srlm_jax/evaluate.py', 'srlm_jax/report.py',
                  'srlm_jax/console.py', 'srlm_jax/console_plan.py',
                  'srlm_jax/console_text.py',
                  # The guard policy (measurements in, decision out) and the human review.
                  'srlm_jax/guards.py', 'srlm_jax/review/')),
    # Runs config.stages; validate checks a whole run's config against every registry.
    ('pipeline', ('srlm_jax/pipeline/', 'srlm_jax/loop.py', 'srlm_jax/validate.py')),
)
LAYER_NAMES = [name for name, _ in LAYERS]

# (importing module, imported module): why it is allowed for now and who removes it.
KNOWN_UPWARD = {
    ('srlm_jax/train/runs.py', 'srlm_jax/validate.py'):
        'B/D: train checks its own config; the per-stage config checks belong in train/',
}

MAX_LINES = 450
# Modules over MAX_LINES today: who shrinks each.
OVER_LINES = {
}


def package_modules() -> list:
  """Returns the repository-relative paths of every .py file in the package, sorted."""
  paths = []
  for folder, dirs, files in os.walk(os.path.join(ROOT, PACKAGE)):
    dirs[:] = sorted(d for d in dirs if d != '__pycache__')
    paths += [os.path.relpath(os.path.join(folder, f), ROOT) for f in files if f.endswith('.py')]
  return sorted(p.replace(os.sep, '/') for p in paths)


def layer_of(path: str):
  """Returns the layer of a repository-relative module path (longest prefix), or None."""
  best = None
  for name, prefixes in LAYERS:
    for prefix in prefixes:
      if (path == prefix or prefix.endswith('/') and path.startswith(prefix)) and (
          best is None or len(prefix) > len(best[1])):
        best = (name, prefix)
  return best and best[0]


def module_path(dotted: str):
  """Returns the repository-relative file of a srlm_jax module name, or None if none exists."""
  base = os.path.join(ROOT, *dotted.split('.'))
  if os.path.isfile(os.path.join(base, '__init__.py')):
    return os.path.relpath(os.path.join(base, '__init__.py'), ROOT).replace(os.sep, '/')
  if os.path.isfile(base + '.py'):
    return os.path.relpath(base + '.py', ROOT).replace(os.sep, '/')
  return None


def imports_of(path: str) -> list:
  """Returns (line, imported module's path) for every srlm_jax import in the file, lazy ones too."""
  with open(os.path.join(ROOT, path), encoding='utf-8') as f:
    tree = ast.parse(f.read(), filename=path)
  package = path[:-len('.py')].replace('/', '.')
  if not path.endswith('/__init__.py'):
    package = package.rsplit('.', 1)[0]
  else:
    package = package[:-len('.__init__')]
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      source = node.module or ''
      if node.level:  # relative: resolved against the importing module's package
        parent = package.split('.')[:len(package.split('.')) - node.level + 1]
        source = '.'.join(parent + ([source] if source else []))
      # `from a import b` imports module a.b when there is one, else names from a.
      names = [f'{source}.{a.name}' if module_path(f'{source}.{a.name}') else source
               for a in node.names]
    else:
      continue
    for name in names:
      if name == PACKAGE or name.startswith(PACKAGE + '.'):
        target = module_path(name)
        if target is not None:
          found.append((node.lineno, target))
  return sorted(set(found))


def upward_imports() -> list:
  """Returns (module, line, imported, its layer, imported's layer) of every upward import."""
  out = []
  for path in package_modules():
    for line, target in imports_of(path):
      mine, theirs = layer_of(path), layer_of(target)
      if mine is None or theirs is None:  # test_every_module_has_a_layer names them
        continue
      if LAYER_NAMES.index(theirs) > LAYER_NAMES.index(mine):
        out.append((path, line, target, mine, theirs))
  return out


def test_every_module_has_a_layer():
  unplaced = [p for p in package_modules() if layer_of(p) is None]
  assert not unplaced, (f'{unplaced}: no layer; add the module or its folder to LAYERS in '
                        f'{__file__} (layers in data-flow order: {LAYER_NAMES})')


def test_modules_and_imports_resolve_to_files_and_layers():
  assert layer_of('srlm_jax/rollout/records.py') == 'rollout'
  assert layer_of('srlm_jax/pipeline/stages/eval.py') == 'pipeline'
  assert layer_of('srlm_jax/train/steps.py') == 'train'
  assert layer_of('srlm_jax/data/README.md') == 'data'
  assert module_path('srlm_jax.console') == 'srlm_jax/console.py'
  assert module_path('srlm_jax') == 'srlm_jax/__init__.py'
  assert module_path('srlm_jax.no_such_module') is None
  imported = dict((t, n) for n, t in imports_of('srlm_jax/console.py'))
  assert 'srlm_jax/console_plan.py' in imported and 'srlm_jax/bars.py' in imported


def test_imports_go_down_the_data_flow():
  new = [f'{path}:{line} imports {target}: layer {mine!r} imports the later layer {theirs!r} '
         f'(order: {" -> ".join(LAYER_NAMES)})'
         for path, line, target, mine, theirs in upward_imports()
         if (path, target) not in KNOWN_UPWARD]
  assert not new, '\n'.join(new)


def test_known_upward_imports_still_occur():
  live = {(path, target) for path, _, target, _, _ in upward_imports()}
  stale = [f'{path} -> {target}' for path, target in KNOWN_UPWARD if (path, target) not in live]
  assert not stale, f'no longer upward (remove from KNOWN_UPWARD in {__file__}): {stale}'


def _lines(path: str) -> int:
  with open(os.path.join(ROOT, path), encoding='utf-8') as f:
    return sum(1 for _ in f)


def test_no_module_is_over_the_line_limit():
  over = [f'{p}: {_lines(p)} lines' for p in package_modules()
          if _lines(p) > MAX_LINES and p not in OVER_LINES]
  assert not over, f'over {MAX_LINES} lines (split by responsibility): {over}'


def test_line_limit_exceptions_are_still_over():
  stale = [p for p in OVER_LINES if not os.path.isfile(os.path.join(ROOT, p))
           or _lines(p) <= MAX_LINES]
  assert not stale, (f'now within {MAX_LINES} lines or gone (remove from OVER_LINES in '
                     f'{__file__}): {stale}')


def test_slow_files_run_first_and_exist():
  import conftest  # pylint: disable=g-import-not-at-top
  missing = [f for f in conftest.SLOW_FILES
             if not os.path.isfile(os.path.join(ROOT, 'tests', f))]
  assert not missing, f'renamed or removed (update SLOW_FILES in tests/conftest.py): {missing}'
  items = [types.SimpleNamespace(path=types.SimpleNamespace(name=n))
           for n in ('test_a.py', 'test_loop.py', 'test_a.py', 'test_colabs.py')]
  conftest.pytest_collection_modifyitems(items)
  assert [i.path.name for i in items] == ['test_loop.py', 'test_colabs.py', 'test_a.py',
                                          'test_a.py']
