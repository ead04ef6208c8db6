"""Self-instruction creation with M_t: new prompts, N candidates each, K judgments each, pairs.

Each stage is a function of the model and the previous stage's records, and returns records
(plain dicts, written as JSONL so a researcher can audit a run):

  new_prompts   -> prompts.jsonl      {id, prompt, request, examples, raw} (+ rejected.jsonl)
  candidates    -> candidates.jsonl   {id, prompt, candidates[N], lengths[N], stop_reasons[N]}
  judge         -> judgments.jsonl    {id, candidate, prompt, response, judgments[K],
                                       scores[K], valid[K], mean, n_valid, verdicts[K]
                                       ('sampled' / 'forced'), forced_argmax[K],
                                       score_mass[K] (forced ones; else None)}
  make_pairs    -> pairs.jsonl        {id, prompt, chosen, rejected, chosen_score, ...}
                   decisions.jsonl    one line per prompt: pair or why not
`run` chains them into one creation run; loop.py runs the same stages resumably.
"""

import dataclasses
import json
import os
import time
from typing import Any, Optional, Sequence

import jax
import numpy as np

from srlm_jax import instructions
from srlm_jax.data_io import write_jsonl
from srlm_jax import judges as judge_lib
from srlm_jax.rewards import pairs as pairs_lib
from srlm_jax import rollout


@dataclasses.dataclass(frozen=True)
class CreationSettings:
  """The knobs of one self-instruction creation run (the paper's values as defaults)."""
  num_requests: int = 64  # few-shot requests for new prompts
  few_shot: int = 8  # seed prompts shown per request, drawn without replacement
  prompt_temperature: float = 1.0
  prompt_top_p: float = 0.9
  prompt_max_new_tokens: int = 96
  filters: instructions.FilterConfig = instructions.FilterConfig()
  n_candidates: int = 4  # N
  temperature: float = 0.7
  top_p: float = 0.9
  max_new_tokens: int = 256
  judge: judge_lib.JudgeSettings = judge_lib.JudgeSettings()
  min_gap: float = 0.0  # a pair needs best - worst > min_gap (and never a tie)
  length_margin: Optional[float] = None  # set: shortest candidate within margin of the best
  seed: int = 0
  # A prompt (or judge prompt) too long for the model's context with its token limit: False
  # is an error naming the record; True drops the middle of its tokens, recorded per record
  # as prompt_truncated (candidates) or judge_prompt_truncated (judgments).
  truncate_prompts: bool = False


def check_context(settings: CreationSettings, context: int, prefix: str = 'creation.') -> None:
  """Raises ValueError naming the first token limit that leaves no room in `context` tokens."""
  for field, value in (('prompt_max_new_tokens', settings.prompt_max_new_tokens),
                       ('max_new_tokens', settings.max_new_tokens),
                       ('judge.max_new_tokens', settings.judge.max_new_tokens)):
    if value >= context:
      raise ValueError(f'{prefix}{field}={value}: the model\'s context is {context} tokens, '
                       'so no prompt fits beside that many new tokens')


def raw_prompts(model: Any, seed_prompts: Sequence[str], settings: CreationSettings,
                start: int = 0, count: Optional[int] = None, *, progress: bool = True) -> list:
  """Returns few-shot requests [start, start+count) and the generator's raw completions.

  Request i's examples depend on (settings.seed, i) and its sampling key on (settings.seed,
  start, i), so a fixed shard size gives the same records in any order and after a restart.
  """
  count = settings.num_requests - start if count is None else count
  examples = [instructions.draw_examples(
      seed_prompts, 1, settings.few_shot, np.random.default_rng([settings.seed, i]))[0]
              for i in range(start, start + count)]
  requests = [instructions.few_shot_request(e) for e in examples]
  raw = [c[0] for c in rollout.generate(
      model, requests, n=1, max_new_tokens=settings.prompt_max_new_tokens,
      temperature=settings.prompt_temperature, top_p=settings.prompt_top_p,
      seed=settings.seed * 1_000_003 + start, progress=progress,
      where=[f'few-shot request {start + k}' for k in range(count)],
      truncate=settings.truncate_prompts)]
  return [{'request': start + k, 'examples': e, 'raw': r}
          for k, (e, r) in enumerate(zip(examples, raw))]


