r"""Benchmarks the jitted DPO step's pairs/s and tokens/s against TRL's `DPOTrainer` (PyTorch).

Both sides train the same float32 SmolLM2-135M-Instruct weights (ours exported with
`hf_io.export_hf` and loaded by transformers as a plain LlamaForCausalLM) on the same real
preference pairs, in the same order, with the same settings: --batch_size pairs per step, the
sigmoid DPO loss at beta 0.1, AdamW (lr 1e-6 constant, no warmup, betas 0.9/0.999, eps 1e-8, no
weight decay, global-norm clipping at 1.0), reference log-probs precomputed once per dataset,
no gradient checkpointing, and the same CPU threads, measured in the same run. Our layers are
compiled as straight-line code (--unroll_layers) and our output head runs at the target tokens
only (--head_at_loss_positions), as configs/dpo.py sets them; attention runs in causal query
blocks of 128 (LlamaConfig.query_block, the default).

Data: OASST1 first turns (prompts with >= 2 ranked replies, rank 0 chosen, the highest rank
rejected) read from --oasst at run time, or --pairs JSONL `{prompt, chosen, rejected}`. Pairs
whose chat-formatted prompt alone fills --max_len are skipped, so neither library drops any.

Truncation: each chat-formatted sequence keeps its first --max_len + 1 tokens on both sides.
Ours reads max_len of them and scores the next-token targets (data_io layout); TRL is given
max_length = max_len + 1, so both score exactly the same targets, and TRL's forward reads one
more position per sequence. TRL pads each batch to its longest sequence; ours cuts each batch
to the length bucket of its longest sequence (32 * {1, 1.5} * 2^i, data_io.trim_batch).
Each side's real (non-pad) input tokens are counted on its own and reported per pair.

Timing: --warmup steps then --steps timed steps on the same batches. Each of our batch shapes
is compiled first by one step on a throwaway state (`compile_s`: those steps' total), so no
timed step compiles. Ours: host batch -> device -> step -> metrics fetched, as
train.train_loop does. TRL: `on_step_begin` -> `on_step_end` of a TrainerCallback (forward,
backward, clipping, optimizer; data loading excluded, so `trl_loop_s_per_step` between
consecutive step ends is also given).
The reference precompute, our compile and TRL's setup are reported on their own. Model FLOPs
utilisation: 6 * num_params * real input tokens of chosen + rejected (forward + backward; the
tied embedding counted once, as the LM head; attention scores not counted) per step time,
against a measured matmul peak (median of 5 square matmuls in the compute dtype).

  python launch/bench_train.py --out=/tmp/bench_train.json
  python launch/bench_train.py --steps=1 --warmup=1 --num_pairs=8 --batch_size=2 \
      --max_len=128 --out=/tmp/bench_train_tiny.json  # quick check
  # On a GPU, our side only, in bfloat16 (params stay float32 masters):
  python launch/bench_train.py --dtype=bfloat16 --no_reference --batch_size=16 \
      --max_len=512 --num_pairs=128 --out=/tmp/bench_train_gpu.json
"""

import os
# TRL's torch shares the device with JAX on a GPU: don't let JAX take 75% of its memory first.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import tempfile
import time
import types

from absl import app, flags
import jax
import numpy as np

import srlm_jax
from srlm_jax import data, data_io, hf_io, sharding, train
from bench_util import load_model, matmul_peak, timed, write_json  # launch/, beside this file

FLAGS = flags.FLAGS
flags.DEFINE_string('model', 'smollm2-135m-instruct', 'Model directory, .gguf or name.')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                  'Our compute dtype (bfloat16: GPU only); TRL always trains in float32.')
flags.DEFINE_integer('steps', 5, 'Timed optimizer steps (after --warmup).')
flags.DEFINE_integer('warmup', 2, 'Untimed steps first (after our compiles; TRL first steps).')
flags.DEFINE_integer('batch_size', 4, 'Preference pairs per optimizer step.')
flags.DEFINE_integer('max_len', 256, 'Input tokens per sequence (prompt + response).')
flags.DEFINE_integer('num_pairs', 32, 'Pairs to build (rounded down to a multiple of batch).')
flags.DEFINE_string('oasst', os.path.join(os.path.dirname(__file__), '..', '..', 'shared',
                                          'data', 'oasst1', 'en-validation.jsonl'),
                    'OASST1 message-tree JSONL the pairs are built from.')
