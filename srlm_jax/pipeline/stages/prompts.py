"""Stage `prompts`: M_t (or config.prompt_generator) writes new prompts from few-shot requests.

Writes shards/ (raw completions), prompts.jsonl (kept: {id, prompt, request, examples, raw})
and rejected.jsonl (with the reason). The products are texts, so this stage samples through
the host path (`rollout.generate`).
"""

import os
from typing import Any, Optional, Sequence

import numpy as np

from srlm_jax import instructions
from srlm_jax import rollout
from srlm_jax.data_io import write_jsonl
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage


def raw_prompts(model: Any, seed_prompts: Sequence[str], settings, start: int = 0,
                count: Optional[int] = None, *, progress: Any = True,
                stats: Optional[dict] = None) -> list:
  """Returns few-shot requests [start, start+count) and the generator's raw completions
  (`stats` gets their prefill counts).

  Request i's examples depend on (settings.seed, i) and its sampling key on (settings.seed,
  start, i), so a fixed shard size gives the same records in any order and after a restart.
  """
  count = settings.num_requests - start if count is None else count
  examples = [instructions.draw_examples(
      seed_prompts, 1, settings.few_shot, np.random.default_rng([settings.seed, i]))[0]
              for i in range(start, start + count)]
  requests = [instructions.few_shot_request(e) for e in examples]
  raw = [c[0] for c in rollout.generate(
      model, requests, n=1, max_new_tokens=settings.prompt_max_new_tokens,
      temperature=settings.prompt_temperature, top_p=settings.prompt_top_p,
      seed=settings.seed * 1_000_003 + start, progress=progress,
      where=[f'few-shot request {start + k}' for k in range(count)],
      truncate=settings.truncate_prompts, stats=stats)]
  return [{'request': start + k, 'examples': e, 'raw': r}
          for k, (e, r) in enumerate(zip(examples, raw))]


def select_prompts(raw_records: Sequence[dict], seed_prompts: Sequence[str],
                   settings) -> tuple[list, list]:
  """Returns (kept prompt records, rejected records): parsed, filtered, deduplicated."""
  selection = instructions.select_prompts([r['raw'] for r in raw_records], seed_prompts,
                                          settings.filters)
  kept = [{'id': f'p{k:05d}', 'prompt': prompt, **raw_records[i]}
          for k, (i, prompt) in enumerate(selection.kept)]
  rejected = [{'prompt': prompt, 'reason': reason, **raw_records[i]}
              for i, prompt, reason in selection.rejected]
  return kept, rejected


def run(ctx, out_dir: str) -> dict:
  """Returns the counts of kept and rejected prompts after writing them."""
  generator = (ctx.load_model(ctx.config.prompt_generator) if ctx.config.prompt_generator
               else ctx.model())
  seeds, settings = ctx.seeds['seed_prompts'], ctx.settings

  def shard(ids, s):
    stats = {}
    raw = raw_prompts(generator, seeds, settings, ids[0], len(ids), progress=ctx.progress,
                      stats=stats)
    return raw, {}, {'prefill': stats}

  infos = []
  raw, _ = ctx.sharded(out_dir, list(range(settings.num_requests)), shard, 'prompts', infos)
  kept, rejected = select_prompts(raw, seeds, settings)
  write_jsonl(os.path.join(out_dir, 'prompts.jsonl'), kept)
  write_jsonl(os.path.join(out_dir, 'rejected.jsonl'), rejected)
  return {'kept': len(kept), 'rejected': len(rejected),
          'prefill': rollout.prefill_summary([i.get('prefill', {}) for i in infos])}


STAGE = register(Stage('prompts', run, records=('prompts.jsonl', 'rejected.jsonl')))
