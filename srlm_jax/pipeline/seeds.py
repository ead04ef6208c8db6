"""The run's seed data: IFT (prompt, response) and EFT (prompt, response, judgment) records.

EFT comes from config.data.eft as written there (`data.eft_source='given'`), or, with
'model', a judge model (M0, or data.eft_judge_model) writes judgments of those records'
human-scored responses and only the ones that agree with the human labels are kept
(srlm_jax/eft.py). That happens once, before M1's SFT, in workdir/m1_eft (`EFT_STAGE`, run by
the runner like a stage: shards resume, DONE holds the keep rate, eft.jsonl the kept
examples and judgments.jsonl every judgment written), so a resumed run does not redo it.
"""

import dataclasses
import os

from srlm_jax import data as data_lib
from srlm_jax import data_io
from srlm_jax import eft as eft_lib
from srlm_jax import judges
from srlm_jax.pipeline import stage as stage_lib
from srlm_jax import store

EMBEDDED = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'data')
EFT_DIR = 'm1_eft'


def data_path(path: str) -> str:
  """Returns path, with 'embedded:<name>' resolved to the package's own seed data."""
  if path.startswith('embedded:'):
    return os.path.join(EMBEDDED, path.split(':', 1)[1])
  return path


def read_seed_data(config) -> dict:
  """Returns the validated seed records; any bad line raises naming its file and line.

  With data.eft_source='model' the EFT records are read as human-scored responses
  ('eft_groups', see eft.groups_from_records) and 'eft' stays empty until `model_eft` fills
  it.
  """
  ift = [(data_io.text_field(r, 'prompt'), data_io.text_field(r, 'response'))
         for r in data_lib.read_source(data_path(config.data.ift))]
  eft, judge = [], judges.get(config.creation.judge.kind)
  source = data_lib.read_source(data_path(config.data.eft))
  if config.data.get('eft_source', 'given') == 'model':
    for path, line, obj in source:  # what a model-written EFT record needs, file:line named
      data_io.text_field((path, line, obj), 'prompt')
      data_io.text_field((path, line, obj), 'response')
      score = obj.get('score')
      if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise ValueError(f'{path}:{line}: data.eft_source=\'model\' needs field "score" (the '
                         f'human score on the judge\'s scale, a number); got {score!r:.60}')
    if config.data.max_eft:
      source = source[:config.data.max_eft]
    groups = eft_lib.groups_from_records([obj for _, _, obj in source], where=config.data.eft)
    return _ift(config, ift, {'eft': [], 'eft_groups': groups})
  for r in source:
    path, line, _ = r
    judgment = data_io.text_field(r, 'judgment')
    if judge.parse_host(judgment) is None:
      raise ValueError(f'{path}:{line}: EFT judgment has no final '
                       f'"{judge.grammar.keyword}: X" verdict of judge {judge.name!r}')
    eft.append((data_io.text_field(r, 'prompt'), data_io.text_field(r, 'response'), judgment))
  if config.data.max_eft:
    eft = eft[:config.data.max_eft]
  return _ift(config, ift, {'eft': eft})


def _ift(config, ift: list, out: dict) -> dict:
  if config.data.max_ift:
    ift = ift[:config.data.max_ift]
  return {'ift': ift, **out, 'seed_prompts': [p for p, _ in ift]}


def _run_model_eft(ctx, out_dir: str) -> dict:
  """Writes eft.jsonl (kept) and judgments.jsonl (all); returns the keep rate and counts."""
  cfg = ctx.config.data
  model = ctx.load_model(cfg.eft_judge_model) if cfg.eft_judge_model else ctx.models.base()
  settings = ctx.settings.judge
  if cfg.eft_k:
    settings = dataclasses.replace(settings, k=cfg.eft_k)

  def shard(groups, s):
    records, _ = eft_lib.model_written(
        model, settings.kind, groups, settings, seed=(ctx.settings.seed + 7) * 1_000_003 + s,
        tolerance=cfg.eft_tolerance, progress=ctx.progress,
        truncate=ctx.settings.truncate_prompts)
    return records, {}

  records, _ = ctx.sharded(out_dir, ctx.seeds['eft_groups'], shard, 'model-written EFT')
  data_io.write_jsonl(os.path.join(out_dir, 'judgments.jsonl'), records)
  data_io.write_jsonl(os.path.join(out_dir, 'eft.jsonl'), [
      {k: r[k] for k in ('id', 'prompt', 'response', 'judgment', 'score', 'human_score')}
      for r in records if r['kept']])
  return dict(eft_lib.report(records, len(ctx.seeds['eft_groups']), cfg.eft_tolerance,
                             settings.verdict),
              judge_model=cfg.eft_judge_model or ctx.config.model)


# Not registered: it runs once, before M1's SFT, never as an iteration stage.
EFT_STAGE = stage_lib.Stage('eft', _run_model_eft, records=('eft.jsonl', 'judgments.jsonl'))


def model_eft(out_dir: str) -> list:
  """Returns the kept model-written EFT examples (prompt, response, judgment) in out_dir."""
  return [(r['prompt'], r['response'], r['judgment'])
          for r in store.read_records(os.path.join(out_dir, 'eft.jsonl'))]


def with_human_eft(seeds: dict, config, workdir: str, t: int) -> dict:
  """Returns seeds whose EFT records add those built from the human review labels of
  iterations 1 .. t-1 (workdir/human_labels; targets from the person's choice)."""
  from srlm_jax.review import labels as labels_lib  # pylint: disable=g-import-not-at-top
  judge = judges.get(config.creation.judge.kind)
  extra = [r for s in range(1, t) for r in labels_lib.eft_records(
      labels_lib.read_labels(labels_lib.labels_path(workdir, s)), judge)]
  # 'human_eft' alone too: the human_pairs stage trains on them (stages/human_pairs.py)
  return dict(seeds, eft=seeds['eft'] + extra, human_eft=extra) if extra else seeds
