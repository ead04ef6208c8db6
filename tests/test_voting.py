"""SPCT's vote and meta filter (judges/voting.py, base.aggregate, judging.meta_filtered) against
hand-computed cases, invalid samples included."""

import numpy as np
import pytest

import srlm_jax
from srlm_jax import judges
from srlm_jax.judges import judging
from srlm_jax.judges import voting

NAN = float('nan')
# Three responses, four judgments each: NaN scores are invalid samples (no verdict).
SCORES = np.array([[7, NAN, 9, 4], [NAN, NAN, NAN, NAN], [10, 10, 1, NAN]], np.float32)
VALID = ~np.isnan(SCORES)
META = np.array([[2.0, 5.0, 1.0, 3.0], [4, 4, 4, 4], [3.5, 3.5, 4.0, NAN]], np.float32)


def test_aggregate_mean_and_sum_of_valid_judgments():
  mean, count = map(np.asarray, judges.aggregate(SCORES, VALID, 'mean'))
  total, count2 = map(np.asarray, judges.aggregate(SCORES, VALID, 'sum'))
  assert count.tolist() == count2.tolist() == [3, 0, 3]
  np.testing.assert_allclose(mean[[0, 2]], [20 / 3, 7.0], rtol=1e-6)
  assert total[[0, 2]].tolist() == [20.0, 21.0] and np.isnan(mean[1]) and np.isnan(total[1])
  # A score marked invalid is not counted even when it is a number (a filtered judgment).
  valid = VALID.copy()
  valid[0, 2] = False
  assert np.asarray(judges.aggregate(SCORES, valid, 'sum')[0])[0] == 11.0
  np.testing.assert_allclose(np.asarray(judges.mean_valid(SCORES, VALID)[0]), mean)
  with pytest.raises(ValueError, match="how='max'"):
    judges.aggregate(SCORES, VALID, 'max')


def test_meta_select_keeps_the_top_k_meta_valid_judgments():
  kept = np.asarray(voting.meta_select(META, VALID, k_meta=2))
  # Row 0: valid judgments 0, 2, 3 with meta 2, 1, 3 -> 3 and 0 (judgment 1 is invalid though
  # its meta score is the highest). Row 1: none valid. Row 2: valid 0, 1, 2 with meta 3.5,
  # 3.5, 4 -> 2, then the earlier of the tie, 0.
  assert kept.tolist() == [[True, False, False, True], [False] * 4, [True, False, True, False]]
  assert np.asarray(voting.meta_select(META, VALID, k_meta=4)).tolist() == VALID.tolist()
  # A NaN meta score ranks below every number, above no invalid judgment.
  meta = np.array([[NAN, 1.0, 0.5]], np.float32)
  assert np.asarray(voting.meta_select(meta, np.array([[True, True, False]]), 2)).tolist() == [
      [True, True, False]]
  assert np.asarray(voting.meta_select(meta, np.ones((1, 3), bool), 1)).tolist() == [
      [False, True, False]]


def test_vote_with_the_meta_filter_by_hand():
  kept = voting.meta_select(META, VALID, k_meta=2)
  total, count = map(np.asarray, judges.aggregate(SCORES, VALID & np.asarray(kept), 'sum'))
  assert count.tolist() == [2, 0, 2]
  assert total[0] == 7 + 4 and total[2] == 10 + 1 and np.isnan(total[1])


def test_settings_refuse_bad_aggregates_and_meta_filters():
  with pytest.raises(ValueError, match="aggregate='median'"):
    judges.JudgeSettings(aggregate='median')
  with pytest.raises(ValueError, match='meta_filter=4'):
    judges.JudgeSettings(k=3, meta_filter=4)
  assert judges.JudgeSettings(k=8, meta_filter=4, aggregate='sum').meta_filter == 4


