"""DPO on a given preference dataset (token ids and reference log-probs already on hand): the
device batches equal the host ones, the run equals the tokenised run, no reference model is
loaded, and the device holds the policy, its Adam moments and the data, no other copy.
"""

import importlib.util
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srlm_jax import checkpoint, data_io, llama, sharding, train
from srlm_jax.train import host_loop
from test_train import dpo_data, smollm2_tokenizer  # pylint: disable=unused-import

CFG = llama.LlamaConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64)


def _dpo_config(**changes):
  spec = importlib.util.spec_from_file_location(
      'dpo_config', os.path.join(os.path.dirname(__file__), '..', 'configs', 'dpo.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config()
  cfg.update(dict(dtype='float32', log_every=1, checkpoint_every=100, lr=1e-3, **changes))
  return cfg


def _preference_dataset(n, seed, width):
  """Returns a preference dataset of n synthetic pairs [n, width] with random ref log-probs."""
  data = dpo_data(n, seed, width)
  rng = np.random.default_rng(seed)
  return {**data, 'ref_chosen_logps': -rng.uniform(5, 30, n).astype(np.float32),
          'ref_rejected_logps': -rng.uniform(5, 30, n).astype(np.float32)}


@pytest.mark.parametrize('mesh_shape,grad_accum,positions', [
    ((1, 1, 1), 1, True), ((1, 1, 1), 2, True), ((2, 2, 2), 2, True), ((1, 2, 1), 1, False)])
def test_device_batches_equal_host_batches(mesh_shape, grad_accum, positions):
  """DeviceBatches picks, cuts and indexes each batch as trim_batch + add_loss_positions do."""
  mesh = sharding.make_mesh(*mesh_shape, devices=jax.devices()[:int(np.prod(mesh_shape))])
  data = _preference_dataset(24, 3, 96)
  on_device = jax.tree.map(jnp.asarray, data)
  batches = train.DeviceBatches(on_device, mesh, 8, seed=5, grad_accum=grad_accum,
                                loss_positions=positions)
  groups = mesh_shape[0] * mesh_shape[1]
  for i in range(4):
    host = data_io.trim_batch(data_io.batch_at(data, i, 8, 5), 96)
    if positions:
      host = train.add_loss_positions(host, groups, grad_accum)
    ours = jax.device_get(batches(i))
    assert jax.tree.structure(ours) == jax.tree.structure(host)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(host)):
      np.testing.assert_array_equal(a, b)


def test_check_dataset_names_the_key():
  data = _preference_dataset(4, 1, 16)
  with pytest.raises(ValueError, match=r"\['rejected'\]\['mask'\]: expected shape \[N, T\] = "
                     r'\[4, 16\]'):
    train.check_dataset({**data, 'rejected': {**data['rejected'],
                                              'mask': data['rejected']['mask'][:3]}})
  with pytest.raises(ValueError, match="missing 'ref_rejected_logps'"):
    train.check_dataset({k: v for k, v in data.items() if k != 'ref_rejected_logps'})


def test_run_dpo_on_a_given_dataset_equals_the_tokenised_run(smollm2_tokenizer, tmp_path,
                                                              monkeypatch):
  tok = smollm2_tokenizer
  config = CFG.replace(vocab_size=tok.vocab_size)
  host_params = jax.device_get(jax.jit(llama.init_params, static_argnums=0)(config,
                                                                           jax.random.key(2)))
  model = types.SimpleNamespace(config=config, tokenizer=tok, params=host_params)
  pairs = tmp_path / 'pairs.jsonl'
  pairs.write_text(''.join(json.dumps({'prompt': f'Say {i}.', 'chosen': f'{i}.',
                                       'rejected': f'No {i}, never!'}) + '\n' for i in range(8)))
  cfg = _dpo_config(train_data=str(pairs), max_len=48, batch_size=4, grad_accum=2, num_steps=3,
                    mesh=(1, 2, 1))
  tokenised = train.run_dpo(cfg, str(tmp_path / 'tokenised'), model=model)

  # The same pairs as a dataset: token ids padded wider than max_len, on the device, with the
  # reference log-probs of the tokenised run (the starting policy's).
  seqs = data_io.load_dpo(str(pairs), tok, cfg.max_len, cfg.chat_template)
  pad = lambda x: np.pad(x, ((0, 0), (0, 16)))
  dataset = {s: {k: jnp.asarray(pad(v)) for k, v in seqs[s].items()} for s in seqs}
  dataset.update({k: jnp.asarray(v) for k, v in train.reference_logps(cfg, model).items()})

  def no_model(*args, **kwargs):
    raise AssertionError(f'a run on a given dataset loaded a model: {args}')
  import srlm_jax  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(srlm_jax, 'load', no_model)
  monkeypatch.setattr(checkpoint, 'load_params', no_model)
  given = train.run_dpo(cfg.copy_and_resolve_references(), str(tmp_path / 'given'), model=model,
                        dataset=dataset)
  assert int(given.step) == 3
  for a, b in zip(jax.tree.leaves(jax.device_get(given.params)),
                  jax.tree.leaves(jax.device_get(tokenised.params))):
    np.testing.assert_allclose(a, b, atol=1e-6)
  lines = {w: [json.loads(l) for l in open(tmp_path / w / 'metrics.jsonl')]
           for w in ('tokenised', 'given')}
  assert [l['step'] for l in lines['given']] == [1, 2, 3]
  assert abs(lines['given'][0]['loss'] - np.log(2)) < 1e-5  # the reference is the policy
  for ours, theirs in zip(lines['given'], lines['tokenised']):
    for key in ('loss', 'grad_norm', 'rewards/margins'):
      np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-5, atol=1e-7, err_msg=key)
  online = cfg.copy_and_resolve_references()
  online.reference = 'online'
  with pytest.raises(ValueError, match="ref_logps, config.reference='online' cannot apply"):
    train.run_dpo(online, str(tmp_path / 'x'), model=model, dataset=dataset, ref_logps={})


