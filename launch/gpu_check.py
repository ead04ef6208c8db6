r"""Every GPU check of the project in one run, one table.

Its first run on an H200 (2026-12-04, README Benchmarks) took 550 s, 440 of them compiling: over
the 8 minutes it is meant to fit. Give its device call 10 minutes. So it now compiles first: the
three checks run at once, each a process of its own (their compiles in parallel on the host's
cores, each process held to a third of the GPU's memory), and write a persistent XLA compilation
cache; then they run one after another, timed, and load their programs from that cache.

1. bench_sampler: a Llama 3.2 1B-shaped model (random weights) in bfloat16 at batch 1, 16, 64
   and 256, with the fraction of the HBM-bandwidth (or compute) floor reached;
2. bench_train: the jitted DPO step in bfloat16 on SmolLM2-135M's architecture, with MFU;
3. bench_iteration: the peer's iteration work (16 prompts x 4 candidates x 3 judgments x 128
   tokens) on SmolLM2-135M's architecture in bfloat16.

The GPU machine has no network and its working tree travels without ../shared and without the
SmolLM2 weights (98 MB, over the transfer limit), so checks 2 and 3 use SmolLM2's config and
tokenizer with random weights (--random_init: the same shapes and token counts; EOS is
ignored, so the work does not depend on the weights), and check 2 reads its preference pairs
from a file. `--prepare` writes both into .gpu/ (git-ignored) on this machine first:

  python launch/gpu_check.py --prepare                  # here, once: .gpu/smollm2, .gpu/pairs
  python launch/gpu_check.py --out=$OUT                 # on the GPU machine (carry .gpu)
  python launch/gpu_check.py --out=/tmp/g --quick       # a dry run of the script at tiny sizes
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_bool('prepare', False, 'Write .gpu/ (SmolLM2 config + tokenizer, OASST pairs).')
flags.DEFINE_string('out', '/tmp/gpu_check', 'Folder for each benchmark JSON and table.md.')
flags.DEFINE_bool('quick', False, 'Tiny sizes: checks the script itself (on a CPU) in minutes.')
flags.DEFINE_bool('warm', True, 'Compile first: run the checks at once, in parallel processes, '
                  'into a persistent compilation cache that the timed runs then load from.')

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GPU_DIR = os.path.join(ROOT, '.gpu')


def prepare() -> None:
  """Writes .gpu/smollm2 (config.json, tokenizer files) and .gpu/pairs.jsonl (128 pairs)."""
  sys.path.insert(0, ROOT)
  import srlm_jax  # pylint: disable=g-import-not-at-top
  from srlm_jax import data, data_io  # pylint: disable=g-import-not-at-top
  src = srlm_jax._converted_smollm2(srlm_jax.resolve_model_path(srlm_jax.SMOLLM2))  # pylint: disable=protected-access
  dst = os.path.join(GPU_DIR, 'smollm2')
  os.makedirs(dst, exist_ok=True)
  for name in os.listdir(src):
    if not name.endswith('.safetensors'):
      shutil.copy(os.path.join(src, name), dst)
  oasst = os.path.join(ROOT, '..', 'shared', 'data', 'oasst1', 'en-validation.jsonl')
  rankings, _ = data.eft_eval_from_trees(oasst)
  pairs = data.pairs_from_rankings(rankings)[:128]
  data_io.write_jsonl(os.path.join(GPU_DIR, 'pairs.jsonl'), pairs)
  print(f'wrote {dst} and {len(pairs)} pairs in {GPU_DIR}/pairs.jsonl')


def checks(out: str, quick: bool) -> list:
  """Returns [(name, argv)] of the benchmark runs."""
  model = os.path.join(GPU_DIR, 'smollm2')
  py = [sys.executable]
  dtype = '--dtype=' + ('float32' if quick else 'bfloat16')  # bfloat16 is for accelerators
  sampler = ['--model_size=1b', '--dtype=bfloat16', '--no_reference',
             '--batch_sizes=' + ('1,4' if quick else '1,16,64,256'),
             '--new_tokens=' + ('8' if quick else '128')]
  train = ['--model=' + model, '--random_init', dtype, '--no_reference',
           '--pairs=' + os.path.join(GPU_DIR, 'pairs.jsonl')] + (
               ['--batch_size=2', '--max_len=64', '--num_pairs=4', '--steps=1', '--warmup=1']
               if quick else ['--batch_size=16', '--max_len=512', '--num_pairs=128'])
  iteration = ['--model=' + model, '--random_init', dtype, '--no_reference'] + (
      ['--new_tokens=8'] if quick else [])
  if quick:  # a CPU cannot run the 1B model in minutes: the tiny architecture instead
    sampler = ['--model=tiny', '--no_reference', '--batch_sizes=1,4', '--new_tokens=8']
  return [(name, py + [os.path.join(HERE, f'bench_{name}.py'), f'--out={out}/{name}.json'] + a)
          for name, a in [('sampler', sampler), ('train', train), ('iteration', iteration)]]


def table(out: str) -> str:
  """Returns one markdown table of the headline numbers of each benchmark JSON in out."""
  lines = ['| check | setting | result |', '|---|---|---|']
  read = lambda name: json.load(open(os.path.join(out, f'{name}.json'), encoding='utf-8'))
  if os.path.exists(os.path.join(out, 'sampler.json')):
    r = read('sampler')
    for row in r['rows']:
      lines.append(f"| sampler {r['model']} {r['dtype']} | batch {row['batch']} | "
                   f"{row['ours_tok_s']:.0f} tok/s, decode {row['decode_tok_s']:.0f} tok/s, "
                   f"{row['floor_fraction']:.2f} of the floor |")
  if os.path.exists(os.path.join(out, 'train.json')):
    r = read('train')
    ours, settings = r['ours'], r['settings']
    lines.append(f"| DPO step {settings['dtype']} | batch {settings['batch_size']} x "
                 f"{settings['max_len']} tokens | {ours['pairs_s']:.1f} pairs/s, "
                 f"{ours['tokens_s']:.0f} tokens/s, MFU {ours['mfu']:.3f} |")
  if os.path.exists(os.path.join(out, 'iteration.json')):
    r = read('iteration')
    for row in r['rows']:
      lines.append(f"| iteration {r['dtype']} | {row['stage']} | {row['seconds']:.2f} s, "
                   f"{row['floor_fraction_shared_prefix']:.2f} of the floor |")
  return '\n'.join(lines)


def warm(runs: list, env: dict, logs: str) -> None:
  """Runs the checks at once (results discarded), each logging to logs/<name>.log: their
  programs land in env's persistent compilation cache."""
  os.makedirs(logs, exist_ok=True)
  env = dict(env, XLA_PYTHON_CLIENT_MEM_FRACTION=f'{0.9 / len(runs):.2f}')
  start, procs = time.time(), []
  for name, argv_ in runs:
    with open(os.path.join(logs, f'{name}.log'), 'w', encoding='utf-8') as log:
      procs.append((name, subprocess.Popen(argv_, env=env, stdout=log, stderr=subprocess.STDOUT)))
  codes = {name: proc.wait() for name, proc in procs}
  print(f'== compiled the checks at once in {time.time() - start:.0f} s (exit codes {codes}; '
        f'logs in {logs})', flush=True)


