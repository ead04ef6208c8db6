"""Stage `dpo`: M_t -> M_{t+1} by DPO on the iteration's pairs, M_t the reference.

Trains in out_dir (Orbax checkpoints, metrics.jsonl) and saves M_{t+1} in out_dir/params. No
pairs: skipped, and M_{t+1} = M_t.
"""

import logging

from srlm_jax import train
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage


def run(ctx, out_dir: str) -> dict:
  """Returns {'skipped': whether there was nothing to train on}."""
  if ctx.info('ref_logps').get('skipped'):
    logging.warning('iteration %d made no preference pairs: M_%d = M_%d', ctx.t, ctx.t + 1,
                    ctx.t)
    return {'skipped': True}
  ref = ctx.arrays('ref_logps')
  model = ctx.model()
  # Only the policy (and what training adds) stays on the device: M0 and the other cached
  # models are dropped; the runner loads what the later stages need again.
  ctx.release_models()
  cfg = ctx.train_config('dpo', train_data=ctx.path('pairs', 'pairs.jsonl'))
  state = train.run_dpo(cfg, out_dir, model=model, ref_logps=ref, progress=ctx.progress)
  del state
  return {'skipped': False}


STAGE = register(Stage('dpo', run, inputs=('pairs', 'ref_logps'), params='params'))
