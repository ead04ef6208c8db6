r"""Benchmarks the sampler's greedy tokens/s against transformers' `generate` (PyTorch).

Both sides get the same left-padded chat prompts (MT-Bench first turns), the same fp32 weights,
greedy decoding with EOS disabled so every row makes exactly --new_tokens tokens, and the same
CPU threads. The sampler runs them as `rollout.sample` does: their common prefix (the chat
template's system header, `shared_prefix`), when long enough, is prefilled once and the rest
packed (`sampler.pack_plan`). Times are whole calls (prefill + decode) measured after a warm-up
call; the sampler's compile time (first call minus a timed call) is reported on its own, and so
are its decode loop alone (`decode_tok_s`: generated tokens over the time of `sampler.decode`,
the best of two runs after its prefill) and its prefill (`prefill_s`). Beside each measurement,
the floors and the fraction of them reached: compute (2 * params * generated tokens FLOPs at a
measured matmul peak; `floor_with_prefill_fraction` adds 2 * params * padded prompt tokens) and
memory (params + KV cache read once per decode step, at the better of a measured copy and
matvec-read bandwidth). `unpadded_floor_tok_s` is the most tokens/s any sampler could reach at
that peak, its prompts run without padding and their shared prefix once (2 * params * (generated
+ real prompt tokens)): a speed-up over transformers above `unpadded_floor_tok_s /
transformers_tok_s` would need more than the device's matmul peak. `ceiling_tok_s` is a tighter
bound, measured: a prefill of those prompt tokens at that peak, then decode steps that cost only
their weight matmuls at that batch size (timed alone, `matmul_step_ms`) and reading the cache
slots written so far at the best bandwidth (`kv_read_step_ms`); `ceiling_ratio` and
`ceiling_floor_fraction` are the ratio over transformers and the fraction of the floor such a
sampler would reach.

  python launch/bench_sampler.py --out=/tmp/bench_sampler.json
  python launch/bench_sampler.py --batch_sizes=1,16 --new_tokens=32 --out=/tmp/b.json  # quick
  # On a GPU: a random-weight ~1B Llama in bfloat16, no PyTorch reference.
  python launch/bench_sampler.py --model_size=1b --dtype=bfloat16 --no_reference \
      --batch_sizes=1,16,64,256 --out=/tmp/bench_1b.json
"""

import json
import os

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

import srlm_jax
from srlm_jax import llama, rollout, sampler, token_draw
from bench_util import matmul_peak, timed, torch_model, write_json  # launch/, beside this file

FLAGS = flags.FLAGS
flags.DEFINE_string('model', 'smollm2-135m-instruct', 'Model directory, .gguf or name.')
flags.DEFINE_enum('model_size', '', ['', '1b'], "'1b': a random-weight ~1B Llama, not --model.")
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute and parameter dtype.')
flags.DEFINE_list('batch_sizes', ['1', '16', '64'], 'Batch sizes to time.')
flags.DEFINE_integer('new_tokens', 128, 'Tokens generated per row.')
flags.DEFINE_bool('no_reference', False, "Skip transformers' generate (for GPU runs).")
flags.DEFINE_string('prompts', os.path.join(os.path.dirname(__file__), '..', '..', 'shared',
                                            'data', 'mt_bench', 'question.jsonl'),
                    'MT-Bench style JSONL whose first turns are the prompts.')
flags.DEFINE_integer('max_prompt_len', 128, 'Only prompts of at most this many tokens.')
flags.DEFINE_string('out', '', 'Where to write the results as JSON.')

ONE_B = llama.LlamaConfig(vocab_size=128256, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                          ffn_dim=8192, rope_theta=500000.0, tie_embeddings=True)


