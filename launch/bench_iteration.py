r"""Benchmarks one self-rewarding iteration's sampling work against the same work in transformers.

The work (the self-rewarding-lm-pytorch peer's iteration): the 16 prompts below x 4 candidates
x 128 new tokens, then 3 judgments of each candidate x 128 new tokens with the additive
rubric, then the pairs, on SmolLM2-135M-Instruct in float32 at temperature 0.7, top-p 0.9.
EOS is ignored on both sides, so each makes exactly 16*4*128 candidate and 64*3*128 judgment
tokens and the judge prompts have the same lengths.

- srlm_jax: the library's pieces (`rollout.sample` with its shared-prefix prefill, the judge's
  requests and jitted parser, `rewards.pairs.choose_pairs`), batched as the pipeline batches.
  A first pass compiles; the table reports the best of `--repeats` passes after it, and the
  compile time on its own.
- transformers: `LlamaForCausalLM.generate` with the same weights, the same left-padded ids,
  batches of the same prompts (num_return_sequences samples each; as srlm_jax's batches, or of
  --reference_rows rows: 64, 16 prompts at a time, was its fastest measured), KV cache,
  do_sample with the same temperature and top-p, and the judge's own host regex for the scores.

Besides the ratio, each stage reports its fraction of the compute floor: 2 * params FLOPs per
prompt and generated token at the matmul peak measured in the same run, once with every prompt
prefilled in full and once with the shared prefix prefilled once.

  python launch/bench_iteration.py --out=/tmp/bench_iteration.json
  python launch/bench_iteration.py --no_reference --compare_unshared   # the prefix's effect
  python launch/bench_iteration.py --reference_rows=64   # transformers in its best batches
"""

import json
import os

from absl import app, flags
import jax
import numpy as np

import srlm_jax
from srlm_jax import judges, llama, rollout
from srlm_jax.rewards import pairs as pairs_lib
from srlm_jax.rollout.rollout import DEFAULT_ROWS
from bench_util import load_model, matmul_peak, timed, torch_model, write_json  # launch/, beside this file

FLAGS = flags.FLAGS
flags.DEFINE_string('model', 'smollm2-135m-instruct', 'Model directory, .gguf or name.')
flags.DEFINE_integer('candidates', 4, 'Candidates per prompt.')
flags.DEFINE_integer('judgments', 3, 'Judgments per candidate.')
flags.DEFINE_integer('new_tokens', 128, 'Tokens per candidate and per judgment.')
flags.DEFINE_integer('repeats', 1, 'Timed passes after the compiling one (the best is kept).')
flags.DEFINE_bool('no_reference', False, "Skip transformers' generate.")
flags.DEFINE_integer('reference_rows', 0, "transformers' rows per generate call (prompts x "
                     'samples, prompts rounded down to a power of two); 0: as srlm_jax batches, '
                     'DEFAULT_ROWS.')
flags.DEFINE_bool('compare_unshared', False, 'Also time srlm_jax without the shared prefix.')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype (srlm_jax).')
flags.DEFINE_bool('random_init', False, '--model is a directory with config.json and tokenizer '
                  'files only: random weights of that architecture (GPU runs without weights).')
flags.DEFINE_string('out', '', 'Where to write the results as JSON.')

PEER_SECONDS = 34184  # the peer's cost of this work, extrapolated from its per-token costs (#23)
TEMPERATURE, TOP_P = 0.7, 0.9
PROMPTS = [
    'Give me three tips for writing clear emails at work.',
    'Explain why the sky looks blue during the day.',
    'Write a short poem about a lighthouse in winter.',
    'What is the difference between a list and a tuple in Python?',
    'How do I make a simple tomato sauce for pasta?',
    'Summarise the causes of the French Revolution in a few sentences.',
    'Suggest a weekend plan for a family visiting a new city.',
    'Write a Python function that checks whether a string is a palindrome.',
    'What are the health benefits of regular walking?',
    'Explain compound interest to a teenager.',
    'Compare electric cars and petrol cars for a daily commute.',
    'How can I improve my sleep without medication?',
    'Describe how a bill becomes a law in a parliamentary system.',
    'Give me five ideas for a science fair project about plants.',
    'What should I check before buying a used bicycle?',
    'Translate the idea of "opportunity cost" into an everyday example.',
]


def _block(tree):
  return jax.block_until_ready(tree)


