r"""RLSR on SmolLM2-135M-Instruct: GRPO whose reward is the model's own verdict on generated
arithmetic word problems, with the program's truth logged beside it at every step.

  python launch/srlm.py --config=configs/smollm2_rlsr.py --workdir=/tmp/srlm_rlsr

  # the control run: the same GRPO rewarded by the task checker (RL from a verifiable reward)
  python launch/srlm.py --config=configs/smollm2_rlsr.py --workdir=/tmp/srlm_rlvr \
      --config.grpo.reward=task

RLSR (Simonds et al., arXiv 2505.08827) rewards each sample with the policy's own judgment,
on the principle that verifying is easier than generating. Here the policy (no SFT first) is
asked whether a worked answer is correct (the additive judge's 0..5 scale, read as a forced
verdict: the expected score under the model's next-token distribution after "Score: ", so
rewards rarely tie and groups keep their variance). Each step logs metrics.jsonl: reward
(= self_reward), true_reward (the checker's accuracy), agreement (self-reward >= 2.5 vs the
checker), self_true_corr, kl, length, truncated, zero_variance_groups; rollouts/step_<t>.jsonl
holds every completion with its judgment, self-reward and truth. A self-reward that rises
while true_reward does not is reward hacking.

Sized for a CPU (about a minute a step on a free 2-core machine): 4 problems x 4 samples a
step, 96 new tokens, 12 steps.
"""

from srlm_jax import config_files


def get_config(arg: str = ''):
  """Returns the SmolLM2 RLSR config."""
  c = config_files.beside(__file__, 'common.py').get_config(arg)
  c.model = 'smollm2-135m-instruct'
  c.iterations = 1
  c.stages = ('grpo',)
  c.sft.enabled = False  # RL straight from the instruction model
  c.creation.judge.kind = 'additive'
  c.creation.judge.template = (
      'Here is a math word problem and a proposed solution.\n\nProblem: {prompt}\n\n'
      'Proposed solution: {response}\n\nIs the final answer of the proposed solution correct? '
      'Check the arithmetic. Give a score from 0 (wrong) to 5 (certainly correct) on the last '
      'line as "Score: N".')
  c.creation.judge.k = 1
  c.creation.judge.verdict = 'forced_always'
  c.creation.judge.max_new_tokens = 24  # a short check, then the forced score
  c.grpo.prompts = 'tasks:arithmetic'
  c.grpo.num_tasks = 64
  c.grpo.task_difficulty = 1  # one-operation problems: SmolLM2-135M solves some of them
  c.grpo.reward = 'judge'
  c.grpo.num_steps = 12
  c.grpo.batch_size = 4
  c.grpo.num_generations = 4
  c.grpo.max_new_tokens = 96
  c.grpo.temperature = 0.7
  c.grpo.lr = 5e-6
  c.grpo.end_lr = 5e-6
  c.grpo.beta = 0.04
  c.grpo.grad_accum = 2
  c.grpo.checkpoint_every = 4
  return c
