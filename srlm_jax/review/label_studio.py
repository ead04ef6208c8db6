"""A review sample as Label Studio tasks, and Label Studio's JSON export read back as labels.

Label Studio (labelstud.io) imports a JSON list of tasks, each {"data": {...}}, and shows them
with a labelling config (XML). The config here shows the prompt and responses A and B with a
Pairwise control (its result's value is {"selected": "left"} for A, "right" for B) and a Tie
choice. `read_export` turns the project's JSON export (tasks with their "annotations") back
into this package's label records (labels.py).
"""

import json
import os
from typing import Sequence

from srlm_jax.review import labels as labels_lib

LABEL_CONFIG = """<View>
  <Header value="Which response answers the prompt better?"/>
  <Text name="prompt" value="$prompt"/>
  <View style="display: grid; column-gap: 1em; grid-template: auto/1fr 1fr">
    <Text name="answer_a" value="$a"/>
    <Text name="answer_b" value="$b"/>
  </View>
  <Pairwise name="comparison" toName="answer_a,answer_b"/>
  <Choices name="tie" toName="prompt">
    <Choice value="Tie"/>
  </Choices>
</View>
"""


def tasks(items: Sequence[dict]) -> list:
  """Returns the review items as Label Studio tasks (data: pair_id, prompt, a, b, ...)."""
  keep = ('pair_id', 'iteration', 'prompt', 'a', 'b', 'judge_choice', 'disagreement')
  return [{'data': {k: item[k] for k in keep}} for item in items]


def write(items: Sequence[dict], out_dir: str) -> list:
  """Writes out_dir/tasks.json and out_dir/label_config.xml; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = [os.path.join(out_dir, 'tasks.json'), os.path.join(out_dir, 'label_config.xml')]
  with open(paths[0], 'w', encoding='utf-8') as f:
    json.dump(tasks(items), f, ensure_ascii=False, indent=1)
  with open(paths[1], 'w', encoding='utf-8') as f:
    f.write(LABEL_CONFIG)
  return paths


def _choice(result: Sequence[dict], where: str) -> str:
  for r in result:
    value = r.get('value') or {}
    if r.get('from_name') == 'tie' and 'Tie' in (value.get('choices') or []):
      return 'tie'
  for r in result:
    selected = (r.get('value') or {}).get('selected')
    if r.get('from_name') == 'comparison' and selected in ('left', 'right'):
      return 'a' if selected == 'left' else 'b'
  raise ValueError(f'{where}: no "comparison" (left/right) or "tie" result in the annotation')


def read_export(path: str) -> list:
  """Returns the label records of a Label Studio JSON export (the latest annotation per task;
  tasks without one are skipped). A task or annotation without what a label needs raises
  naming its position in the file."""
  with open(path, encoding='utf-8') as f:
    exported = json.load(f)
  if not isinstance(exported, list):
    raise ValueError(f'{path}: expected a JSON list of tasks (Label Studio\'s JSON export)')
  out = []
  for k, task in enumerate(exported):
    where = f'{path}: task {k}'
    annotations = [a for a in task.get('annotations') or [] if not a.get('was_cancelled')]
    if not annotations:
      continue
    data, latest = task.get('data') or {}, annotations[-1]
    for field in ('pair_id', 'prompt', 'a', 'b', 'judge_choice', 'iteration'):
      if field not in data:
        raise ValueError(f'{where}: data has no {field!r} (not a task tasks() wrote)')
    reviewer = latest.get('completed_by')
    if isinstance(reviewer, dict):
      reviewer = reviewer.get('email') or reviewer.get('username') or reviewer.get('id')
    label = labels_lib.label_record(
        data, _choice(latest.get('result') or [], where),
        f'label-studio:{reviewer}' if reviewer is not None else 'label-studio',
        time=latest.get('updated_at') or latest.get('created_at') or labels_lib.now())
    out.append(labels_lib.check_label(label, where))
  return out
