"""Online RL from rewards the policy earns as it samples: GRPO, and RLSR (the reward is the
model's own judge score), on one mesh with one copy of the weights.

  rewards.py  rule-based rewards on device tokens (a registry: token_count, id_range), the
              task checker's reward (host), the reward kinds a config may name
  step.py     a Rollout's groups as a training batch [B, G, S] with group-normalised
              advantages, per-token log-probs, the jitted GRPO update (objectives.grpo)
  loop.py     the online loop: sample -> reward (self-judge, rule or checker) -> mu updates;
              Orbax checkpoints, metrics.jsonl, rollouts/step_<t>.jsonl

  from srlm_jax import rl
  state = rl.run_grpo(config.grpo, workdir, model, prompt_records, judge_settings=...)
"""

from srlm_jax.rl import rewards, step
from srlm_jax.rl.loop import GrpoRun, check_config, run_grpo, step_seed

__all__ = ['GrpoRun', 'check_config', 'rewards', 'run_grpo', 'step', 'step_seed']
