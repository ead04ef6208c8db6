r"""Benchmarks forced verdicts read from the sampler's KV cache against a fresh forward pass.

A judge with verdict='forced' or 'forced_always' reads each judgment's score from the model's
next-token distribution after [judge request, reasons, '\nScore: ']. The library reads it from
each device batch's decode cache while the judge is sampled (`forced.verdict_hook`,
`sampler.continue_rows`: 1 + X tokens per row). The reference is what that replaced: after
sampling, a fresh forward pass over the whole row [request, reasons, prefix] per judgment, in
length-bucketed batches (`--reference_batch` rows). Both read the same rollout (same seed, the
additive judge's compact rubric, OASST1 responses from launch/build_data.py's human pairs), and
the table reports:

  sample_s      rollout.sample alone (prefill + decode of the judgments)
  with_cache_s  the same call with the forced-verdict hook (the library's judge)
  cache_cost_s  with_cache_s - sample_s: what the verdicts cost when read from the cache
  reference_s   the fresh forward passes alone (the verdicts of the same rows)
  speedup       reference_s / cache_cost_s, and the whole judge call's
                (sample_s + reference_s) / with_cache_s
  max_score_diff  the largest difference between the two paths' expected scores

Every time is the best of --repeats calls after a warm-up call that compiles.

  python launch/build_data.py --out_dir=/tmp/srlm_data
  python launch/bench_judge.py --pairs=/tmp/srlm_data/human_pairs.jsonl --responses=8 \
      --out=/tmp/bench_judge.json
"""

import functools
import json

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

import srlm_jax
from srlm_jax import data_io, judges, llama, rollout
from srlm_jax.judges import forced
from bench_util import timed, write_json  # launch/bench_util.py, beside this script

FLAGS = flags.FLAGS
flags.DEFINE_string('model', 'smollm2-135m-instruct', 'Judge model: directory, .gguf or name.')
flags.DEFINE_string('pairs', '/tmp/srlm_data/human_pairs.jsonl',
                    "launch/build_data.py's human pairs: their responses are judged.")
flags.DEFINE_integer('responses', 8, 'Distinct responses judged (the first ones in the file).')
flags.DEFINE_integer('max_response_tokens', 512, 'Responses longer than this are skipped.')
flags.DEFINE_integer('k', 1, 'Judgments per response.')
flags.DEFINE_integer('max_new_tokens', 48, 'Tokens of reasons before the forced verdict.')
flags.DEFINE_integer('reference_batch', 8, 'Rows per fresh forward pass of the reference.')
flags.DEFINE_integer('repeats', 2, 'Timed calls per measurement (the best is kept).')
flags.DEFINE_string('out', '', 'Where to write the results as JSON.')


def responses(model, path: str, count: int, max_tokens: int) -> tuple[list, list]:
  """Returns (prompts, responses): the first `count` distinct responses of the pairs file."""
  seen, prompts, texts = set(), [], []
  for _, _, record in data_io.read_jsonl(path):
    for side in ('chosen', 'rejected'):
      text = record[side]
      if text in seen or len(model.tokenizer.encode(text)) > max_tokens:
        continue
      seen.add(text)
      prompts.append(record['prompt'])
      texts.append(text)
      if len(texts) == count:
        return prompts, texts
  return prompts, texts


@functools.partial(jax.jit, static_argnames='config')
def _fresh_forward_scores(config, params, tokens_BT, mask_BT, ids_SxL, values_S, cont_SxS):
  """Returns the expected scores [B] after rows that end with the prefix: one full forward."""
  hidden, _ = llama.Llama(config).apply({'params': params}, tokens_BT,
                                        llama.default_positions(mask_BT), mask_BT,
                                        hidden_only=True)
  return forced.read_scores(config, params, hidden, ids_SxL, values_S, cont_SxS)[0]


