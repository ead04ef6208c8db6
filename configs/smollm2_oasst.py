r"""SmolLM2-135M-Instruct on OASST seed data from local files: a real-data run for one GPU or a
patient CPU.

  python launch/build_data.py --out_dir=/tmp/srlm_oasst      # from ../shared/data, no download
  python launch/srlm.py --config=configs/smollm2_oasst.py:/tmp/srlm_oasst \
      --workdir=/tmp/srlm_smollm2_oasst

The argument is the directory of launch/build_data.py's JSONL: ift.jsonl (OASST2 first-turn
prompts with their rank-0 reply) seeds the prompts and the IFT half of M1's SFT, eft_train.jsonl
(human-ranked replies turned into judge examples) the EFT half. OASST1's English validation
trees are held out of both, for launch/evaluate.py's judge accuracy. Two AIFT iterations of 256
few-shot requests; on one GPU an iteration takes minutes, on a 2-core CPU hours.
"""

import importlib.util
import os


def get_config(arg: str = '/tmp/srlm_oasst'):
  """Returns the SmolLM2 + OASST config; arg is the build_data.py output directory."""
  spec = importlib.util.spec_from_file_location(
      'srlm_configs_common', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'common.py'))
  common = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(common)
  c = common.get_config()
  data_dir = arg or '/tmp/srlm_oasst'
  c.model = 'smollm2-135m-instruct'
  c.iterations = 2
  c.shard_size = 64

  c.data.ift = os.path.join(data_dir, 'ift.jsonl')
  c.data.eft = os.path.join(data_dir, 'eft_train.jsonl')

  c.creation.num_requests = 256
  c.creation.prompt_max_new_tokens = 96
  c.creation.max_new_tokens = 256
  c.creation.judge.max_new_tokens = 192

  for block in (c.sft, c.dpo):
    block.batch_size = 16
    block.max_len = 768
    block.checkpoint_every = 100
  c.sft.num_epochs = 2.0
  c.sft.lr, c.sft.end_lr = 2e-5, 2e-6  # a 135M model wants more than the 70B's 5.5e-6
  c.dpo.lr, c.dpo.end_lr = 1e-6, 1e-7
  return c