def bandwidth() -> tuple[float, float]:
  """Returns measured bytes/s of (an elementwise copy of 256 MiB, a matvec reading 256 MiB)."""
  x = jnp.ones((64 * 2 ** 20,), jnp.float32)
  w, v = x.reshape(8192, 8192), jnp.ones((1, 8192), jnp.float32)
  copy, matvec = jax.jit(lambda a: a * 1.0001), jax.jit(lambda a, b: a @ b)
  copy(x).block_until_ready(), matvec(v, w).block_until_ready()
  _, t_copy = timed(lambda: [copy(x) for _ in range(3)][-1].block_until_ready())
  _, t_read = timed(lambda: [matvec(v, w) for _ in range(3)][-1].block_until_ready())
  return 3 * 2 * x.nbytes / t_copy, 3 * x.nbytes / t_read


def prompt_ids(model, batch: int, max_len: int) -> list:
  """Returns `batch` prompts as token ids: the MT-Bench first turns that fit max_len tokens
  chat-formatted (64 of the 80 fit 128), in file order, cycled."""
  if model.tokenizer is None:  # the random 1B model: random ids of the same range of lengths
    rng = np.random.default_rng(0)
    return [rng.integers(10, model.config.vocab_size, int(n)).tolist()
            for n in rng.integers(40, max_len, batch)]
  with open(FLAGS.prompts) as f:
    turns = [json.loads(line)['turns'][0] for line in f if line.strip()]
  ids = [model.tokenizer.encode_chat([{'role': 'user', 'content': t}]) for t in turns]
  ids = [x for x in ids if len(x) <= max_len]
  return [ids[i % len(ids)] for i in range(batch)]


def left_pad(ids, pad_id):
  p = max(len(x) for x in ids)
  tokens = np.full((len(ids), p), pad_id, np.int32)
  mask = np.zeros((len(ids), p), bool)
  for i, x in enumerate(ids):
    tokens[i, p - len(x):], mask[i, p - len(x):] = x, True
  return tokens, mask


def decode_times(config, params, tokens, mask, m: int, prefix=None) -> dict:
  """Returns the sampler's greedy decode tokens/s (prefill excluded) and prefill seconds, the
  prompts packed, or sorted and prefilled in row groups, as `sampler.sample` runs them, after
  the shared `prefix` ([1, S0] ids; the prompts are what follows it) when there is one."""
  packing = sampler.pack_plan(mask.sum(axis=1), sampler.prompt_bucket(tokens.shape[1]) - 1)
  groups = ()
  if packing is None:
    order, groups = sampler.longest_first(mask)
    if groups:
      tokens, mask = tokens[order], mask[order]
  pad = ((0, 0), (sampler.prompt_bucket(tokens.shape[1]) - tokens.shape[1], 0))
  tokens, mask = jnp.asarray(np.pad(tokens, pad)), jnp.asarray(np.pad(mask, pad))
  packing = None if packing is None else jnp.asarray(packing)
  mode, knobs = token_draw.make_mode(), token_draw.make_knobs(max_new_tokens=m)
  ids = jnp.arange(tokens.shape[0], dtype=jnp.int32)
  prefill = lambda: jax.block_until_ready(sampler.prefill(
      config, params, tokens, mask, jax.random.key(0), ids, n=1,
      max_new_bucket=sampler.bucket(m), groups=groups, packing=packing,
      shared=None if prefix is None else sampler.prefill_prefix(config, params, prefix)))
  decode = lambda state: jax.block_until_ready(sampler.decode(config, params, state, knobs, mode))
  prefill_s, decode_s = [], []
  for _ in range(2):  # the calls of `sample` above compiled both
    state, t = timed(prefill)
    prefill_s.append(t)
    decode_s.append(timed(lambda: decode(state))[1])
  return {'decode_tok_s': tokens.shape[0] * m / min(decode_s), 'prefill_s': min(prefill_s)}


