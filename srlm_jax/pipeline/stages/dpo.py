"""Stage `dpo`: M_t -> M_{t+1} by DPO on the iteration's preference dataset.

Trains on the token ids M_t sampled (the pairs stage's published arrays: chosen and rejected
rows, and M_t's log-probs of them from the candidate Rollout as the reference), in out_dir
(Orbax checkpoints, metrics.jsonl), and saves M_{t+1} in out_dir/params. With
creation.meta_judge.enabled, the judge_pairs stage's judge-preference pairs are appended to the
actor pairs (rewards.pairs.concat_datasets).
No pairs of either kind: skipped, and M_{t+1} = M_t.
"""

import logging

from srlm_jax import rollout
from srlm_jax import train
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage
from srlm_jax.rewards import pairs as pairs_lib


def run(ctx, out_dir: str) -> dict:
  """Returns {'skipped': whether there was nothing to train on, 'pairs', 'judge_pairs'}."""
  pairs = ctx.info('pairs').get('pairs', 0)
  # Meta-Rewarding: the judge-preference pairs train beside the actor pairs.
  judge_pairs = (ctx.info('judge_pairs').get('pairs', 0)
                 if ctx.config.creation.meta_judge.enabled else 0)
  human = ctx.info('human_pairs').get('pairs', 0)  # earlier review labels (G, #19)
  if not pairs and not judge_pairs and not human:
    logging.warning('iteration %d made no preference pairs: M_%d = M_%d', ctx.t, ctx.t + 1,
                    ctx.t)
    return {'skipped': True, 'pairs': 0, 'judge_pairs': 0}
  model = ctx.model(training=True)  # float32 master weights
  parts = [rollout.unflatten(ctx.arrays(name)) for name, count in (
      ('pairs', pairs), ('judge_pairs', judge_pairs), ('human_pairs', human)) if count]
  dataset = pairs_lib.concat_datasets(parts, pad_id=model.tokenizer.pad_id)
  del parts
  # Only the policy, its gradients and optimizer state and the dataset (with its reference
  # log-probs) stay on the device: every cached model and the other stages' arrays are
  # dropped, and the policy's params are donated to the trained state.
  ctx.release_models()
  ctx.release_arrays(keep=('pairs', 'judge_pairs'))
  state = train.run_dpo(ctx.train_config('dpo'), out_dir, model=model, dataset=dataset,
                        progress=ctx.progress, donate=True)
  del state, dataset
  ctx.release_arrays()  # the dataset too: the stages after this one read it from its file
  return {'skipped': False, 'pairs': int(pairs), 'judge_pairs': int(judge_pairs),
          'human_pairs': int(human)}


STAGE = register(Stage('dpo', run, inputs=('pairs',), params='params'))
