"""Sampling to a device Rollout, and its host edge (texts, npz files, host Completions).

  rollout.py      the Rollout pytree and `sample` (prompt ids -> Rollout, rows in input order)
  records.py      texts, npz save/load, concat, flatten/unflatten of array dicts
  completions.py  text prompts -> ids fitted to the context -> Rollout -> Completions / strings
"""

from srlm_jax.rollout.completions import (Completion, Prompt, chat_messages, encode_prompts,
                                          fit_context, generate, generate_tokens)
from srlm_jax.rollout.records import (concat, cut_at_stop, flatten, load, save, texts, to_host,
                                      unflatten)
from srlm_jax.rollout.rollout import (DECODE_CACHE_BYTES, DEFAULT_ROWS, FIELDS, Rollout,
                                     default_batch_size, from_arrays, left_pad, prefill_summary,
                                     sample, shared_prefix_length)