flags.DEFINE_string('pairs', '', 'JSONL of {prompt, chosen, rejected} to use instead of --oasst.')
flags.DEFINE_float('beta', 0.1, 'DPO beta (sigmoid loss).')
flags.DEFINE_float('lr', 1e-6, 'AdamW learning rate (constant, no warmup).')
flags.DEFINE_bool('no_reference', False, "Skip TRL's DPOTrainer (e.g. for GPU runs).")
flags.DEFINE_bool('unroll_layers', True, 'Compile our layers as straight-line code (the '
                  'configs/dpo.py default) rather than a loop over the stacked params.')
flags.DEFINE_bool('head_at_loss_positions', True, 'Run our output head at the target tokens '
                  'only (train.add_loss_positions, the configs/dpo.py default).')
flags.DEFINE_bool('random_init', False, '--model is a directory with config.json and tokenizer '
                  'files only: random weights of that architecture (GPU runs without weights).')
flags.DEFINE_string('out', '', 'Where to write the results as JSON.')

# AdamW and clipping as TRL / transformers default them; the schedule constant, no warmup.
OPTIMIZER = dict(b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, clip_norm=1.0, warmup_steps=0,
                 schedule='constant')


def oasst_pairs(path: str) -> list[dict]:
  """Returns {prompt, chosen, rejected} per OASST first turn: rank 0 vs the highest rank."""
  rankings, _ = data.eft_eval_from_trees(path)
  out = []
  for g in rankings:
    best, worst = g['responses'][0], g['responses'][-1]  # sorted by rank
    if best['rank'] == 0 and worst['rank'] > 0:
      out.append({'prompt': g['prompt'], 'chosen': best['response'],
                  'rejected': worst['response']})
  return out


