"""Stage `candidates`: M_t samples N responses to each kept prompt (candidates.jsonl)."""

import os

from srlm_jax import creation
from srlm_jax.data_io import write_jsonl
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage


def run(ctx, out_dir: str) -> None:
  """Writes candidates.jsonl: per prompt record its N candidates, lengths and stop reasons."""
  model = ctx.model()
  kept = ctx.records('prompts', 'prompts.jsonl')
  out, _ = ctx.sharded(
      out_dir, kept,
      lambda rs, s: (creation.candidates(model, rs, ctx.settings, shard=s,
                                         progress=ctx.progress), {}),
      'candidates')
  write_jsonl(os.path.join(out_dir, 'candidates.jsonl'), out)


STAGE = register(Stage('candidates', run, inputs=('prompts',), records=('candidates.jsonl',)))
