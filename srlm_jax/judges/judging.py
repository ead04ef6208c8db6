"""Judging: sample a judge's K judgments of each response and read their verdicts on the device.

`judge` samples the judge Rollout (rollout.sample), parses each judgment's verdict from the
Rollout's device tokens with the judge's jitted parser (no host re-padding), reads forced
verdicts from each batch's decode cache as it is sampled (forced.py) and returns JudgeScores on
the device, plus the judgment texts (the host edge). Its host edges: the requests are
tokenised on the host and the texts decoded on the host. `judge_responses` is the host view
of one call (numpy arrays and the mean over valid judgments), for evaluation and records.

Axis legend: R judged responses, K judgments per response (R * K rollout rows).
"""

import dataclasses
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from srlm_jax import distributed
from srlm_jax import rollout as rollout_lib
from srlm_jax.judges import base
from srlm_jax.judges import forced as forced_lib
from srlm_jax.judges import meta_rm
from srlm_jax.judges import voting

_FEATURES: dict = {}  # tokenizer -> its text features (forced_always), built once


def text_features(tokenizer: Any) -> np.ndarray:
  """Returns forced.text_features of the tokenizer's vocabulary (built once per tokenizer)."""
  if tokenizer not in _FEATURES:
    _FEATURES[tokenizer] = forced_lib.text_features(tokenizer.vocab_texts())
  return _FEATURES[tokenizer]


@jax.jit
def _merge(scores_R, valid_R, forced_R, expected_R, argmax_R, mass_R):
  """Returns (scores, valid, argmax, mass) [R] with the forced rows' verdicts set."""
  nan = jnp.full(scores_R.shape, jnp.nan, jnp.float32)
  return (jnp.where(forced_R, expected_R, scores_R), valid_R | forced_R,
          jnp.where(forced_R, argmax_R, nan), jnp.where(forced_R, mass_R, nan))


def _empty(mesh, k: int) -> base.JudgeScores:
  z = lambda dtype: np.zeros((0, k), dtype)
  return base.JudgeScores(*forced_lib.replicate(mesh, (
      z(np.float32), z(bool), z(bool), z(np.float32), z(np.float32), np.zeros(0, np.int32),
      z(bool), z(np.float32))))


def meta_filtered(model: Any, settings: base.JudgeSettings, prompts: Sequence[str],
                  responses: Sequence[str], texts: Sequence[Sequence[str]],
                  scores: base.JudgeScores, seed: int = 0) -> base.JudgeScores:
  """Returns `scores` with the meta RM's score of each judgment (meta_RxK) and only the top
  settings.meta_filter valid judgments of each response kept (kept_RxK; the others' valid_RxK
  False, their scores kept), as SPCT's meta filter does."""
  k = scores.scores_RxK.shape[1]
  meta_settings = meta_rm.settings(settings)
  _, meta = judge(model, meta_settings.kind, [p for p in prompts for _ in range(k)],
                  [meta_rm.pack(r, t) for r, row in zip(responses, texts) for t in row],
                  meta_settings, seed=seed + 1, progress=False, truncate=True)
  meta_RxK = meta.scores_RxK.reshape(-1, k)
  kept_RxK = voting.meta_select(meta_RxK, scores.valid_RxK, settings.meta_filter)
  return scores.replace(valid_RxK=scores.valid_RxK & kept_RxK, kept_RxK=kept_RxK,
                        meta_RxK=meta_RxK)


