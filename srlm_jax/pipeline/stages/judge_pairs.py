"""Stage `judge_pairs`: the meta-judge ranks M_t's judgments of each candidate; the best and
worst become a judge-preference pair (Meta-Rewarding, judges/meta_judge.py).

With creation.meta_judge.enabled (else it records {'skipped': True, 'pairs': 0}): per shard of
judged candidates (judgments.jsonl, at most meta_judge.max_responses), M_t compares every two
valid judgments of a candidate in both orders (meta_judge.k samples per request, verdicts
sampled or forced); the battles' outcomes are saved per shard (resumable) and rated by Elo or
win counts (meta_judge.aggregate). A candidate whose best judgment is rated above its worst
gives a pair: prompt = the judge request M_t answered, chosen = the best judgment, rejected =
the worst (a forced verdict's judgment is its reasons, the verdict prefix and its argmax
score, as eft.target_text writes it); at most meta_judge.max_pairs, the widest rating gaps
first. The DPO dataset is built like the pairs stage's (rewards/pairs.py), from the
judgments' texts tokenised again (the judgments stage keeps texts, not its Rollout), with
M_t's float32 log-probs of them as the reference (one forward pass), and published for the
dpo stage, which trains on it beside the actor pairs.

Writes battles.jsonl (per candidate: its battles' outcomes and the judgments' ratings) and
judge_pairs.jsonl ({id, candidate, prompt, chosen, rejected, chosen_index, rejected_index,
chosen_rating, rejected_rating, chosen_score, rejected_score}).
"""

import os
from typing import Any, Sequence

import jax
import numpy as np

from srlm_jax import eft
from srlm_jax import judges
from srlm_jax import rollout
from srlm_jax import sampler
from srlm_jax.data_io import write_jsonl
from srlm_jax.judges import meta_judge
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage
from srlm_jax.rewards import pairs as pairs_lib
from srlm_jax.train import reference as train_reference


def judgment_texts(judge: Any, record: dict, prefix: str) -> list:
  """Returns a judgment record's K judgments as they would be trained on (forced verdicts
  written out)."""
  return [eft.target_text(judge, text, verdict == 'forced', judge.parse_host(text) is not None,
                          score, prefix) if valid else text
          for text, verdict, score, valid in zip(
              record['judgments'], record['verdicts'],
              [a if v == 'forced' else s for a, s, v in zip(
                  record['forced_argmax'], record['scores'], record['verdicts'])],
              record['valid'])]


def meta_settings(cfg) -> judges.JudgeSettings:
  """Returns the meta-judge's sampling settings from creation.meta_judge."""
  return judges.JudgeSettings(kind=meta_judge.JUDGE.name, k=cfg.k, temperature=cfg.temperature,
                              top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                              verdict=cfg.verdict)


def battle(model: Any, judge: Any, judged: Sequence[dict], settings, cfg, *, shard: int = 0,
           progress: Any = True) -> tuple[list, dict]:
  """Returns (one battles record per judged candidate, {'outcome_RxB'}) of one shard."""
  prefix = (judge.verdict_prefix if settings.judge.verdict_prefix is None
            else settings.judge.verdict_prefix)
  tasks = [judge.prompt_text(r['prompt'], r['response'], settings.judge.template)
           for r in judged]
  texts = [judgment_texts(judge, r, prefix) for r in judged]
  valid = np.array([r['valid'] for r in judged], bool).reshape(len(judged), -1)
  k = valid.shape[1]
  req_tasks, blocks, index = meta_judge.requests(tasks, texts, valid)
  meta = meta_settings(cfg)
  _, scores = judges.judge(model, meta_judge.JUDGE, req_tasks, blocks, meta,
                           seed=(settings.seed + 3) * 1_000_003 + shard, progress=progress,
                           truncate=settings.truncate_prompts)
  s_RxBx2xS, v_RxBx2xS = meta_judge.scatter(scores.scores_RxK, scores.valid_RxK,
                                           jax.device_put(index))
  outcome_RxB = meta_judge.outcomes(s_RxBx2xS, v_RxBx2xS)
  host = np.asarray(jax.device_get(outcome_RxB))  # host edge: the audit records
  pairs = meta_judge.battle_pairs(k)
  records = [{'id': r['id'], 'candidate': r['candidate'], 'judgments': texts[i],
              'battles': [{'a': int(a), 'b': int(b), 'a_wins': judges.score_json(host[i, j])}
                          for j, (a, b) in enumerate(pairs)]}
             for i, r in enumerate(judged)]
  return records, {'outcome_RxB': outcome_RxB}


def choose(outcome_RxB: Any, valid_RxK: np.ndarray, cfg) -> dict:
  """Returns the ratings and best/worst judgments per candidate, on the host, with
  `selected` marking at most cfg.max_pairs pairs (widest gaps first)."""
  k = valid_RxK.shape[1]
  pairs = jax.device_put(meta_judge.battle_pairs(k))
  rated = meta_judge.ratings(outcome_RxB, pairs, k=k, how=cfg.aggregate,
                             elo_k=float(cfg.elo_k))
  fought = meta_judge.fought(outcome_RxB, pairs, k)
  host = jax.device_get({'ratings': rated, 'fought': fought,
                         **meta_judge.best_and_worst(rated, fought)})
  selected = host['has_pair'].copy()
  if cfg.max_pairs and selected.sum() > cfg.max_pairs:
    order = np.argsort(-np.where(selected, host['gap'], -np.inf), kind='stable')
    selected[:] = False
    selected[order[:cfg.max_pairs]] = True
  return dict(host, selected=selected)