def select_prompts(raw_records: Sequence[dict], seed_prompts: Sequence[str],
                   settings: CreationSettings) -> tuple[list, list]:
  """Returns (kept prompt records, rejected records): parsed, filtered, deduplicated."""
  selection = instructions.select_prompts([r['raw'] for r in raw_records], seed_prompts,
                                          settings.filters)
  kept = [{'id': f'p{k:05d}', 'prompt': prompt, **raw_records[i]}
          for k, (i, prompt) in enumerate(selection.kept)]
  rejected = [{'prompt': prompt, 'reason': reason, **raw_records[i]}
              for i, prompt, reason in selection.rejected]
  return kept, rejected


def new_prompts(model: Any, seed_prompts: Sequence[str], settings: CreationSettings,
                *, progress: bool = True) -> tuple[list, list]:
  """Returns (kept prompt records, rejected prompt records) from few-shot requests."""
  return select_prompts(raw_prompts(model, seed_prompts, settings, progress=progress),
                        seed_prompts, settings)


def candidates(model: Any, prompt_records: Sequence[dict], settings: CreationSettings,
               *, shard: int = 0, progress: bool = True) -> list:
  """Returns per prompt record its N sampled candidate responses (shard: a seed offset)."""
  out = rollout.generate_tokens(
      model, [r['prompt'] for r in prompt_records], n=settings.n_candidates,
      max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
      top_p=settings.top_p, seed=(settings.seed + 1) * 1_000_003 + shard, progress=progress,
      where=[f'prompt record {r["id"]}' for r in prompt_records],
      truncate=settings.truncate_prompts)
  return [{'id': r['id'], 'prompt': r['prompt'], 'candidates': [c.text for c in comps],
           'lengths': [int(len(c.tokens)) for c in comps],
           'stop_reasons': [c.stop_reason.name.lower() for c in comps],
           **({'prompt_truncated': comps[0].prompt_truncated}
              if settings.truncate_prompts else {})}
          for r, comps in zip(prompt_records, out)]


def judge_candidates(model: Any, candidate_records: Sequence[dict], settings: CreationSettings,
                     *, parser=None, shard: int = 0, progress: bool = True) -> list:
  """Returns one record per (prompt, candidate) with its K judgments and their scores."""
  del parser  # the judge's parser is built once per tokenizer (judges.Judge.parser)
  flat = [(r, j, text) for r in candidate_records for j, text in enumerate(r['candidates'])]
  result = judge_lib.judge_responses(
      model, [r['prompt'] for r, _, _ in flat], [t for _, _, t in flat],
      settings=settings.judge, seed=(settings.seed + 2) * 1_000_003 + shard,
      progress=progress, where=[f'judgment of {r["id"]} candidate {j}' for r, j, _ in flat],
      truncate=settings.truncate_prompts)
  items = [{'id': r['id'], 'candidate': j, 'prompt': r['prompt'], 'response': text}
           for r, j, text in flat]
  return judge_lib.judgment_records(items, result, settings.judge.kind,
                                    settings.truncate_prompts)


judgment_stats = judge_lib.judgment_stats  # moved to srlm_jax/judges/records.py


