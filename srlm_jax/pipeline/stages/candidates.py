"""Stage `candidates`: M_t samples N responses to each kept prompt, as one device Rollout.

Publishes the candidate Rollout's arrays (prompt_tokens, prompt_mask, tokens, logprobs,
lengths, stop_reason; rows prompt-major) for the later stages, saved per shard beside the
records so a killed run resumes; candidates.jsonl holds, per prompt, {id, prompt,
candidates[N] (texts), lengths[N], stop_reasons[N]} for audit. DONE holds the counts and the
prefill's (`prefill`: real prompt tokens, the slots the batches ran, the padded fraction).
"""

import os
from typing import Any, Optional, Sequence

from srlm_jax import rollout
from srlm_jax import sampler
from srlm_jax.data_io import write_jsonl
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage


def encode(model: Any, prompt_records: Sequence[dict], settings) -> tuple[list, list]:
  """Returns (chat-formatted prompt ids, tokens dropped per prompt) of the prompt records."""
  return rollout.encode_prompts(
      model, [r['prompt'] for r in prompt_records], max_new_tokens=settings.max_new_tokens,
      where=[f'prompt record {r["id"]}' for r in prompt_records],
      truncate=settings.truncate_prompts)


def sample_candidates(model: Any, prompt_records: Sequence[dict], settings, *, shard: int = 0,
                      prompt_width: int = 0, progress: Any = True,
                      stats: Optional[dict] = None) -> tuple[list, rollout.Rollout]:
  """Returns (one record per prompt, the Rollout of its N candidates); shard: a seed offset.

  prompt_width pads every shard's prompts to one width, so the shards' arrays line up;
  `stats` gets the prefill counts (rollout.sample's).
  """
  ids, dropped = encode(model, prompt_records, settings)
  cand = rollout.sample(model, ids, n=settings.n_candidates,
                        max_new_tokens=settings.max_new_tokens,
                        temperature=settings.temperature, top_p=settings.top_p,
                        seed=(settings.seed + 1) * 1_000_003 + shard, progress=progress,
                        prompt_width=prompt_width, stats=stats)
  # Host edge: texts and counts for the audit records.
  texts = rollout.texts(cand, model.tokenizer)
  host = rollout.to_host(cand)
  n = settings.n_candidates
  records = []
  for i, r in enumerate(prompt_records):
    rows = range(i * n, (i + 1) * n)
    records.append({
        'id': r['id'], 'prompt': r['prompt'], 'candidates': texts[i],
        'lengths': [int(host['lengths'][j]) for j in rows],
        'stop_reasons': [sampler.StopReason(int(host['stop_reason'][j])).name.lower()
                         for j in rows],
        **({'prompt_truncated': dropped[i]} if settings.truncate_prompts else {})})
  return records, cand


def run(ctx, out_dir: str) -> dict:
  """Writes candidates.jsonl and publishes the candidate Rollout; returns the stop counts."""
  model = ctx.model()
  kept = ctx.records('prompts', 'prompts.jsonl')
  ids, _ = encode(model, kept, ctx.settings)
  width = max([len(x) for x in ids], default=1)

  def shard(records, s):
    stats = {}
    out, cand = sample_candidates(model, records, ctx.settings, shard=s, prompt_width=width,
                                  progress=ctx.progress, stats=stats)
    return out, cand.arrays(), {'prefill': stats}

  infos = []
  records, arrays = ctx.sharded(out_dir, kept, shard, 'candidates', infos)
  write_jsonl(os.path.join(out_dir, 'candidates.jsonl'), records)
  ctx.publish(out_dir, arrays)
  reasons = [x for r in records for x in r['stop_reasons']]
  return {'candidates': len(reasons),
          'truncated': sum(x == sampler.StopReason.MAX_TOKENS.name.lower() for x in reasons),
          'prefill': rollout.prefill_summary([i.get('prefill', {}) for i in infos])}


STAGE = register(Stage('candidates', run, inputs=('prompts',), records=('candidates.jsonl',)))
