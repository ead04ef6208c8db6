"""Stage `dpo`: M_t -> M_{t+1} by DPO on the iteration's preference dataset.

Trains on the token ids M_t sampled (the pairs stage's published arrays: chosen and rejected
rows, and M_t's log-probs of them from the candidate Rollout as the reference), in out_dir
(Orbax checkpoints, metrics.jsonl), and saves M_{t+1} in out_dir/params. No pairs: skipped,
and M_{t+1} = M_t.
"""

import logging

from srlm_jax import rollout
from srlm_jax import train
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage


def run(ctx, out_dir: str) -> dict:
  """Returns {'skipped': whether there was nothing to train on, 'pairs'}."""
  pairs = ctx.info('pairs').get('pairs', 0)
  if not pairs:
    logging.warning('iteration %d made no preference pairs: M_%d = M_%d', ctx.t, ctx.t + 1,
                    ctx.t)
    return {'skipped': True, 'pairs': 0}
  dataset = rollout.unflatten(ctx.arrays('pairs'))
  model = ctx.model(training=True)  # float32 master weights
  # Only the policy, its gradients and optimizer state and the dataset (with its reference
  # log-probs) stay on the device: every cached model and the other stages' arrays are
  # dropped, and the policy's params are donated to the trained state.
  ctx.release_models()
  ctx.release_arrays(keep=('pairs',))
  state = train.run_dpo(ctx.train_config('dpo'), out_dir, model=model, dataset=dataset,
                        progress=ctx.progress, donate=True)
  del state, dataset
  ctx.release_arrays()  # the dataset too: the stages after this one read it from its file
  return {'skipped': False, 'pairs': int(pairs)}


STAGE = register(Stage('dpo', run, inputs=('pairs',), params='params'))