def make_pairs(candidate_records: Sequence[dict], judgment_records: Sequence[dict],
               settings: CreationSettings) -> tuple[list, list]:
  """Returns (pair records, one decision record per prompt) from the judged candidates."""
  n = settings.n_candidates
  index = {r['id']: p for p, r in enumerate(candidate_records)}
  scores = np.full((len(candidate_records), n), np.nan, np.float32)
  lengths = np.zeros((len(candidate_records), n), np.int32)
  for p, r in enumerate(candidate_records):
    lengths[p] = r['lengths']
  for j in judgment_records:
    if j['mean'] is not None:
      scores[index[j['id']], j['candidate']] = j['mean']
  # An empty response (eos sampled first) is no training example: never chosen nor rejected.
  nonempty = np.array([[bool(t.strip()) for t in r['candidates']] for r in candidate_records],
                      bool).reshape(len(candidate_records), n)
  out = jax.device_get(pairs_lib.select_pairs(
      scores, ~np.isnan(scores) & nonempty, lengths, min_gap=settings.min_gap,
      length_margin=settings.length_margin))
  pair_records, decisions = [], []
  for p, r in enumerate(candidate_records):
    reason = pairs_lib.REASONS[int(out['reason'][p])]
    c, rj = int(out['chosen'][p]), int(out['rejected'][p])
    decisions.append({'id': r['id'], 'decision': reason,
                      'scores': [judge_lib.score_json(s) for s in scores[p]]})
    if out['has_pair'][p]:
      pair_records.append({
          'id': r['id'], 'prompt': r['prompt'], 'chosen': r['candidates'][c],
          'rejected': r['candidates'][rj], 'chosen_index': c, 'rejected_index': rj,
          'chosen_score': float(out['chosen_score'][p]),
          'rejected_score': float(out['rejected_score'][p]),
          'chosen_length': int(lengths[p, c]), 'rejected_length': int(lengths[p, rj])})
  return pair_records, decisions


def summary(prompt_records, rejected, judgment_records, pair_records, decisions) -> dict:
  """Returns the run's counts: prompts kept and rejected, valid judgments, score histogram, pairs."""
  valid = [v for j in judgment_records for v in j['valid']]
  kind = next((j['judge'] for j in judgment_records if 'judge' in j), 'additive')
  hist = judge_lib.score_histogram(judgment_records, judge_lib.get(kind).score_values)
  del hist['invalid']
  reasons = {}
  for r in rejected:
    reasons[r['reason']] = reasons.get(r['reason'], 0) + 1
  return {
      'prompts_generated': len(prompt_records) + len(rejected),
      'prompts_kept': len(prompt_records),
      'prompts_rejected': reasons,
      'judgments': len(valid),
      'valid_judgments': int(sum(valid)),
      'valid_fraction': float(np.mean(valid)) if valid else 0.0,
      # Integer bins: a decimal score such as 4.5 falls in the bin of its nearest integer.
      'score_histogram': hist,
      'pairs': len(pair_records),
      'decisions': {k: sum(d['decision'] == k for d in decisions) for k in pairs_lib.REASONS},
      'judge': judgment_stats(judgment_records),
  }


def run(model: Any, seed_prompts: Sequence[str], settings: CreationSettings, out_dir: str,
        *, progress: bool = True) -> dict:
  """Runs one creation run, writes every stage's records under out_dir, returns the summary."""
  check_context(settings, model.config.max_seq_len)
  timings = {}
  start = time.perf_counter()
  kept, rejected = new_prompts(model, seed_prompts, settings, progress=progress)
  write_jsonl(os.path.join(out_dir, 'prompts.jsonl'), kept)
  write_jsonl(os.path.join(out_dir, 'rejected.jsonl'), rejected)
  timings['new_prompts'] = time.perf_counter() - start

  start = time.perf_counter()
  cands = candidates(model, kept, settings, progress=progress)
  write_jsonl(os.path.join(out_dir, 'candidates.jsonl'), cands)
  timings['candidates'] = time.perf_counter() - start

  start = time.perf_counter()
  judged = judge_candidates(model, cands, settings, progress=progress)
  write_jsonl(os.path.join(out_dir, 'judgments.jsonl'), judged)
  timings['judge'] = time.perf_counter() - start

  start = time.perf_counter()
  pair_records, decisions = make_pairs(cands, judged, settings)
  write_jsonl(os.path.join(out_dir, 'pairs.jsonl'), pair_records)
  write_jsonl(os.path.join(out_dir, 'decisions.jsonl'), decisions)
  timings['pairs'] = time.perf_counter() - start

  result = summary(kept, rejected, judged, pair_records, decisions)
  result['seconds'] = {k: round(v, 2) for k, v in timings.items()}
  with open(os.path.join(out_dir, 'summary.json'), 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=2)
  return result
