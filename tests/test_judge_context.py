"""Prompt plus token limit must fit the model's context (issue 21 case 5): errors or truncation."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import multihost
import srlm_jax
from srlm_jax import judges
from srlm_jax import loop
from srlm_jax.pipeline import settings as settings_lib
from srlm_jax.pipeline.stages import judgments
from srlm_jax import rollout
from test_loop import ROOT, load_model, tiny_config

LONG = ' '.join(f'word{i}' for i in range(1500))  # about 3k tokens for SmolLM2's tokenizer


@pytest.fixture(scope='module')
def tiny():
  return srlm_jax.load('tiny')


def test_fit_context_names_the_row_or_drops_its_middle():
  ids = [np.arange(10), np.arange(30)]
  with pytest.raises(ValueError, match=r'data.jsonl:7: the prompt is 30 tokens; with '
                                       r'max_new_tokens=8 it needs 38, .* context of 32'):
    rollout.fit_context(ids, 8, 32, where=['data.jsonl:3', 'data.jsonl:7'])
  out, dropped = rollout.fit_context(ids, 8, 32, truncate=True)
  assert dropped == [0, 6] and out[0].tolist() == list(range(10))
  assert out[1].tolist() == list(range(12)) + list(range(18, 30))  # head and tail kept
  with pytest.raises(ValueError, match='max_new_tokens=32 leaves no room'):
    rollout.fit_context(ids, 32, 32, truncate=True)


def test_sample_launch_refuses_a_prompt_beyond_the_context(tmp_path):
  """`launch/sample.py --model=tiny` (context 2048) with a 3k-token prompt on line 2."""
  prompts = tmp_path / 'prompts.jsonl'
  prompts.write_text(json.dumps({'prompt': 'Hi.'}) + '\n' + json.dumps({'prompt': LONG}) + '\n')
  out = tmp_path / 'out.jsonl'
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'launch', 'sample.py'), '--model=tiny',
       f'--prompts={prompts}', f'--out={out}', '--max_new_tokens=4'],
      env=dict(os.environ, XLA_FLAGS=multihost.xla_flags(1)), capture_output=True, text=True,
      timeout=600, check=False)
  assert proc.returncode != 0
  assert f"{prompts}:2: the prompt is" in proc.stderr, proc.stderr[-2000:]
  assert "model's context of 2048 tokens" in proc.stderr
  assert not out.exists()


def test_a_100k_token_prompt_is_the_same_clear_error(tiny):
  with pytest.raises(ValueError, match=r"prompt 1: the prompt is 1\d{5} tokens; .* context "
                                       r'of 2048 tokens'):
    rollout.generate_tokens(tiny, ['Hi.', 'hello ' * 100_000], max_new_tokens=4,
                            progress=False)


def test_truncation_is_recorded_per_prompt(tiny):
  out = rollout.generate_tokens(tiny, ['Hi.', LONG], max_new_tokens=8, truncate=True,
                                progress=False)
  assert out[0][0].prompt_truncated == 0
  assert out[1][0].prompt_truncated > 900
  assert len(out[1][0].prompt_tokens) + 8 == 2048
  # The chat format's generation prompt is the kept tail.
  full = tiny.tokenizer.encode_chat([{'role': 'user', 'content': LONG}],
                                    add_generation_prompt=True)
  assert out[1][0].prompt_tokens[-10:].tolist() == full[-10:]


def test_token_limit_beyond_the_context_fails_before_any_compute(tmp_path):
  """`creation.max_new_tokens=5000` on the tiny config: an error naming the field."""
  workdir = tmp_path / 'w'
  config = tiny_config(**{'creation.max_new_tokens': 5000})
  with pytest.raises(ValueError, match=r"creation\.max_new_tokens=5000: the model's context "
                                       'is 2048 tokens'):
    loop.Loop(config, str(workdir), load_model=load_model, progress=False).run()
  assert not (workdir / 'm1_sft' / 'train').exists()  # no training step ran


@pytest.mark.parametrize('truncate', [False, True])
def test_judge_prompt_with_a_long_candidate(tiny, truncate):
  settings = settings_lib.CreationSettings(
      n_candidates=2, truncate_prompts=truncate,
      judge=judges.JudgeSettings(k=1, max_new_tokens=4, verdict='forced',
                                 template=judges.get_template('compact')))
  records = [{'id': 'p3', 'prompt': 'Write a list.', 'candidates': ['Short.', LONG]}]
  if not truncate:
    with pytest.raises(ValueError, match=r"judgment of p3 candidate 1: the prompt is \d+ "
                                         r"tokens; with max_new_tokens=4 \+ 4 appended"):
      judgments.judge_candidates(tiny, records, settings, progress=False)
    return
  judged, scores = judgments.judge_candidates(tiny, records, settings, progress=False)
  assert scores.truncated_R.tolist() == [r['judge_prompt_truncated'] for r in judged]
  assert [r['judge_prompt_truncated'] for r in judged][0] == 0
  assert judged[1]['judge_prompt_truncated'] > 900
  assert all(r['valid'] == [True] for r in judged)
