"""The online GRPO loop (RLSR when the reward is the model's own judge): sample, reward,
update, repeat, from one copy of the weights on one mesh.

Each RL step t (0-based; logged and recorded as t + 1):
  1. the policy (the train state's current params, in the compute dtype) samples G
     completions of each of the step's B prompts (`rollout.sample`, seed from (seed, t));
  2. rewards: the policy itself judges each completion (`judges.judging.judge`, any registered
     Judge, forced verdicts allowed; invalid judgments score `invalid_reward`), or a
     rule-based reward on the device tokens (rl.rewards), or the task checker; where the
     prompts are generated tasks the checker's truth is computed too, for the log;
  3. the group batch (rl.step.group_batch: advantages normalised within each group), the old
     log-probs (recomputed by a forward of the current params, or the sampler's own) and, when
     beta > 0, the reference's (the starting params, kept frozen);
  4. mu optimizer updates of the grpo objective on that batch.

Written to the workdir: checkpoints/ (Orbax, every checkpoint_every RL steps; a killed run
resumes from the newest good one and replays the same prompts and seeds), metrics.jsonl (one
line per RL step, keyed by RL step), rollouts/step_<t>.jsonl (per prompt: the completions,
rewards, advantages, judgments), params/ (the final policy).

Axis legend: B prompts per step, G samples per prompt, R = B*G rows.
"""

import functools
import os
import signal
import types
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from srlm_jax import bars, checkpoint, data_io, distributed, llama, rollout, sampler, sharding
from srlm_jax.judges import base as judges_base
from srlm_jax.judges import judging
from srlm_jax.rl import rewards as rewards_lib
from srlm_jax.rl import step as step_lib
from srlm_jax.train import host_loop
from srlm_jax.train import state as state_lib


