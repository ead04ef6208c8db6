"""The online GRPO loop (srlm_jax/rl/) on the tiny model: rows, rewards, learning, sharding.

configs/tiny_grpo.py: the random tiny Llama sampled at temperature 0.1 (about a quarter of its
tokens are a newline, so the count of '\\n' varies within groups), reward = that count.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import srlm_jax
from srlm_jax import rl, rollout, sampler
from srlm_jax.pipeline import runner as runner_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'configs'))
import tiny_grpo  # pylint: disable=g-import-not-at-top,wrong-import-position


def read_metrics(path):
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope='module')
def tiny():
  return srlm_jax.load('tiny:0')


@pytest.fixture(scope='module')
def roll(tiny):
  ids, _ = rollout.encode_prompts(tiny, ['Say hi.', 'What is 2 + 2? Answer briefly.'],
                                  max_new_tokens=8)
  return rollout.sample(tiny, ids, n=3, max_new_tokens=8, temperature=1.0, seed=3,
                        progress=False, prompt_width=40)


def test_rule_rewards_count_on_the_host_tokens(tiny, roll):
  """token_count and id_range equal counts over each row's generated tokens on the host."""
  host = rollout.to_host(roll)
  newline = tiny.tokenizer.encode('\n', add_bos=False)[0]
  count = rl.rewards.build('token_count', tiny.tokenizer, token='\n')
  share = rl.rewards.build('id_range', tiny.tokenizer, lo=0, hi=24576)
  got_count = np.asarray(count(roll.tokens, roll.lengths))
  got_share = np.asarray(share(roll.tokens, roll.lengths))
  for r in range(roll.num_rows):
    row = host['tokens'][r, :host['lengths'][r]].tolist()
    assert got_count[r] == row.count(newline)
    assert got_share[r] == pytest.approx(sum(t < 24576 for t in row) / len(row))
  with pytest.raises(ValueError, match='exactly one'):
    rl.rewards.build('token_count', tiny.tokenizer, token='hello world')
  with pytest.raises(ValueError, match='unknown rule-based reward'):
    rl.rewards.build('nope', tiny.tokenizer)


def test_group_batch_rows_and_logps_match_a_full_forward(tiny, roll):
  """Each row is the prompt's real tokens then the completion; a forward of the rows gives the
  log-probs the sampler recorded; advantages are normalised within each group."""
  rewards_R = jnp.arange(roll.num_rows, dtype=jnp.float32) % 2
  batch = rl.step.group_batch(roll, rewards_R, pad_id=tiny.tokenizer.pad_id)
  host = rollout.to_host(roll)
  assert batch['inputs'].shape[:2] == (2, 3)
  for b in range(2):
    prompt = host['prompt_tokens'][b][host['prompt_mask'][b]].tolist()
    for g in range(3):
      r = b * 3 + g
      completion = host['tokens'][r, :host['lengths'][r]].tolist()
      want = prompt + completion
      mask = np.asarray(batch['mask'][b, g])
      assert np.asarray(batch['inputs'][b, g])[mask].tolist() == want[:-1]
      assert int(batch['start'][b, g]) == len(prompt) - 1
      loss_mask = np.asarray(batch['loss_mask'][b, g])
      assert np.asarray(batch['completion'][b, g])[loss_mask].tolist() == completion
  logps = np.asarray(rl.step.token_logps(tiny.config, tiny.params, batch))
  loss_mask = np.asarray(batch['loss_mask'])
  np.testing.assert_allclose(logps[loss_mask], host['logprobs'][loss_mask.reshape(6, -1)],
                             atol=2e-4)
  assert np.all(logps[~loss_mask] == 0)
  # At temperature T the log-probs are those of logits / T: a full forward, in float64.
  cold = np.asarray(rl.step.token_logps(tiny.config, tiny.params, batch, temperature=0.5))
  for b, g in ((0, 0), (1, 2)):
    m = int(loss_mask[b, g].sum())
    seq = np.asarray(batch['inputs'][b, g])[np.asarray(batch['mask'][b, g])]
    logits = np.asarray(srlm_jax.forward(tiny.config, tiny.params, seq[None]), np.float64)[0]
    z = logits[len(seq) - m:] / 0.5
    z = z - z.max(-1, keepdims=True)
    full = z - np.log(np.exp(z).sum(-1, keepdims=True))
    want = full[np.arange(m), np.asarray(batch['completion'][b, g])[:m]]
    np.testing.assert_allclose(cold[b, g, :m], want, atol=2e-4)
  adv = np.asarray(batch['advantages'])
  np.testing.assert_allclose(adv.mean(1), 0, atol=1e-6)


