r"""SmolLM2-135M-Instruct on OASST seed data from local files: a real-data run for one GPU or a
patient CPU.

  python launch/build_data.py --out_dir=/tmp/srlm_oasst      # from ../shared/data, no download
  python launch/srlm.py --config=configs/smollm2_oasst.py:/tmp/srlm_oasst \
      --workdir=/tmp/srlm_smollm2_oasst

The argument is the directory of launch/build_data.py's JSONL: ift.jsonl (OASST2 first-turn
prompts with their rank-0 reply) seeds the prompts and the IFT half of M1's SFT, eft_train.jsonl
(human-ranked replies turned into judge examples) the EFT half. OASST1's English validation
trees are held out of both; their human pairs (human_pairs.jsonl) measure each new model's judge
agreement in the eval stage. The same sets as TFDS datasets (array_record, no TensorFlow):

  python launch/build_data.py --out_dir=/tmp/srlm_oasst --tfds_dir=/tmp/srlm_tfds
  python launch/srlm.py --config=configs/smollm2_oasst.py:tfds:/tmp/srlm_tfds \
      --workdir=/tmp/srlm_smollm2_oasst Two AIFT iterations of 256
few-shot requests; on one GPU an iteration takes minutes, on a 2-core CPU hours.
"""

from srlm_jax import config_files


def get_config(arg: str = '/tmp/srlm_oasst'):
  """Returns the SmolLM2 + OASST config; arg is the build_data.py output directory."""
  common = config_files.beside(__file__, 'common.py')
  c = common.get_config()
  sources = common.oasst_data(arg or '/tmp/srlm_oasst')  # '<dir>' (JSONL) or 'tfds:<dir>'
  c.model = 'smollm2-135m-instruct'
  c.iterations = 2
  c.shard_size = 64

  c.data.ift, c.data.eft = sources['ift'], sources['eft']
  c.eval.pairs = sources['pairs']  # each new model's judge agreement with OASST1's human pairs

  c.creation.num_requests = 256
  c.creation.prompt_max_new_tokens = 96
  c.creation.max_new_tokens = 256
  c.creation.judge.max_new_tokens = 192

  for block in (c.sft, c.dpo):
    block.batch_size = 16
    block.max_len = 768
    block.checkpoint_every = 100
  c.sft.num_epochs = 2.0
  c.sft.lr, c.sft.end_lr = 2e-5, 2e-6  # a 135M model wants more than the 70B's 5.5e-6
  c.dpo.lr, c.dpo.end_lr = 1e-6, 1e-7
  return c
