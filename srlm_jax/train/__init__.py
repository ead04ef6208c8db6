"""Training: the state and optimizer, per-token features, the pure steps, the host loop, runs.

  state.py        TrainState, the AdamW schedule, sharded init (optionally donating the params)
  features.py     per-token policy log-probs of a batch -> objectives.Features; loss positions
  steps.py        the SFT and DPO steps (objective -> grads -> one update), jit_step
  host_loop.py    train_loop: checkpoints, metrics, finite checks, crash points
  reference.py    reference log-probs of a dataset (precomputed or online), held-out evaluation
  device_data.py  batches of a preference dataset kept on the device
  runs.py         run_sft / run_dpo from a config (what launch/ and the loop call)

`from srlm_jax import train` gives every public name of these modules.
"""

from srlm_jax.train.device_data import DeviceBatches, check_dataset
from srlm_jax.train.features import (add_loss_positions, interleave, pair_features, pair_logps,
                                     sequence_features, sequence_logps, target_logp_sums,
                                     token_features, token_logps)
from srlm_jax.train.host_loop import (KILL_AT_ENV, check_finite_params, nonfinite_params,
                                      put_batch, train_loop)
from srlm_jax.train.reference import (compute_ref_logps, dataset_logps, dataset_token_logps,
                                      dpo_eval, make_online_ref, sft_eval, zero_ref_logps)
from srlm_jax.train.runs import reference_logps, run_dpo, run_sft
from srlm_jax.train.state import (TrainState, lr_schedule, make_init, make_optimizer, release,
                                  state_shardings)
from srlm_jax.train.steps import (dpo_loss, jit_step, make_dpo_step, make_sft_step, sft_loss,
                                  train_step)
