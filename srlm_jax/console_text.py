"""The console's text: the run summary, --dry_run, each stage's result line, the end table.

Pure functions of the config and of what the stages left in the work directory; `console.Console`
prints them.
"""

import os
from typing import Optional, Sequence

from srlm_jax import config_help
from srlm_jax import console_plan
from srlm_jax import data_io
from srlm_jax import workdir as workdir_lib

# Each sampling stage's records file, summarised in its "done" lines.
RECORDS = {'prompts': 'prompts.jsonl', 'candidates': 'candidates.jsonl',
           'judgments': 'judgments.jsonl', 'pairs': 'pairs.jsonl'}


def format_seconds(seconds: Optional[float]) -> str:
  """Returns a duration as '42s', '3m05s' or '1h02m' ('?' when unknown)."""
  if seconds is None:
    return '?'
  s = int(round(max(seconds, 0.0)))
  if s < 60:
    return f'{s}s'
  if s < 3600:
    return f'{s // 60}m{s % 60:02d}s'
  return f'{s // 3600}h{s % 3600 // 60:02d}m'


def stage_label(t: int, name: str, iterations: int) -> str:
  """Returns the name a stage is shown under: 'sft', 'candidates', or 'candidates #2'."""
  return name if t == 0 or iterations == 1 else f'{name} #{t}'


def count_lines(path: str) -> int:
  """Returns the number of non-empty lines of a file (0 when it is missing)."""
  if not os.path.exists(path):
    return 0
  with open(path, encoding='utf-8') as f:
    return sum(1 for line in f if line.strip())


def _read_jsonl(path: str) -> list:
  """Returns the objects of a JSONL file through data_io's reader ([] when it is missing)."""
  if not os.path.exists(path):
    return []
  return [obj for _, _, obj in data_io.read_jsonl(path, allow_empty=True)]


def _read_json(path: str) -> dict:
  """Returns a JSON file through data_io's reader ({} when it is missing)."""
  return data_io.read_json(path) if os.path.exists(path) else {}


def _last_metrics(train_dir: str) -> dict:
  """Returns the last value of every metric in train_dir/metrics.jsonl."""
  last = {}
  for record in _read_jsonl(os.path.join(train_dir, 'metrics.jsonl')):
    last.update(record)
  return last


