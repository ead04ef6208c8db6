"""Stage `review` (optional; list it before `guard`): a person labels a sample of the pairs.

The frozen reference judge (guard.reference) judges every candidate, as the guard stage would
(published here, so the guard reuses it); the pairs it orders against the self-judge come first
in sample.jsonl (review.sample items, srlm_jax/review/labels.py), also written as Label Studio
tasks (label_studio/). With review.wait the run pauses until review.min_labels labels of this
iteration are in <workdir>/human_labels/iter_<t>.jsonl, serving the labelling page on
127.0.0.1:review.port meanwhile when review.serve (or label with `launch/review.py serve`, or
import labels made elsewhere with `launch/review.py import`). The guard measures the self-judge
against these labels; iteration t + 1's EFT data includes them.
"""

import logging
import os
import time

import numpy as np

from srlm_jax import distributed
from srlm_jax import judges
from srlm_jax.data_io import write_jsonl
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage
from srlm_jax.pipeline.stages import guard as guard_stage
from srlm_jax.review import label_studio
from srlm_jax.review import labels as labels_lib


def reference_map(candidate_records, reference: dict, n: int, how: str = 'mean') -> dict:
  """Returns {(prompt id, candidate): the frozen judge's score (its K judgments reduced as
  `how`: judges.aggregate) or None} (host edge)."""
  mean_R, _ = judges.aggregate(reference['reference_scores_RxK'],
                               reference['reference_valid_RxK'], how)
  host = np.asarray(distributed.to_host(mean_R))
  return {(r['id'], j): judges.score_json(host[i * n + j])
          for i, r in enumerate(candidate_records) for j in range(n)}


def wait_for_labels(items: list, path: str, cfg) -> int:
  """Returns how many of the sample's pairs are labelled once min_labels are (or on timeout),
  serving the page meanwhile when cfg.serve."""
  want = {item['pair_id'] for item in items}
  need = min(cfg.min_labels or len(want), len(want))
  server = None
  if cfg.serve and distributed.is_writer():
    from srlm_jax.review import server as server_lib  # pylint: disable=g-import-not-at-top
    server = server_lib.ReviewServer(items, path, port=cfg.port).start()
    logging.warning('review: label %d of %d pairs at %s (the run waits)', need, len(want),
                    server.url)
  start = time.monotonic()
  try:
    while True:
      got = len({label['pair_id'] for label in labels_lib.read_labels(path)} & want)
      if got >= need:
        return got
      if cfg.timeout_seconds and time.monotonic() - start > cfg.timeout_seconds:
        logging.warning('review: %d of %d labels after %.0f s; going on', got, need,
                        cfg.timeout_seconds)
        return got
      time.sleep(cfg.poll_seconds)
  finally:
    if server is not None:
      server.stop()


def run(ctx, out_dir: str) -> dict:
  """Writes sample.jsonl and the Label Studio tasks, waits for labels when asked; returns the
  counts and that the frozen judge's arrays are published here."""
  cfg = ctx.config.review
  reference = guard_stage.judge_reference(ctx, out_dir)
  ctx.publish(out_dir, reference)
  cands = ctx.records('candidates', 'candidates.jsonl')
  items = labels_lib.build_sample(
      ctx.records('pairs', 'pairs.jsonl'), ctx.records('judgments', 'judgments.jsonl'),
      reference_map(cands, reference, ctx.settings.n_candidates, ctx.settings.judge.aggregate),
      ctx.t, cfg.sample, seed=ctx.config.seed)  # the run's seed: launch/review.py's too
  write_jsonl(os.path.join(out_dir, 'sample.jsonl'), items)
  if distributed.is_writer():
    label_studio.write(items, os.path.join(out_dir, 'label_studio'))
  path = labels_lib.labels_path(guard_stage.workdir_of(ctx), ctx.t)
  labelled = wait_for_labels(items, path, cfg) if cfg.wait and items else 0
  distributed.barrier(f'review labels {path}')
  return {'sample': len(items), 'disagreements': sum(i['disagreement'] for i in items),
          'labels': labelled or len(labels_lib.read_labels(path)), 'reference_judged': True}


STAGE = register(Stage('review', run, inputs=('candidates', 'judgments', 'pairs'),
                       records=('sample.jsonl', 'reference.jsonl')))
