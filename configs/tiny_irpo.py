r"""Iterative RPO on the random tiny model: the test config of the verified -> rpo stages.

  python launch/srlm.py --config=configs/tiny_irpo.py --workdir=/tmp/srlm_tiny_irpo

Per iteration: `tasks` (two arithmetic problems), `verified` (two 16-token chains of thought
each, scored by the task's checker), `rpo` (DPO + NLL on correct-vs-incorrect pairs). A random
model never answers right, so its iterations make no pairs and skip rpo; tests make the
checker accept one candidate per task to run the training path.
"""

from srlm_jax import config_files


def get_config(arg: str = ''):
  """Returns the tiny Iterative RPO config."""
  c = config_files.beside(__file__, 'tiny.py').get_config(arg)
  c.stages = ('tasks', 'verified', 'rpo')
  c.tasks.kind = 'arithmetic'
  c.tasks.n = 2
  c.tasks.difficulty = (1,)
  c.creation.n_candidates = 2
  c.creation.max_new_tokens = 16
  c.creation.pair_truncated = True  # a random model's chains all run to the length limit
  c.dpo.loss = 'rpo'
  c.dpo.loss_options.nll_weight = 1.0
  c.dpo.max_len = 256
  c.dpo.unroll_layers = False  # a few steps: compile time dominates
  return c
