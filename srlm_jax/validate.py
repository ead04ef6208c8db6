"""Config validation before any compute: every field's type and range, each error naming it.

Two checks, both reporting every bad field at once as one ConfigError:
  * types: each field against the same field of the default config (configs/common.py for the
    loop, configs/sft.py and configs/dpo.py for training). ml_collections already refuses a
    str for a float on override; this also catches what it lets through: None for a number or
    a string, True for an int, a field the config file itself set to the wrong type.
  * ranges: RULES, one line per field. A rule's name matches a field equal to it or ending in
    '.' + name, so 'lr' covers sft.lr, dpo.lr and a training config's own lr, and 'judge.k'
    covers creation.judge.k. A new field needs one line here; without one it still gets the
    type check.
"""

import math
import os
import string
from typing import Any, Callable, Optional

import ml_collections

from srlm_jax import config_files

CONFIGS = config_files.CONFIGS
Check = Callable[[Any], Optional[str]]  # value -> what was expected, or None when it is fine


class ConfigError(ValueError):
  """One or more config fields are invalid; the message names each."""


def integer(lo: Optional[int] = None, why: str = '') -> Check:
  """Returns a check for an int (not a bool) >= lo."""
  def check(v):
    if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo):
      return f'an int{f" >= {lo}" if lo is not None else ""}{f" ({why})" if why else ""}'
    return None
  return check


def number(lo: Optional[float] = None, hi: Optional[float] = None, *, lo_open: bool = False,
           hi_open: bool = False) -> Check:
  """Returns a check for a finite number within [lo, hi] (open ends as asked)."""
  def check(v):
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (lo is None or (v > lo if lo_open else v >= lo))
    ok = ok and (hi is None or (v < hi if hi_open else v <= hi))
    if ok:
      return None
    left = '' if lo is None else f'{"(" if lo_open else "["}{lo}, '
    right = '' if hi is None else f'{hi}{")" if hi_open else "]"}'
    span = (f'in {left}{right}' if lo is not None and hi is not None else
            f'{">" if lo_open else ">="} {lo}' if lo is not None else
            f'{"<" if hi_open else "<="} {hi}' if hi is not None else '')
    return f'a finite number {span}'.strip()
  return check


def choice(*options: str) -> Check:
  """Returns a check for one of the options."""
  return lambda v: None if v in options else f'one of {", ".join(map(repr, options))}'


def mesh_shape(v) -> Optional[str]:
  """Returns what a (data, fsdp, tensor) mesh shape must be, or None when v is one."""
  if (isinstance(v, (tuple, list)) and len(v) == 3
      and all(isinstance(x, int) and not isinstance(x, bool) and (x >= 1 or x == -1) for x in v)
      and list(v).count(-1) <= 1):
    return None
  return '(data, fsdp, tensor): three ints >= 1, one of them may be -1'


def judge_kind(v) -> Optional[str]:
  """Returns what a judge kind must be, or None when v names a judge (or its module)."""
  from srlm_jax import judges  # pylint: disable=g-import-not-at-top
  if not isinstance(v, str):
    return f'a registered judge, one of {judges.names()}, or a module path that registers one'
  try:
    judges.get(v)
  except ValueError as e:
    return f'a registered judge or a module path that registers one, but {e}'
  return None


def judge_template(v) -> Optional[str]:
  """Returns what a judge template must be, or None when v (a name or a rubric text) is one."""
  from srlm_jax import judges  # pylint: disable=g-import-not-at-top
  templates = {k: t for name in judges.names() for k, t in judges.get(name).templates.items()}
  if not isinstance(v, str):
    return 'a template name or a rubric text'
  text = templates.get(v, v)
  try:
    fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
  except ValueError as e:
    return (f'a rubric whose braces are {{prompt}}, {{response}} or doubled ({e}; write a '
            'literal brace as {{ or }})')
  unknown = [f for f in fields if f not in ('prompt', 'response')]
  if unknown:
    return (f'a rubric with only {{prompt}} and {{response}} as placeholders, but it has '
            f'{{{unknown[0]}}} (write a literal brace as {{{{ or }}}})')
  if 'response' not in fields:
    return (f'one of {sorted(templates)} or a rubric text with '
            '{prompt} and {response}')
  return None


def loss_name(v) -> Optional[str]:
  """Returns what a DPO loss name must be, or None when v is a registered objective."""
  from srlm_jax import objectives  # pylint: disable=g-import-not-at-top
  return None if v in objectives.names() else f'one of {objectives.names()}'


