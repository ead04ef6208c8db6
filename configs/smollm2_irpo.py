r"""Iterative RPO (Pang et al. 2024) on SmolLM2-135M-Instruct, on generated arithmetic problems.

  python launch/srlm.py --config=configs/smollm2_irpo.py --workdir=/tmp/srlm_irpo

M0 -> M1: SFT on the program-written step-by-step solutions (srlm_jax/data/process_ift.jsonl)
so that M1 ends its chains of thought with "Answer: X" (the EFT set trains the step judge too,
unused here). Then M1 -> M2 -> M3, each iteration: `tasks` (32 new arithmetic problems of
levels 1-3), `verified` (4 sampled chains of thought per problem, each checked against the
program's answer: correct chains are chosen against incorrect ones), `rpo` (DPO plus the
chosen chain's length-normalised NLL, objectives/preference.py 'rpo', nll_weight 1 as in the
paper). verified/DONE's `accuracy` is M_t's pass rate on the iteration's new problems: compare
iterations.
"""

from srlm_jax import config_files


def get_config(arg: str = ''):
  """Returns the SmolLM2 Iterative RPO config."""
  c = config_files.beside(__file__, 'smollm2_process.py').get_config(arg)
  c.stages = ('tasks', 'verified', 'rpo')
  c.tasks.n = 32
  c.tasks.difficulty = (1, 2, 3)
  c.creation.n_candidates = 4
  c.creation.temperature = 0.8
  c.creation.max_new_tokens = 96
  c.dpo.loss = 'rpo'
  c.dpo.loss_options.nll_weight = 1.0  # α of Pang et al. Eq. 1 (the paper's value)
  c.dpo.num_epochs = 1.0
  return c