# A small random Llama whose params dominate the batch's activations, so that the live bytes
# show copies of the model and not the data.
MEM_CFG = llama.LlamaConfig(vocab_size=512, dim=128, n_layers=2, n_heads=4, n_kv_heads=2,
                            ffn_dim=256)


def _step_temp_bytes(step_fn, mesh, state, batch, rng, rows):
  """Returns the temporary bytes XLA allocates for step_fn on a batch of `rows` pairs."""
  def shape(path, x):
    keep = getattr(path[-1], 'key', None) == 'loss_positions'  # per group, not per row
    return jax.ShapeDtypeStruct(x.shape if keep else (rows,) + x.shape[1:], x.dtype)
  shapes = jax.tree_util.tree_map_with_path(shape, batch)
  with jax.set_mesh(mesh):
    compiled = jax.jit(step_fn, donate_argnums=0).lower(state, shapes, rng).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize('donate', [True, False])
def test_dpo_step_holds_the_policy_its_moments_and_no_other_model(donate, tmp_path, monkeypatch):
  """Live device bytes at each DPO step of run_dpo(dataset=...), over the params' bytes: the
  trained params and two Adam moments (3x) plus the data; the step's temporaries (gradients)
  come on top of that inside the step. Without `donate` the caller's copy of the starting
  policy is a fourth."""
  params = jax.jit(llama.init_params, static_argnums=0)(MEM_CFG, jax.random.key(0))
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  model = types.SimpleNamespace(config=MEM_CFG, tokenizer=None, params=params)
  data = _preference_dataset(16, 4, 32)
  dataset = jax.tree.map(jnp.asarray, data)
  data_bytes = sum(x.nbytes for x in jax.tree.leaves(dataset))
  before = {id(x) for x in jax.live_arrays()} - {id(x) for x in jax.tree.leaves((params,
                                                                                 dataset))}
  live, temps, real_jit_step = [], [], host_loop.jit_step

  def measuring_jit_step(step_fn, mesh, shardings):
    step = real_jit_step(step_fn, mesh, shardings)

    def call(state, batch, rng):
      live.append(sum(x.nbytes for x in jax.live_arrays() if id(x) not in before))
      if not temps:  # the compiled step's temporaries (gradients, activations), full batch
        temps.extend(_step_temp_bytes(step_fn, mesh, state, batch, rng, rows)
                     for rows in (4, 2))
      return step(state, batch, rng)
    return call
  monkeypatch.setattr(host_loop, 'jit_step', measuring_jit_step)
  cfg = _dpo_config(batch_size=4, num_steps=3, mesh=(1, 1, 1), max_len=32)
  train.run_dpo(cfg, str(tmp_path / 'w'), model=model, dataset=dataset, donate=donate)
  ratio = max(live) / param_bytes
  # Temporaries grow with the batch (activations) on top of a fixed part (the gradients):
  # temp(B) = fixed + B * per_pair, so fixed = 2 temp(B / 2) - temp(B).
  fixed = (2 * temps[1] - temps[0]) / param_bytes
  print(f'\nDPO step (donate={donate}): params {param_bytes / 2**20:.2f} MiB, dataset '
        f'{data_bytes / 2**10:.1f} KiB; live device bytes at the step = {ratio:.3f}x params; '
        f'step temporaries {temps[0] / param_bytes:.3f}x = {fixed:.3f}x fixed (gradients) + '
        f'{(temps[0] - temps[1]) / param_bytes / 2:.3f}x per pair (activations); peak without '
        f'activations {ratio + fixed:.3f}x')
  copies = 3 if donate else 4  # trained params + mu + nu (+ the caller's starting params)
  assert copies <= ratio < copies + 0.05, ratio
  assert 0.9 < fixed < 1.25, fixed  # one gradient tree in flight, no other copy
  assert all(x.is_deleted() for x in jax.tree.leaves(params)) == donate


def test_device_batches_and_the_dpo_step_make_no_implicit_transfers():
  """Under jax.transfer_guard('disallow'): batches of a device dataset and a jitted DPO step
  on them; the host edges are explicit (row indices in, counts and metrics out)."""
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  dataset = jax.tree.map(jnp.asarray, _preference_dataset(8, 6, 32))
  params = jax.jit(llama.init_params, static_argnums=0)(CFG, jax.random.key(0))
  cfg = _dpo_config(batch_size=4, num_steps=2)
  optimizer = train.make_optimizer(cfg)
  init_fn, shardings = train.make_init(params, optimizer, mesh)
  step = train.jit_step(train.make_dpo_step(CFG, optimizer, 'sigmoid', 0.1), mesh, shardings)
  state, rng = init_fn(), jax.random.key(0)
  with jax.transfer_guard('disallow'):
    batches = train.DeviceBatches(dataset, mesh, 4, seed=0)
    for i in range(2):
      state, metrics = step(state, train.put_batch(mesh, batches(i)), rng)
      metrics = jax.device_get(metrics)
  assert int(jax.device_get(state.step)) == 2 and np.isfinite(metrics['loss'])
