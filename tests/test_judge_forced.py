"""Forced verdicts (judges/forced.py): the score read from the model's distribution after 'Score: '."""

import numpy as np
import pytest

import srlm_jax
from srlm_jax import judges
from srlm_jax import rollout
from srlm_jax import sampler
from srlm_jax.judges import forced
from srlm_jax.pipeline import settings as settings_lib
from srlm_jax.pipeline.stages import judgments

PROMPTS = ['What is 2 + 2?', 'Name a primary colour.']
RESPONSES = ['4', 'Blue is one.']
ADDITIVE = judges.get('additive')


@pytest.fixture(scope='module')
def tiny():
  return srlm_jax.load('tiny')


def _settings(verdict, max_new_tokens=8):
  return judges.JudgeSettings(k=2, max_new_tokens=max_new_tokens, verdict=verdict,
                              template=judges.get_template('compact'))


def _by_hand(model, row, values=range(6)):
  """Returns (expected score, argmax, mass) from one unpadded full forward of the row."""
  logits = np.asarray(srlm_jax.forward(model.config, model.params, np.asarray(row)[None]))[0, -1]
  probs = np.exp(logits - logits.max())
  probs /= probs.sum()
  ids = [model.tokenizer.encode(f'\nScore: {v}')[-1] for v in values]
  p = probs[ids]
  return float(np.dot(p / p.sum(), list(values))), float(np.argmax(p)), float(p.sum())


@pytest.mark.parametrize('verdict', ['forced', 'forced_always'])
def test_forced_score_is_the_expectation_of_a_full_forward(tiny, verdict):
  settings = _settings(verdict)
  got = judges.judge_responses(tiny, PROMPTS, RESPONSES, settings=settings, seed=3,
                               progress=False)
  # The same judge rollout (same seed), rebuilt here: prompt, the judgment's tokens, prefix.
  requests = ADDITIVE.requests(PROMPTS, RESPONSES, settings.template)
  comps = rollout.generate_tokens(tiny, requests, n=2, max_new_tokens=8, temperature=0.7,
                                  top_p=0.9, seed=3, progress=False)
  prefix = tiny.tokenizer.encode('\nScore: ')
  assert got.valid_RxK.all() and got.forced_RxK.all()  # a random model writes no verdict
  for i, per_prompt in enumerate(comps):
    for j, c in enumerate(per_prompt):
      body = list(c.tokens[:-1] if c.stop_reason == sampler.StopReason.EOS else c.tokens)
      assert ADDITIVE.parse_host(c.text) is None
      want, best, mass = _by_hand(tiny, list(c.prompt_tokens) + body + prefix)
      np.testing.assert_allclose(got.scores_RxK[i, j], want, rtol=1e-4)
      assert got.argmax_RxK[i, j] == best
      np.testing.assert_allclose(got.mass_RxK[i, j], mass, rtol=1e-3)
  np.testing.assert_allclose(got.mean_R, got.scores_RxK.mean(axis=1), rtol=1e-6)


def test_sampled_verdicts_leave_invalid_judgments_invalid(tiny):
  got = judges.judge_responses(tiny, PROMPTS, RESPONSES, settings=_settings('sampled'),
                               progress=False)
  assert not got.valid_RxK.any() and not got.forced_RxK.any()
  assert np.isnan(got.scores_RxK).all() and np.isnan(got.mass_RxK).all()


def test_judgment_records_carry_the_forced_verdicts(tiny):
  settings = settings_lib.CreationSettings(n_candidates=2, judge=_settings('forced'))
  records, scores = judgments.judge_candidates(
      tiny, [{'id': 'p0', 'prompt': PROMPTS[0], 'candidates': ['4', 'Four.']}], settings,
      progress=False)
  assert [r['candidate'] for r in records] == [0, 1]
  for r in records:
    assert r['verdicts'] == ['forced', 'forced'] and r['valid'] == [True, True]
    assert all(b in range(6) for b in r['forced_argmax'])
    assert all(0 < m < 1 for m in r['score_mass'])
  assert judges.judgment_stats(records)['valid_fraction'] == 1.0
  # The device JudgeScores are what the records say (rows: the candidates, prompt-major).
  host = judges.to_host([r['judgments'] for r in records], scores)
  assert [r['scores'] for r in records] == [[judges.score_json(s) for s in row]
                                            for row in host.scores_RxK]
  assert host.forced_RxK.all() and scores.scores_RxK.shape == (2, 2)


def test_reasons_tokens_cut_the_final_verdict_line():
  vocab = ['Good', ' answer', '.', '\n', 'Score', ':', ' 4', ' \n', 'ok.\n']
  features = forced.text_features(vocab)
  cases = [([0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2]),
           # A token holding the newline before the final line goes with it (the prefix has
           # its own).
           ([0, 8, 4, 5, 6], [0]), ([4, 5, 6], [])]
  for row, want in cases:
    assert forced.reasons_host(np.array(row), vocab).tolist() == want
    got = forced.reasons_length(np.array([row + [0] * (8 - len(row))], np.int32),
                                np.array([len(row)], np.int32), features)
    assert int(got[0]) == len(want)


