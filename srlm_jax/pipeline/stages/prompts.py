"""Stage `prompts`: M_t (or config.prompt_generator) writes new prompts from few-shot requests.

Writes shards/ (raw completions), prompts.jsonl (kept) and rejected.jsonl (with the reason).
"""

import os

from srlm_jax import creation
from srlm_jax.data_io import write_jsonl
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage


def run(ctx, out_dir: str) -> dict:
  """Returns the counts of kept and rejected prompts after writing them."""
  generator = (ctx.load_model(ctx.config.prompt_generator) if ctx.config.prompt_generator
               else ctx.model())
  seeds, settings = ctx.seeds['seed_prompts'], ctx.settings
  raw, _ = ctx.sharded(
      out_dir, list(range(settings.num_requests)),
      lambda ids, s: (creation.raw_prompts(generator, seeds, settings, ids[0], len(ids),
                                           progress=ctx.progress), {}),
      'prompts')
  kept, rejected = creation.select_prompts(raw, seeds, settings)
  write_jsonl(os.path.join(out_dir, 'prompts.jsonl'), kept)
  write_jsonl(os.path.join(out_dir, 'rejected.jsonl'), rejected)
  return {'kept': len(kept), 'rejected': len(rejected)}


STAGE = register(Stage('prompts', run, records=('prompts.jsonl', 'rejected.jsonl')))