def stage_result(stage_dir: str, name: str, info: Optional[dict] = None) -> str:
  """Returns what a finished stage made: '16 prompts, 64 candidates', '12 steps, loss 0.6'."""
  info = info if info is not None else _read_json(os.path.join(stage_dir, 'DONE'))
  if name in RECORDS:
    records = _read_jsonl(os.path.join(stage_dir, RECORDS[name]))
    if name == 'prompts':
      return f'{len(records)} prompts kept, {info.get("rejected", 0)} rejected'
    if name == 'candidates':
      return f'{len(records)} prompts, {sum(len(r["candidates"]) for r in records)} candidates'
    if name == 'judgments':
      valid = sum(sum(r['valid']) for r in records)
      return (f'{len(records)} responses judged, {valid}/{sum(len(r["valid"]) for r in records)}'
              ' judgments valid')
    return f'{len(records)} pairs'
  if name in ('sft', 'dpo'):
    if info.get('skipped'):
      return 'no pairs to train on: the next model is this one'
    m = _last_metrics(os.path.join(stage_dir, 'train') if name == 'sft' else stage_dir)
    text = f'{int(m.get("step", 0))} steps'
    if 'loss' in m:
      text += f', loss {m["loss"]:.4f}'
    if 'rewards/accuracies' in m:
      text += f', reward acc {m["rewards/accuracies"]:.2f}'
    if name == 'sft' and 'examples' in info:
      text = f'{info["examples"]} examples, ' + text
    return text
  if name == 'eval':
    result = _read_json(os.path.join(stage_dir, 'eval.json'))
    agreement = result.get('judge_agreement')
    if agreement:
      return f'judge pairwise accuracy {agreement["pairwise_accuracy"]:.3f}'
    return 'response lengths'
  # A stage added through config.stages: the numbers its DONE info holds.
  numbers = [f'{k} {v}' for k, v in info.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
  return ', '.join(numbers[:4]) or 'done'


def summary_lines(config, workdir: str, n_ift: Optional[int] = None,
                  n_eft: Optional[int] = None) -> list:
  """Returns the run's summary: model, sizes, stages, workdir, logs."""
  c, sft, dpo = config.creation, config.sft, config.dpo
  seeds = f'{config.data.ift} + {config.data.eft}'
  if n_ift is not None:
    seeds = f'{n_ift} IFT + {n_eft} EFT examples ({seeds})'
  models = ' -> '.join(f'M{t}' for t in range(1, config.iterations + 2))
  sft_line = 'off (the iterations start from M0)'
  if sft.enabled:
    steps = (f'{sft.num_steps} steps' if sft.num_steps else f'{sft.num_epochs:g} epoch(s)')
    sft_line = f'M0 -> M1, {steps} x batch {sft.batch_size}, max_len {sft.max_len}, lr {sft.lr:g}'
  dpo_steps = f'{dpo.num_steps} steps' if dpo.num_steps else f'{dpo.num_epochs:g} epoch(s)'
  log = config.get('logging')
  logs = 'metrics.jsonl per training stage'
  if log is not None:
    logs += f'; TensorBoard {os.path.join(workdir, "tensorboard") if log.tensorboard else "off"}'
    logs += f'; W&B {log.wandb_project or "off"}'
  stages = ('sft, then ' if sft.enabled else '') + ', '.join(console_plan.stage_names(config))
  rows = [
      ('workdir', workdir),
      ('model', f'{config.model} (M0)'
       + (f'; prompts written by {config.prompt_generator}' if config.prompt_generator else '')),
      ('seed data', seeds),
      ('iterations', f'{config.iterations}: {models}'),
      ('prompts', f'{c.num_requests} few-shot requests, {c.few_shot} seeds each, '
                  f'<= {c.prompt_max_new_tokens} tokens'),
      ('candidates', f'{c.n_candidates} per prompt, <= {c.max_new_tokens} tokens, '
                     f'T={c.temperature:g} top_p={c.top_p:g}'),
      ('judge', f'k={c.judge.k} per candidate, <= {c.judge.max_new_tokens} tokens, '
                f'template {_short(c.judge.template)}'),
      ('sft', sft_line),
      ('dpo', f'{dpo.loss} beta={dpo.beta:g}, {dpo_steps} x batch {dpo.batch_size}, '
              f'max_len {dpo.max_len}, lr {dpo.lr:g}'),
      ('eval', f'{config.eval.pairs} (k={config.eval.k})' if config.eval.pairs else 'lengths'),
      ('mesh', f'{tuple(config.mesh)} (data, fsdp, tensor); shards of {config.shard_size}'),
      ('stages', stages),
      ('logs', logs),
  ]
  width = max(len(k) for k, _ in rows)
  return ['srlm_jax: self-rewarding run'] + [f'  {k:<{width}}  {v}' for k, v in rows]


def _short(text: str, n: int = 40) -> str:
  text = ' '.join(str(text).split())
  return repr(text if len(text) <= n else text[:n - 3] + '...')


def dry_run_text(config, workdir: str, n_ift: Optional[int] = None,
                 n_eft: Optional[int] = None) -> str:
  """Returns what --dry_run prints: the summary, each stage's size and the resolved config."""
  lines = summary_lines(config, workdir, n_ift, n_eft)
  n = (n_ift or 0) + (n_eft or 0)
  lines += ['', 'stages (estimated work, tokens; counts after prompts are upper bounds):']
  for p in console_plan.plan_run(config, n):
    lines.append(f'  {stage_label(p.t, p.name, config.iterations):<16} {p.kind:<7}'
                 f'{int(p.units):>14,}')
  lines += ['', 'resolved config (override any field with --config.<field>=<value>):']
  lines += [f'  {key} = {value!r}' for key, value in config_help.flatten(config)]
  return '\n'.join(lines)


def count_shards(folder: str) -> int:
  """Returns the number of complete shards in folder: those with their digest beside them."""
  if not os.path.isdir(folder):
    return 0
  return sum(1 for f in os.listdir(folder) if f.endswith('.jsonl')
             and os.path.exists(workdir_lib.shard_sidecar(os.path.join(folder, f))))


def end_table(results: Sequence[tuple], total_seconds: float, workdir: str,
              reports: Sequence[dict], logs: Sequence[str] = ()) -> list:
  """Returns the end summary: a row per stage (time, result) and where reports and logs are."""
  width = max([len(r[0]) for r in results] + [len('stage')])
  lines = ['', f'{"stage":<{width}}  {"time":>7}  result',
           f'{"-" * width}  {"-" * 7}  {"-" * 40}']
  for label, seconds, result, state in results:
    time_text = format_seconds(seconds) if seconds is not None else state
    lines.append(f'{label:<{width}}  {time_text:>7}  {result}')
  lines.append(f'{"total":<{width}}  {format_seconds(total_seconds):>7}  this session')
  for report in reports:
    t = report['iteration']
    j, grpo = report['judgments'], report.get('grpo') or {}
    made = (f'{report["prompts"]["kept"]} prompts, {report["candidates"]} candidates, '
            f'{j["valid"]}/{j["total"]} valid judgments, {report["pairs"]} pairs')
    if grpo and not report['candidates']:  # online RL: its own rollouts, no pairs
      made = (f'GRPO, {grpo.get("steps")} steps on {grpo.get("prompts")} prompts, last reward '
              f'{grpo.get("reward")}')
    lines.append(f'iteration {t} ({report["model"]}): {made}; report: '
                 f'{os.path.join(workdir, f"iter_{t}", "report.md")}')
  lines += list(logs)
  return lines