def stage_list(v) -> Optional[str]:
  """Returns what config.stages must be, or None when v names registered stages in an order
  where each comes after the stages it reads."""
  from srlm_jax.pipeline import stage as stage_lib  # pylint: disable=g-import-not-at-top
  if not isinstance(v, (tuple, list)) or not all(isinstance(e, str) for e in v):
    return 'a list of stage names'
  seen = []
  for entry in v:
    try:
      stage = stage_lib.get(entry)
    except ValueError as e:
      return f'registered stage names or dotted module paths, but {e}'
    if stage.name == 'sft':
      return "iteration stages ('sft' is M1's, run once before iteration 1 when sft.enabled)"
    if stage.name in seen:
      return f'each stage once, but {stage.name!r} is listed twice'
    missing = [i for i in stage.inputs if i not in seen]
    if missing:
      return (f'each stage after the stages it reads, but {stage.name!r} reads '
              f'{", ".join(map(repr, missing))}, not listed before it')
    seen.append(stage.name)
  return None


def grpo_reward(v) -> Optional[str]:
  """Returns what grpo.reward must be, or None when v is a reward kind of srlm_jax.rl."""
  from srlm_jax.rl import rewards  # pylint: disable=g-import-not-at-top
  return None if v in rewards.names() else f'one of {rewards.names()}'


def grpo_prompts(v) -> Optional[str]:
  """Returns what grpo.prompts must be, or None for 'seed', 'tasks:<kind>' or a .jsonl path."""
  if v == 'seed' or str(v).endswith('.jsonl'):
    return None
  if str(v).startswith('tasks:'):
    from srlm_jax import tasks  # pylint: disable=g-import-not-at-top
    kind = v[len('tasks:'):]
    return None if kind in tasks.KINDS else f"'tasks:<kind>' with a kind of {sorted(tasks.KINDS)}"
  return "'seed', 'tasks:<kind>' or a .jsonl path"


