r"""Builds generated verifiable tasks as JSONL: arithmetic word problems or Countdown puzzles.

  python launch/build_tasks.py --kind=arithmetic --n=200 --seed=0 --out=/tmp/arith.jsonl
  python launch/build_tasks.py --kind=countdown --n=100 --seed=1 --difficulty=1,2 \
      --out=/tmp/countdown.jsonl

Each line is a task {id, kind, prompt, question, answer, difficulty, ...} (srlm_jax/tasks);
answers are computed by the program, countdown puzzles are verified solvable. Nothing is
downloaded. --difficulty takes levels (arithmetic 1..5, countdown 1..3), cycled over the n
tasks; empty means all levels.
"""

import collections

from absl import app
from absl import flags

from srlm_jax import tasks

_KIND = flags.DEFINE_enum('kind', 'arithmetic', sorted(tasks.KINDS), 'Task kind.')
_N = flags.DEFINE_integer('n', 100, 'How many tasks.')
_SEED = flags.DEFINE_integer('seed', 0, 'Generator seed (same seed, same tasks).')
_DIFFICULTY = flags.DEFINE_list('difficulty', [], 'Levels, cycled; empty = all levels.')
_OUT = flags.DEFINE_string('out', None, 'Output JSONL path.', required=True)


def main(argv):
  del argv
  levels = [int(d) for d in _DIFFICULTY.value] or None
  batch = tasks.generate(_KIND.value, _N.value, _SEED.value, difficulty=levels)
  count = tasks.write(_OUT.value, batch)
  by_level = collections.Counter(t['difficulty'] for t in batch)
  print(f'wrote {count} {_KIND.value} tasks to {_OUT.value}; per difficulty: '
        f'{dict(sorted(by_level.items()))}')


if __name__ == '__main__':
  app.run(main)
