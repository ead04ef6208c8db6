"""The self-rewarding loop's config, every field commented; the other loop configs start here.

Each loop config (demo.py, tiny.py, ...) loads this file with `load('common')` and changes
what it needs.

Any field can be overridden on the command line: `--config.creation.n_candidates=8`. The
SFT and DPO blocks are configs/sft.py and configs/dpo.py's own configs (their `model` and
`train_data` fields are filled in by the loop).
"""

import importlib.util
import os

import ml_collections


def load(name: str):
  """Returns the module configs/<name>.py (configs are files, not an installed package)."""
  here = os.path.dirname(os.path.abspath(__file__))
  spec = importlib.util.spec_from_file_location(f'srlm_configs_{name}',
                                                os.path.join(here, f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


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
  c.stages = ('prompts', 'candidates', 'judgments', 'pairs', 'dpo', 'eval')
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
  # human_pairs.jsonl from OASST1): M_{t+1}'s judge agreement with them; '' skips it.
  c.eval.pairs = ''
  c.eval.max_pairs = 64  # whole prompts from the file's start, up to this many pairs (0: all)
  c.eval.k = 3  # judgments per response; the other judge settings are creation.judge's

  c.logging = ml_collections.ConfigDict()  # metrics for viewing (srlm_jax/metrics_log.py)
  c.logging.tensorboard = True  # event files in workdir/tensorboard (needs [tensorboard] extra)
  c.logging.wandb_project = ''  # Weights & Biases project ('' is off; needs the [wandb] extra)
  c.logging.wandb_entity = ''  # W&B entity (team or user); '' is your default entity
  c.logging.samples = 4  # rows of the (prompt, response, score) and pairs tables per iteration

  c.sft = load('sft').get_config()  # M0 -> M1 on IFT + EFT
  c.sft.enabled = True  # False starts the iterations from M0 itself
  c.sft.num_epochs = 1.0  # passes over IFT + EFT (when sft.num_steps is 0)
  c.dpo = load('dpo').get_config()  # M_t -> M_{t+1} on the iteration's pairs, M_t the reference
  return c