def matmul_step_seconds(config, params, b: int) -> float:
  """Returns the best time of one decode step's weight matmuls alone, at b rows.

  Every layer's q, k, v, o, gate, up and down projections and the output head, chained through
  the residual as decode chains them, the per-layer weights passed in as arrays of their own:
  no attention, norms, RoPE, cache writes or token draw. No decode step built on these matmuls
  runs faster.
  """
  dt = config.dtype
  layers = jax.block_until_ready(sampler.split_layers(params)['layers'])

  def step(x_BD, layers, head_params):
    for lp in layers:
      att = lp['attn']
      q = llama.dense(x_BD, att['q_proj']['kernel'], dt)
      kv = [llama.dense(x_BD, att[n]['kernel'], dt) for n in ('k_proj', 'v_proj')]
      x_BD = x_BD + llama.dense(q, att['o_proj']['kernel'], dt) + 1e-3 * sum(
          jnp.mean(a, axis=-1, keepdims=True) for a in kv)  # keeps k and v live
      x_BD = x_BD + llama.mlp(config, lp['mlp'], x_BD)
    return llama.logits(config, head_params, x_BD)

  head_params = {k: v for k, v in params.items() if k != 'layers'}
  f = jax.jit(step)
  x = jax.random.normal(jax.random.key(0), (b, config.dim), jnp.float32).astype(dt)
  f(x, layers, head_params).block_until_ready()
  return min(timed(lambda: f(x, layers, head_params).block_until_ready())[1] for _ in range(5))


