r"""One self-instruction creation run: new prompts, N candidates, K judgments each, pairs.

  python launch/self_instruct.py --model=smollm2-135m-instruct --num_seeds=16 \
      --out_dir=/tmp/creation

Seed prompts come from --seeds (JSONL with a "prompt" field; default: the embedded IFT seed
set). Every stage's records are written under --out_dir as JSONL, with summary.json.
"""

import json
import os

from absl import app
from absl import flags

import srlm_jax
from srlm_jax import console
from srlm_jax import creation
from srlm_jax import data_io
from srlm_jax import judge
from srlm_jax import validate

SEED_IFT = os.path.join(os.path.dirname(srlm_jax.__file__), 'data', 'ift_seed.jsonl')

_MODEL = flags.DEFINE_string('model', 'smollm2-135m-instruct', 'Model directory, .gguf or name.')
_SEEDS = flags.DEFINE_string('seeds', SEED_IFT, 'JSONL of seed prompts ("prompt" field).')
_NUM_SEEDS = flags.DEFINE_integer('num_seeds', 16, 'Seed prompts to use (the first ones).')
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Where the JSONL records go.', required=True)
_NUM_REQUESTS = flags.DEFINE_integer('num_requests', 16, 'Few-shot requests for new prompts.')
_N = flags.DEFINE_integer('n', 4, 'Candidates per prompt.')
_K = flags.DEFINE_integer('k', 3, 'Judgments per candidate.')
_MAX_NEW_TOKENS = flags.DEFINE_integer('max_new_tokens', 128, 'Candidate length limit.')
_JUDGE_MAX_NEW_TOKENS = flags.DEFINE_integer('judge_max_new_tokens', 128, 'Judgment limit.')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')


def main(argv):
  del argv
  console.quiet_third_party()  # absl/jax INFO logs only with --verbosity
  validate.check_flags('launch/self_instruct.py', {  # before any model loads
      'creation.num_requests': ('--num_requests', _NUM_REQUESTS.value),
      'creation.n_candidates': ('--n', _N.value), 'judge.k': ('--k', _K.value),
      'creation.max_new_tokens': ('--max_new_tokens', _MAX_NEW_TOKENS.value),
      'judge.max_new_tokens': ('--judge_max_new_tokens', _JUDGE_MAX_NEW_TOKENS.value)})
  seeds = [data_io.text_field(r, 'prompt') for r in data_io.read_jsonl(_SEEDS.value)]
  seeds = seeds[:_NUM_SEEDS.value]
  settings = creation.CreationSettings(
      num_requests=_NUM_REQUESTS.value, n_candidates=_N.value,
      max_new_tokens=_MAX_NEW_TOKENS.value, seed=_SEED.value,
      judge=judge.JudgeSettings(k=_K.value, max_new_tokens=_JUDGE_MAX_NEW_TOKENS.value))
  model = srlm_jax.load(_MODEL.value)
  print(json.dumps(creation.run(model, seeds, settings, _OUT_DIR.value), indent=2))


if __name__ == '__main__':
  app.run(main)
