r"""Process-based self-rewarding on the random tiny model: the step search's test config.

  python launch/srlm.py --config=configs/tiny_process.py --workdir=/tmp/srlm_tiny_process

M0 (tiny:0) -> M1 by a few SFT steps, then per iteration (M1 -> M2 -> M3): `tasks` (two
arithmetic problems), `steps` (each solved step by step: two candidate steps of up to 8
tokens per prefix, judged by the pointwise step judge with forced verdicts, so every
candidate has a score and most steps make a pair), `step_dpo` (DPO on the steps' tokens).
A random model writes no real steps, so nothing here measures learning: it runs every stage,
record and resume path of a real run in about a minute or two on a CPU.
"""

from srlm_jax import config_files


def get_config(arg: str = ''):
  """Returns the tiny process-based config."""
  c = config_files.beside(__file__, 'tiny.py').get_config(arg)
  c.stages = ('tasks', 'steps', 'step_dpo')
  c.tasks.kind = 'arithmetic'
  c.tasks.n = 2
  c.tasks.difficulty = (1,)
  c.process.max_steps = 2
  c.process.step_max_new_tokens = 8
  c.creation.n_candidates = 2
  c.creation.judge.kind = 'step'
  c.creation.judge.template = 'compact'
  c.creation.judge.k = 1
  c.creation.judge.max_new_tokens = 4
  c.creation.judge.verdict = 'forced'  # a random model writes no verdicts of its own
  c.creation.pair_truncated = True  # a random model never ends a step within 8 tokens
  c.dpo.loss = 'step_dpo'
  c.dpo.max_len = 256
  c.dpo.unroll_layers = False  # a few steps: compile time dominates
  return c
