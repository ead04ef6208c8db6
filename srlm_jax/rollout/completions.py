"""Text in, completions out: chat prompts tokenised and fitted to the context, sampled to a
Rollout, and returned as host Completions or strings (the one host path over the Rollout).
"""

import dataclasses
from typing import Any, Optional, Sequence, Union

import jax
import numpy as np

from srlm_jax import sampler
from srlm_jax.rollout import records
from srlm_jax.rollout import rollout as rollout_lib


@dataclasses.dataclass(frozen=True)
class Completion:
  """One sampled completion, as `generate_tokens` returns it."""
  text: str  # decoded, without the eos token, cut before the first stop string
  tokens: np.ndarray  # generated ids, the eos / stop-sequence tokens included
  logprobs: np.ndarray  # raw-model log-prob of each token
  stop_reason: sampler.StopReason
  prompt_tokens: np.ndarray  # the chat-formatted prompt ids (after any truncation)
  prompt_truncated: int = 0  # prompt tokens dropped from its middle to fit the context


Prompt = Union[str, Sequence[dict]]


def chat_messages(prompt: Prompt, index: int) -> list:
  """Returns a prompt (a string: one user turn) as a list of chat messages, checked."""
  if isinstance(prompt, str):
    return [{'role': 'user', 'content': prompt}]
  msgs = list(prompt)
  if not msgs or not all(isinstance(m, dict) and {'role', 'content'} <= set(m) for m in msgs):
    raise ValueError(f'prompt {index}: expected a string or a list of {{"role", "content"}} '
                     f'messages; got {prompt!r:.200}')
  return msgs


def fit_context(ids: Sequence[np.ndarray], new_tokens: int, context: int,
                where: Optional[Sequence[str]] = None, truncate: bool = False,
                what: Optional[str] = None) -> tuple[list, list]:
  """Returns (prompt ids, tokens dropped per prompt) such that each prompt plus new_tokens fits
  the model's context of `context` tokens.

  A longer prompt is an error naming it (`where[i]`, e.g. 'file.jsonl:3', else its index),
  raised before any device work, or with `truncate` it loses the middle of its tokens, its
  first and last parts kept: the chat format's start and generation prompt survive, and in a
  judge prompt the rubric's head and its closing instruction stay while the quoted response
  in between is shortened. `what` names new_tokens in messages (default 'max_new_tokens=N').
  """
  what = what or f'max_new_tokens={new_tokens}'
  if new_tokens >= context:
    raise ValueError(f'{what} leaves no room for a prompt in the model\'s context '
                     f'of {context} tokens')
  budget, out, dropped = context - new_tokens, [], []
  for i, x in enumerate(ids):
    if len(x) <= budget:
      out.append(x)
      dropped.append(0)
      continue
    if not truncate:
      name = where[i] if where is not None else f'prompt {i}'
      raise ValueError(
          f'{name}: the prompt is {len(x)} tokens; with {what} it needs '
          f'{len(x) + new_tokens}, more than the model\'s context of {context} tokens '
          '(shorten the prompt, lower the token limit, or ask for truncation)')
    out.append(np.concatenate([x[:budget - budget // 2], x[len(x) - budget // 2:]]))
    dropped.append(len(x) - budget)
  return out, dropped


def encode_prompts(model: Any, prompts: Sequence[Prompt], *, max_new_tokens: int,
                   where: Optional[Sequence[str]] = None, truncate: bool = False,
                   reserve: int = 0) -> tuple[list, list]:
  """Returns (chat-formatted prompt ids, tokens dropped per prompt) fitted to the context.

  Prompts are strings (one user message) or chat message lists, formatted by
  `model.tokenizer.encode_chat`; each plus max_new_tokens (plus `reserve` tokens the caller
  appends later) must fit the model's context (see `fit_context`).
  """
  tok = model.tokenizer
  ids = [np.asarray(tok.encode_chat(chat_messages(p, i), add_generation_prompt=True), np.int32)
         for i, p in enumerate(prompts)]
  if any(not len(x) for x in ids):
    raise ValueError(f'prompt {[len(x) for x in ids].index(0)} encodes to no tokens')
  if max_new_tokens < 1:
    raise ValueError(f'need max_new_tokens >= 1; got {max_new_tokens}')
  return fit_context(
      ids, max_new_tokens + reserve, model.config.max_seq_len, where, truncate,
      f'max_new_tokens={max_new_tokens}' + (f' + {reserve} appended tokens' if reserve else ''))


def generate_tokens(model: Any, prompts: Sequence[Prompt], *, n: int = 1, max_new_tokens: int,
                    temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                    min_p: float = 0.0, stop: Sequence[str] = (), seed: int = 0,
                    batch_size: Optional[int] = None, progress: bool = True,
                    mesh: Optional[jax.sharding.Mesh] = None,
                    where: Optional[Sequence[str]] = None, truncate: bool = False,
                    reserve: int = 0, stats: Optional[dict] = None) -> list[list[Completion]]:
  """Returns per prompt its n Completions (token ids, raw log-probs, stop reason and text).

  The prompts are tokenised by `encode_prompts` (context errors name `where[i]`; `truncate`
  drops a prompt's middle, counted in the Completion), sampled by `rollout.sample` (results
  in input order, independent of `batch_size` for a given seed; `stats` gets its prefill
  counts) and copied to the host once.
  """
  if n < 1:
    raise ValueError(f'need max_new_tokens >= 1 and n >= 1; got {max_new_tokens}, {n}')
  ids, dropped = encode_prompts(model, prompts, max_new_tokens=max_new_tokens, where=where,
                                truncate=truncate, reserve=reserve)
  stop = tuple(s for s in stop if s)
  out = rollout_lib.sample(model, ids, n=n, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                           stop=stop, seed=seed, batch_size=batch_size, progress=progress,
                           mesh=mesh, stats=stats)
  host = records.to_host(out)
  results = []
  for i in range(len(ids)):
    comps = []
    for r in range(i * n, (i + 1) * n):
      length, reason = int(host['lengths'][r]), sampler.StopReason(int(host['stop_reason'][r]))
      comps.append(Completion(
          text=records.row_text(host['tokens'][r], length, reason, model.tokenizer, stop),
          tokens=host['tokens'][r, :length], logprobs=host['logprobs'][r, :length],
          stop_reason=reason, prompt_tokens=ids[i], prompt_truncated=dropped[i]))
    results.append(comps)
  return results


def generate(model: Any, prompts: Sequence[Prompt], *, n: int = 1, max_new_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0,
             stop: Sequence[str] = (), seed: int = 0, batch_size: Optional[int] = None,
             progress: bool = True, mesh: Optional[jax.sharding.Mesh] = None,
             where: Optional[Sequence[str]] = None, truncate: bool = False,
             reserve: int = 0, stats: Optional[dict] = None) -> list[list[str]]:
  """Returns per prompt a list of n completion strings (temperature 0 is greedy)."""
  kwargs = dict(locals())  # every argument, passed on as is
  return [[c.text for c in comps] for comps in generate_tokens(**kwargs)]
