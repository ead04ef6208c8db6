"""The run's plan for the console's ETA: every stage sized in work units from the config.

A stage's work is counted in tokens of one kind: trained, scored or sampled (`PRIOR_COST`).
`plan_run` sizes the whole run before it starts; `run_eta` turns the seconds measured so far
per kind into the time left.
"""

import dataclasses
from typing import Optional, Sequence

# Each iteration's stages when a config names none (config.stages): today's built-in order.
ITERATION_STAGES = ('prompts', 'candidates', 'judgments', 'pairs', 'dpo', 'eval', 'guard')
# Relative cost of one work unit of each kind, used for the run's ETA only until a stage of
# that kind has been timed: a training token (forward + backward, about 3 forwards), a scored
# token (one forward) and a sampled token (a decode step: memory-bound, a few forwards' worth
# per token at the batch sizes used here). Measured rates replace these as soon as they exist.
PRIOR_COST = {'train': 3.0, 'score': 1.0, 'sample': 4.0}


def stage_names(config) -> tuple:
  """Returns the stages each iteration runs, in order (config.stages)."""
  return tuple(config.get('stages') or ITERATION_STAGES)


def _train_steps(cfg, examples: int) -> int:
  return cfg.num_steps or max(1, int(cfg.num_epochs * examples) // cfg.batch_size)


@dataclasses.dataclass
class StagePlan:
  """One stage of the run: its work units (for the ETA) and how far it has got."""
  t: int  # iteration (0: M1's SFT)
  name: str
  kind: str  # a PRIOR_COST key
  units: float  # estimated work: tokens trained, scored or sampled
  frac: float = 0.0  # fraction done
  done: bool = False


def plan_run(config, n_sft_examples: int) -> list:
  """Returns the StagePlans of a whole run, sized from the config.

  Work units are tokens: trained (steps x batch x max_len, a pair counting twice), scored
  (a forward pass) or sampled (rows x max_new_tokens, an upper bound: rows may stop
  early). Counts that depend on earlier stages assume every request keeps its prompt and every
  prompt makes a pair; `refine` corrects them from the records as stages finish.
  """
  plans = []
  if config.sft.enabled:
    steps = _train_steps(config.sft, n_sft_examples)
    plans.append(StagePlan(0, 'sft', 'train', steps * config.sft.batch_size * config.sft.max_len))
  for t in range(1, config.iterations + 1):
    plans += iteration_plan(config, t, config.creation.num_requests, config.creation.num_requests)
  return plans


def iteration_plan(config, t: int, prompts: int, pairs: int) -> list:
  """Returns iteration t's StagePlans for `prompts` kept prompts that make `pairs` pairs."""
  c, dpo = config.creation, config.dpo
  responses = prompts * c.n_candidates
  eval_units = 0
  if config.eval.pairs:
    eval_units = (config.eval.max_pairs or 64) * 2 * config.eval.k * c.judge.max_new_tokens
  # each measured model's greedy answers (held-out and IFEval prompts); iteration 1 measures
  # M0 and M1 too (stages/eval.py)
  answers = ((config.eval.max_prompts or 64) * bool(config.eval.prompts)
             + (config.eval.max_ifeval or 18) * bool(config.eval.ifeval))
  eval_units = (3 if t == 1 and config.eval.baselines else 1) * (
      eval_units + answers * config.eval.max_new_tokens)
  units = {'prompts': ('sample', c.num_requests * c.prompt_max_new_tokens),
           'candidates': ('sample', responses * c.max_new_tokens),
           'judgments': ('sample', responses * c.judge.k * c.judge.max_new_tokens),
           'pairs': ('score', 0),
           'dpo': ('train', (_train_steps(dpo, pairs) if pairs else 0) * dpo.batch_size * 2
                   * dpo.max_len),
           'eval': ('sample', eval_units)}
  # The frozen judge judges every candidate once: in review when it runs, else in guard.
  frozen = responses * config.guard.k * config.guard.max_new_tokens
  units['review'] = ('sample', frozen)
  units['guard'] = ('sample', 0 if 'review' in stage_names(config) else frozen)
  # A stage the plan cannot size (one added through config.stages) weighs nothing in the ETA.
  return [StagePlan(t, name, *units.get(name, ('score', 0))) for name in stage_names(config)]


def run_eta(plans: Sequence[StagePlan], seconds: dict, units: dict) -> Optional[float]:
  """Returns the estimated seconds left in the run (None until some work has been timed).

  Each unfinished stage's remaining units cost the measured seconds per unit of its kind
  (`seconds[kind] / units[kind]`, this session's work only); a kind not yet measured costs a
  measured kind's rate scaled by PRIOR_COST.
  """
  rates = {k: seconds[k] / units[k] for k in units if units[k] > 0 and k in seconds}
  if not rates:
    return None
  ref = max(rates, key=lambda k: units[k])
  left = 0.0
  for p in plans:
    if p.done:
      continue
    rate = rates.get(p.kind, rates[ref] * PRIOR_COST[p.kind] / PRIOR_COST[ref])
    left += p.units * (1.0 - p.frac) * rate
  return left