def reference_verdicts(model, ids, roll, prefix, score_ids, values, batch: int) -> np.ndarray:
  """Returns the expected scores [R] from a fresh forward over [request, reasons, prefix]."""
  host = jax.device_get(roll.arrays())
  body = np.asarray(forced.body_lengths(roll.lengths, roll.stop_reason))
  rows = [np.concatenate([ids[r // roll.n], host['tokens'][r, :body[r]], prefix]).astype(
      np.int32) for r in range(roll.num_rows)]
  ids_SxL = np.asarray(score_ids, np.int32).reshape(len(values), -1)
  cont = forced._continuations(ids_SxL)  # pylint: disable=protected-access
  order = sorted(range(len(rows)), key=lambda r: -len(rows[r]))
  out = np.zeros(len(rows), np.float32)
  for start in range(0, len(order), batch):
    chunk = order[start:start + batch]
    chunk = chunk + [chunk[0]] * (batch - len(chunk))
    width = data_io.length_bucket(max(len(rows[r]) for r in chunk), max_len=1 << 62)
    tokens, mask = rollout.left_pad([rows[r] for r in chunk], width, model.tokenizer.pad_id)
    got = np.asarray(_fresh_forward_scores(model.config, model.params, tokens, mask, ids_SxL,
                                           np.asarray(values), cont))
    out[chunk] = got
  return out


def best(fn, repeats: int):
  """Returns (fn()'s last result, the least seconds of `repeats` calls after a warm-up)."""
  fn()
  times, out = [], None
  for _ in range(repeats):
    out, t = timed(fn)
    times.append(t)
  return out, min(times)


def main(argv):
  del argv
  model = srlm_jax.load(FLAGS.model)
  tok, judge = model.tokenizer, judges.get('additive')
  template = judges.get_template('compact')
  prompts, texts = responses(model, FLAGS.pairs, FLAGS.responses, FLAGS.max_response_tokens)
  ids, _ = rollout.encode_prompts(model, judge.requests(prompts, texts, template),
                                  max_new_tokens=FLAGS.max_new_tokens, reserve=8)
  score_ids, path = forced.score_tokens(tok, judge.verdict_prefix, judge.score_values)
  prefix = tok.encode(judge.verdict_prefix) + path
  # Every row's verdict after its whole judgment ('forced' keeps those without a verdict line).
  hook = forced.verdict_hook(model, judge.parser(tok), 'forced', [prefix], score_ids,
                             judge.score_values)
  sample = lambda on_batch=None: rollout.sample(
      model, ids, n=FLAGS.k, max_new_tokens=FLAGS.max_new_tokens, temperature=0.7, top_p=0.9,
      seed=0, progress=False, on_batch=on_batch)
  ready = lambda x: jax.block_until_ready(x)
  roll, sample_s = best(lambda: ready(sample()), FLAGS.repeats)
  (_, cached), with_cache_s = best(lambda: ready(sample(hook)), FLAGS.repeats)
  ref, reference_s = best(lambda: reference_verdicts(
      model, ids, roll, prefix, score_ids, judge.score_values, FLAGS.reference_batch),
                          FLAGS.repeats)
  cache_cost_s = with_cache_s - sample_s
  prompt_tokens = [len(x) for x in ids]
  row = {
      'responses': len(texts), 'k': FLAGS.k, 'max_new_tokens': FLAGS.max_new_tokens,
      'request_tokens_mean': round(float(np.mean(prompt_tokens)), 1),
      'request_tokens_max': int(max(prompt_tokens)),
      'sample_s': round(sample_s, 2), 'with_cache_s': round(with_cache_s, 2),
      'cache_cost_s': round(cache_cost_s, 2), 'reference_s': round(reference_s, 2),
      'verdict_speedup': round(reference_s / max(cache_cost_s, 1e-3), 1),
      'judge_call_speedup': round((sample_s + reference_s) / with_cache_s, 2),
      'max_score_diff': float(np.max(np.abs(np.asarray(cached[0])[:, 0] - ref))),
  }
  print(json.dumps(row))
  cols = list(row)
  print('\n| ' + ' | '.join(cols) + ' |\n|' + '---|' * len(cols))
  print('| ' + ' | '.join(str(row[c]) for c in cols) + ' |')
  write_json(FLAGS.out, {'device': jax.devices()[0].device_kind, 'model': FLAGS.model,
                         'rows': [row]})


if __name__ == '__main__':
  app.run(main)