def main(argv):
  del argv
  if FLAGS.prepare:
    prepare()
    return
  os.makedirs(FLAGS.out, exist_ok=True)
  began = time.time()
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
             PYTHONUNBUFFERED='1')
  if FLAGS.warm:  # a fresh cache: what the timed runs load was compiled by this run
    cache = os.path.join(tempfile.gettempdir(), 'srlm_jax_gpu_check_xla_cache')
    shutil.rmtree(cache, ignore_errors=True)
    env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
    scratch = os.path.join(FLAGS.out, 'warm')
    warm(checks(scratch, FLAGS.quick), env, scratch)
  failed = []
  for name, argv_ in checks(FLAGS.out, FLAGS.quick):
    start = time.time()
    print(f'== {name}: {" ".join(argv_[1:])}', flush=True)
    if subprocess.run(argv_, env=env, check=False).returncode:
      failed.append(name)
    print(f'== {name}: {time.time() - start:.0f} s', flush=True)
  text = table(FLAGS.out)
  with open(os.path.join(FLAGS.out, 'table.md'), 'w', encoding='utf-8') as f:
    f.write(text + '\n')
  print(text)
  print(f'== gpu_check: {time.time() - began:.0f} s in all', flush=True)
  if failed:
    sys.exit(f'failed: {failed}')


if __name__ == '__main__':
  app.run(main)