TOP_P = number(0, 1, lo_open=True)
# (field, check). The loop config's own fields first, then those of the training blocks.
RULES: tuple[tuple[str, Check], ...] = (
    ('iterations', integer(0)),
    ('seed', integer()),
    ('shard_size', integer(1)),
    ('mesh', mesh_shape),
    ('stages', stage_list),
    ('data.eft_target', choice('judgment', 'score_only')),
    ('data.max_ift', integer(0, '0: all')),
    ('data.max_eft', integer(0, '0: all')),
    ('data.eft_source', choice('given', 'model')),
    ('data.eft_k', integer(0, '0: creation.judge.k')),
    ('data.eft_tolerance', number(0)),
    ('creation.num_requests', integer(1)),
    ('creation.few_shot', integer(1, 'a request with no examples asks for nothing')),
    ('creation.prompt_temperature', number(0)),
    ('creation.prompt_top_p', TOP_P),
    ('creation.prompt_max_new_tokens', integer(1)),
    ('filters.min_words', integer(0)),
    ('filters.max_words', integer(1)),
    ('filters.max_chars', integer(1)),
    ('filters.near_duplicate', number(0, lo_open=True)),
    ('creation.n_candidates', integer(2, 'a preference pair needs two candidates')),
    ('creation.temperature', number(0)),
    ('creation.top_p', TOP_P),
    ('creation.max_new_tokens', integer(1)),
    ('judge.kind', judge_kind),
    ('judge.template', judge_template),
    ('judge.k', integer(1)),
    ('judge.temperature', number(0)),
    ('judge.top_p', TOP_P),
    ('judge.max_new_tokens', integer(1)),
    ('judge.verdict', choice('sampled', 'forced', 'forced_always')),
    ('judge.aggregate', choice('mean', 'sum')),
    ('judge.meta_filter', integer(0, '0: off')),
    ('judge.meta_kind', judge_kind),
    ('creation.compute_dtype', choice('auto', 'float32', 'bfloat16')),
    ('creation.min_gap', number(0)),
    ('meta_judge.k', integer(1)),
    ('meta_judge.temperature', number(0)),
    ('meta_judge.top_p', TOP_P),
    ('meta_judge.max_new_tokens', integer(1)),
    ('meta_judge.verdict', choice('sampled', 'forced', 'forced_always')),
    ('meta_judge.aggregate', choice('elo', 'wins')),
    ('meta_judge.elo_k', number(0, lo_open=True)),
    ('meta_judge.max_pairs', integer(0, '0: all')),
    ('meta_judge.max_responses', integer(0, '0: all')),
    ('creation.length_margin', number(0)),
    ('tasks.kind', choice('arithmetic', 'countdown')),
    ('tasks.n', integer(1)),
    ('process.split', choice('lines', 'step', 'marker')),
    ('process.max_steps', integer(1)),
    ('process.step_max_new_tokens', integer(1)),
    ('eval.max_pairs', integer(0, '0: all')),
    ('eval.k', integer(1)),
    ('eval.max_prompts', integer(0, '0: all')),
    ('eval.max_new_tokens', integer(1)),
    ('eval.method', choice('pairwise', 'pointwise')),
    ('eval.max_ratio', number(1)),
    ('eval.max_ifeval', integer(0, '0: all')),
    ('eval.n_boot', integer(1)),
    # guard.* and review.* (srlm_jax/guards.py, pipeline/stages/{guard,review}.py)
    ('guard.reference', choice('m1', 'm0')),
    ('guard.k', integer(1)),
    ('guard.verdict', choice('sampled', 'forced', 'forced_always')),
    ('guard.max_new_tokens', integer(1)),
    ('guard.max_human_drop', number(0)),
    ('guard.max_disagreement', number(0, 1)),
    ('guard.max_length_growth', number(0)),
    ('guard.on_human_drop', choice('off', 'warn', 'rollback', 'stop')),
    ('guard.on_disagreement', choice('off', 'warn', 'rollback', 'stop')),
    ('guard.on_length_growth', choice('off', 'warn', 'rollback', 'stop')),
    ('review.sample', integer(1)),
    ('review.min_labels', integer(0, '0: the whole sample')),
    ('review.port', integer(0, '0: any free port')),
    ('review.poll_seconds', number(0, lo_open=True)),
    ('review.timeout_seconds', number(0)),
    # grpo.* (stage `grpo`, srlm_jax/rl/); its optimizer fields use the training rules below
    ('grpo.prompts', grpo_prompts),
    ('grpo.num_tasks', integer(1)),
    ('grpo.task_difficulty', integer(0, '0: every level')),
    ('grpo.reward', grpo_reward),
    ('grpo.num_steps', integer(1)),
    ('grpo.num_generations', integer(2, 'a group needs two samples')),
    ('grpo.mu', integer(1)),
    ('grpo.max_new_tokens', integer(1)),
    ('grpo.temperature', number(0, lo_open=True)),
    ('grpo.top_p', TOP_P),
    ('grpo.old_logps', choice('recompute', 'sampler')),
    ('grpo.beta', number(0)),
    ('grpo.clip_eps', number(0, lo_open=True)),
    ('grpo.adv_eps', number(0)),
    # training: sft.*, dpo.*, or configs/sft.py and configs/dpo.py themselves
    ('max_len', integer(2)),
    ('batch_size', integer(1)),
    ('grad_accum', integer(1)),
    ('num_epochs', number(0, lo_open=True)),
    ('num_steps', integer(0, '0: from num_epochs')),
    ('lr', number(0)),
    ('end_lr', number(0)),
    ('warmup_steps', integer(0)),
    ('schedule', choice('cosine', 'linear', 'constant')),
    ('b1', number(0, 1, hi_open=True)),
    ('b2', number(0, 1, hi_open=True)),
    ('eps', number(0, lo_open=True)),
    ('weight_decay', number(0)),
    ('clip_norm', number(0)),
    ('dtype', choice('float32', 'bfloat16')),
    ('log_every', integer(1)),
    ('eval_every', integer(1)),
    ('checkpoint_every', integer(1)),
    ('keep', integer(1)),
    ('keep_after_done', integer(0)),
    ('logging.samples', integer(0)),
    ('beta', number(0, lo_open=True)),
    ('loss', loss_name),
    ('reference', choice('precomputed', 'online', 'none')),
    ('loss_options.label_smoothing', number(0, 0.5, hi_open=True)),
)
# (fields, whether their values fit together, what is expected): checked once each is valid.
CROSS_RULES = (
    (('creation.judge.meta_filter', 'creation.judge.k'), lambda m, k: m <= k,
     'meta_filter <= k (the meta filter keeps k_meta of the k judgments)'),
    (('creation.meta_judge.enabled', 'stages'),
     lambda on, stages: not on or ('judge_pairs' in stages and 'dpo' in stages
                                   and list(stages).index('judge_pairs')
                                   < list(stages).index('dpo')),
     "'judge_pairs' in stages before 'dpo' when creation.meta_judge.enabled"),
    (('creation.filters.min_words', 'creation.filters.max_words'), lambda a, b: a <= b,
     'min_words <= max_words (no prompt could pass)'),
)


