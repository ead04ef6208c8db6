"""Stage `ref_logps`: M_t's log-probs of each pair's chosen and rejected response.

Published as arrays.npz {'ref_chosen_logps', 'ref_rejected_logps'} [pairs], DPO's reference.
"""

from srlm_jax import train
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage


def run(ctx, out_dir: str) -> dict:
  """Returns the number of pairs scored ({'skipped': True} when there are none)."""
  pairs_path = ctx.path('pairs', 'pairs.jsonl')
  if not ctx.records('pairs', 'pairs.jsonl'):
    return {'skipped': True}
  logps = train.reference_logps(ctx.train_config('dpo', train_data=pairs_path), ctx.model())
  ctx.publish(out_dir, logps)
  return {'pairs': int(len(logps['ref_chosen_logps']))}


STAGE = register(Stage('ref_logps', run, inputs=('pairs',)))