def judge(model: Any, judge_: Union[str, base.Judge], prompts: Sequence[str],
          responses: Sequence[str], settings: base.JudgeSettings, seed: int = 0, *,
          progress: Any = True, where: Optional[Sequence[str]] = None,
          truncate: bool = False, stats: Optional[dict] = None
          ) -> tuple[list, base.JudgeScores]:
  """Returns (judgment texts [R][K], JudgeScores on the device) of settings.k judgments of
  each (prompt, response) pair by `model` as judge `judge_` (a Judge or a registered name).

  `where` names the pairs in context-length errors; `truncate` drops the middle of a judge
  prompt too long for the context instead (counted in truncated_R); `stats` gets the judge
  requests' prefill counts (rollout.sample's).
  """
  judge_ = base.get(judge_) if isinstance(judge_, str) else judge_
  tok, k = model.tokenizer, settings.k
  mesh = getattr(model, 'mesh', None)
  put = lambda tree: forced_lib.replicate(mesh, tree)  # explicit uploads (host edges)
  forcing = settings.verdict != 'sampled'
  prefix_text = (judge_.verdict_prefix if settings.verdict_prefix is None
                 else settings.verdict_prefix)
  score_ids, path = (forced_lib.score_tokens(tok, prefix_text, judge_.score_values)
                     if forcing else (None, []))
  prefix = tok.encode(prefix_text) + path if forcing else []
  requests = judge_.requests(prompts, responses, settings.template)
  if not requests:
    return [], _empty(mesh, k)
  ids, dropped = rollout_lib.encode_prompts(model, requests,
                                            max_new_tokens=settings.max_new_tokens,
                                            where=where, truncate=truncate, reserve=len(prefix))
  hook = None
  if forcing:
    hook = forced_lib.verdict_hook(
        model, judge_.parser(tok), settings.verdict, [prefix], score_ids, judge_.score_values,
        text_features(tok) if settings.verdict == 'forced_always' else None)
  roll = rollout_lib.sample(model, ids, n=k, max_new_tokens=settings.max_new_tokens,
                            temperature=settings.temperature, top_p=settings.top_p, seed=seed,
                            progress=progress, on_batch=hook, stats=stats)
  if forcing:
    roll, verdicts = roll  # each [R, 1]: one prefix
  # Only the judge's own generated tokens are parsed: text quoted in the prompt never counts.
  scores_R, valid_R = judge_.parser(tok)(roll.tokens)
  num_rows = len(ids) * k
  forced_R = put(np.zeros(num_rows, bool))
  argmax_R = mass_R = put(np.full(num_rows, np.nan, np.float32))
  if forcing:  # every judgment, or those without a verdict of their own
    forced_R = put(np.ones(num_rows, bool)) if settings.verdict == 'forced_always' else ~valid_R
    scores_R, valid_R, argmax_R, mass_R = _merge(scores_R, valid_R, forced_R,
                                                 *(v[:, 0] for v in verdicts))
  shape = (len(ids), k)
  out = base.JudgeScores(
      scores_RxK=scores_R.reshape(shape), valid_RxK=valid_R.reshape(shape),
      forced_RxK=forced_R.reshape(shape), argmax_RxK=argmax_R.reshape(shape),
      mass_RxK=mass_R.reshape(shape), truncated_R=put(np.asarray(dropped, np.int32)),
      kept_RxK=put(np.ones(shape, bool)), meta_RxK=put(np.full(shape, np.nan, np.float32)))
  texts = rollout_lib.texts(roll, tok)
  if settings.meta_filter:
    out = meta_filtered(model, settings, prompts, responses, texts, out, seed)
  return texts, out


@dataclasses.dataclass
class Judgments:
  """K judgments of each of R responses on the host: texts, parsed scores and their mean."""
  texts: list  # [R][K] judge completions
  scores_RxK: np.ndarray  # float32, NaN where invalid
  valid_RxK: np.ndarray  # bool
  mean_R: np.ndarray  # mean of the valid scores, NaN where none is valid
  n_valid_R: np.ndarray  # int32
  forced_RxK: Optional[np.ndarray] = None  # bool: the score is a forced verdict's expectation
  argmax_RxK: Optional[np.ndarray] = None  # float32: a forced verdict's most likely score
  mass_RxK: Optional[np.ndarray] = None  # float32: the probability the score tokens held
  truncated_R: Optional[np.ndarray] = None  # int32: judge-prompt tokens dropped to fit
  kept_RxK: Optional[np.ndarray] = None  # bool: counted (False: dropped by the meta filter)
  meta_RxK: Optional[np.ndarray] = None  # float32: the meta RM's score of each judgment


def to_host(texts: list, scores: base.JudgeScores) -> Judgments:
  """Returns the host Judgments of one `judge` call (an explicit device-to-host copy)."""
  mean_R, count_R = base.mean_valid(scores.scores_RxK, scores.valid_RxK)
  host = distributed.to_host(dict(scores.arrays(), mean_R=mean_R, count_R=count_R))
  return Judgments(texts, host['scores_RxK'], host['valid_RxK'], host['mean_R'],
                   host['count_R'], host['forced_RxK'], host['argmax_RxK'], host['mass_RxK'],
                   host['truncated_R'], host.get('kept_RxK'), host.get('meta_RxK'))


def judge_responses(model: Any, prompts: Sequence[str], responses: Sequence[str], *,
                    settings: base.JudgeSettings = base.JudgeSettings(), seed: int = 0,
                    progress: Any = True, where: Optional[Sequence[str]] = None,
                    truncate: bool = False) -> Judgments:
  """Returns the host Judgments of settings.k judgments of each (prompt, response) pair by the
  judge settings.kind, parsed or forced per settings.verdict."""
  texts, scores = judge(model, settings.kind, prompts, responses, settings, seed,
                        progress=progress, where=where, truncate=truncate)
  return to_host(texts, scores)
