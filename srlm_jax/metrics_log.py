"""The run's metrics for viewing: TensorBoard event files and, optionally, Weights & Biases.

The records stay the JSONL the stages write; `RunLog.stage` mirrors each finished stage:
  scalars     seconds/<stage> and counts/* at step t (the iteration; M1's SFT is t = 0), and
              every training step's metrics (m1_sft/<metric>, iter_<t>/dpo/<metric>) read from
              the stage's metrics.jsonl
  histograms  judge_scores (every valid judgment) and judge_mean_scores (per response), step t
  tables      a few (prompt, response, mean score, judgment) rows and a few pairs, step t

TensorBoard: `pip install "srlm_jax[tensorboard]"` (tensorboardX), then
`tensorboard --logdir <workdir>/tensorboard`. W&B: `pip install "srlm_jax[wandb]"` and set
config.logging.wandb_project (WANDB_MODE=offline keeps the run local).
"""

import os
from typing import Optional, Sequence

import numpy as np

from srlm_jax import data_io
from srlm_jax import distributed

TENSORBOARD_HINT = 'pip install "srlm_jax[tensorboard]" (or pip install tensorboardX)'


def _read(path: str) -> list:
  """Returns the objects of a JSONL file through data_io's reader ([] when it is missing)."""
  if not os.path.exists(path):
    return []
  return [obj for _, _, obj in data_io.read_jsonl(path, allow_empty=True)]


def _clip(text, n: int = 300) -> str:
  text = str(text)
  return text if len(text) <= n else text[:n] + '...'


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
  """Returns rows as a markdown table (TensorBoard's text plugin renders it)."""
  cell = lambda v: _clip(v).replace('|', '\\|').replace('\n', ' ')
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(cell(v) for v in row) + ' |' for row in rows]
  return '\n'.join(lines)


