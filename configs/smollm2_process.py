r"""Process-based self-rewarding on SmolLM2-135M-Instruct, on generated arithmetic problems.

  python launch/srlm.py --config=configs/smollm2_process.py --workdir=/tmp/srlm_process

M0 -> M1: SFT on program-written seed data (srlm_jax/data/process_ift.jsonl: step-by-step
solutions "Step k: a op b = c" ... "Answer: X"; process_eft.jsonl: step judgments, a true
step "Score: 5", the same step with a wrong result "Score: 1"; both from launch/build_tasks.py
--seed=12345, problems the loop never sees). Then M1 -> M2 -> M3, each iteration: `tasks`
(16 new arithmetic problems of levels 1-2 from the iteration's seed), `steps` (per step 4
candidate lines from the same prefix, judged by M_t's pointwise step judge with forced
verdicts: the expected score after "Score: ", so candidates rarely tie; best vs worst is the
step pair, the best extends the prefix), `step_dpo` (DPO on the steps' tokens only). Each
iteration's steps/DONE records the step judge's pairwise accuracy against the program's
truth (judge_vs_truth) and the solutions' accuracy: compare iter_1 (M1) with iter_2 (M2).
Sized for a CPU: minutes per iteration.
"""

from srlm_jax import config_files


def get_config(arg: str = ''):
  """Returns the SmolLM2 process-based config."""
  c = config_files.beside(__file__, 'common.py').get_config(arg)
  c.model = 'smollm2-135m-instruct'
  c.iterations = 2
  c.shard_size = 8
  c.mesh = (1, 1, 1)
  c.stages = ('tasks', 'steps', 'step_dpo')
  c.data.ift = 'embedded:process_ift.jsonl'
  c.data.eft = 'embedded:process_eft.jsonl'
  c.data.eft_target = 'score_only'  # M1 answers a step-judge request with "Score: N" at once
  c.creation.few_shot = 2  # unused (no `prompts` stage); at most the seed prompts

  c.tasks.kind = 'arithmetic'
  c.tasks.n = 16
  c.tasks.difficulty = (1, 2)
  c.process.split = 'lines'
  c.process.max_steps = 4
  c.process.step_max_new_tokens = 24

  c.creation.n_candidates = 4
  c.creation.temperature = 0.8
  c.creation.judge.kind = 'step'
  c.creation.judge.template = 'compact'
  c.creation.judge.k = 1
  c.creation.judge.max_new_tokens = 8
  # Every score is the expectation over 0..5 right after "Score: " (the EFT target's form).
  c.creation.judge.verdict = 'forced_always'
  c.creation.judge.verdict_prefix = 'Score: '
  c.creation.min_gap = 0.25  # step pairs need a real score gap, not rounding noise

  c.sft.num_steps = 40
  c.sft.batch_size = 8
  c.sft.max_len = 256
  c.sft.lr = 1e-4
  c.sft.end_lr = 1e-5
  c.sft.dtype = 'float32'
  c.sft.checkpoint_every = 20
  c.sft.unroll_layers = False
  c.sft.head_at_loss_positions = False

  c.dpo.loss = 'step_dpo'
  c.dpo.beta = 0.1
  c.dpo.batch_size = 4
  c.dpo.num_epochs = 2.0
  c.dpo.max_len = 512
  c.dpo.lr = 5e-6
  c.dpo.end_lr = 1e-6
  c.dpo.dtype = 'float32'
  c.dpo.checkpoint_every = 20
  c.dpo.unroll_layers = False
  c.dpo.head_at_loss_positions = False
  return c
