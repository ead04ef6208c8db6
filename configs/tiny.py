r"""A random tiny Llama (2 layers, d=64) with SmolLM2's tokenizer: the loop's test config.

  python launch/srlm.py --config=configs/tiny.py --workdir=/tmp/srlm_tiny

Every stage runs, in seconds, on a CPU. A random model judges nothing validly, so its
iterations usually make no pairs and skip DPO (M_{t+1} = M_t, recorded in dpo/DONE); the
stages, shards, records and resume logic are the same as in a real run.
"""

import importlib.util
import os


def get_config(arg: str = ''):
  """Returns the tiny config."""
  spec = importlib.util.spec_from_file_location(
      'srlm_configs_common', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'common.py'))
  common = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(common)
  c = common.get_config(arg)
  c.model = 'tiny:0'
  c.iterations = 2
  c.shard_size = 4
  c.mesh = (1, 1, 1)

  c.creation.num_requests = 8
  c.creation.prompt_max_new_tokens = 24
  c.creation.max_new_tokens = 24
  c.creation.judge.k = 3
  c.creation.judge.max_new_tokens = 24
  # A random model writes no real instructions; keep what it writes so later stages run.
  c.creation.filters.min_words = 1
  c.creation.filters.require_instruction = False
  c.creation.filters.near_duplicate = 1.01

  c.data.max_ift = 16
  c.data.max_eft = 16
  c.sft.num_steps = 12
  c.sft.batch_size = 8
  c.sft.max_len = 96
  c.sft.lr = 3e-3
  c.sft.end_lr = 3e-4
  c.sft.warmup_steps = 5
  c.sft.dtype = 'float32'
  c.sft.checkpoint_every = 6

  c.dpo.batch_size = 2
  c.dpo.num_epochs = 1.0
  c.dpo.max_len = 96
  c.dpo.lr = 1e-3
  c.dpo.end_lr = 1e-4
  c.dpo.dtype = 'float32'
  c.dpo.checkpoint_every = 2
  return c
