r"""One self-instruction creation run: new prompts, N candidates, K judgments each, pairs.

  python launch/self_instruct.py --model=smollm2-135m-instruct --num_seeds=16 \
      --out_dir=/tmp/creation

The pipeline's stages prompts, candidates, judgments and pairs on the model as it is (no SFT,
no DPO), written under --out_dir/iter_1/<stage>/ as JSONL; --out_dir/iter_1/report.json holds
the counts (printed at the end). Killed, the same command resumes at the first unfinished
shard. Seed prompts come from --seeds (JSONL with a "prompt" field; default: the embedded IFT
seed set); the other settings are configs/common.py's.
"""

import json
import os

from absl import app
from absl import flags

import srlm_jax
from srlm_jax import config_files
from srlm_jax import console
from srlm_jax import data_io
from srlm_jax import validate
from srlm_jax.pipeline import runner

SEED_IFT = os.path.join(os.path.dirname(srlm_jax.__file__), 'data', 'ift_seed.jsonl')
STAGES = ('prompts', 'candidates', 'judgments', 'pairs')

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


def creation_config():
  """Returns configs/common.py's loop config set to this run's flags and stages."""
  c = config_files.get_config(os.path.join(config_files.CONFIGS, 'common.py'))
  c.model, c.seed, c.iterations, c.stages = _MODEL.value, _SEED.value, 1, STAGES
  c.sft.enabled = False  # the model as it is judges its own candidates
  c.data.ift = _SEEDS.value  # recorded in config.json; the seeds are read here (prompts only)
  c.creation.num_requests, c.creation.n_candidates = _NUM_REQUESTS.value, _N.value
  c.creation.max_new_tokens = _MAX_NEW_TOKENS.value
  c.creation.judge.k, c.creation.judge.max_new_tokens = _K.value, _JUDGE_MAX_NEW_TOKENS.value
  c.logging.tensorboard = False
  return c


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
  config = creation_config()
  run = runner.Runner(config, _OUT_DIR.value, load_model=runner.default_loader(config),
                      seeds={'ift': [], 'eft': [], 'seed_prompts': seeds})
  [report] = run.run()
  print(json.dumps(report, indent=2))


if __name__ == '__main__':
  app.run(main)
