"""Stage `tasks`: this iteration's verifiable problems (srlm_jax/tasks), written as tasks.jsonl.

With config.tasks.file '' the problems are generated: config.tasks.n of config.tasks.kind at
config.tasks.difficulty (levels cycled; empty: all), from the iteration's seed, so each
iteration gets new problems and a resumed run the same ones. With a file (JSONL from
launch/build_tasks.py) iteration t takes its records [(t - 1) n, t n). Each record is a task
{id, kind, prompt, question, answer, difficulty, ...}; later stages read it as prompt records
(id, prompt) and check answers with tasks.check.
"""

import os

from srlm_jax import tasks as tasks_lib
from srlm_jax.data_io import write_jsonl
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage


def iteration_tasks(config, t: int, seed: int) -> list:
  """Returns iteration t's tasks under config.tasks (generated from `seed`, or a file slice)."""
  c = config.tasks
  if c.file:
    everything = tasks_lib.load(c.file)
    start = (t - 1) * c.n
    if len(everything) < start + c.n:
      raise ValueError(f'tasks.file={c.file}: {len(everything)} tasks, but iteration {t} needs '
                       f'records {start}..{start + c.n - 1} (tasks.n={c.n} per iteration)')
    return everything[start:start + c.n]
  return tasks_lib.generate(c.kind, c.n, seed, difficulty=list(c.difficulty) or None)


def run(ctx, out_dir: str) -> dict:
  """Returns the number of tasks and their kinds after writing tasks.jsonl."""
  batch = iteration_tasks(ctx.config, ctx.t, ctx.settings.seed)
  write_jsonl(os.path.join(out_dir, 'tasks.jsonl'), batch)
  return {'tasks': len(batch), 'kinds': sorted({t['kind'] for t in batch})}


STAGE = register(Stage('tasks', run, records=('tasks.jsonl',)))