def test_reasons_length_on_device_matches_the_host_cut(tiny):
  """Random rows of tokens rich in newlines, blanks and verdict pieces: device == host."""
  vocab = tiny.tokenizer.vocab_texts()
  pieces = ['\n', ' \n', '\n\n', ' ', '*', '\t', 'Score', ': 4', '.', 'ok', ' fine.\n',
            '**', '\n**', 'é', 'Score: 3\n']
  pool = sorted({i for p in pieces for i in tiny.tokenizer.encode(p)} |
                {i for i, t in enumerate(vocab) if t and not t.strip(' \t*\n')})
  rng = np.random.default_rng(0)
  rows = rng.choice(pool, size=(400, 24))
  rows[:100] = rng.integers(0, len(vocab), size=(100, 24))  # and any tokens at all
  body = rng.integers(0, 25, size=400).astype(np.int32)
  got = np.asarray(forced.reasons_length(rows.astype(np.int32), body,
                                         forced.text_features(vocab)))
  want = [len(forced.reasons_host(r[:b], vocab)) for r, b in zip(rows, body)]
  assert got.tolist() == want
  assert 0 < sum(want) and sum(w < b for w, b in zip(want, body)) > 100  # cuts happen


def test_each_score_must_be_one_token_after_the_prefix():
  class Merging:
    """Writes ' 4' as one token: after a prefix ending in a space, '4' is no single token."""

    def encode(self, text):
      out, i = [], 0
      while i < len(text):
        if text[i] == ' ' and i + 1 < len(text) and text[i + 1].isdigit():
          out.append(1000 + int(text[i + 1]))
          i += 2
        else:
          out.append(ord(text[i]))
          i += 1
      return out

  assert forced.score_token_ids(Merging(), '\nScore:', range(6)).tolist() == [
      ord(str(v)) for v in range(6)]
  with pytest.raises(ValueError, match=r"'\\nScore: ' \+ '0' tokenises to"):
    forced.score_token_ids(Merging(), '\nScore: ', range(6))
  with pytest.raises(ValueError, match='verdict='):
    judges.JudgeSettings(verdict='always')


def test_judgment_stats_by_hand():
  records = [
      {'id': 'a', 'scores': [1.0, 3.0, None], 'valid': [True, True, False], 'mean': 2.0,
       'verdicts': ['sampled', 'forced', 'sampled'], 'score_mass': [None, 0.5, None]},
      {'id': 'a', 'scores': [2.0, 2.0, 2.0], 'valid': [True] * 3, 'mean': 2.0},
      {'id': 'b', 'scores': [5.0, 4.0, 3.0], 'valid': [True] * 3, 'mean': 4.0},
      {'id': 'b', 'scores': [None] * 3, 'valid': [False] * 3, 'mean': None},
  ]
  stats = judges.judgment_stats(records)
  assert stats['judgments'] == 12 and stats['valid_fraction'] == 0.6667
  assert stats['forced_fraction'] == 0.08333 and stats['forced_score_mass'] == 0.5
  assert stats['tie_rate'] == 1.0  # prompt a's two means tie; b has one scored candidate
  assert stats['within_candidate_var'] == pytest.approx((2.0 + 0.0 + 1.0) / 3)
  assert stats['between_candidate_var'] == pytest.approx(np.var([2, 2, 4], ddof=1), rel=1e-3)


def test_forced_verdicts_on_smollm2_are_all_valid():
  """SmolLM2-135M-Instruct, short reasons: every judgment gets a score from 0..5."""
  model = srlm_jax.load('smollm2-135m-instruct')
  settings = judges.JudgeSettings(k=2, max_new_tokens=12, verdict='forced',
                                  template=judges.get_template('compact'))
  got = judges.judge_responses(model, PROMPTS, RESPONSES, settings=settings, progress=False)
  assert got.valid_RxK.all() and not np.isnan(got.scores_RxK).any()
  assert ((got.scores_RxK >= 0) & (got.scores_RxK <= 5)).all()
  forced = got.forced_RxK
  assert forced.any()  # 12 tokens are too few for reasons and a verdict line
  # An instruction-tuned model puts most of its next-token mass on a digit after 'Score: '.
  assert (got.mass_RxK[forced] > 0.5).all(), got.mass_RxK


def test_evaluate_cache_key_tells_verdict_modes_apart(tiny):
  """Cached sampled judgments are not reused for forced ones (evaluate.py's judgment cache)."""
  from srlm_jax import evaluate  # pylint: disable=g-import-not-at-top
  keys = [evaluate.cache_key(tiny, judges.JudgeSettings(verdict=v), 0) for v in judges.VERDICTS]
  keys.append(evaluate.cache_key(tiny, judges.JudgeSettings(verdict_prefix='\nScore:'), 0))
  assert all(a != b for i, a in enumerate(keys) for b in keys[i + 1:])