class RunLog:
  """Writes scalars, histograms and tables to TensorBoard and/or W&B (process 0 only)."""

  def __init__(self, workdir: str, *, tensorboard: bool = True, wandb_project: str = '',
               wandb_entity: str = '', run_name: str = '', config: Optional[dict] = None,
               samples: int = 4):
    self.workdir = workdir
    self.samples = samples
    self.notes = []  # what the console prints about the logs (missing packages included)
    self.tb = self.wandb = None
    self._wandb_prefixes = set()
    if not distributed.is_writer():
      return
    if wandb_project:
      try:
        import wandb  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise ImportError(f'config.logging.wandb_project={wandb_project!r} asks for Weights & '
                          'Biases, but wandb is not installed: pip install "srlm_jax[wandb]", '
                          'or set --config.logging.wandb_project=""') from e
      self.wandb = wandb.init(project=wandb_project, entity=wandb_entity or None,
                              name=run_name or os.path.basename(os.path.abspath(workdir)),
                              dir=workdir, config=config or {}, resume='allow')
      self.notes.append(f'W&B: project {wandb_project}, run {self.wandb.name} '
                        f'({self.wandb.dir})')
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      except ImportError:
        self.notes.append('TensorBoard: off, tensorboardX is not installed (config.logging.'
                          f'tensorboard=True): {TENSORBOARD_HINT}; metrics.jsonl has the '
                          'training metrics')
      else:
        self.tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
        self.notes.append(f'TensorBoard: tensorboard --logdir {self.tb.logdir}')

  def where(self) -> list:
    """Returns lines saying where the logs are (or why one is off)."""
    return list(self.notes)

  def scalars(self, prefix: str, values: dict, step: int) -> None:
    """Logs {prefix/name: value} at step."""
    values = {f'{prefix}/{k}': float(v) for k, v in values.items()
              if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}
    if self.tb is not None:
      for k, v in values.items():
        self.tb.add_scalar(k, v, step)
    if self.wandb is not None and values:
      if prefix not in self._wandb_prefixes:  # each prefix has its own step axis
        self._wandb_prefixes.add(prefix)
        self.wandb.define_metric(f'{prefix}/step')
        self.wandb.define_metric(f'{prefix}/*', step_metric=f'{prefix}/step')
      self.wandb.log({**values, f'{prefix}/step': step})

  def histogram(self, tag: str, values: Sequence[float], step: int) -> None:
    """Logs a histogram of values at step (nothing when there are none)."""
    values = np.asarray(values, np.float64)
    if not values.size:
      return
    if self.tb is not None:
      self.tb.add_histogram(tag, values, step, bins='auto')
    if self.wandb is not None:
      import wandb  # pylint: disable=g-import-not-at-top
      self.wandb.log({tag: wandb.Histogram(values), 'iteration': step})

  def table(self, tag: str, columns: Sequence[str], rows: Sequence[Sequence], step: int) -> None:
    """Logs a table of rows: TensorBoard text (markdown), a W&B Table."""
    if not rows:
      return
    if self.tb is not None:
      self.tb.add_text(tag, markdown_table(columns, rows), step)
    if self.wandb is not None:
      import wandb  # pylint: disable=g-import-not-at-top
      self.wandb.log({tag: wandb.Table(columns=list(columns),
                                       data=[[_clip(v, 2000) for v in r] for r in rows]),
                      'iteration': step})

  def stage(self, t: int, name: str, stage_dir: str, seconds: float) -> None:
    """Logs what a finished stage wrote in stage_dir (t = 0: M1's SFT), then flushes."""
    self.scalars('seconds', {name: seconds}, t)
    if name == 'sft':
      self._training(os.path.join(stage_dir, 'train'), 'm1_sft')
    elif name == 'dpo':
      self._training(stage_dir, f'iter_{t}/dpo')
    elif name == 'prompts':
      self.scalars('counts', {'prompts_kept': len(_read(os.path.join(stage_dir,
                                                                     'prompts.jsonl'))),
                              'prompts_rejected': len(_read(os.path.join(stage_dir,
                                                                         'rejected.jsonl')))}, t)
    elif name == 'candidates':
      records = _read(os.path.join(stage_dir, 'candidates.jsonl'))
      lengths = [n for r in records for n in r['lengths']]
      self.scalars('counts', {'candidates': len(lengths)}, t)
      self.histogram('candidate_lengths', lengths, t)
    elif name == 'judgments':
      self._judgments(t, _read(os.path.join(stage_dir, 'judgments.jsonl')))
    elif name == 'pairs':
      pairs = _read(os.path.join(stage_dir, 'pairs.jsonl'))
      self.scalars('counts', {'pairs': len(pairs)}, t)
      self.table('pairs', ['prompt', 'chosen', 'chosen score', 'rejected', 'rejected score'],
                 [[p.get('prompt', ''), p.get('chosen', ''), p.get('chosen_score', ''),
                   p.get('rejected', ''), p.get('rejected_score', '')]
                  for p in pairs[:self.samples]], t)
    elif name == 'eval':
      agreement = _read_json(os.path.join(stage_dir, 'eval.json')).get('judge_agreement', {})
      self.scalars('eval', {k: v for k, v in agreement.items() if not k.endswith('_ci')}, t)
    self.flush()

  def _judgments(self, t: int, records: list) -> None:
    scores = [s for r in records for s, v in zip(r['scores'], r['valid']) if v]
    total = sum(len(r['valid']) for r in records)
    self.scalars('counts', {'judgments': total, 'judgments_valid': len(scores),
                            'judgments_valid_fraction': len(scores) / total if total else 0.0},
                 t)
    self.histogram('judge_scores', scores, t)
    self.histogram('judge_mean_scores', [r['mean'] for r in records if r['mean'] is not None], t)
    self.table('samples', ['prompt', 'response', 'mean score', 'judgment'],
               [[r['prompt'], r['response'], r['mean'], (r['judgments'] or [''])[0]]
                for r in records[:self.samples]], t)

  def _training(self, train_dir: str, prefix: str) -> None:
    for record in _read(os.path.join(train_dir, 'metrics.jsonl')):
      step = int(record.get('step', 0))
      self.scalars(prefix, {k: v for k, v in record.items() if k != 'step'}, step)

  def flush(self) -> None:
    """Writes pending events to disk."""
    if self.tb is not None:
      self.tb.flush()

  def close(self) -> None:
    """Flushes and closes the writers."""
    if self.tb is not None:
      self.tb.close()
      self.tb = None
    if self.wandb is not None:
      self.wandb.finish()
      self.wandb = None


def _read_json(path: str) -> dict:
  """Returns a JSON file through data_io's reader ({} when it is missing)."""
  return data_io.read_json(path) if os.path.exists(path) else {}


def from_config(config, workdir: str) -> Optional[RunLog]:
  """Returns the RunLog config.logging asks for (None when the config has no logging block)."""
  log = config.get('logging')
  if log is None:
    return None
  return RunLog(workdir, tensorboard=log.tensorboard, wandb_project=log.wandb_project,
                wandb_entity=log.wandb_entity, config=config.to_dict(), samples=log.samples)