def preference_data(model: Any, master: Any, prompts: Sequence, chosen: Sequence[str],
                    rejected: Sequence[str], settings) -> dict:
  """Returns the DPO dataset of (judge request, chosen, rejected) texts, with `master`'s
  log-probs of them as the reference."""
  tok = model.tokenizer
  ids, _ = rollout.encode_prompts(model, prompts, max_new_tokens=settings.judge.max_new_tokens,
                                  truncate=settings.truncate_prompts,
                                  where=[f'judge pair {q}' for q in range(len(prompts))])
  rows = [np.asarray(tok.encode(t) + [tok.eos_id], np.int32) for pair in zip(chosen, rejected)
          for t in pair]
  width = max(len(x) for x in ids)
  prompt_tokens, prompt_mask = rollout.left_pad(ids, width, tok.pad_id)
  m = max(len(x) for x in rows)
  tokens = np.full((len(rows), m), tok.pad_id, np.int32)
  for i, x in enumerate(rows):
    tokens[i, :len(x)] = x
  q = len(prompts)
  roll = rollout.Rollout(
      prompt_tokens=jax.device_put(prompt_tokens), prompt_mask=jax.device_put(prompt_mask),
      tokens=jax.device_put(tokens), logprobs=jax.device_put(np.zeros(tokens.shape, np.float32)),
      lengths=jax.device_put(np.asarray([len(x) for x in rows], np.int32)),
      stop_reason=jax.device_put(np.full(len(rows), int(sampler.StopReason.EOS), np.int32)),
      n=2)
  dataset = pairs_lib.preference_dataset(
      roll, jax.device_put(np.zeros(q, np.int32)), jax.device_put(np.ones(q, np.int32)),
      jax.device_put(np.arange(q, dtype=np.int32)), pad_id=tok.pad_id)
  out = dict(dataset)
  for side in ('chosen', 'rejected'):  # the texts were not sampled here: one forward pass
    token_logps = np.asarray(train_reference.dataset_token_logps(
        master.config, master.params, dataset[side], mesh=getattr(master, 'mesh', None)),
                             np.float32)
    out[f'ref_{side}_token_logps'] = jax.device_put(token_logps)
    out[f'ref_{side}_logps'] = jax.device_put(token_logps.sum(-1))
  return out


def run(ctx, out_dir: str) -> dict:
  """Returns the number of judge pairs (and battles) after writing and publishing them."""
  cfg = ctx.config.creation.meta_judge
  if not cfg.enabled:
    return {'skipped': True, 'pairs': 0}
  judge = judges.get(ctx.settings.judge.kind)
  judged = ctx.records('judgments', 'judgments.jsonl')
  if cfg.max_responses:
    judged = judged[:cfg.max_responses]
  model = ctx.model()

  def shard(records, s):
    return battle(model, judge, records, ctx.settings, cfg, shard=s, progress=ctx.progress)

  records, arrays = ctx.sharded(out_dir, judged, shard, 'judge_pairs')
  valid = np.array([r['valid'] for r in judged], bool).reshape(len(judged), -1)
  chosen = choose(arrays['outcome_RxB'], valid, cfg) if judged else None
  pair_records, prompts = [], []
  for i, (r, b) in enumerate(zip(judged, records)):
    b['ratings'] = [judges.score_json(x) if f else None
                    for x, f in zip(chosen['ratings'][i], chosen['fought'][i])]
    if not chosen['selected'][i]:
      continue
    c, rj = int(chosen['chosen'][i]), int(chosen['rejected'][i])
    scores = [a if v == 'forced' else s for a, s, v in zip(r['forced_argmax'], r['scores'],
                                                          r['verdicts'])]
    pair_records.append({
        'id': r['id'], 'candidate': r['candidate'],
        'prompt': judge.prompt_text(r['prompt'], r['response'], ctx.settings.judge.template),
        'chosen': b['judgments'][c], 'rejected': b['judgments'][rj], 'chosen_index': c,
        'rejected_index': rj, 'chosen_rating': b['ratings'][c],
        'rejected_rating': b['ratings'][rj], 'chosen_score': scores[c],
        'rejected_score': scores[rj]})
    prompts.append(judge.messages(r['prompt'], r['response'], ctx.settings.judge.template))
  write_jsonl(os.path.join(out_dir, 'battles.jsonl'), records)
  write_jsonl(os.path.join(out_dir, 'judge_pairs.jsonl'), pair_records)
  if pair_records:
    dataset = preference_data(model, ctx.model(training=True), prompts,
                              [p['chosen'] for p in pair_records],
                              [p['rejected'] for p in pair_records], ctx.settings)
    ctx.publish(out_dir, rollout.flatten(dataset))
  counted = [x for b in records for x in b['battles'] if x['a_wins'] is not None]
  return {'pairs': len(pair_records), 'responses': len(judged), 'battles': len(counted),
          'tied_battles': sum(x['a_wins'] == 0.5 for x in counted),
          'aggregate': cfg.aggregate}


STAGE = register(Stage('judge_pairs', run, inputs=('judgments',),
                       records=('battles.jsonl', 'judge_pairs.jsonl')))
