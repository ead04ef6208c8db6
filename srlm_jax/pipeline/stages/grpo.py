"""Stage `grpo`: M_t -> M_{t+1} by online GRPO (RLSR when config.grpo.reward = 'judge').

Prompts (config.grpo.prompts): the IFT seed prompts, generated tasks ('tasks:<kind>', written
to prompts.jsonl with their answers) or a JSONL file. The policy samples, judges itself with
creation.judge's judge and settings (or a rule / the task checker rewards it) and trains, in
out_dir: checkpoints/ (resumable), metrics.jsonl (per RL step: reward, self_reward,
true_reward, agreement, kl, length, truncated, zero_variance_groups, ...),
rollouts/step_<t>.jsonl, params/ (M_{t+1}). See srlm_jax/rl/loop.py.
"""

import json
import os

from srlm_jax import data_io
from srlm_jax import rl
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage


def prompt_records(ctx, cfg) -> list:
  """Returns the stage's prompt records ({'id', 'prompt', ...}; tasks carry 'answer')."""
  source = cfg.prompts
  if source == 'seed':
    return [{'id': f'seed-{i}', 'prompt': p} for i, p in enumerate(ctx.seeds['seed_prompts'])]
  if source.startswith('tasks:'):
    from srlm_jax import tasks  # pylint: disable=g-import-not-at-top
    return tasks.generate(source[len('tasks:'):], cfg.num_tasks, seed=ctx.config.seed,
                          difficulty=cfg.task_difficulty or None)
  records = []
  for record in data_io.read_jsonl(source):
    data_io.text_field(record, 'prompt')  # names the file and line of a bad record
    path, line, obj = record
    records.append({'id': obj.get('id', f'{os.path.basename(path)}:{line}'), **obj})
  return records


def run(ctx, out_dir: str) -> dict:
  """Returns {'steps', 'prompts', and the last step's reward metrics} after training."""
  cfg = ctx.train_config('grpo', seed=ctx.config.grpo.seed + 1000 * (ctx.t - 1))
  records = prompt_records(ctx, cfg)
  data_io.write_jsonl(os.path.join(out_dir, 'prompts.jsonl'), records)
  model = ctx.model(training=True)  # float32 master weights: policy, sampler and judge
  ctx.release_models()  # only the policy (and, with beta > 0, its frozen start) stays
  ctx.release_arrays()
  state = rl.run_grpo(cfg, out_dir, model, records, judge_settings=ctx.settings.judge,
                      compute_dtype=ctx.config.creation.compute_dtype, progress=ctx.progress,
                      donate=True)
  del state, model
  with open(os.path.join(out_dir, 'metrics.jsonl'), encoding='utf-8') as f:
    last = json.loads(f.read().splitlines()[-1])
  keep = ('reward', 'self_reward', 'true_reward', 'agreement', 'kl')
  return {'steps': cfg.num_steps, 'prompts': len(records),
          **{k: round(last[k], 4) for k in keep if k in last}}


STAGE = register(Stage('grpo', run, records=('prompts.jsonl',), params='params'))
