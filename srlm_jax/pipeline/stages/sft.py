"""Stage `sft`: M0 -> M1 by SFT on the IFT seed data and the EFT judgments (workdir/m1_sft).

Writes data.jsonl (the SFT examples: IFT as is, EFT as judge prompt -> judgment or verdict
line) and trains in train/ (Orbax checkpoints, metrics.jsonl, params/ = M1).
"""

import os

from srlm_jax import judges
from srlm_jax import train
from srlm_jax.data_io import write_jsonl
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage


def run(ctx, out_dir: str) -> dict:
  """Returns the number of SFT examples after training M1 on them."""
  judge = judges.get(ctx.settings.judge.kind)
  records = [{'prompt': p, 'response': r} for p, r in ctx.seeds['ift']]
  records += [{'prompt': judge.prompt_text(p, r, ctx.settings.judge.template),
               'response': judge.eft_target(j, ctx.config.data.eft_target)}
              for p, r, j in ctx.seeds['eft']]
  data = write_jsonl(os.path.join(out_dir, 'data.jsonl'), records)
  train.run_sft(ctx.train_config('sft', train_data=data), os.path.join(out_dir, 'train'),
                model=ctx.model(training=True), progress=ctx.progress)
  return {'examples': len(records)}


STAGE = register(Stage('sft', run, params=os.path.join('train', 'params')))
