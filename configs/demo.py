r"""The embedded default: one self-rewarding iteration of SmolLM2-135M-Instruct on the CPU.

  python launch/srlm.py --config=configs/demo.py --workdir=/tmp/srlm_demo

Seed data is the project's own embedded IFT and EFT sets (no download). M1 SFT plus one full
iteration (prompts, candidates, judgments, pairs, DPO, eval, guard) took 8m25s on an idle
2-core CPU, model load included (2026-12-04: SFT 2m11s, eval 1m54s, guard 45s, the rest under
75 s each; 14m57s on the slower 2-core machine of 2026-12-03): a short SFT, 24 few-shot
requests, 4 candidates and 3 judgments each, DPO on the pairs, and the eval stage measuring M0,
M1 and M2 (srlm_jax/pipeline/stages/eval.py; the run table:
`python launch/evaluate.py --workdir=/tmp/srlm_demo --out=table.json`).

M1 is taught to judge by score-only EFT targets (data.eft_target='score_only': the judge
answers "Score: N" without its reasons). SmolLM2-135M-Instruct before training writes no
parseable verdict at all (0 of 24 in a run with the full rubric); trained on whole judgments
for a few CPU steps it still rambles; twelve SFT steps on the verdict line alone gave 48 of 48
valid judgments, scores spread over 0-5, and preference pairs. A larger model (configs/
smollm2_oasst.py, paper_llama2_70b.py) keeps the paper's reasons-then-score judgments.
"""

from srlm_jax import config_files


def get_config(arg: str = ''):
  """Returns the demo config."""
  c = config_files.beside(__file__, 'common.py').get_config(arg)
  c.model = 'smollm2-135m-instruct'
  c.iterations = 1
  c.shard_size = 16

  # With the instruction filter on, M1's 24 prompts kept 5 (13 'not_an_instruction': a 135M
  # model's tasks are often statements), so 5 pairs and ONE DPO step of 4 (measured
  # 2026-12-03). Off, the other filters (length, duplicates) still apply, and the pairs are
  # enough for several DPO steps.
  c.creation.num_requests = 24
  c.creation.filters.require_instruction = False
  c.creation.prompt_max_new_tokens = 64
  c.creation.max_new_tokens = 96
  # Candidates cut by the 96-token limit may be chosen or rejected (the default excludes them):
  # SmolLM2-135M before SFT stops 50 of 64 answers at this limit (measured), which would leave
  # about 5 of 16 prompts with a pair; a longer limit costs minutes of CPU per iteration.
  c.creation.pair_truncated = True
  c.creation.judge.max_new_tokens = 32  # "Score: N" and the end of turn; a short buffer
  # M1 ends its judgments with "Score: N" itself; a judgment without one (M0's, in the eval
  # stage's baseline) gets the forced score, so M0's judge agreement is measured too.
  c.creation.judge.verdict = 'forced'
  # The additive rubric in brief (judges/additive.py COMPACT_RUBRIC): the full one makes
  # ~430-token EFT prompts, which a 256-token SFT window would drop, and slows judging on a CPU.
  c.creation.judge.template = 'compact'

  # M1: a short SFT on a slice of the seed sets (the full sets take an hour on a laptop CPU).
  c.data.max_ift = 32
  c.data.max_eft = 32
  c.data.eft_target = 'score_only'  # a 135M model learns the verdict line in a few steps
  c.sft.num_steps = 12
  c.sft.batch_size = 4
  c.sft.max_len = 512  # compact-rubric EFT examples (300 tokens, at most 480) fit whole
  c.sft.lr = 1e-4
  c.sft.end_lr = 1e-5
  c.sft.dtype = 'float32'
  c.sft.checkpoint_every = 2
  c.sft.unroll_layers = False  # a few steps: the loop over layers compiles 3.6x faster
  c.sft.head_at_loss_positions = False  # a few steps: fewer batch shapes to compile

  c.dpo.batch_size = 4
  c.dpo.num_epochs = 1.0
  c.dpo.max_len = 256
  # A few steps at the paper's 1e-6 move a 135M model by rounding error; 5e-6 is still a
  # gentle update (one step: DPO loss over the 5 pairs 0.693 -> 0.534 after it, measured).
  c.dpo.lr = 5e-6
  c.dpo.end_lr = 1e-6
  c.dpo.dtype = 'float32'
  c.dpo.checkpoint_every = 2
  c.dpo.unroll_layers = False  # a few steps: the loop over layers compiles 3.6x faster
  c.dpo.head_at_loss_positions = False  # a few steps: fewer batch shapes to compile

  # The eval stage (M0, M1 and M2, each measured once): judge agreement on 16 of the embedded
  # held-out pairs, one judgment per response; greedy answers to 6 held-out prompts and 8
  # IFEval-style prompts; M2 against M1 (and M1 against M0) judged pointwise by M1, the
  # model the EFT taught to end with "Score: N" (M0 writes no verdict, and a 135M model asked
  # to compare two answers writes no "Verdict:" line either).
  c.eval.k = 1
  # The guard measures and reports every rule; a 135M judge disagrees with its frozen copy
  # (M1) on about half the candidate pairs (0.565 of 23 in a measured run, chance-level), so
  # the disagreement rule warns here instead of rolling back.
  c.guard.on_disagreement = 'warn'
  c.eval.max_pairs = 16  # of the 24 held-out pairs (whole prompts)
  c.eval.max_prompts = 6  # held-out prompts for head-to-head
  c.eval.max_ifeval = 8  # IFEval-style prompts
  c.eval.max_new_tokens = 64
  c.eval.judge = 'M1'
  c.eval.method = 'pointwise'
  return c