def ours(model, share_prefix: bool) -> dict:
  """Returns per stage its seconds and prefill stats for one pass of the work in srlm_jax."""
  tok, judge = model.tokenizer, judges.get('additive')
  m, n, k = FLAGS.new_tokens, FLAGS.candidates, FLAGS.judgments
  kw = dict(max_new_tokens=m, temperature=TEMPERATURE, top_p=TOP_P, progress=False,
            ignore_eos=True, share_prefix=share_prefix)
  out = {}
  ids, _ = rollout.encode_prompts(model, PROMPTS, max_new_tokens=m)
  stats = {}
  cand, t = timed(lambda: _block(rollout.sample(model, ids, n=n, seed=0, stats=stats, **kw)))
  out['candidates'] = {'seconds': t, 'prompts': len(ids),
                       'prompt_tokens': int(sum(len(x) for x in ids)),
                       'new_tokens': len(ids) * n * m, 'prefill': stats}
  responses = [r for rows in rollout.texts(cand, tok) for r in rows]
  requests = judge.requests([p for p in PROMPTS for _ in range(n)], responses)
  judge_ids, _ = rollout.encode_prompts(model, requests, max_new_tokens=m)
  stats = {}
  parser = judge.parser(tok)

  def judge_all():
    roll = rollout.sample(model, judge_ids, n=k, seed=1, stats=stats, **kw)
    return roll, _block(parser(roll.tokens))
  (roll, (scores_R, valid_R)), t = timed(judge_all)
  out['judgments'] = {'seconds': t, 'prompts': len(judge_ids),
                      'prompt_tokens': int(sum(len(x) for x in judge_ids)),
                      'new_tokens': len(judge_ids) * k * m, 'prefill': stats}
  del roll
  p = len(PROMPTS)
  chosen, t = timed(lambda: _block(pairs_lib.choose_pairs(
      scores_R.reshape(p, n, k), valid_R.reshape(p, n, k), cand.lengths.reshape(p, n),
      np.ones((p, n), bool))))
  out['pairs'] = {'seconds': t, 'prompts': 0, 'prompt_tokens': 0, 'new_tokens': 0,
                  'pairs': int(np.asarray(chosen['has_pair']).sum()),
                  'valid_judgments': int(np.asarray(valid_R).sum())}
  return out