def main(argv):
  del argv
  if not FLAGS.no_reference:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(os.cpu_count())
  if FLAGS.model_size == '1b':
    config = ONE_B.replace(dtype=FLAGS.dtype, param_dtype=FLAGS.dtype)
    params = jax.jit(llama.init_params, static_argnums=0)(config, jax.random.key(0))
    model = srlm_jax.Model(config, params, None)
  else:
    model = srlm_jax.load(FLAGS.model, dtype=FLAGS.dtype)
    model.config = model.config.replace(dtype=FLAGS.dtype)
  config, m = model.config, FLAGS.new_tokens
  reference = None if FLAGS.no_reference else torch_model(config, model.params)
  peak, (copy_bw, read_bw) = matmul_peak(config.dtype), bandwidth()
  bw = max(copy_bw, read_bw)  # the floor takes the best bandwidth seen
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(model.params))
  pad_id = model.tokenizer.pad_id if model.tokenizer else 0
  print(f'device {jax.devices()[0].device_kind}, {config.num_params / 1e6:.0f}M params '
        f'{config.dtype}, matmul peak {peak / 1e9:.0f} GFLOP/s, bandwidth {copy_bw / 1e9:.1f} '
        f'GB/s (copy) {read_bw / 1e9:.1f} GB/s (matvec read), {os.cpu_count()} CPUs')
  rows = []
  for b in [int(x) for x in FLAGS.batch_sizes]:
    ids = [np.asarray(x) for x in prompt_ids(model, b, FLAGS.max_prompt_len)]
    tokens, mask = left_pad(ids, pad_id)  # the whole prompts: the reference's, the floors'
    # The sampler runs them as `rollout.sample` does: the prefix every prompt starts with (the
    # chat template's system header), when it is long enough, prefilled once for all.
    s0 = rollout.shared_prefix_length(ids)
    rest_tokens, rest_mask = left_pad([x[s0:] for x in ids], pad_id)
    prefix = jnp.asarray([ids[0][:s0]], jnp.int32) if s0 else None
    run = lambda: jax.block_until_ready(sampler.sample(
        config, model.params, rest_tokens, rest_mask, 0, max_new_tokens=m,
        shared=None if prefix is None else sampler.prefill_prefix(config, model.params, prefix)
    ).tokens)
    _, first = timed(run)
    out, t_ours = timed(run)
    assert out.shape == (b, m)
    row = {'batch': b, 'prompt_len': tokens.shape[1], 'shared_prefix': s0, 'new_tokens': m,
           'ours_tok_s': b * m / t_ours, 'compile_s': max(first - t_ours, 0.0)}
    row.update(decode_times(config, model.params, rest_tokens, rest_mask, m, prefix))
    if reference is not None:
      ids, att = torch.as_tensor(tokens, dtype=torch.long), torch.as_tensor(mask, dtype=torch.long)
      gen = lambda n: reference.generate(input_ids=ids, attention_mask=att, max_new_tokens=n,
                                         min_new_tokens=n, do_sample=False, pad_token_id=pad_id)
      with torch.no_grad():
        gen(2)  # warm-up
        ref, t_ref = timed(lambda: gen(m))
      assert ref.shape == (b, tokens.shape[1] + m)
      row.update(transformers_tok_s=b * m / t_ref, ratio=t_ref / t_ours,
                 same_tokens=float((ref[:, tokens.shape[1]:].numpy() == np.asarray(out)).mean()))
    s = tokens.shape[1] + sampler.bucket(m)
    slot_bytes = 2 * config.n_layers * config.n_kv_heads * config.head_dim * (
        jnp.dtype(config.dtype).itemsize)  # one cache slot's keys and values, all layers
    cache_bytes = b * s * slot_bytes
    compute_floor = 2 * config.num_params * b * m / peak
    prefill_floor = 2 * config.num_params * tokens.size / peak  # the padded prompts, extra
    unique = int(rest_mask.sum()) + s0  # the prompt tokens to prefill: the shared prefix once
    unpadded_floor = 2 * config.num_params * (b * m + unique) / peak
    memory_floor = m * (param_bytes + cache_bytes) / bw
    row.update(compute_floor_tok_s=b * m / compute_floor, memory_floor_tok_s=b * m / memory_floor,
               unpadded_floor_tok_s=b * m / float(max(unpadded_floor, memory_floor)),
               floor_fraction=max(compute_floor, memory_floor) / t_ours,
               floor_with_prefill_fraction=(max(compute_floor, memory_floor) + prefill_floor)
               / t_ours)
    # The ceiling of a sampler whose decode steps cost only their weight matmuls (measured) and
    # reading the cache slots written so far (real prompt slots, then on average half the new
    # ones) at the best bandwidth measured, after a prefill of the real prompt tokens at the
    # matmul peak: a figure above it would need faster matmuls or memory than these.
    matmul_s = matmul_step_seconds(config, model.params, b)
    kv_s = (unique + b * (m + 1) / 2) * slot_bytes / bw
    ceiling = 2 * config.num_params * unique / peak + m * (matmul_s + kv_s)
    row.update(matmul_step_ms=1e3 * matmul_s, kv_read_step_ms=1e3 * kv_s,
               ceiling_tok_s=b * m / ceiling,
               ceiling_floor_fraction=max(compute_floor, memory_floor) / ceiling)
    if reference is not None:
      row['ceiling_ratio'] = row['ceiling_tok_s'] / row['transformers_tok_s']
    rows.append(row)
    print(json.dumps(row))
  cols = ['batch', 'prompt_len', 'shared_prefix', 'ours_tok_s', 'decode_tok_s', 'prefill_s',
          'transformers_tok_s', 'ratio', 'same_tokens', 'compile_s', 'compute_floor_tok_s',
          'memory_floor_tok_s', 'unpadded_floor_tok_s', 'floor_fraction',
          'floor_with_prefill_fraction', 'matmul_step_ms', 'kv_read_step_ms', 'ceiling_tok_s',
          'ceiling_ratio', 'ceiling_floor_fraction']
  print('\n| ' + ' | '.join(cols) + ' |\n|' + '---|' * len(cols))
  cell = lambda v: f'{v:.3g}' if isinstance(v, float) else str(v)
  for row in rows:
    print('| ' + ' | '.join(cell(row.get(c, '-')) for c in cols) + ' |')
  result = {'device': jax.devices()[0].device_kind, 'backend': jax.default_backend(),
            'model': FLAGS.model_size or FLAGS.model, 'dtype': config.dtype,
            'num_params': config.num_params, 'matmul_peak_flops': peak,
            'copy_bandwidth_bytes_s': copy_bw, 'matvec_read_bandwidth_bytes_s': read_bw,
            'cpu_count': os.cpu_count(), 'rows': rows}
  write_json(FLAGS.out, result)


if __name__ == '__main__':
  app.run(main)
