r"""The embedded default: one self-rewarding iteration of SmolLM2-135M-Instruct on the CPU.

  python launch/srlm.py --config=configs/demo.py --workdir=/tmp/srlm_demo

Seed data is the project's own embedded IFT and EFT sets (no download). Sized to aim at about
ten minutes for M1 SFT plus one full iteration (prompts, candidates, judgments, pairs, DPO) on
an idle 2-core CPU: a short SFT, 16 few-shot requests, 4 candidates and 3 judgments each. (On a
heavily loaded machine it took about 25 minutes; a 135M model judges badly, so an iteration
may make few or no pairs, in which case DPO is skipped and reported.)
"""

import importlib.util
import os


def get_config(arg: str = ''):
  """Returns the demo config."""
  spec = importlib.util.spec_from_file_location(
      'srlm_configs_common', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'common.py'))
  common = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(common)
  c = common.get_config(arg)
  c.model = 'smollm2-135m-instruct'
  c.iterations = 1
  c.shard_size = 16

  c.creation.num_requests = 16
  c.creation.prompt_max_new_tokens = 64
  c.creation.max_new_tokens = 96
  c.creation.judge.max_new_tokens = 96
  # The additive rubric in brief (judge.COMPACT_RUBRIC): the full one makes ~430-token EFT
  # prompts, which a 256-token SFT window would drop, and slows judging on a CPU.
  c.creation.judge.template = 'compact'

  # M1: a short SFT on a slice of the seed sets (the full sets take an hour on a laptop CPU).
  c.data.max_ift = 32
  c.data.max_eft = 32
  c.sft.num_steps = 4
  c.sft.batch_size = 4
  c.sft.max_len = 512  # compact-rubric EFT examples (300 tokens, at most 480) fit whole
  c.sft.lr = 1e-5
  c.sft.end_lr = 2e-6
  c.sft.dtype = 'float32'
  c.sft.checkpoint_every = 2

  c.dpo.batch_size = 4
  c.dpo.num_epochs = 1.0
  c.dpo.max_len = 256
  c.dpo.lr = 1e-6
  c.dpo.end_lr = 1e-7
  c.dpo.dtype = 'float32'
  c.dpo.checkpoint_every = 2
  return c
