r"""The step judge's accuracy against the program's truth, same candidates, several models.

  python launch/step_judge_accuracy.py --workdir=/tmp/srlm_process --iteration=1 \
      --models=M0,/tmp/srlm_process/iter_1/step_dpo/params --out=/tmp/step_judge.json

Reads a process-based run's iter_<t>/steps/solutions.jsonl (every candidate step with the
program's label, process/truth.py) and iter_<t>/tasks/tasks.jsonl, re-judges every candidate
with each model (the run's step judge settings, from its config.json, one judge call per
model) and prints per model the pairwise accuracy over (right, wrong) candidate pairs of one
prefix (ties half), the number of such pairs, and the recorded accuracy of the run's own
judge (M_t at search time). 'M0' names the run's base model.
"""

import json
import os

from absl import app
from absl import flags
import ml_collections
import numpy as np

import srlm_jax
from srlm_jax import sharding
from srlm_jax.judges import step as step_judges
from srlm_jax.pipeline import settings as settings_lib
from srlm_jax.pipeline.stages import steps as steps_stage
from srlm_jax.process import search
from srlm_jax.process import truth

_WORKDIR = flags.DEFINE_string('workdir', None, 'A process-based run.', required=True)
_ITERATION = flags.DEFINE_integer('iteration', 1, 'Whose candidates: iter_<t>.')
_MODELS = flags.DEFINE_list('models', ['M0'], "Judges: 'M0' or params / model dirs.")
_SEED = flags.DEFINE_integer('seed', 7, 'Judge sampling seed.')
_OUT = flags.DEFINE_string('out', '', 'Also write the table as JSON here.')


def main(argv):
  del argv
  config = ml_collections.ConfigDict(json.load(open(os.path.join(_WORKDIR.value,
                                                                 'config.json'))))
  settings = steps_stage.search_settings(config, settings_lib.from_config(config))
  it = os.path.join(_WORKDIR.value, f'iter_{_ITERATION.value}')
  records = [json.loads(l) for l in open(os.path.join(it, 'steps', 'solutions.jsonl'))]
  problems = {t['id']: t for t in map(json.loads, open(os.path.join(it, 'tasks',
                                                                    'tasks.jsonl')))}
  # Labels from today's truth rules (a run may predate a fix to them).
  truth.label_records(records, [problems[r['id']] for r in records], settings.final_marker)
  contexts, texts, where = [], [], []
  for r, rec in enumerate(records):
    chosen = []
    for s, step in enumerate(rec['steps']):
      contexts.append(step_judges.context(problems[rec['id']]['question'], chosen))
      texts.append(step['candidates'])
      where.append((r, s))
      chosen.append(step['candidates'][step['extended_by']])
  rows = [{'model': 'recorded (M_t at search)', **truth.judge_agreement(records)}]
  mesh = sharding.make_mesh(*config.mesh)
  for name in _MODELS.value:
    model = srlm_jax.load(config.model if name == 'M0' else name, mesh=mesh, dtype='float32')
    score, _, _ = search.judge_steps(model, contexts, texts, settings, seed=_SEED.value)
    score = np.asarray(score)
    rejudged = json.loads(json.dumps(records))
    for (r, s), row in zip(where, score):
      rejudged[r]['steps'][s]['scores'] = [None if np.isnan(x) else float(x) for x in row]
    rows.append({'model': name, **truth.judge_agreement(rejudged)})
  for row in rows:
    acc = row['pairwise_accuracy']
    print(f"{row['model']:<60} accuracy {'-' if acc is None else f'{acc:.3f}'} over "
          f"{row['comparisons']} (right, wrong) pairs")
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump(rows, f, indent=1)


if __name__ == '__main__':
  app.run(main)