def check_config(cfg, num_devices: int) -> None:
  """Raises ValueError naming the grpo config field that cannot work."""
  if cfg.reward not in rewards_lib.names():
    raise ValueError(f'grpo.reward={cfg.reward!r}: expected one of {rewards_lib.names()}')
  if cfg.old_logps not in ('recompute', 'sampler'):
    raise ValueError(f"grpo.old_logps={cfg.old_logps!r}: expected 'recompute' or 'sampler'")
  if cfg.old_logps == 'sampler' and (cfg.temperature != 1.0 or cfg.top_p != 1.0):
    raise ValueError(f'grpo.old_logps=sampler needs temperature=1 and top_p=1 (the sampler '
                     f'records the unmodified model\'s log-probs), got '
                     f'temperature={cfg.temperature}, top_p={cfg.top_p}')
  if cfg.batch_size % cfg.grad_accum or (cfg.batch_size // cfg.grad_accum) % num_devices:
    raise ValueError(f'grpo.batch_size={cfg.batch_size} prompts must split into '
                     f'grad_accum={cfg.grad_accum} micro-batches whose size divides by the '
                     f'{num_devices} data-parallel devices')
  if cfg.num_generations < 2:
    raise ValueError(f'grpo.num_generations={cfg.num_generations}: a group needs >= 2 samples')


def step_seed(seed: int, t: int, part: int) -> int:
  """Returns the sampling seed of RL step t's `part` (0: policy samples, 1: judgments)."""
  return (seed * 1_000_003 + t) * 2 + part


def _policy(model: Any, params, compute_dtype: str, mesh):
  """Returns the model view that samples and judges with `params` in the compute dtype."""
  config, params = llama.for_compute(model.config, params, compute_dtype)
  return types.SimpleNamespace(config=config, params=params, tokenizer=model.tokenizer,
                               mesh=mesh)


def _check_finite(metrics: dict, t: int) -> None:
  """Raises FloatingPointError naming RL step t when its loss or grad norm is not finite."""
  for name in ('loss', 'grad_norm'):
    if not np.isfinite(metrics[name]):
      raise FloatingPointError(f'grpo step {t}: {name} is {float(metrics[name])}; training '
                               'stopped before this state was saved')


@functools.partial(jax.jit, static_argnames='how')
def _self_rewards(scores_RxK, valid_RxK, invalid_reward, how: str = 'mean'):
  """Returns (self-reward [R]: the valid judgments aggregated (`how`: mean or SPCT's sum), else
  invalid_reward; whether any judgment was valid [R])."""
  value_R, count_R = judges_base.aggregate(scores_RxK, valid_RxK, how)
  return jnp.where(count_R > 0, value_R, invalid_reward), count_R > 0


def _agreement(self_R: np.ndarray, true_R: np.ndarray, threshold: float) -> dict:
  """Returns how often the self-verdict (self-reward >= threshold) equals the checker's truth,
  and their Pearson correlation when both vary."""
  both = ~np.isnan(true_R) & ~np.isnan(self_R)
  if not both.any():
    return {}
  s, t = self_R[both], true_R[both]
  out = {'agreement': float(np.mean((s >= threshold) == (t > 0.5)))}
  if s.std() > 0 and t.std() > 0:
    out['self_true_corr'] = float(np.corrcoef(s, t)[0, 1])
  return out


class GrpoRun:
  """One GRPO run of cfg (the loop config's `grpo` block plus `mesh`) in a workdir."""

  def __init__(self, cfg, workdir: str, model: Any, prompt_records: Sequence[dict], *,
               judge_settings: Optional[judges_base.JudgeSettings] = None,
               compute_dtype: str = 'auto', progress: Any = True):
    self.cfg, self.workdir, self.model = cfg, workdir, model
    self.mesh = getattr(model, 'mesh', None) or sharding.make_mesh(*cfg.mesh)
    check_config(cfg, int(np.prod([self.mesh.shape[a] for a in sharding.BATCH])))
    if not prompt_records:
      raise ValueError('grpo: no prompts to train on')
    self.records = list(prompt_records)
    self.judge_settings = judge_settings or judges_base.JudgeSettings()
    self.compute_dtype, self.progress = compute_dtype, progress
    self.judge = judges_base.get(self.judge_settings.kind)
    tok = model.tokenizer
    self.ids, _ = rollout.encode_prompts(
        model, [r['prompt'] for r in self.records], max_new_tokens=cfg.max_new_tokens,
        where=[f'grpo prompt {r.get("id", i)}' for i, r in enumerate(self.records)])
    self.width = max(len(x) for x in self.ids)  # one prompt width: one compile per run
    self.rule = (rewards_lib.build(cfg.reward, tok, **cfg.reward_options.to_dict())
                 if cfg.reward not in (rewards_lib.SELF, rewards_lib.TASK) else None)
    scale = self.judge.score_values
    self.threshold = (cfg.agreement_threshold if cfg.agreement_threshold >= 0
                      else (scale[0] + scale[-1]) / 2)
    self.has_tasks = any('answer' in r for r in self.records)
    if cfg.reward == rewards_lib.TASK and not self.has_tasks:
      raise ValueError("grpo.reward='task' needs task prompts (records with an 'answer')")
    self.options = {'beta': cfg.beta, 'clip_eps': cfg.clip_eps, 'dr_grpo': cfg.dr_grpo,
                    'max_tokens': cfg.max_new_tokens, 'adv_eps': cfg.adv_eps}
    self.mc = model.config.replace(dtype=cfg.dtype, remat=cfg.remat,
                                   unroll_layers=cfg.unroll_layers)

  def rewards(self, t: int, policy, roll, texts_R: list, rows: np.ndarray):
    """Returns (training rewards [R] on the device, host columns for the records and log)."""
    cfg = self.cfg
    n = cfg.num_generations
    tasks_R = [self.records[i] for i in rows for _ in range(n)]
    host = {}
    if self.has_tasks:
      host['true_rewards'] = rewards_lib.task_rewards(tasks_R, texts_R)
    if cfg.reward == rewards_lib.SELF:
      # A task is judged on its question alone (its prompt adds the answer-format request).
      prompts_R = [r.get('question', r['prompt']) for r in tasks_R]
      texts, scores = judging.judge(policy, self.judge, prompts_R, texts_R, self.judge_settings,
                                    seed=step_seed(cfg.seed, t, 1), progress=False)
      reward_R, valid_R = _self_rewards(scores.scores_RxK, scores.valid_RxK,
                                        jnp.float32(cfg.invalid_reward),
                                        how=self.judge_settings.aggregate)
      got = distributed.to_host({'self': reward_R, 'valid': valid_R})
      host.update(self_rewards=got['self'], judge_valid=got['valid'], judgments=texts)
    elif cfg.reward == rewards_lib.TASK:
      reward_R = jax.device_put(np.nan_to_num(host['true_rewards'], nan=0.0))
    else:
      reward_R = self.rule(roll.tokens, roll.lengths)
    return reward_R, host

  def record(self, t: int, rows, texts_R, host, got) -> list:
    """Returns RL step t's records: one per prompt, its G completions and their rewards."""
    n, out = self.cfg.num_generations, []
    reasons = [sampler.StopReason(int(x)).name.lower() for x in got['stop_reason']]
    as_list = lambda x, b: [judges_base.score_json(v) for v in x[b * n:(b + 1) * n]]
    for b, i in enumerate(rows):
      rec = self.records[i]
      entry = {'step': t + 1, 'id': rec.get('id', int(i)), 'prompt': rec['prompt'],
               'responses': texts_R[b * n:(b + 1) * n],
               'lengths': got['lengths'][b * n:(b + 1) * n].tolist(),
               'stop_reasons': reasons[b * n:(b + 1) * n],
               'rewards': [judges_base.score_json(v) for v in got['rewards'][b]],
               'advantages': [judges_base.score_json(v) for v in got['advantages'][b]]}
      if 'self_rewards' in host:
        entry['self_rewards'] = as_list(host['self_rewards'], b)
        entry['judgments'] = host['judgments'][b * n:(b + 1) * n]
      if 'true_rewards' in host:
        entry['true_rewards'] = as_list(host['true_rewards'], b)
        entry['answer'] = rec.get('answer')
      out.append(entry)
    return out

  def stats(self, host, got) -> dict:
    """Returns the step's rollout metrics (host numbers, floats)."""
    rewards_BxG = got['rewards']
    out = {'reward': float(rewards_BxG.mean()),
           'zero_variance_groups': float(np.mean(rewards_BxG.std(axis=1) == 0)),
           'length': float(got['lengths'].mean()),
           'truncated': float(np.mean(got['stop_reason'] == sampler.StopReason.MAX_TOKENS))}
    if 'self_rewards' in host:
      out['self_reward'] = float(host['self_rewards'].mean())
      out['judge_valid'] = float(host['judge_valid'].mean())
    if 'true_rewards' in host and not np.isnan(host['true_rewards']).all():
      out['true_reward'] = float(np.nanmean(host['true_rewards']))
      if 'self_rewards' in host:
        out.update(_agreement(host['self_rewards'], host['true_rewards'], self.threshold))
    return out

  def run(self, donate: bool = False) -> state_lib.TrainState:
    """Runs (or resumes) cfg.num_steps RL steps; returns the final train state."""
    cfg, mesh, tok = self.cfg, self.mesh, self.model.tokenizer
    os.makedirs(self.workdir, exist_ok=True)
    updates = cfg.num_steps * cfg.mu
    optimizer = state_lib.make_optimizer(cfg, updates)
    schedule = state_lib.lr_schedule(cfg, updates)
    # beta > 0: the starting params are the frozen reference, so they stay (not donated).
    donate = donate and not cfg.beta
    init_fn, shardings = state_lib.make_init(self.model.params, optimizer, mesh, donate=donate)
    ref_params = (jax.device_put(self.model.params,
                                 sharding.param_shardings(mesh, self.model.params))
                  if cfg.beta else None)
    update = host_loop.jit_step(step_lib.make_grpo_step(self.mc, optimizer, self.options,
                                                        schedule, cfg.grad_accum,
                                                        cfg.temperature),
                                mesh, shardings)
    logps = step_lib.jit_logps(self.mc, mesh, cfg.temperature)
    rng = jax.random.key(cfg.seed)
    n = cfg.num_generations
    with checkpoint.Checkpoints(os.path.join(self.workdir, 'checkpoints'),
                                cfg.checkpoint_every, cfg.keep) as ckpts:
      start, state = ckpts.restore_good(checkpoint.abstract(jax.eval_shape(init_fn), shardings))
      if start is None:
        state, start = init_fn(), 0
      elif donate:
        state_lib.release(self.model.params)
      log = checkpoint.MetricsWriter(self.workdir, resume_step=start)
      bar = bars.progress_bar(self.progress, cfg.num_steps, initial=start, desc='grpo',
                              unit='step')
      for t in range(start, cfg.num_steps):
        rows = data_io.batch_indices(len(self.records), t, cfg.batch_size, cfg.seed)
        policy = _policy(self.model, state.params, self.compute_dtype, mesh)
        roll = rollout.sample(policy, [self.ids[i] for i in rows], n=n,
                              max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              top_p=cfg.top_p, seed=step_seed(cfg.seed, t, 0), progress=False,
                              prompt_width=self.width, mesh=mesh)
        texts_R = [x for group in rollout.texts(roll, tok) for x in group]  # host edge
        reward_R, host = self.rewards(t, policy, roll, texts_R, rows)
        del policy
        batch = step_lib.group_batch(roll, reward_R, pad_id=tok.pad_id, dr_grpo=cfg.dr_grpo,
                                     adv_eps=cfg.adv_eps)
        if cfg.old_logps == 'sampler':
          batch['old_logps'] = batch['sampler_logps']
        elif cfg.mu > 1:  # one update: the ratio is 1 (the objective detaches the policy)
          batch['old_logps'] = logps(state.params, batch)
        if ref_params is not None:
          batch['ref_logps'] = logps(ref_params, batch)
        train_batch = {k: v for k, v in batch.items() if k not in ('sampler_logps', 'rewards')}
        metrics = []
        for u in range(cfg.mu):
          state, m = update(state, train_batch, jax.random.fold_in(rng, t * cfg.mu + u))
          m = distributed.to_host(m)
          _check_finite(m, t + 1)
          metrics.append(m)
        got = distributed.to_host({'rewards': batch['rewards'],
                                   'advantages': batch['advantages'],
                                   'lengths': roll.lengths, 'stop_reason': roll.stop_reason})
        line = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
        line.update(self.stats(host, got))
        log.write(t + 1, line)
        data_io.write_jsonl(os.path.join(self.workdir, 'rollouts', f'step_{t + 1:05d}.jsonl'),
                            self.record(t, rows, texts_R, host, got))
        bar.set_postfix(reward=f'{line["reward"]:.3f}')
        bar.update(1)
        if t + 1 == cfg.num_steps or ckpts.should_save(t + 1):
          host_loop.check_finite_params(state.params, t + 1, ckpts, where=self.workdir)
          ckpts.save(t + 1, state, force=t + 1 == cfg.num_steps)
          if os.environ.get(host_loop.KILL_AT_ENV) == 'grpo:checkpoint' and t + 1 < cfg.num_steps:
            ckpts.wait()  # crash testing: killed mid-run, its checkpoint sealed on disk
            os.kill(os.getpid(), signal.SIGKILL)
      log.close()
      bar.close()
    checkpoint.save_params(os.path.join(self.workdir, 'params'), state.params)
    checkpoint.prune(os.path.join(self.workdir, 'checkpoints'), max(1, cfg.keep_after_done))
    return state


def run_grpo(cfg, workdir: str, model: Any, prompt_records: Sequence[dict], *,
             judge_settings: Optional[judges_base.JudgeSettings] = None,
             compute_dtype: str = 'auto', progress: Any = True,
             donate: bool = False) -> state_lib.TrainState:
  """Returns the final state of GRPO on prompt_records from model (.config, .params,
  .tokenizer, .mesh): a GrpoRun's `run` (see the module docstring). `donate` hands model's
  params to the train state when beta = 0 (no reference is kept)."""
  return GrpoRun(cfg, workdir, model, prompt_records, judge_settings=judge_settings,
                 compute_dtype=compute_dtype, progress=progress).run(donate=donate)
