r"""A random tiny Llama (2 layers, d=64) with SmolLM2's tokenizer: the loop's test config.

  python launch/srlm.py --config=configs/tiny.py --workdir=/tmp/srlm_tiny

Every stage runs on a CPU in about a minute. The judge prompt is a short rubric and the EFT
targets only the `Score: N` line; a few SFT steps do not teach a random model to judge, so its
sampled judgments are mostly invalid. Forced verdicts (creation.judge.verdict='forced') give
each of those a score anyway, the expectation of the model's distribution over the tokens
0..5 after "Score: ", so every judgment is valid, candidates rarely tie, and each iteration
makes pairs and trains M_{t+1} with DPO (several steps, with a checkpoint between them).
Stages, shards, records and resumption are those of a real run.
"""

from srlm_jax import config_files


def get_config(arg: str = ''):
  """Returns the tiny config."""
  c = config_files.beside(__file__, 'common.py').get_config(arg)
  c.model = 'tiny:0'
  c.iterations = 2
  c.shard_size = 2
  c.mesh = (1, 1, 1)

  c.creation.num_requests = 4
  c.creation.prompt_max_new_tokens = 16
  c.creation.n_candidates = 2
  c.creation.max_new_tokens = 16
  c.creation.judge.k = 3
  c.creation.judge.max_new_tokens = 8
  c.creation.judge.verdict = 'forced'
  # A random model never samples eos within 16 tokens: every candidate stops at the length
  # limit, so excluding truncated candidates would leave no pairs and no DPO to test.
  c.creation.pair_truncated = True
  c.creation.judge.template = ('Rate the response from 0 to 5.\nQuestion: {prompt}\n'
                               'Response: {response}')
  c.data.eft_target = 'score_only'
  # A random model writes no real instructions; keep what it writes so later stages run.
  c.creation.filters.min_words = 1
  c.creation.filters.require_instruction = False
  c.creation.filters.near_duplicate = 1.01

  c.data.max_ift = 16
  c.data.max_eft = 16
  c.sft.num_steps = 4
  c.sft.batch_size = 4
  c.sft.max_len = 160
  c.sft.lr = 3e-3
  c.sft.end_lr = 3e-4
  c.sft.warmup_steps = 1
  c.sft.dtype = 'float32'
  c.sft.checkpoint_every = 2

  c.dpo.batch_size = 2
  c.dpo.num_epochs = 1.0
  c.dpo.max_len = 64
  c.dpo.lr = 1e-3
  c.dpo.end_lr = 1e-4
  c.dpo.dtype = 'float32'
  c.dpo.checkpoint_every = 1  # 4 pairs make 2 steps: a checkpoint between them to resume from

  # The eval stage at test size: 2 held-out prompts (4 human pairs), 2 IFEval prompts, 1
  # judgment each, 8-token responses; every part runs (srlm_jax/pipeline/stages/eval.py).
  c.eval.max_pairs = 4
  c.eval.k = 1
  c.eval.max_prompts = 2
  c.eval.max_new_tokens = 8
  c.eval.max_ifeval = 2
  c.eval.n_boot = 100
  return c