def reference(model, torch_llama) -> dict:
  """Returns per stage its seconds for the same work with transformers' generate."""
  import torch  # pylint: disable=g-import-not-at-top
  tok, judge = model.tokenizer, judges.get('additive')
  m, n, k = FLAGS.new_tokens, FLAGS.candidates, FLAGS.judgments

  def generate(ids, samples, batch):
    texts = []
    for start in range(0, len(ids), batch):
      part = ids[start:start + batch]
      tokens, mask = rollout.left_pad(part, max(len(x) for x in part), tok.pad_id)
      with torch.no_grad():
        got = torch_llama.generate(
            input_ids=torch.as_tensor(tokens, dtype=torch.long),
            attention_mask=torch.as_tensor(mask, dtype=torch.long), do_sample=True,
            temperature=TEMPERATURE, top_p=TOP_P, top_k=0, max_new_tokens=m, min_new_tokens=m,
            num_return_sequences=samples, pad_token_id=tok.pad_id)
      texts += [tok.decode(row[tokens.shape[1]:].tolist()) for row in got]
    return texts

  out = {}
  ids, _ = rollout.encode_prompts(model, PROMPTS, max_new_tokens=m)
  rows = FLAGS.reference_rows or DEFAULT_ROWS  # by default as srlm_jax batches
  batch = lambda samples: 1 << (max(1, rows // samples).bit_length() - 1)
  responses, out['candidates'] = timed(lambda: generate(ids, n, batch(n)))
  requests = judge.requests([p for p in PROMPTS for _ in range(n)], responses)
  judge_ids, _ = rollout.encode_prompts(model, requests, max_new_tokens=m)
  judgments, out['judgments'] = timed(lambda: generate(judge_ids, k, batch(k)))

  def pairs():
    scores = np.array([np.nan if (s := judge.parse_host(t)) is None else s for t in judgments])
    mean = np.nanmean(scores.reshape(len(PROMPTS), n, k), axis=2) if np.isfinite(
        scores).any() else np.full((len(PROMPTS), n), np.nan)
    return int(np.sum(np.nanmax(mean, 1) > np.nanmin(mean, 1)))
  _, out['pairs'] = timed(pairs)
  return out


def main(argv):
  del argv
  model = load_model(FLAGS.model, FLAGS.random_init)
  config, params = llama.for_compute(model.config, model.params, FLAGS.dtype)
  master, model = model, srlm_jax.Model(config, params, model.tokenizer, None, FLAGS.model)
  peak = matmul_peak(config.dtype)
  flop = 2 * config.num_params
  print(f'device {jax.devices()[0].device_kind}, {config.num_params / 1e6:.0f}M params '
        f'{config.dtype}, matmul peak {peak / 1e9:.0f} GFLOP/s, {os.cpu_count()} CPUs')
  runs = {}
  for name, share in [('srlm_jax', True)] + ([('srlm_jax_unshared', False)]
                                             if FLAGS.compare_unshared else []):
    _, first = timed(lambda: ours(model, share))
    passes = [ours(model, share) for _ in range(max(FLAGS.repeats, 1))]
    best = {s: min((p[s] for p in passes), key=lambda x: x['seconds']) for s in passes[0]}
    runs[name] = {'stages': best, 'first_pass_seconds': first,
                  'compile_seconds': max(first - sum(v['seconds'] for v in best.values()), 0.0)}
    print(name, json.dumps(runs[name]))
  ref = None
  if not FLAGS.no_reference:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(os.cpu_count())
    ref = reference(model, torch_model(master.config, master.params))
    print('transformers', json.dumps(ref))
  rows = []
  for stage, got in runs['srlm_jax']['stages'].items():
    tokens = got['new_tokens'] + got['prompt_tokens']
    # With the prefix shared, its tokens are prefilled once rather than once per prompt.
    prefill = got.get('prefill', {})
    once = max(got['prompts'] - 1, 0) * prefill.get('shared_prefix_tokens', 0)
    row = {'stage': stage, 'seconds': got['seconds'], 'new_tokens': got['new_tokens'],
           'tok_s': got['new_tokens'] / got['seconds'] if got['new_tokens'] else None,
           'padded_fraction': prefill.get('padded_fraction'),
           'shared_prefix_tokens': prefill.get('shared_prefix_tokens'),
           'floor_fraction_full_prefill': flop * tokens / peak / got['seconds'],
           'floor_fraction_shared_prefix': flop * (tokens - once) / peak / got['seconds']}
    if 'srlm_jax_unshared' in runs:
      row['unshared_seconds'] = runs['srlm_jax_unshared']['stages'][stage]['seconds']
    if ref is not None:
      row.update(transformers_seconds=ref[stage], ratio=ref[stage] / got['seconds'])
    rows.append(row)
  total = sum(r['seconds'] for r in rows)
  summary = {'stage': 'total', 'seconds': total,
             'new_tokens': sum(r['new_tokens'] for r in rows),
             'floor_fraction_full_prefill': sum(r['floor_fraction_full_prefill'] * r['seconds']
                                                for r in rows) / total,
             'floor_fraction_shared_prefix': sum(r['floor_fraction_shared_prefix'] * r['seconds']
                                                 for r in rows) / total,
             'peer_ratio': PEER_SECONDS / total}
  summary['tok_s'] = summary['new_tokens'] / total
  if 'srlm_jax_unshared' in runs:
    summary['unshared_seconds'] = sum(r['unshared_seconds'] for r in rows)
  if ref is not None:
    summary['transformers_seconds'] = sum(ref.values())
    summary['ratio'] = summary['transformers_seconds'] / total
  rows.append(summary)
  cols = ['stage', 'seconds', 'new_tokens', 'tok_s', 'padded_fraction', 'shared_prefix_tokens',
          'floor_fraction_full_prefill', 'floor_fraction_shared_prefix', 'unshared_seconds',
          'transformers_seconds', 'ratio', 'peer_ratio']
  print('\n| ' + ' | '.join(cols) + ' |\n|' + '---|' * len(cols))
  cell = lambda v: f'{v:.3g}' if isinstance(v, float) else ('-' if v is None else str(v))
  for row in rows:
    print('| ' + ' | '.join(cell(row.get(c)) for c in cols) + ' |')
  write_json(FLAGS.out, {
      'device': jax.devices()[0].device_kind, 'backend': jax.default_backend(),
      'model': FLAGS.model, 'dtype': config.dtype, 'num_params': config.num_params,
      'matmul_peak_flops': peak, 'cpu_count': os.cpu_count(), 'peer_seconds': PEER_SECONDS,
      'runs': runs, 'transformers': ref, 'rows': rows})


if __name__ == '__main__':
  app.run(main)
