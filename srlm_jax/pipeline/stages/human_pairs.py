"""Stage `human_pairs` (list it before `dpo`): the human labels of earlier iterations, as EFT
targets the dpo stage trains on.

Iteration t's EFT data holds the EFT examples built from the review labels of iterations
1 .. t-1 (seeds.with_human_eft: the person's preferred response gets the judge's rank-0 score,
the other the rank-1 score; ties add none). Trained in the loop's one update, DPO, each
example becomes a judge-preference pair: the judge request for (prompt, response) as the
prompt, the target judgment the person's choice gives it as chosen, and the judgment with
the two scores swapped as rejected; so the judge learns to score the person's choice above
the other. The dataset is built like the judge_pairs stage's (texts tokenised, M_t's float32
log-probs as the reference) and published; the dpo stage trains on it beside the actor pairs.

Writes human_pairs.jsonl ({prompt (the judge request), chosen, rejected, response, label}).
No labels yet: {'pairs': 0}.
"""

import os

from srlm_jax import judges
from srlm_jax import rollout
from srlm_jax.data_io import write_jsonl
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage
from srlm_jax.pipeline.stages import judge_pairs as judge_pairs_stage


def pair_records(human_eft, judge, settings, eft_target: str) -> list:
  """Returns the judge-preference pair records of human EFT (prompt, response, judgment)
  triples, given as (preferred, other) couples: each response's target against the swap."""
  out = []
  for (p, good, high), (_, bad, low) in zip(human_eft[::2], human_eft[1::2]):
    high_t, low_t = judge.eft_target(high, eft_target), judge.eft_target(low, eft_target)
    for response, chosen, rejected, label in ((good, high_t, low_t, 'preferred'),
                                              (bad, low_t, high_t, 'other')):
      out.append({'prompt': judge.prompt_text(p, response, settings.judge.template),
                  'messages': judge.messages(p, response, settings.judge.template),
                  'chosen': chosen, 'rejected': rejected, 'response': response,
                  'label': label})
  return out


def run(ctx, out_dir: str) -> dict:
  """Returns the number of human judge pairs after writing and publishing them."""
  judge = judges.get(ctx.settings.judge.kind)
  records = pair_records(ctx.seeds.get('human_eft', []), judge, ctx.settings,
                         ctx.config.data.eft_target)
  write_jsonl(os.path.join(out_dir, 'human_pairs.jsonl'),
              [{k: v for k, v in r.items() if k != 'messages'} for r in records])
  if records:
    dataset = judge_pairs_stage.preference_data(
        ctx.model(), ctx.model(training=True), [r['messages'] for r in records],
        [r['chosen'] for r in records], [r['rejected'] for r in records], ctx.settings)
    ctx.publish(out_dir, rollout.flatten(dataset))
  return {'pairs': len(records)}


STAGE = register(Stage('human_pairs', run, records=('human_pairs.jsonl',)))
