r"""Self-rewarding Llama 3 (8B Instruct or base) on OASST seed data, on one GPU host or a small pod.

  python launch/build_data.py --out_dir=/data/srlm_oasst
  python launch/srlm.py --config=configs/llama3_8b.py:/data/srlm_oasst \
      --config.model=/models/Meta-Llama-3.1-8B-Instruct --workdir=/ckpt/srlm_8b

The argument is the directory of launch/build_data.py's JSONL (`tfds:<dir>`: its --tfds_dir
TFDS datasets). The paper's method and learning rates (configs/paper_llama2_70b.py), scaled to
an 8B model: the full IFT and EFT sets, two AIFT iterations of 2,048 few-shot requests each.
8 x 80 GB: params, AdamW state and activations fully sharded over the 8 devices (fsdp), bf16
compute, fp32 master weights, remat.
Llama 3 reads `tokenizer.json` and its chat template from the model directory; Llama 3.1's
RoPE scaling comes from its config.json.
"""

from srlm_jax import config_files


def get_config(arg: str = '/data/srlm_oasst'):
  """Returns the Llama 3 8B config; arg is the build_data.py output directory."""
  common = config_files.beside(__file__, 'common.py')
  c = common.get_config()
  sources = common.oasst_data(arg or '/data/srlm_oasst')  # '<dir>' (JSONL) or 'tfds:<dir>'
  c.model = '/models/Meta-Llama-3.1-8B-Instruct'  # a local HF safetensors directory
  c.iterations = 2
  c.shard_size = 256
  c.mesh = (1, -1, 1)

  c.data.ift, c.data.eft = sources['ift'], sources['eft']
  c.eval.pairs = sources['pairs']  # each new model's judge agreement with OASST1's human pairs

  c.creation.num_requests = 2048
  c.creation.prompt_max_new_tokens = 256
  c.creation.max_new_tokens = 768
  c.creation.judge.max_new_tokens = 384

  for block in (c.sft, c.dpo):
    block.batch_size = 16
    block.max_len = 2048
    block.dtype = 'bfloat16'
    block.remat = True
    block.unroll_layers = False  # a loop over the layers keeps compiles short at this size
    block.mesh = (1, -1, 1)
    block.checkpoint_every = 200
  c.sft.lr, c.sft.end_lr = 5.5e-6, 1.1e-6
  c.dpo.lr, c.dpo.end_lr, c.dpo.beta = 1e-6, 1e-7, 0.1
  return c