def test_grpo_raises_the_rule_reward_and_runs_as_a_stage(tmp_path):
  """The tiny GRPO config through the loop runner: the mean reward of the last steps is
  well above that of the first, and the stage leaves its records, metrics and params."""
  config = tiny_grpo.get_config()
  workdir = str(tmp_path / 'run')
  runner_lib.Runner(config, workdir, load_model=runner_lib.default_loader(config),
                    progress=False).run()
  stage_dir = os.path.join(workdir, 'iter_1', 'grpo')
  metrics = read_metrics(os.path.join(stage_dir, 'metrics.jsonl'))
  assert [m['step'] for m in metrics] == list(range(1, config.grpo.num_steps + 1))
  for key in ('reward', 'kl', 'length', 'truncated', 'zero_variance_groups', 'loss',
              'clip_fraction', 'grad_norm'):
    assert all(np.isfinite(m[key]) for m in metrics), key
  first = np.mean([m['reward'] for m in metrics[:4]])
  last = np.mean([m['reward'] for m in metrics[-4:]])
  assert last > first + 1.0, (first, last)  # newlines per 8-token completion
  assert metrics[-1]['kl'] > 0
  # Records: one file per step; rewards there are the recomputed newline counts.
  newline = '\n'
  records = [json.loads(l) for l in open(os.path.join(stage_dir, 'rollouts', 'step_00024.jsonl'),
                                         encoding='utf-8')]
  assert len(records) == config.grpo.batch_size
  assert np.mean([x for r in records for x in r['rewards']]) == pytest.approx(
      metrics[-1]['reward'])
  assert any(r['responses'][0].count(newline) for r in records)
  assert os.path.isdir(os.path.join(stage_dir, 'params'))
  assert not os.listdir(os.path.join(stage_dir, 'checkpoints'))  # pruned once DONE


EIGHT_DEVICES = textwrap.dedent('''
    import json, os, sys
    sys.path.insert(0, {configs!r})
    import jax, numpy as np
    assert jax.device_count() == 8
    import srlm_jax, tiny_grpo
    from srlm_jax import rl, sharding
    from srlm_jax.pipeline import seeds
    config = tiny_grpo.get_config()
    records = [{{'id': i, 'prompt': p}}
               for i, p in enumerate(seeds.read_seed_data(config)['seed_prompts'])]
    out = {{}}
    for mesh_shape in ((1, 1, 1), (2, 4, 1)):
      cfg = config.grpo.copy_and_resolve_references()
      with cfg.unlocked():
        cfg.mesh, cfg.num_steps, cfg.checkpoint_every = mesh_shape, 3, 3
      mesh = sharding.make_mesh(*mesh_shape)
      model = srlm_jax.load('tiny:0', mesh=mesh, dtype='float32')
      workdir = os.path.join({tmp!r}, 'x'.join(map(str, mesh_shape)))
      rl.run_grpo(cfg, workdir, model, records, progress=False)
      out[str(mesh_shape)] = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
    print(json.dumps(out))
''')


def test_eight_devices_give_the_numbers_of_one(tmp_path):
  """Three GRPO steps on a (2 data, 4 fsdp) mesh of 8 fake devices and on one device: the
  same sampled rewards, and losses, KL and gradient norms equal up to float32 reduction order."""
  code = EIGHT_DEVICES.format(configs=os.path.join(ROOT, 'configs'), tmp=str(tmp_path))
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': ROOT}
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       timeout=900, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  runs = json.loads(out.stdout.strip().splitlines()[-1])
  one, eight = runs['(1, 1, 1)'], runs['(2, 4, 1)']
  assert len(one) == len(eight) == 3
  for a, b in zip(one, eight):
    for key in ('reward', 'zero_variance_groups', 'length', 'truncated'):
      assert a[key] == b[key], (key, a, b)
    for key in ('loss', 'kl', 'grad_norm', 'ratio'):
      assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-5), (key, a, b)
