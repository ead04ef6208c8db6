"""The knobs of self-instruction creation (prompts, candidates, judgments, pairs).

`CreationSettings` holds them as one frozen value (the paper's values as defaults);
`from_config` reads a loop config's `creation` block and `check_context` refuses token limits
that leave no room for a prompt in the model's context.
"""

import dataclasses
from typing import Optional

from srlm_jax import instructions
from srlm_jax import judges as judge_lib


@dataclasses.dataclass(frozen=True)
class CreationSettings:
  """The knobs of one self-instruction creation run (the paper's values as defaults)."""
  num_requests: int = 64  # few-shot requests for new prompts
  few_shot: int = 8  # seed prompts shown per request, drawn without replacement
  prompt_temperature: float = 1.0
  prompt_top_p: float = 0.9
  prompt_max_new_tokens: int = 96
  filters: instructions.FilterConfig = instructions.FilterConfig()
  n_candidates: int = 4  # N
  temperature: float = 0.7
  top_p: float = 0.9
  max_new_tokens: int = 256
  judge: judge_lib.JudgeSettings = judge_lib.JudgeSettings()
  min_gap: float = 0.0  # a pair needs best - worst > min_gap (and never a tie)
  length_margin: Optional[float] = None  # set: shortest candidate within margin of the best
  # False: a candidate stopped by the length limit (truncated) is never chosen nor rejected.
  pair_truncated: bool = False
  seed: int = 0
  # A prompt (or judge prompt) too long for the model's context with its token limit: False
  # is an error naming the record; True drops the middle of its tokens, recorded per record
  # as prompt_truncated (candidates) or judge_prompt_truncated (judgments).
  truncate_prompts: bool = False


def check_context(settings: CreationSettings, context: int, prefix: str = 'creation.') -> None:
  """Raises ValueError naming the first token limit that leaves no room in `context` tokens."""
  for field, value in (('prompt_max_new_tokens', settings.prompt_max_new_tokens),
                       ('max_new_tokens', settings.max_new_tokens),
                       ('judge.max_new_tokens', settings.judge.max_new_tokens)):
    if value >= context:
      raise ValueError(f'{prefix}{field}={value}: the model\'s context is {context} tokens, '
                       'so no prompt fits beside that many new tokens')


def from_config(config) -> CreationSettings:
  """Returns the CreationSettings described by the loop config's `creation` block."""
  c = config.creation
  return CreationSettings(
      num_requests=c.num_requests, few_shot=c.few_shot,
      prompt_temperature=c.prompt_temperature, prompt_top_p=c.prompt_top_p,
      prompt_max_new_tokens=c.prompt_max_new_tokens,
      filters=instructions.FilterConfig(
          min_words=c.filters.min_words, max_words=c.filters.max_words,
          max_chars=c.filters.max_chars, near_duplicate=c.filters.near_duplicate,
          require_instruction=c.filters.require_instruction),
      n_candidates=c.n_candidates, temperature=c.temperature, top_p=c.top_p,
      max_new_tokens=c.max_new_tokens,
      judge=judge_lib.JudgeSettings(
          kind=c.judge.kind, k=c.judge.k, temperature=c.judge.temperature,
          top_p=c.judge.top_p, max_new_tokens=c.judge.max_new_tokens,
          template=judge_lib.get_template(c.judge.template, kind=c.judge.kind),
          verdict=c.judge.verdict, verdict_prefix=c.judge.verdict_prefix or None,
          aggregate=c.judge.aggregate, meta_filter=c.judge.meta_filter,
          meta_kind=c.judge.meta_kind),
      min_gap=c.min_gap, length_margin=c.length_margin or None,
      pair_truncated=c.pair_truncated, seed=config.seed,
      truncate_prompts=c.truncate_prompts)
