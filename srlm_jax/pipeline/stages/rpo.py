"""Stage `rpo`: M_t -> M_{t+1} by Iterative RPO on the `verified` stage's pairs.

The loss is config.dpo's: 'rpo' (objectives/preference.py: DPO plus nll_weight times the
chosen chain's length-normalised NLL, Pang et al. 2024, Eq. 1) in the IRPO configs. Trains in
out_dir, saves M_{t+1} in out_dir/params; no pairs: skipped, M_{t+1} = M_t.
"""

from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage
from srlm_jax.pipeline.stages import step_dpo


def run(ctx, out_dir: str) -> dict:
  """Returns {'skipped', 'pairs'} after RPO training on the verified pairs."""
  return step_dpo.train_pairs(ctx, out_dir, 'verified')


STAGE = register(Stage('rpo', run, inputs=('verified',), params='params'))
