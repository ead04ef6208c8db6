"""Stage `step_dpo`: M_t -> M_{t+1} by Step-DPO on the step pairs of the `steps` stage.

Each row is a step pair: the prompt is the problem and the steps chosen before it, the
completion one candidate step, so DPO's loss covers the step's tokens only, with policy and
reference (M_t's sampling log-probs) conditioned on the same prefix. The loss is config.dpo
(objective 'step_dpo' in the process configs; 'sigmoid' computes the same on these rows).
Trains in out_dir and saves M_{t+1} in out_dir/params; no step pairs: skipped, M_{t+1} = M_t.
`train_pairs` is the shared body (the `rpo` stage uses it on the `verified` stage's pairs).
"""

import logging

from srlm_jax import rollout
from srlm_jax import train
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage


def train_pairs(ctx, out_dir: str, source: str) -> dict:
  """Returns {'skipped', 'pairs'} after DPO (config.dpo) on the pairs `source` published."""
  pairs = ctx.info(source).get('pairs', 0)
  if not pairs:
    logging.warning('iteration %d: stage %s made no pairs: M_%d = M_%d', ctx.t, source,
                    ctx.t + 1, ctx.t)
    return {'skipped': True, 'pairs': 0}
  dataset = rollout.unflatten(ctx.arrays(source))
  model = ctx.model(training=True)  # float32 master weights
  # Only the policy, its optimizer state and the dataset stay on the device.
  ctx.release_models()
  ctx.release_arrays(keep=(source,))
  state = train.run_dpo(ctx.train_config('dpo'), out_dir, model=model, dataset=dataset,
                        progress=ctx.progress, donate=True)
  del state, dataset
  ctx.release_arrays()
  return {'skipped': False, 'pairs': int(pairs)}


def run(ctx, out_dir: str) -> dict:
  """Returns {'skipped', 'pairs'} after Step-DPO on the step pairs."""
  return train_pairs(ctx, out_dir, 'steps')


STAGE = register(Stage('step_dpo', run, inputs=('steps',), params='params'))