def select_records(candidates: list[data_io.Record], source: str, tokenizer, max_len: int,
                   n: int, batch_size: int) -> list[data_io.Record]:
  """Returns the first pairs (a multiple of batch_size, at most n) whose prompt fits max_len."""
  records = []
  for record in candidates:
    prompt, _, _ = (data_io.text_field(record, k) for k in ('prompt', 'chosen', 'rejected'))
    # A prompt of < max_len tokens leaves a target in both libraries (neither drops the pair).
    if len(tokenizer.encode_chat([{'role': 'user', 'content': prompt}])) < max_len:
      records.append(record)
    if len(records) == n:
      break
  records = records[:len(records) // batch_size * batch_size]
  if not records:
    raise ValueError(f'{source}: fewer than --batch_size={batch_size} pairs have a prompt of '
                     f'< {max_len} tokens')
  return records


def batch_rows(i: int, batch_size: int, n: int) -> np.ndarray:
  """Returns the pair indices of batch i in file order (both sides' sequential order)."""
  return data_io.batch_indices(n, i, batch_size, seed=0, shuffle=False)


def _rates(step_s: list, tokens: list, batch_size: int, num_params: int, peak: float) -> dict:
  """Returns pairs/s, tokens/s, s/step and MFU of timed steps (tokens: per timed step)."""
  total = sum(step_s)
  return {'s_per_step': total / len(step_s), 'pairs_s': batch_size * len(step_s) / total,
          'tokens_s': sum(tokens) / total,
          'mfu': 6 * num_params * sum(tokens) / total / peak}


def run_ours(model, mesh, mc, records, peak: float) -> dict:
  """Returns (our DPO step's timings and token counts, token sequences, reference log-probs)."""
  b, steps, warmup = FLAGS.batch_size, FLAGS.steps, FLAGS.warmup
  dataset = data_io.tokenize_dpo(records, model.tokenizer, FLAGS.max_len, chat_template=True)
  n = data_io.num_examples(dataset)
  dataset, ref_s = timed(lambda: jax.block_until_ready(
      train.compute_ref_logps(mc, model.params, dataset, b, mesh)))
  cfg = types.SimpleNamespace(lr=FLAGS.lr, end_lr=FLAGS.lr, num_steps=warmup + steps, **OPTIMIZER)
  optimizer = train.make_optimizer(cfg)
  init_fn, shardings = train.make_init(model.params, optimizer, mesh)
  state = init_fn()
  step = train.jit_step(train.make_dpo_step(mc, optimizer, 'sigmoid', FLAGS.beta), mesh,
                        shardings)
  rng = jax.random.key(0)

  def host_batch(i):
    host = data_io.trim_batch(jax.tree.map(lambda x: x[batch_rows(i, b, n)], dataset),
                              FLAGS.max_len)
    if FLAGS.head_at_loss_positions:
      host = train.add_loss_positions(host, mesh.shape['data'] * mesh.shape['fsdp'])
    return host

  # Compile every batch shape first, each on a throwaway state, so no timed step compiles.
  shapes, compile_s = {}, []
  for i in range(warmup + steps):
    shapes.setdefault(tuple(x.shape for x in jax.tree.leaves(host_batch(i))), i)
  for i in shapes.values():
    _, seconds = timed(lambda: jax.block_until_ready(
        step(init_fn(), train.put_batch(mesh, host_batch(i)), rng)))
    compile_s.append(seconds)
  times, losses, tokens, padded = [], [], [], []
  for i in range(warmup + steps):
    rows = batch_rows(i, b, n)
    start = time.perf_counter()
    host = host_batch(i)
    batch = train.put_batch(mesh, host)
    padded.append(2 * b * host['chosen']['mask'].shape[1])
    state, metrics = step(state, batch, rng)
    metrics = jax.device_get(metrics)
    times.append(time.perf_counter() - start)
    losses.append(float(metrics['loss']))
    tokens.append(int(dataset['chosen']['mask'][rows].sum() + dataset['rejected']['mask'][rows]
                      .sum()))
  step_s = times[warmup:]
  out = _rates(step_s, tokens[warmup:], b, mc.num_params, peak)
  out.update(
      dtype=mc.dtype, step_s=step_s, warmup_step_s=times[:warmup],
      compile_s=sum(compile_s), compiled_shapes=len(shapes), ref_precompute_s=ref_s,
      tokens_per_pair=sum(tokens[warmup:]) / (b * steps),
      padded_positions_per_step=float(np.mean(padded[warmup:])),
      mfu_padded=6 * mc.num_params * np.mean(padded[warmup:]) / out['s_per_step'] / peak,
      mean_loss=float(np.mean(losses)), losses=losses, num_pairs=n)
  sequences = {}
  for side in ('chosen', 'rejected'):
    seq = dataset[side]
    k = seq['mask'].sum(-1)  # the sequence is inputs[:k] + its last target
    sequences[side] = [seq['inputs'][r, :k[r]].tolist() + [int(seq['targets'][r, k[r] - 1])]
                       for r in range(n)]
  return out, sequences, {k: dataset[k] for k in ('ref_chosen_logps', 'ref_rejected_logps')}


def run_trl(hf_dir: str, records, peak: float, num_params: int) -> dict:
  """Returns (TRL DPOTrainer's timings and token counts, token sequences, reference log-probs)."""
  import datasets  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  import trl  # pylint: disable=g-import-not-at-top

  b, steps, warmup = FLAGS.batch_size, FLAGS.steps, FLAGS.warmup

  class StepTimes(transformers.TrainerCallback):
    def __init__(self):
      self.begin, self.end = [], []

    def on_step_begin(self, args, state, control, **kwargs):
      self.begin.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
      self.end.append(time.perf_counter())

  class TimedDPOTrainer(trl.DPOTrainer):
    ref_precompute_s = 0.0

    def _precompute_ref_logps(self, *args, **kwargs):
      out, t = timed(lambda: super(TimedDPOTrainer, self)._precompute_ref_logps(*args, **kwargs))
      self.ref_precompute_s += t
      return out

  datasets.disable_progress_bars()
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
  tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
  ds = datasets.Dataset.from_list([
      {'prompt': [{'role': 'user', 'content': r[2]['prompt']}],
       'chosen': [{'role': 'assistant', 'content': r[2]['chosen']}],
       'rejected': [{'role': 'assistant', 'content': r[2]['rejected']}]} for r in records])
  out_dir = tempfile.mkdtemp(prefix='bench_train_trl_')
  args = trl.DPOConfig(
      output_dir=out_dir, per_device_train_batch_size=b, gradient_accumulation_steps=1,
      max_steps=warmup + steps, learning_rate=FLAGS.lr, lr_scheduler_type='constant',
      warmup_steps=0, adam_beta1=OPTIMIZER['b1'], adam_beta2=OPTIMIZER['b2'],
      adam_epsilon=OPTIMIZER['eps'], weight_decay=OPTIMIZER['weight_decay'],
      max_grad_norm=OPTIMIZER['clip_norm'], beta=FLAGS.beta, loss_type=['sigmoid'],
      max_length=FLAGS.max_len + 1, truncation_mode='keep_start', precompute_ref_log_probs=True,
      precompute_ref_batch_size=b, activation_checkpointing=False, bf16=False, fp16=False,
      train_sampling_strategy='sequential', report_to=[], save_strategy='no',
      logging_steps=10 ** 6, dataloader_num_workers=0, dataloader_pin_memory=False,
      disable_tqdm=True, seed=0)
  timer = StepTimes()
  trainer, setup_s = timed(lambda: TimedDPOTrainer(
      model=model, args=args, train_dataset=ds, processing_class=tokenizer, callbacks=[timer]))
  result = trainer.train()
  assert len(timer.end) == warmup + steps, (len(timer.begin), len(timer.end))
  step_s = [e - s for s, e in zip(timer.begin, timer.end)]
  loop_s = [e1 - e0 for e0, e1 in zip(timer.end[warmup - 1:], timer.end[warmup:])]

  train_ds = trainer.train_dataset
  n = len(train_ds)
  sequences = {side: [(p + c)[:FLAGS.max_len + 1] for p, c in
                      zip(train_ds['prompt_ids'], train_ds[f'{side}_ids'])]
               for side in ('chosen', 'rejected')}
  tokens, padded = [], []
  for i in range(warmup, warmup + steps):
    lens = [len(sequences[s][r]) for s in ('chosen', 'rejected') for r in batch_rows(i, b, n)]
    tokens.append(sum(lens))
    padded.append(len(lens) * max(lens))
  out = _rates(step_s[warmup:], tokens, b, num_params, peak)
  out.update(
      dtype='float32', step_s=step_s[warmup:], warmup_step_s=step_s[:warmup],
      loop_s_per_step=sum(loop_s) / len(loop_s), setup_s=setup_s,
      ref_precompute_s=trainer.ref_precompute_s, tokens_per_pair=sum(tokens) / (b * steps),
      padded_positions_per_step=sum(padded) / steps, mean_loss=float(result.training_loss),
      num_pairs=n, optim=str(args.optim), activation_checkpointing=args.activation_checkpointing,
      attn_implementation=model.config._attn_implementation,
      torch_threads=torch.get_num_threads(), torch_version=torch.__version__,
      trl_version=trl.__version__, transformers_version=transformers.__version__)
  refs = {k: np.asarray(train_ds[k], np.float32) for k in ('ref_chosen_logps',
                                                          'ref_rejected_logps')}
  return out, sequences, refs


def main(argv):
  del argv
  if FLAGS.warmup < 1 or FLAGS.steps < 1:
    raise app.UsageError('--warmup and --steps must be >= 1 (first steps run slow)')
  if FLAGS.dtype == 'bfloat16' and jax.default_backend() == 'cpu':
    raise app.UsageError('--dtype=bfloat16 is for GPU runs; the CPU comparison is float32')
  if not FLAGS.no_reference:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(os.cpu_count())
  mesh = sharding.make_mesh(1, -1, 1)
  model = load_model(FLAGS.model, FLAGS.random_init, 'float32', mesh=mesh)
  mc = model.config.replace(dtype=FLAGS.dtype, remat=False, unroll_layers=FLAGS.unroll_layers)
  if FLAGS.pairs:
    source, candidates = FLAGS.pairs, data_io.read_jsonl(FLAGS.pairs)
  else:  # the 'line' of a built pair is its index
    source = os.path.normpath(FLAGS.oasst)
    candidates = [(f'{source} (pair)', i, p) for i, p in enumerate(oasst_pairs(source), 1)]
  records = select_records(candidates, source, model.tokenizer, FLAGS.max_len, FLAGS.num_pairs,
                           FLAGS.batch_size)
  peak = matmul_peak(FLAGS.dtype)
  print(f'device {jax.devices()[0].device_kind}, {mc.num_params / 1e6:.0f}M params, '
        f'{len(records)} pairs from {source}, batch {FLAGS.batch_size}, max_len {FLAGS.max_len}, '
        f'matmul peak {peak / 1e9:.0f} GFLOP/s ({FLAGS.dtype}), {os.cpu_count()} CPUs')

  with tempfile.TemporaryDirectory() as hf_dir:
    if not FLAGS.no_reference:  # exported before our steps (the state is donated there)
      hf_io.export_hf(model.config, model.params, hf_dir, dtype='float32',
                      tokenizer=model.tokenizer)
    ours, our_seqs, our_refs = run_ours(model, mesh, mc, records, peak)
    print('ours:', json.dumps({k: v for k, v in ours.items() if not isinstance(v, list)}))
    trl_out = None
    if not FLAGS.no_reference:
      trl_out, trl_seqs, trl_refs = run_trl(hf_dir, records, peak, mc.num_params)
      print('trl:', json.dumps({k: v for k, v in trl_out.items() if not isinstance(v, list)}))

  check = {}
  if trl_out is not None:
    for key in ('pairs_s', 'tokens_s'):
      ours[f'{key}_ratio'] = ours[key] / trl_out[key]
    ours['s_per_step_ratio'] = ours['s_per_step'] / trl_out['s_per_step']
    same = [our_seqs[s][r] == trl_seqs[s][r] for s in ('chosen', 'rejected')
            for r in range(len(records))]
    check = {'same_token_sequences': float(np.mean(same)),
             'ref_logps_max_abs_diff': float(max(
                 np.abs(our_refs[k] - trl_refs[k]).max() for k in our_refs)),
             'ref_logps_mean_abs': float(np.mean(np.abs(our_refs['ref_chosen_logps'])))}
    print('check:', json.dumps(check))
  rows = [dict(side='ours (jax)', **ours)]
  if trl_out is not None:
    rows.append(dict(side='trl DPOTrainer', **trl_out))

  cols = ['side', 'dtype', 'pairs/s', 'tokens/s', 's/step', 'ratio (ours / TRL)',
          'tokens/pair', 'MFU', 'ref precompute s', 'compile/setup s']
  print('\n| ' + ' | '.join(cols) + ' |\n|' + '---|' * len(cols))
  cell = lambda v: f'{v:.3g}' if isinstance(v, float) else str(v)
  for row in rows:
    values = [row['side'], row['dtype'], row['pairs_s'], row['tokens_s'], row['s_per_step'],
              row.get('pairs_s_ratio', 1.0 if row is not rows[0] else '-'),
              row['tokens_per_pair'], row['mfu'], row['ref_precompute_s'],
              row.get('compile_s', row.get('setup_s'))]
    print('| ' + ' | '.join(cell(v) for v in values) + ' |')
  print(f'\nMFU: 6 * {mc.num_params / 1e6:.1f}M params * real input tokens (chosen + rejected) '
        f'per step time / {peak / 1e9:.0f} GFLOP/s; ours on padded positions: '
        f'{ours["mfu_padded"]:.3g}')

  result = {
      'device': jax.devices()[0].device_kind, 'backend': jax.default_backend(),
      'cpu_count': os.cpu_count(), 'model': FLAGS.model, 'num_params': mc.num_params,
      'matmul_peak_flops': peak, 'jax_version': jax.__version__,
      'jax_default_matmul_precision': str(jax.config.jax_default_matmul_precision),
      'settings': {'steps': FLAGS.steps, 'warmup': FLAGS.warmup,
                   'batch_size': FLAGS.batch_size, 'max_len': FLAGS.max_len,
                   'trl_max_length': FLAGS.max_len + 1, 'num_pairs': len(records),
                   'pairs_source': source, 'dtype': FLAGS.dtype, 'loss': 'sigmoid',
                   'beta': FLAGS.beta, 'lr': FLAGS.lr, **OPTIMIZER,
                   'reference': 'precomputed', 'gradient_checkpointing': False,
                   'unroll_layers': FLAGS.unroll_layers,
                   'head_at_loss_positions': FLAGS.head_at_loss_positions,
                   'query_block': mc.query_block,
                   'order': 'sequential (file order) on both sides'},
      'flops_counted': '6 * num_params * real (non-pad) input tokens of chosen + rejected',
      'ours': ours, 'trl': trl_out, 'check': check}
  write_json(FLAGS.out, result)


if __name__ == '__main__':
  app.run(main)
