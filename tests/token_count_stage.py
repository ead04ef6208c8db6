"""A stage from outside the package: each candidate's length in tokens of M_t's tokenizer.

Named in config.stages by its module path ('token_count_stage', with tests/ importable); it
shows that a new stage is one module and a config entry. Shards: token_count:shard
kills inside it (SRLM_JAX_KILL_AT), as for the built-in sharded stages.

  token_counts.jsonl  {id, tokens: [N]} per prompt record
  arrays.npz          tokens_PxN (int32)
"""

import os

import numpy as np

from srlm_jax.data_io import write_jsonl
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage


def run(ctx, out_dir: str) -> dict:
  """Returns how many candidates were counted and their total tokens."""
  tokenizer = ctx.model().tokenizer
  candidates = ctx.records('candidates', 'candidates.jsonl')

  def count(records, shard):
    del shard  # counting draws no random numbers
    tokens_PxN = np.array([[len(tokenizer.encode(c)) for c in r['candidates']]
                           for r in records], np.int32).reshape(len(records), -1)
    return ([{'id': r['id'], 'tokens': row.tolist()} for r, row in zip(records, tokens_PxN)],
            {'tokens_PxN': tokens_PxN})

  records, arrays = ctx.sharded(out_dir, candidates, count, 'token_count')
  write_jsonl(os.path.join(out_dir, 'token_counts.jsonl'), records)
  ctx.publish(out_dir, arrays)
  return {'candidates': int(arrays['tokens_PxN'].size),
          'tokens': int(arrays['tokens_PxN'].sum())}


STAGE = register(Stage('token_count', run, inputs=('candidates',),
                       records=('token_counts.jsonl',)))