def test_meta_filtered_marks_the_dropped_judgments(monkeypatch):
  """judging.meta_filtered: the meta RM's scores (faked here) pick the judgments; the dropped
  ones keep their scores but are neither valid nor kept."""
  calls = {}

  def fake_judge(model, kind, prompts, responses, settings, seed=0, **kwargs):
    calls.update(kind=kind, prompts=prompts, responses=responses, settings=settings)
    meta = np.asarray(META).reshape(-1, 1)
    return [], judges.JudgeScores(meta, ~np.isnan(meta), ~np.isnan(meta), meta, meta,
                                  np.zeros(len(meta), np.int32))

  monkeypatch.setattr(judging, 'judge', fake_judge)
  settings = judges.JudgeSettings(kind='spct', k=4, meta_filter=2, aggregate='sum')
  base = judges.JudgeScores(SCORES, VALID, np.zeros_like(VALID), SCORES, SCORES,
                            np.zeros(3, np.int32), np.ones_like(VALID),
                            np.full(SCORES.shape, NAN, np.float32))
  texts = [[f'judgment {r}.{k}' for k in range(4)] for r in range(3)]
  out = judging.meta_filtered(None, settings, ['q0', 'q1', 'q2'], ['a0', 'a1', 'a2'], texts,
                              base)
  assert calls['kind'] == 'meta_rm' and calls['settings'].verdict == 'forced_always'
  assert calls['prompts'][:5] == ['q0'] * 4 + ['q1']
  assert 'judgment 0.3' in calls['responses'][3] and 'a0' in calls['responses'][3]
  kept = np.asarray(out.kept_RxK)
  assert kept.tolist() == np.asarray(voting.meta_select(META, VALID, 2)).tolist()
  assert np.asarray(out.valid_RxK).tolist() == (VALID & kept).tolist()
  np.testing.assert_array_equal(np.asarray(out.scores_RxK), SCORES)  # records keep them
  np.testing.assert_array_equal(np.asarray(out.meta_RxK), META)


def test_meta_rm_scores_are_forced_and_valid_on_the_tiny_model():
  tiny = srlm_jax.load('tiny')
  settings = judges.JudgeSettings(kind='spct', k=3, max_new_tokens=6, verdict='forced',
                                  aggregate='sum', meta_filter=2)
  got = judges.judge_responses(tiny, ['What is 2 + 2?'], ['4'], settings=settings, seed=1,
                               progress=False)
  assert got.kept_RxK.sum() == 2 and not np.isnan(got.meta_RxK).any()
  assert ((got.meta_RxK >= 1) & (got.meta_RxK <= 5)).all()
  assert got.valid_RxK.tolist() == got.kept_RxK.tolist()
  records = judges.judgment_records([{'id': 'q', 'candidate': 0}], got, 'spct')
  assert records[0]['kept'] == got.kept_RxK[0].tolist() and None not in records[0]['scores']
  stats = judges.judgment_stats(records)
  assert stats['valid_fraction'] == 1.0 and stats['meta_kept_fraction'] == 0.6667


def test_loop_config_rules_for_the_vote_and_meta_filter():
  from configs import common  # pylint: disable=g-import-not-at-top
  from srlm_jax import validate  # pylint: disable=g-import-not-at-top
  from srlm_jax.pipeline import settings as settings_lib  # pylint: disable=g-import-not-at-top
  config = common.get_config()
  config.creation.judge.update(kind='spct', template='spct', aggregate='sum', k=4,
                               meta_filter=2)
  validate.check_loop_config(config)
  judge = settings_lib.from_config(config).judge
  assert (judge.aggregate, judge.meta_filter, judge.meta_kind) == ('sum', 2, 'meta_rm')
  config.creation.judge.meta_filter = 5
  with pytest.raises(validate.ConfigError, match='meta_filter=5, creation.judge.k=4'):
    validate.check_loop_config(config)
  config.creation.judge.update(meta_filter=0, aggregate='max', meta_kind='nope')
  with pytest.raises(validate.ConfigError, match="aggregate='max'.*\n.*meta_kind='nope'"):
    validate.check_loop_config(config)
