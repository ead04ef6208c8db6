r"""Builds generated verifiable tasks as JSONL: arithmetic word problems or Countdown puzzles.

  python launch/build_tasks.py --kind=arithmetic --n=200 --seed=0 --out=/tmp/arith.jsonl
  python launch/build_tasks.py --kind=countdown --n=100 --seed=1 --difficulty=1,2 \
      --out=/tmp/countdown.jsonl

Each line is a task {id, kind, prompt, question, answer, difficulty, ...} (srlm_jax/tasks);
answers are computed by the program, countdown puzzles are verified solvable. Nothing is
downloaded. --difficulty takes levels (arithmetic 1..5, countdown 1..3), cycled over the n
tasks; empty means all levels.

With --ift_out / --eft_out it also writes M1's seed data for the process-based configs
(srlm_jax/process/seeds.py): program-written step-by-step solutions of these tasks (IFT
{prompt, response}) and step judgments, a true step scored 5 and a wrong one 1 (EFT
{prompt, response, judgment}). Build them from another seed than the loop's tasks:

  python launch/build_tasks.py --kind=arithmetic --n=200 --seed=12345 --difficulty=1,2 \
      --out=/tmp/seed_tasks.jsonl --ift_out=/tmp/process_ift.jsonl \
      --eft_out=/tmp/process_eft.jsonl
"""

import collections

from absl import app
from absl import flags

from srlm_jax import tasks
from srlm_jax.data_io import write_jsonl
from srlm_jax.process import seeds

_KIND = flags.DEFINE_enum('kind', 'arithmetic', sorted(tasks.KINDS), 'Task kind.')
_N = flags.DEFINE_integer('n', 100, 'How many tasks.')
_SEED = flags.DEFINE_integer('seed', 0, 'Generator seed (same seed, same tasks).')
_DIFFICULTY = flags.DEFINE_list('difficulty', [], 'Levels, cycled; empty = all levels.')
_OUT = flags.DEFINE_string('out', None, 'Output JSONL path.', required=True)
_IFT_OUT = flags.DEFINE_string('ift_out', '', 'Also write IFT seed solutions here.')
_EFT_OUT = flags.DEFINE_string('eft_out', '', 'Also write EFT step judgments here.')


def main(argv):
  del argv
  levels = [int(d) for d in _DIFFICULTY.value] or None
  batch = tasks.generate(_KIND.value, _N.value, _SEED.value, difficulty=levels)
  count = tasks.write(_OUT.value, batch)
  by_level = collections.Counter(t['difficulty'] for t in batch)
  print(f'wrote {count} {_KIND.value} tasks to {_OUT.value}; per difficulty: '
        f'{dict(sorted(by_level.items()))}')
  if _IFT_OUT.value or _EFT_OUT.value:
    ift, eft = seeds.seed_records(batch, seed=_SEED.value)
    for path, records in ((_IFT_OUT.value, ift), (_EFT_OUT.value, eft)):
      if path:
        write_jsonl(path, records)
        print(f'wrote {len(records)} seed records to {path}')


if __name__ == '__main__':
  app.run(main)
