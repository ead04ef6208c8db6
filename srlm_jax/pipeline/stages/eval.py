"""Stage `eval`: M_{t+1}, the model iteration t trained, measured (eval.json).

What each model measured gets (config.eval; each part skipped when its source is ''):
  judge_agreement        the model judges the held-out human pairs (eval.pairs, k = eval.k,
                         creation.judge's rubric and verdicts): the five metrics of
                         evaluate/metrics.py with bootstrap intervals, plus pairwise_accuracy
                         and valid_fraction (valid judgments / all) at the top
  lengths                the chosen, rejected and all candidates of this iteration (tokens), and
                         `responses`: the model's greedy responses to the held-out prompts
  instruction_following  its greedy responses to the IFEval-style prompts (eval.ifeval),
                         checked by program (evaluate/ifeval.py)
  head_to_head           M_{t+1} against M_t on the held-out prompts, judged by the fixed
                         eval.judge (M0, M1 or a named model; the same in every iteration),
                         pairwise in both orders (or pointwise), with the length-controlled view
  dpo_after              the preference objective's metrics of M_{t+1} over all of this
                         iteration's pairs: the state after the last DPO update (the training
                         log's last line is from before it)
In iteration 1, with eval.baselines, `baselines` holds the same for M0 and M1 (M1 against M0),
so the run table (evaluate/run_table.py) has a row for every model.

Files: eval.json; responses_<model>.jsonl, ifeval_<model>.jsonl, head_to_head_<a>_vs_<b>.jsonl,
judgments_<model>.jsonl; <model>/ holds the agreement judgments' resumable shards.
"""

import dataclasses
import json
import os
from typing import Any, Optional

from srlm_jax import data as data_lib
from srlm_jax import distributed
from srlm_jax import evaluate as evaluate_lib
from srlm_jax import report as report_lib
from srlm_jax.data_io import write_jsonl
from srlm_jax.evaluate import ifeval
from srlm_jax.pipeline import seeds as seeds_lib
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage

M1_PARAMS = os.path.join('m1_sft', 'train', 'params')  # runner.M1_DIR / the sft stage's params


