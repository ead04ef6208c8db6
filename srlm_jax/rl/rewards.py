"""Rule-based rewards on a Rollout's device tokens (control runs), one registry, and the task
checker's reward (the program's truth, a host edge).

A rule is registered as a builder

    @register('name')
    def build(tokenizer, **options) -> reward_fn(tokens_RxM, lengths_R) -> float32 [R]

run once on the host (to turn option strings into token ids); the reward_fn it returns is
jitted and runs on the device. Options come from the config (`grpo.reward_options`); a
builder raises ValueError naming an option it needs and lacks.

Axis legend: R completion rows, M new-token width.
"""

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

RewardFn = Callable[[jax.Array, jax.Array], jax.Array]
Builder = Callable[..., RewardFn]
_REGISTRY: dict[str, Builder] = {}

SELF = 'judge'  # the model's own judge score (RLSR)
TASK = 'task'  # the task checker's verdict, 1.0 or 0.0 (RL from a verifiable reward)


def register(name: str) -> Callable[[Builder], Builder]:
  """Returns a decorator that registers a rule-based reward builder under `name`."""
  if name in (SELF, TASK):
    raise ValueError(f'reward name {name!r} is reserved (the self-judge and the task checker)')

  def add(builder: Builder) -> Builder:
    _REGISTRY[name] = builder
    return builder
  return add


def names() -> list[str]:
  """Returns every reward kind: the self-judge, the task checker and the registered rules."""
  return sorted([SELF, TASK] + list(_REGISTRY))


def build(name: str, tokenizer: Any, **options) -> RewardFn:
  """Returns the jitted device reward function of the registered rule `name`."""
  if name not in _REGISTRY:
    raise ValueError(f'unknown rule-based reward {name!r}; registered: {sorted(_REGISTRY)} '
                     f'(and {SELF!r}, {TASK!r})')
  return jax.jit(_REGISTRY[name](tokenizer, **options))


def _completion_mask(tokens_RxM: jax.Array, lengths_R: jax.Array) -> jax.Array:
  """Returns bool [R, M]: the row's generated tokens (eos/stop token included)."""
  return jnp.arange(tokens_RxM.shape[1])[None, :] < lengths_R[:, None]


def _token_id(tokenizer: Any, options: dict, where: str) -> int:
  """Returns the one token id that options['token_id'] or options['token'] (a text) names."""
  if options.get('token_id') is not None and options['token_id'] >= 0:
    return int(options['token_id'])
  text = options.get('token')
  if not text:
    raise ValueError(f'reward {where!r} needs reward_options.token (a text that is one token) '
                     'or reward_options.token_id')
  ids = tokenizer.encode(text, add_bos=False)
  if len(ids) != 1:
    raise ValueError(f'reward {where!r}: reward_options.token={text!r} is {len(ids)} tokens '
                     f'{ids}; expected exactly one')
  return int(ids[0])


@register('token_count')
def token_count(tokenizer: Any, token: str = '', token_id: int = -1, **options) -> RewardFn:
  """Returns reward_fn: how many times one token occurs in each completion."""
  del options
  target = _token_id(tokenizer, {'token': token, 'token_id': token_id}, 'token_count')

  def reward(tokens_RxM, lengths_R):
    hits = (tokens_RxM == target) & _completion_mask(tokens_RxM, lengths_R)
    return hits.sum(-1).astype(jnp.float32)
  return reward


@register('id_range')
def id_range(tokenizer: Any, lo: int = 0, hi: int = -1, **options) -> RewardFn:
  """Returns reward_fn: the fraction of each completion's tokens whose id is in [lo, hi).

  A dense signal for a random model, whose samples are near-uniform over the vocabulary (the
  count of one token is then almost always 0, and groups have no reward variance).
  """
  del options
  hi = tokenizer.vocab_size if hi is None or hi < 0 else int(hi)
  if not 0 <= lo < hi:
    raise ValueError(f"reward 'id_range': need 0 <= reward_options.lo < hi; got {lo}, {hi}")

  def reward(tokens_RxM, lengths_R):
    mask = _completion_mask(tokens_RxM, lengths_R)
    inside = (tokens_RxM >= lo) & (tokens_RxM < hi) & mask
    return inside.sum(-1) / jnp.maximum(mask.sum(-1), 1).astype(jnp.float32)
  return reward


def task_rewards(task_records: Sequence[Optional[dict]], texts: Sequence[str]) -> np.ndarray:
  """Returns float32 [R]: 1.0 where the task checker accepts the text, 0.0 where it rejects
  it, NaN where the row's prompt is not a task (host: the program's truth)."""
  from srlm_jax import tasks  # pylint: disable=g-import-not-at-top
  out = np.full(len(texts), np.nan, np.float32)
  for r, (task, text) in enumerate(zip(task_records, texts)):
    if task is not None and 'answer' in task:
      out[r] = float(tasks.check(task, text))
  return out
