"""The self-rewarding loop's config, every field commented; the other loop configs start here.

Each loop config (demo.py, tiny.py, ...) loads this file with
`config_files.beside(__file__, 'common.py')` (srlm_jax/config_files.py) and changes what it needs.

Any field can be overridden on the command line: `--config.creation.n_candidates=8`. The
SFT and DPO blocks are configs/sft.py and configs/dpo.py's own configs (their `model` and
`train_data` fields are filled in by the loop).
"""

import os

import ml_collections

from srlm_jax import config_files


def load(name: str):
  """Returns the module configs/<name>.py, the file beside this one."""
  return config_files.beside(__file__, f'{name}.py')


def oasst_data(arg: str) -> dict:
  """Returns the OASST configs' seed and eval sources: {'ift', 'eft', 'pairs'}.

  arg is the directory of launch/build_data.py's JSONL (--out_dir), or `tfds:<dir>` for the
  TFDS datasets it builds there with --tfds_dir (read as array_record, no TensorFlow).
  """
  if arg.startswith('tfds:'):
    tfds_dir = arg[len('tfds:'):]
    return {'ift': f'tfds:ift/train@{tfds_dir}', 'eft': f'tfds:eft_train/train@{tfds_dir}',
            'pairs': f'tfds:human_pairs/validation@{tfds_dir}'}
  return {'ift': os.path.join(arg, 'ift.jsonl'), 'eft': os.path.join(arg, 'eft_train.jsonl'),
          'pairs': os.path.join(arg, 'human_pairs.jsonl')}


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the loop config with the paper's method settings and a small default run."""
  del arg
  c = ml_collections.ConfigDict()
  c.model = 'smollm2-135m-instruct'  # M0: HF directory, .gguf file, name, or 'tiny:<seed>'
  c.prompt_generator = ''  # model that writes new prompts; '' means the current M_t
  c.iterations = 1  # AIFT iterations after M1: 2 gives M1 -> M2 -> M3
  c.seed = 0  # root seed of every sampling stage (data order in training has its own)
  c.shard_size = 16  # prompts per shard of the sampling stages (the resume granularity)
  c.mesh = (1, -1, 1)  # (data, fsdp, tensor) mesh shape; -1 takes the remaining devices
  # The stages each iteration runs, in order, each in iter_<t>/<name>/ (one module each in
  # srlm_jax/pipeline/stages/; a stage elsewhere is named by its dotted module path). A stage
  # reads only stages before it; M1's SFT (the `sft` block) runs once before iteration 1.
  c.stages = ('prompts', 'candidates', 'judgments', 'pairs', 'dpo', 'eval', 'guard')
  c.distributed = False  # call jax.distributed.initialize() first (multi-host runs)
  # resume a workdir whose recorded config.json differs in the fields listed in the error
  # (the change is recorded in workdir/history.jsonl); False refuses such a resume
  c.allow_config_change = False

  c.data = ml_collections.ConfigDict()
  # Seed sources: a JSONL path, 'embedded:<name>' or 'tfds:<config>/<split>@<data_dir>'.
  c.data.ift = 'embedded:ift_seed.jsonl'  # IFT seed JSONL {prompt, response}; also seeds prompts
  c.data.eft = 'embedded:eft_seed.jsonl'  # EFT seed JSONL {prompt, response, judgment}
  c.data.eft_target = 'judgment'  # EFT SFT target: 'judgment' (reasons + score), 'score_only'
  c.data.max_ift = 0  # use only the first N IFT records (0: all)
  c.data.max_eft = 0  # use only the first N EFT records (0: all)
  # Model-written EFT (E, #17): where M1's EFT targets come from. 'given': data.eft's own
  # judgments. 'model': a judge model writes creation.judge-style judgments of data.eft's
  # human-scored responses ({prompt, response, score[, rank]}) once, before M1's SFT
  # (workdir/m1_eft), and only those agreeing with the human labels are kept (srlm_jax/eft.py).
  c.data.eft_source = 'given'
  c.data.eft_judge_model = ''  # the model that writes them; '' is M0 (config.model)
  c.data.eft_k = 0  # judgments written per response; 0 uses creation.judge.k
  # a lone response (no other response to its prompt) agrees when |model score - human
  # score| <= this; responses sharing a prompt must be ordered as people ranked them
  c.data.eft_tolerance = 0.5

  c.creation = ml_collections.ConfigDict()
  c.creation.num_requests = 64  # few-shot requests for new prompts per iteration
  c.creation.few_shot = 8  # seed prompts shown per request (drawn without replacement)
  c.creation.prompt_temperature = 1.0  # sampling of new prompts
  c.creation.prompt_top_p = 0.9  # nucleus of the new-prompt sampling
  c.creation.prompt_max_new_tokens = 96  # token limit of one few-shot completion
  c.creation.filters = ml_collections.ConfigDict()
  c.creation.filters.min_words = 3  # shorter generated prompts are dropped
  c.creation.filters.max_words = 150  # longer ones too
  c.creation.filters.max_chars = 1000  # and ones longer than this many characters
  c.creation.filters.near_duplicate = 0.7  # ROUGE-L F1 at which a prompt is a near-duplicate
  c.creation.filters.require_instruction = True  # drop text that is neither question nor task
  c.creation.n_candidates = 4  # N responses per prompt (paper: 4)
  c.creation.temperature = 0.7  # candidate sampling (paper: 0.7, top-p 0.9)
  c.creation.top_p = 0.9  # nucleus of the candidate sampling
  c.creation.max_new_tokens = 256  # candidate length limit
  c.creation.judge = ml_collections.ConfigDict()
  # Which judge (a registered srlm_jax.judges name): its rubrics, verdict line and score scale.
  c.creation.judge.kind = 'additive'
  c.creation.judge.template = 'additive'  # 'additive', 'choice', or a rubric text
  c.creation.judge.k = 3  # judgments per candidate, averaged over the valid ones (paper: 3)
  c.creation.judge.temperature = 0.7  # judgment sampling (K samples must differ)
  c.creation.judge.top_p = 0.9  # nucleus of the judgment sampling
  c.creation.judge.max_new_tokens = 192  # judgment length limit (no verdict by then: invalid)
  # How a judgment's score is read. 'sampled': its own final "Score: X" line (the paper; none
  # is an invalid judgment). 'forced': as sampled, and a judgment without a verdict gets one:
  # verdict_prefix is appended to its text and the score is the expectation of the model's
  # next-token distribution over the score tokens 0..5 (renormalised), so every judgment is
  # valid. 'forced_always': every judgment's score is forced, right after its reasons.
  c.creation.judge.verdict = 'sampled'
  # Each score 0..5 must be one token after it; '' uses the judge's own ('\nScore: ' here).
  c.creation.judge.verdict_prefix = '\nScore: '
  # How a candidate's K judgments reduce to its score: 'mean' of the valid ones (the paper) or
  # 'sum' of the valid ones (SPCT's vote, DeepSeek-GRM: an invalid sample adds nothing).
  c.creation.judge.aggregate = 'mean'
  # k_meta > 0: a meta RM (meta_kind, judges/meta_rm.py) scores each of the K judgments and only
  # the top k_meta count (the others are marked invalid, kept_RxK False); 0 turns it off.
  c.creation.judge.meta_filter = 0
  c.creation.judge.meta_kind = 'meta_rm'  # the judge of judgments that meta_filter uses
  # The meta-judge (E, #17; Meta-Rewarding, srlm_jax/judges/meta_judge.py): M_t compares two
  # of its judgments of a candidate in both orders; the best and worst rated judgments become
  # judge-preference pairs (stage judge_pairs, after judgments: add it to c.stages) that the
  # dpo stage trains on beside the actor pairs.
  c.creation.meta_judge = ml_collections.ConfigDict()
  c.creation.meta_judge.enabled = False  # True needs 'judge_pairs' in c.stages before 'dpo'
  c.creation.meta_judge.k = 1  # meta verdicts sampled per battle order
  c.creation.meta_judge.temperature = 0.7  # meta-judgment sampling
  c.creation.meta_judge.top_p = 0.9  # nucleus of the meta-judgment sampling
  c.creation.meta_judge.max_new_tokens = 128  # meta-judgment length limit
  # 'sampled' (its own "Better: 1|2" line), 'forced' or 'forced_always' (as creation.judge)
  c.creation.meta_judge.verdict = 'sampled'
  c.creation.meta_judge.aggregate = 'elo'  # battles -> ratings: 'elo' or 'wins' (win counts)
  c.creation.meta_judge.elo_k = 32.0  # Elo update factor (ratings start at 1000)
  c.creation.meta_judge.max_pairs = 0  # judge pairs kept, widest rating gap first (0: all)
  c.creation.meta_judge.max_responses = 0  # candidates meta-judged, first ones (0: all)
  c.creation.min_gap = 0.0  # a pair needs best - worst > min_gap; ties never pair
  c.creation.length_margin = 0.0  # > 0: shortest candidate within margin of the best is chosen
  # Candidates stopped by the length limit (stop reason max_tokens) are cut off mid-answer:
  # False never chooses nor rejects them (decisions.jsonl says so); True pairs them like others.
  c.creation.pair_truncated = False
  # A prompt or judge prompt that does not fit the model's context beside its token limit:
  # False is an error naming the record; True drops the middle of its tokens (recorded per
  # record as prompt_truncated / judge_prompt_truncated).
  c.creation.truncate_prompts = False
  # dtype of the copy of M_t that samples and judges: 'auto' is bfloat16 on a GPU or TPU and
  # float32 on a CPU (so the CPU demo stays float32); training keeps float32 master weights.
  c.creation.compute_dtype = 'auto'

  c.eval = ml_collections.ConfigDict()  # each iteration's eval stage, run on M_{t+1}
  # Human-preference pairs JSONL {prompt, chosen, rejected} (launch/build_data.py writes
  # human_pairs.jsonl from OASST1): M_{t+1}'s judge agreement with them; '' skips it. The
  # default is the package's own 24 held-out pairs (srlm_jax/data/README.md).
  c.eval.pairs = 'embedded:heldout_pairs.jsonl'
  c.eval.max_pairs = 64  # whole prompts from the file's start, up to this many pairs (0: all)
  c.eval.k = 3  # judgments per response; the other judge settings are creation.judge's
  # (M) head-to-head, instruction following, the run table (srlm_jax/pipeline/stages/eval.py)
  # Held-out prompts (JSONL with "prompt"; distinct prompts in file order) that M_{t+1} and M_t
  # answer greedily for the head-to-head and the response lengths; '' skips both.
  c.eval.prompts = 'embedded:heldout_pairs.jsonl'
  c.eval.max_prompts = 12  # the first this many distinct prompts (0: all)
  c.eval.max_new_tokens = 128  # length limit of those responses and the IFEval ones
  # The fixed head-to-head judge: 'M0', 'M1' or a model name or path (the same every iteration).
  c.eval.judge = 'M0'
  # 'pairwise': the judge sees both responses, in both orders; 'pointwise': each is scored
  # alone with creation.judge's rubric (forced verdicts apply).
  c.eval.method = 'pairwise'
  c.eval.max_ratio = 1.25  # length-controlled view: longer / shorter response at most this
  c.eval.ifeval = 'embedded:ifeval_prompts.jsonl'  # IFEval-style prompts; '' skips them
  c.eval.max_ifeval = 0  # the first this many (0: all)
  c.eval.baselines = True  # iteration 1 also measures M0 and M1 (the run table's first rows)
  c.eval.n_boot = 1000  # bootstrap resamples of every interval

  # Stage `guard` (after eval): agreement with people and with a frozen judge, response length,
  # and what the run does when they drift (srlm_jax/guards.py; decisions in guard.json).
  c.guard = ml_collections.ConfigDict()
  c.guard.reference = 'm1'  # the frozen reference judge: 'm1' (M1, M0 without SFT) or 'm0'
  c.guard.k = 1  # the frozen judge's judgments per candidate
  c.guard.verdict = 'forced_always'  # its verdicts: forced right after its reasons (cheap)
  c.guard.max_new_tokens = 16  # the frozen judge's reasons, in tokens, before its forced score
  c.guard.max_human_drop = 0.1  # agreement with people may fall this far below the best kept
  c.guard.max_disagreement = 0.5  # self vs frozen judge: above this fraction of pairs triggers
  c.guard.max_length_growth = 0.5  # mean candidate length may grow this fraction an iteration
  # What each rule does when it triggers: 'off', 'warn' (recorded only), 'rollback' (the next
  # iteration starts from the best model kept so far, by agreement with people) or 'stop'.
  c.guard.on_human_drop = 'rollback'  # people disagree more: back to the best kept model
  c.guard.on_disagreement = 'rollback'  # the judge drifts from the frozen one: back too
  c.guard.on_length_growth = 'stop'  # responses inflate: stop the run
  # Stage `review` (optional; list it before `guard`): a person labels a sample of the pairs
  # (launch/review.py serves the page); labels go to workdir/human_labels/iter_<t>.jsonl.
  c.review = ml_collections.ConfigDict()
  c.review.sample = 16  # pairs to review, self-vs-frozen disagreements first
  c.review.wait = False  # pause the run until min_labels labels of this iteration arrive
  c.review.min_labels = 0  # labels to wait for (0: the whole sample)
  c.review.serve = True  # while waiting, serve the labelling page on 127.0.0.1:review.port
  c.review.port = 8765  # its port (0: any free port, printed in the log)
  c.review.poll_seconds = 2.0  # how often the waiting stage looks for new labels
  c.review.timeout_seconds = 0.0  # stop waiting after this long (0: wait until they arrive)

  c.logging = ml_collections.ConfigDict()  # metrics for viewing (srlm_jax/metrics_log.py)
  c.logging.tensorboard = True  # event files in workdir/tensorboard (needs [tensorboard] extra)
  c.logging.wandb_project = ''  # Weights & Biases project ('' is off; needs the [wandb] extra)
  c.logging.wandb_entity = ''  # W&B entity (team or user); '' is your default entity
  c.logging.samples = 4  # rows of the (prompt, response, score) and pairs tables per iteration

  # Stage `grpo` (online RL, srlm_jax/rl/): G samples per prompt, rewarded by the policy's own
  # judge (RLSR: creation.judge's judge and settings) or a rule, group-normalised advantages,
  # the clipped policy-gradient loss with a k3 KL penalty (objectives/grpo.py). Its params/
  # start the next iteration. Launch: configs/tiny_grpo.py, configs/smollm2_rlsr.py.
  c.grpo = ml_collections.ConfigDict()
  # Prompts: 'seed' (the IFT seed prompts), 'tasks:<kind>' (srlm_jax.tasks.generate, with
  # answers: the checker's truth is logged), or a JSONL of {prompt} or task records
  c.grpo.prompts = 'seed'
  c.grpo.num_tasks = 64  # tasks generated for 'tasks:<kind>' (from config.seed)
  c.grpo.task_difficulty = 0  # their difficulty level; 0: every level, cycled
  # 'judge' (self-reward), 'task' (the checker, 1/0), or a rule of srlm_jax/rl/rewards.py
  c.grpo.reward = 'judge'
  c.grpo.reward_options = ml_collections.ConfigDict()  # a rule's options
  c.grpo.reward_options.token = ''  # token_count: the token's text (one token)
  c.grpo.reward_options.lo = 0  # id_range: the first rewarded token id
  c.grpo.reward_options.hi = -1  # id_range: one past the last (-1: the vocabulary size)
  c.grpo.invalid_reward = 0.0  # the self-reward of a completion with no valid judgment
  # self-reward >= this counts as the judge saying "correct" (agreement with the checker);
  # < 0: the middle of the judge's scale
  c.grpo.agreement_threshold = -1.0
  c.grpo.num_steps = 20  # RL steps (each: sample, reward, mu updates)
  c.grpo.batch_size = 8  # prompts per RL step (B); a multiple of the data-parallel devices
  c.grpo.num_generations = 4  # G samples per prompt (a group)
  c.grpo.mu = 1  # optimizer updates per batch (> 1: the importance ratio and clip matter)
  c.grpo.max_new_tokens = 128  # completion length limit (and Dr. GRPO's normaliser)
  c.grpo.temperature = 1.0  # policy sampling temperature
  c.grpo.top_p = 1.0  # nucleus of the policy sampling
  # old log-probs of the ratio: 'recompute' (a forward of the current params, any
  # temperature) or 'sampler' (the Rollout's, needs temperature 1)
  c.grpo.old_logps = 'recompute'
  c.grpo.beta = 0.04  # k3 KL weight to the starting policy; 0: no reference is kept
  c.grpo.clip_eps = 0.2  # PPO clip range of the importance ratio
  c.grpo.dr_grpo = False  # Dr. GRPO: no std division, token sums over max_new_tokens
  c.grpo.adv_eps = 1e-4  # added to the group std before dividing
  c.grpo.seed = 0  # prompt order and the policy's sampling (the judge's seed derives from it)
  c.grpo.lr = 1e-6  # peak learning rate (AdamW)
  c.grpo.end_lr = 1e-6  # learning rate at the last update
  c.grpo.warmup_steps = 0  # linear warmup, in optimizer updates
  c.grpo.schedule = 'constant'  # decay after warmup: 'cosine' | 'linear' | 'constant'
  c.grpo.b1 = 0.9  # AdamW first-moment decay
  c.grpo.b2 = 0.99  # AdamW second-moment decay
  c.grpo.eps = 1e-8  # AdamW epsilon
  c.grpo.weight_decay = 0.0  # decoupled weight decay (not on norm scales)
  c.grpo.clip_norm = 1.0  # global gradient-norm clipping; 0 disables it
  c.grpo.grad_accum = 1  # micro-batches of whole groups per update
  c.grpo.dtype = 'float32'  # training forward compute dtype; params stay float32
  c.grpo.remat = False  # recompute each layer in the backward pass
  c.grpo.unroll_layers = False  # layers as straight-line code (faster steps, slower compile)
  c.grpo.checkpoint_every = 10  # RL steps between Orbax checkpoints (and at the last)
  c.grpo.keep = 2  # checkpoints kept on disk
  c.grpo.keep_after_done = 0  # checkpoints kept once the stage is DONE (params/ has the policy)

  # Generated verifiable tasks (R2, #18; srlm_jax/tasks): the problems of stage `tasks`, which
  # the process-based stages (`steps`, `step_dpo`) and Iterative RPO (`verified`, `rpo`) read.
  c.tasks = ml_collections.ConfigDict()
  c.tasks.kind = 'arithmetic'  # 'arithmetic' word problems or 'countdown' puzzles
  c.tasks.n = 16  # tasks per iteration
  c.tasks.difficulty = ()  # levels, cycled (arithmetic 1..5, countdown 1..3); (): every level
  # a JSONL of tasks (launch/build_tasks.py): iteration t takes records [(t-1) n, t n); ''
  # generates new ones each iteration from its seed
  c.tasks.file = ''
  # Process-based self-rewarding's step search (stage `steps`, srlm_jax/process): candidates
  # per step are creation.n_candidates at creation.temperature / top_p, judged by
  # creation.judge (kind 'step' pointwise or 'step_pair' pairwise), paired by creation.min_gap.
  c.process = ml_collections.ConfigDict()
  c.process.split = 'lines'  # steps are 'lines', 'step' ("Step k:" heads) or 'marker'-separated
  c.process.marker = ''  # split='marker': the separator (also the step's stop string)
  c.process.max_steps = 6  # steps per solution at most
  c.process.step_max_new_tokens = 48  # tokens per sampled step at most
  c.process.final_marker = 'Answer:'  # a chosen step holding it ends the solution

  c.sft = load('sft').get_config()  # M0 -> M1 on IFT + EFT
  c.sft.enabled = True  # False starts the iterations from M0 itself
  c.sft.num_epochs = 1.0  # passes over IFT + EFT (when sft.num_steps is 0)
  c.dpo = load('dpo').get_config()  # M_t -> M_{t+1} on the iteration's pairs, M_t the reference
  return c