def heldout_prompts(cfg) -> list[str]:
  """Returns the distinct prompts of eval.prompts in file order (the first eval.max_prompts)."""
  if not cfg.eval.prompts:
    return []
  seen = []
  for where, n, obj in data_lib.read_source(seeds_lib.data_path(cfg.eval.prompts)):
    prompt = obj.get('prompt') if isinstance(obj, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
      raise ValueError(f'{where}:{n}: field "prompt" must be a non-empty string')
    if prompt not in seen:
      seen.append(prompt)
  return seen[:cfg.eval.max_prompts] if cfg.eval.max_prompts else seen


def _m1_dir(ctx) -> Optional[str]:
  if not ctx.config.sft.enabled:
    return None  # M1 is M0
  return os.path.join(os.path.dirname(ctx.iter_dir), M1_PARAMS)


def fixed_judge(ctx) -> Any:
  """Returns the head-to-head judge eval.judge names: M0, M1, or a model name or path."""
  name = ctx.config.eval.judge
  if name == 'M0':
    return ctx.models.base()
  if name == 'M1':
    return ctx.model_at(_m1_dir(ctx))
  return ctx.load_model(name)


def _judge_settings(ctx):
  return dataclasses.replace(ctx.settings.judge, k=ctx.config.eval.k)


def _write(out_dir: str, name: str, records: list) -> None:
  # Every process calls it: process 0 writes, and all meet at write_jsonl's barrier.
  write_jsonl(os.path.join(out_dir, name), records)


def eval_seed(ctx) -> int:
  """Returns the seed of every measurement: the run's, not the iteration's, so each model judges
  the held-out pairs with the same draws and the table's rows differ by the model alone."""
  return ctx.config.seed


def respond(ctx, model, name: str, prompts: list, out_dir: str, tag: str) -> tuple[list, list]:
  """Returns (greedy responses, their token lengths), read back from an earlier eval when one
  wrote the same model's responses to the same prompts with the same limit."""
  limit = ctx.config.eval.max_new_tokens
  for d in sorted({out_dir, os.path.join(os.path.dirname(ctx.iter_dir), f'iter_{ctx.t - 1}',
                                         'eval')}):
    path = os.path.join(d, f'{tag}_{name}.jsonl')
    if os.path.exists(path):
      rows = [r for _, _, r in data_lib.read_source(path)]
      if [r['prompt'] for r in rows] == list(prompts) and all(
          r['max_new_tokens'] == limit for r in rows):
        return [r['response'] for r in rows], [r['length'] for r in rows]
  texts, lengths = evaluate_lib.respond(model, prompts, max_new_tokens=limit,
                                        seed=eval_seed(ctx), progress=ctx.progress)
  _write(out_dir, f'{tag}_{name}.jsonl',
         [{'prompt': p, 'response': x, 'length': n, 'max_new_tokens': limit}
          for p, x, n in zip(prompts, texts, lengths)])
  return texts, lengths


def measure(ctx, model, name: str, out_dir: str, prompts: list, if_records: list) -> tuple:
  """Returns (model's agreement, response lengths and instruction following, its responses)."""
  cfg = ctx.config
  out = {'model': name}
  if ctx.eval_groups:  # the model judges the human pairs, as a self-rewarding judge would
    metrics, records = evaluate_lib.evaluate_judge(
        model, ctx.eval_groups, _judge_settings(ctx), n_boot=cfg.eval.n_boot,
        seed=eval_seed(ctx), progress=ctx.progress, cache_dir=os.path.join(out_dir, name))
    _write(out_dir, f'judgments_{name}.jsonl', records)
    out['judge_agreement'] = {'model': name, 'pairs_file': cfg.eval.pairs, **metrics,
                              'valid_fraction': metrics['counts']['valid_judgment_fraction']}
  texts, lengths = respond(ctx, model, name, prompts, out_dir, 'responses') if prompts else (
      [], [])
  out['lengths'] = {'responses': evaluate_lib.length_stats(lengths)}
  if if_records:
    answers, _ = respond(ctx, model, name, [r['prompt'] for r in if_records], out_dir, 'ifeval')
    scores, audit = ifeval.score(if_records, answers, n_boot=cfg.eval.n_boot,
                                 seed=eval_seed(ctx))
    _write(out_dir, f'ifeval_audit_{name}.jsonl', audit)
    out['instruction_following'] = {'prompts_file': cfg.eval.ifeval, **scores}
  return out, (texts, lengths)


def compare(ctx, judge, prompts: list, a: tuple, b: tuple, names: tuple, out_dir: str) -> dict:
  """Returns the head-to-head of responses a against b (each (texts, lengths)) by judge."""
  cfg = ctx.config
  result = evaluate_lib.head_to_head(
      judge, prompts, a[0], b[0], a[1], b[1], _judge_settings(ctx), method=cfg.eval.method,
      max_ratio=cfg.eval.max_ratio, n_boot=cfg.eval.n_boot, seed=eval_seed(ctx),
      progress=ctx.progress)
  _write(out_dir, f'head_to_head_{names[0]}_vs_{names[1]}.jsonl',
         [{'prompt': p, 'a': x, 'b': y, 'outcome': o} for p, x, y, o in
          zip(prompts, a[0], b[0], result['outcomes'])])
  return {'a': names[0], 'b': names[1], 'judge': cfg.eval.judge, **result}


def dpo_after(ctx) -> dict:
  """Returns the DPO objective's metrics of M_{t+1} over all this iteration's pairs ({} when
  the iteration trained no DPO)."""
  info = ctx.info('dpo')
  if not info or info.get('skipped'):
    return {}
  from srlm_jax import rollout  # pylint: disable=g-import-not-at-top
  from srlm_jax.train import reference  # pylint: disable=g-import-not-at-top
  dpo = ctx.config.dpo
  model = ctx.model_at(ctx.params_after(), training=True)
  evaluate = reference.dpo_eval(
      model.config.replace(dtype='float32'), rollout.unflatten(ctx.arrays('pairs')), dpo.loss,
      dpo.beta, dpo.loss_options.to_dict(), dpo.batch_size, getattr(model, 'mesh', None))
  return dict(evaluate(model.params), pairs=int(info.get('pairs', 0)))


def run(ctx, out_dir: str) -> dict:
  """Writes eval.json for M_{t+1} (and M0, M1 in iteration 1); returns its headline numbers."""
  cfg, t = ctx.config, ctx.t
  prompts = heldout_prompts(cfg)
  if_records = (ifeval.load_prompts(seeds_lib.data_path(cfg.eval.ifeval), cfg.eval.max_ifeval)
                if cfg.eval.ifeval else [])
  name, previous = f'M{t + 1}', f'M{t}'
  result, answers = measure(ctx, ctx.model_at(ctx.params_after()), name, out_dir, prompts,
                            if_records)
  result['params'] = ctx.params_after()
  result['lengths'].update(report_lib.response_lengths(
      ctx.records('pairs', 'pairs.jsonl'), ctx.records('candidates', 'candidates.jsonl')))
  baselines = {}
  if t == 1 and cfg.eval.baselines:
    for k, params_dir in (('M0', None), ('M1', _m1_dir(ctx))):
      baselines[k], _ = measure(ctx, ctx.model_at(params_dir), k, out_dir, prompts, if_records)
      baselines[k]['params'] = params_dir or cfg.model
  if prompts:
    judge = fixed_judge(ctx)
    before = respond(ctx, ctx.model(), previous, prompts, out_dir, 'responses')
    result['head_to_head'] = compare(ctx, judge, prompts, answers, before, (name, previous),
                                     out_dir)
    if 'M1' in baselines:
      m0 = respond(ctx, ctx.models.base(), 'M0', prompts, out_dir, 'responses')
      m1 = respond(ctx, ctx.model_at(_m1_dir(ctx)), 'M1', prompts, out_dir, 'responses')
      baselines['M1']['head_to_head'] = compare(ctx, judge, prompts, m1, m0, ('M1', 'M0'),
                                                out_dir)
  result['dpo_after'] = dpo_after(ctx)
  if baselines:
    result['baselines'] = baselines
  if distributed.is_writer():
    with open(os.path.join(out_dir, 'eval.json'), 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=2)
  return summary(result)


def summary(result: dict) -> dict:
  """Returns eval.json's headline numbers (DONE info and the console's line)."""
  out = {'model': result['model']}
  if 'judge_agreement' in result:
    out['pairwise_accuracy'] = result['judge_agreement']['pairwise_accuracy']
  if 'head_to_head' in result:
    out['win_rate'] = result['head_to_head'].get('win_rate')
  if 'instruction_following' in result:
    out['ifeval_prompt_strict'] = result['instruction_following']['prompt_strict']
  return out


STAGE = register(Stage('eval', run, inputs=('candidates', 'pairs')))
