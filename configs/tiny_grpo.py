r"""GRPO on the random tiny Llama with a rule-based reward: the online RL loop's test config.

  python launch/srlm.py --config=configs/tiny_grpo.py --workdir=/tmp/srlm_tiny_grpo

No SFT and no judge: the reward is the count of one token, a newline, in each 8-token
completion (grpo.reward = 'token_count'). At temperature 1 the random model's samples are
near-uniform over SmolLM2's 49,152 tokens, so that count is 0 in nearly every sample and no
group has reward variance; at temperature 0.1 about a quarter of its tokens are newlines, and
the count varies within groups. The loss uses the same temperature (the policy is
softmax(logits / 0.1), as in TRL's GRPO), so a logit change counts ten times: lr 3e-4. The mean
reward rises from about 2 to about 7.5 of 8 within 6-8 RL steps (tests/test_grpo_loop.py).
Every part of a real run is there: sampling from the train state's params, group advantages,
the k3 KL to the starting policy, two updates per batch with the clipped ratio, checkpoints,
rollout records, params/ for the next iteration. Self-reward instead:
--config.grpo.reward=judge (the forced verdicts set below).
"""

from srlm_jax import config_files


def get_config(arg: str = ''):
  """Returns the tiny GRPO config."""
  c = config_files.beside(__file__, 'common.py').get_config(arg)
  c.model = 'tiny:0'
  c.iterations = 1
  c.mesh = (1, -1, 1)
  c.stages = ('grpo',)
  c.sft.enabled = False  # nothing to teach a random model before RL
  c.data.max_ift = 16  # 16 seed prompts
  c.creation.few_shot = 4
  # For --config.grpo.reward=judge: forced verdicts give a random model's judgments a score.
  c.creation.judge.verdict = 'forced'
  c.creation.judge.k = 1
  c.creation.judge.max_new_tokens = 4
  c.creation.judge.template = ('Rate the response from 0 to 5.\nQuestion: {prompt}\n'
                               'Response: {response}')
  c.grpo.reward = 'token_count'
  c.grpo.reward_options.token = '\n'
  c.grpo.temperature = 0.1
  c.grpo.num_steps = 24
  c.grpo.batch_size = 8
  c.grpo.num_generations = 4
  c.grpo.mu = 2
  c.grpo.max_new_tokens = 8
  c.grpo.lr = 3e-4  # at temperature 0.1 a logit change counts ten times
  c.grpo.end_lr = 3e-4
  c.grpo.beta = 0.04
  c.grpo.checkpoint_every = 8
  return c
