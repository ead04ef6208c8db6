r"""The paper's run: Llama 2 70B, M1 (SFT on 3,200 IFT + 1,630 EFT) -> M2 -> M3.

  python launch/build_data.py --out_dir=/data/srlm_oasst
  python launch/srlm.py --config=configs/paper_llama2_70b.py:/data/srlm_oasst \
      --config.model=/models/Llama-2-70b-hf --workdir=/ckpt/srlm_70b --config.distributed=True

The argument is the directory of launch/build_data.py's JSONL (ift.jsonl, eft_train.jsonl,
human_pairs.jsonl); `tfds:<dir>` reads its --tfds_dir TFDS datasets instead.
Settings are the paper's (../shared/SRLM.md section 1): SFT lr 5.5e-6 -> 1.1e-6, batch 16;
DPO lr 1e-6 -> 1e-7, batch 16, beta 0.1; N = 4 candidates at temperature 0.7, top-p 0.9;
3 judgments per candidate with the additive rubric; checkpoints every 200 steps; two AIFT
iterations. The paper's dropout 0.1 is not modelled (our Llama has no dropout), nor its early
stopping on a held-out set (the checkpoints every 200 steps let you pick one). Prompt counts per
iteration are sized so the pair counts can reach the paper's (3,964 for M2, 6,942 for M3);
the paper wrote new prompts with Llama 2-Chat 70B: set --config.prompt_generator to use it.

Sized for a TPU v5p-128 / 64 H100 class pod: fully sharded (fsdp) over all devices with
tensor parallelism 8, bf16 compute with fp32 master weights, remat on.
"""

from srlm_jax import config_files


def get_config(arg: str = '/data/srlm_oasst'):
  """Returns the paper config; arg is the build_data.py output directory."""
  common = config_files.beside(__file__, 'common.py')
  c = common.get_config()
  sources = common.oasst_data(arg or '/data/srlm_oasst')  # '<dir>' (JSONL) or 'tfds:<dir>'
  c.model = '/models/Llama-2-70b-hf'  # a local HF safetensors directory (no hub access)
  c.prompt_generator = ''  # the paper: a fixed Llama 2-Chat 70B directory
  c.iterations = 2  # M1 -> M2 -> M3
  c.shard_size = 512
  c.mesh = (1, -1, 8)
  c.distributed = True

  c.data.ift, c.data.eft = sources['ift'], sources['eft']
  c.eval.pairs = sources['pairs']  # each new model's judge agreement with OASST1's human pairs
  c.data.max_ift = 3200  # the paper's IFT size
  c.data.max_eft = 1630  # the paper's EFT size

  c.creation.num_requests = 8192  # few-shot requests; each yields up to a few new prompts
  c.creation.prompt_max_new_tokens = 256
  c.creation.max_new_tokens = 1024  # the paper's M3 answers average ~2,500 tokens on AlpacaEval
  c.creation.judge.max_new_tokens = 512

  for block in (c.sft, c.dpo):
    block.batch_size = 16
    block.max_len = 2048
    block.dtype = 'bfloat16'
    block.remat = True
    block.unroll_layers = False  # a loop over the layers keeps compiles short at this size
    block.mesh = (1, -1, 8)
    block.checkpoint_every = 200
    block.log_every = 10
  c.sft.lr, c.sft.end_lr, c.sft.schedule = 5.5e-6, 1.1e-6, 'cosine'
  c.sft.num_epochs = 1.0
  c.dpo.lr, c.dpo.end_lr, c.dpo.schedule = 1e-6, 1e-7, 'linear'
  c.dpo.beta = 0.1
  c.dpo.loss = 'sigmoid'
  return c