def flatten(config, prefix: str = '') -> dict:
  """Returns {dotted field: value} of a ConfigDict or dict."""
  items = config.items() if isinstance(config, (dict, ml_collections.ConfigDict)) else ()
  out = {}
  for key, value in items:
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def rule_for(field: str) -> Optional[Check]:
  """Returns the range check of a dotted field (its longest matching rule), or None."""
  matches = [(name, check) for name, check in RULES
             if field == name or field.endswith('.' + name)]
  return max(matches, key=lambda m: len(m[0]))[1] if matches else None


def _type_error(value, default) -> Optional[str]:
  """Returns the expected type when value cannot stand where the default config has default."""
  if default is None:
    return None
  if value is None:
    return type(default).__name__
  if isinstance(default, bool):
    return None if isinstance(value, bool) else 'bool'
  if isinstance(default, int):
    return None if isinstance(value, int) and not isinstance(value, bool) else 'int'
  if isinstance(default, float):
    return None if isinstance(value, (int, float)) and not isinstance(value, bool) else 'float'
  if isinstance(default, str):
    return None if isinstance(value, str) else 'str'
  if isinstance(default, (tuple, list)):
    return None if isinstance(value, (tuple, list)) else 'tuple'
  return None


def errors(fields: dict, defaults: Optional[dict] = None,
           names: Optional[dict] = None) -> list[str]:
  """Returns one message per invalid field of a flat {field: value} (defaults: flat, typed).

  `names` maps a field to the name its message uses (a launcher's flag, say).
  """
  out = []
  for field, value in fields.items():
    name = (names or {}).get(field, field)
    expected = _type_error(value, (defaults or {}).get(field))
    if expected:
      out.append(f'{name}={value!r}: expected type {expected} (the default is '
                 f'{defaults[field]!r})')
      continue
    check = rule_for(field)
    problem = check(value) if check else None
    if problem:
      out.append(f'{name}={value!r}: expected {problem}')
  bad = {m.split('=', 1)[0] for m in out}
  for names, fits, expected in CROSS_RULES:
    if all(n in fields and n not in bad for n in names) and not fits(
        *(fields[n] for n in names)):
      out.append(f'{", ".join(f"{n}={fields[n]!r}" for n in names)}: expected {expected}')
  return out


def default_config(name: str, arg: str = '') -> Optional[dict]:
  """Returns configs/<name>.py's config flattened, or None where configs/ is not beside us."""
  path = os.path.join(CONFIGS, f'{name}.py')
  if not os.path.exists(path):
    return None
  return flatten(config_files.module(path).get_config(arg))


def check(config, defaults: Optional[dict] = None, where: str = 'config',
          names: Optional[dict] = None) -> None:
  """Raises ConfigError listing every invalid field of config (a ConfigDict or a flat dict)."""
  fields = config if isinstance(config, dict) and not isinstance(
      config, ml_collections.ConfigDict) else flatten(config)
  found = errors(fields, defaults, names)
  if found:
    raise ConfigError(f'{where}: {len(found)} invalid field{"s" * (len(found) > 1)}:\n  '
                      + '\n  '.join(found))


def check_flags(where: str, flags: dict) -> None:
  """Raises ConfigError naming each bad flag of {rule field: (flag name, value)} (None: unset)."""
  check({f: v for f, (_, v) in flags.items() if v is not None}, where=where,
        names={f: name for f, (name, _) in flags.items()})


def check_loop_config(config) -> None:
  """Raises ConfigError naming each invalid field of a loop config (configs/common.py's)."""
  check(config, default_config('common'), 'loop config')


def check_train_config(cfg, kind: str) -> None:
  """Raises ConfigError naming each invalid field of an SFT or DPO config (kind: sft, dpo)."""
  check(cfg, default_config(kind), f'{kind} config')


def check_few_shot(config, num_seed_prompts: int, source: str) -> None:
  """Raises ConfigError when creation.few_shot asks for more seed prompts than source holds."""
  if config.creation.few_shot > num_seed_prompts:
    raise ConfigError(f'loop config: creation.few_shot={config.creation.few_shot}: expected at '
                      f'most the {num_seed_prompts} seed prompts of {source} (data.ift, '
                      'data.max_ift)')
