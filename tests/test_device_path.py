"""The loop's data path stays on the device: candidates -> judge -> pairs -> one DPO step on the
tiny model under jax.transfer_guard('disallow').

The host edges the path keeps are named here, each either an explicit jax.device_put /
jax.device_get inside the library (allowed by the guard) or wrapped in
jax.transfer_guard('allow') below:
  1. tokenising the prompts (host only: no transfer) and uploading them (rollout.sample's
     explicit device_put);
  2. detokenising the candidates into judge prompts (rollout.texts: one device_get);
  3. inside the judge: its requests' upload and the forced-verdict constants (the prefix and
     score tokens); the verdicts are read from each batch's decode cache on the device;
  4. the blank-text flags of the candidates (a property of their texts: one device_put);
  5. the number of pairs, which sets the dataset's shape (rewards.pairs.pair_rows);
  6. the DPO batch's row indices and length bucket (train.DeviceBatches);
  7. the records written at the end (one device_get).
"""

import importlib.util
import os

import jax
import numpy as np
import pytest

import srlm_jax
from srlm_jax import judges, rollout, sharding, train
from srlm_jax.rewards import pairs

PROMPTS = ['Name a colour.', 'Why is the sky blue?', 'Say hello.', 'What is two plus two?']
N, K, MAX_NEW = 2, 2, 8


def _dpo_config():
  path = os.path.join(os.path.dirname(__file__), '..', 'configs', 'dpo.py')
  spec = importlib.util.spec_from_file_location('dpo_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config()
  cfg.update(dict(dtype='float32', lr=1e-3, batch_size=2, num_steps=1, warmup_steps=0))
  return cfg


@pytest.fixture(scope='module')
def tiny():
  return srlm_jax.load('tiny')


def test_candidates_judge_pairs_and_a_dpo_step_stay_on_the_device(tiny):
  tok = tiny.tokenizer
  judge_settings = judges.JudgeSettings(k=K, max_new_tokens=6, verdict='forced',
                                        template=judges.get_template('compact'))
  cfg = _dpo_config()
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  optimizer = train.make_optimizer(cfg, 1)
  ids, _ = rollout.encode_prompts(tiny, PROMPTS, max_new_tokens=MAX_NEW)  # edge 1 (host only)
  with jax.transfer_guard('allow'):  # the step's seed: a host value, named
    step_key = jax.random.key(0)
  with jax.transfer_guard('disallow'):
    cand = rollout.sample(tiny, ids, n=N, max_new_tokens=MAX_NEW, temperature=0.7, top_p=0.9,
                          seed=1, progress=False)
    texts = rollout.texts(cand, tok)  # edge 2
    responses = [t for ts in texts for t in ts]
    _, scores = judges.judge(tiny, 'additive', [p for p in PROMPTS for _ in range(N)],
                             responses, judge_settings, seed=2, progress=False)  # edge 3
    nonempty_R = jax.device_put(np.array([bool(t.strip()) for t in responses]))  # edge 4
    # The random tiny model never samples eos: its candidates all stop at the length limit.
    usable_PxN = pairs.usable(cand.stop_reason, nonempty_R, n=N, pair_truncated=True)
    p = len(PROMPTS)
    out = pairs.choose_pairs(scores.scores_RxK.reshape(p, N, K),
                             scores.valid_RxK.reshape(p, N, K), cand.lengths.reshape(p, N),
                             usable_PxN)
    rows_Q = pairs.pair_rows(out['has_pair'])  # edge 5
    dataset = pairs.preference_dataset(cand, out['chosen'], out['rejected'], rows_Q,
                                       pad_id=tok.pad_id)
    init_fn, shardings = train.make_init(tiny.params, optimizer, mesh)
    state = init_fn()
    step = train.jit_step(train.make_dpo_step(tiny.config, optimizer, cfg.loss, cfg.beta),
                          mesh, shardings)
    batches = train.DeviceBatches(dataset, mesh, 2, seed=0)  # edge 6
    state, metrics = step(state, batches(0), step_key)
    host = jax.device_get((out, metrics, state.step))  # edge 7
  out, metrics, steps = host
  assert int(steps) == 1
  assert out['has_pair'].sum() >= 2 and np.isfinite(metrics['loss'])
  # The policy is the reference at the first step: the DPO loss is log 2.
  np.testing.assert_allclose(metrics['loss'], np.log(2), atol=1e-4)
  assert np.isfinite(out['mean_PxN']).all()
