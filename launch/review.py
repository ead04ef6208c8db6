r"""Human review of a run's pairs: export a sample, label it on a local page, import labels.

Export iteration 1's pairs (self-vs-frozen judge disagreements first) as a sample JSONL and as
Label Studio tasks (tasks.json + label_config.xml beside it):

  python launch/review.py --mode=export --workdir=/tmp/srlm_run --iteration=1 --n=16

Label them in a browser on this machine (127.0.0.1 only; keys a / b / t, j / k to move); each
label goes straight into the run, <workdir>/human_labels/iter_1.jsonl:

  python launch/review.py --mode=serve --workdir=/tmp/srlm_run --iteration=1 --reviewer=ana

Import labels made elsewhere (this page's JSONL, or a Label Studio JSON export):

  python launch/review.py --mode=import --workdir=/tmp/srlm_run --iteration=1 \
      --labels=/tmp/labels.jsonl            # or --label_studio=/tmp/export.json

The guard stage of iteration 1 measures the self-judge against the labels (if it has not run
yet), and iteration 2's EFT data includes them. A run whose config lists the `review` stage
with review.wait=True pauses until they are in.
"""

import json
import os

from absl import app
from absl import flags

from srlm_jax.data_io import write_jsonl
from srlm_jax.review import label_studio
from srlm_jax.review import labels as labels_lib

_MODE = flags.DEFINE_enum('mode', None, ['export', 'serve', 'import'], 'What to do.',
                          required=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The run\'s work directory.', required=True)
_ITERATION = flags.DEFINE_integer('iteration', None, 'Whose pairs (t of iter_<t>).',
                                  required=True)
_N = flags.DEFINE_integer('n', 16, 'export: pairs in the sample.')
_SEED = flags.DEFINE_integer('seed', None, 'export: the seed of the A/B sides (default: '
                            'the run\'s, as the review stage draws them).')
_SAMPLE = flags.DEFINE_string(
    'sample', None, 'serve: the sample JSONL (default: the review stage\'s sample.jsonl, else '
    'the export\'s <workdir>/human_labels/iter_<t>.sample.jsonl).')
_PORT = flags.DEFINE_integer('port', 8765, 'serve: the port on 127.0.0.1 (0: any free one).')
_REVIEWER = flags.DEFINE_string('reviewer', '', 'serve: the name the page starts with.')
_LABELS = flags.DEFINE_string('labels', None, 'import: a labels JSONL (this page\'s format).')
_LABEL_STUDIO = flags.DEFINE_string('label_studio', None, 'import: a Label Studio JSON export.')


def export_path(workdir: str, t: int) -> str:
  """Returns where --mode=export writes iteration t's sample."""
  return os.path.join(workdir, labels_lib.LABELS_DIR, f'iter_{t}.sample.jsonl')


def read_sample(path: str) -> list:
  """Returns the review items of a sample JSONL."""
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def main(argv):
  del argv
  workdir, t = _WORKDIR.value, _ITERATION.value
  if _MODE.value == 'export':
    items = labels_lib.sample_from_workdir(workdir, t, _N.value, _SEED.value)
    path = write_jsonl(export_path(workdir, t), items)
    tasks = label_studio.write(items, os.path.splitext(path)[0] + '.label_studio')
    print(f'{len(items)} pairs ({sum(i["disagreement"] for i in items)} disagreements) in '
          f'{path}; Label Studio: {", ".join(tasks)}')
  elif _MODE.value == 'serve':
    from srlm_jax.review import server as server_lib  # pylint: disable=g-import-not-at-top
    stage_sample = os.path.join(workdir, f'iter_{t}', 'review', 'sample.jsonl')
    path = _SAMPLE.value or (stage_sample if os.path.exists(stage_sample)
                             else export_path(workdir, t))
    server = server_lib.ReviewServer(read_sample(path), labels_lib.labels_path(workdir, t),
                                     port=_PORT.value, reviewer=_REVIEWER.value)
    print(f'Review {path} at {server.url} (Ctrl-C to stop); labels: {server.labels_path}')
    try:
      server.serve_forever()
    except KeyboardInterrupt:
      pass
    finally:
      server.server_close()
  else:
    if bool(_LABELS.value) == bool(_LABEL_STUDIO.value):
      raise app.UsageError('--mode=import takes one of --labels or --label_studio')
    source = _LABEL_STUDIO.value or _LABELS.value
    if not os.path.exists(source):
      raise app.UsageError(f'no such file: {source}')
    got = (label_studio.read_export(_LABEL_STUDIO.value) if _LABEL_STUDIO.value else
           labels_lib.read_labels(_LABELS.value))
    path = labels_lib.import_labels(got, workdir, t)
    print(f'{len(got)} labels imported into {path}')


if __name__ == '__main__':
  app.run(main)
