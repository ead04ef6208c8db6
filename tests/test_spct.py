"""SPCT (judges/spct.py): the device parse of several scores against its host regex, the
shuffle undone, and forced 1..10 scores against a full forward computed by hand."""

import random

import numpy as np
import pytest

import srlm_jax
from srlm_jax import judges
from srlm_jax import rollout
from srlm_jax import sampler
from srlm_jax.judges import forced
from srlm_jax.judges import spct

SPCT = judges.get('spct')


@pytest.fixture(scope='module')
def tiny():
  return srlm_jax.load('tiny')


TEXTS = [
    ('Principles: be right.\nCritique: fine.\nScores: 7, 3', [7, 3]),
    ('**Scores:** 10,1.', [10, 1]),
    ('scores : 07 ,  3  \n\n  \n', [7, 3]),
    ('Scores: 7, 3\nThanks!', None),  # a line after the verdict
    ('Scores: 11, 3', None),  # out of the scale
    ('Scores: 0, 3', None),
    ('Scores: 7', None),  # too few
    ('Scores: 7, 3, 4', None),  # too many
    ('Scores: 7, 3 points', None),
    ('Final Scores: 7, 3', None),
    ('Score: 7, 3', None),
    ('Scores: 7,, 3', None),
    ('Scores: 7. 3', None),
    ('Scores: 9, 10', [9, 10]),
    ('', None),
]
PIECES = ['Scores', 'scores', 'Score', ':', ' ', '  ', '7', '10', '1', '0', '3', ',', '.', '\n',
          'x', '**', 'é', '\t', '11']


def _device(tok, texts, n):
  ids = [tok.encode(t) for t in texts]
  width = max(1, max(len(i) for i in ids))
  rows = np.full((len(ids), width), tok.pad_id, np.int32)
  for r, i in enumerate(ids):
    rows[r, :len(i)] = i
  scores, valid = spct.list_parser(tok, n)(rows)
  return np.asarray(scores), np.asarray(valid)


def test_list_parser_matches_the_host_regex(tiny):
  tok = tiny.tokenizer
  texts = [t for t, _ in TEXTS]
  assert [spct.parse_list_host(t, 2) for t in texts] == [want for _, want in TEXTS]
  rng = random.Random(0)
  fuzz = [''.join(rng.choice(PIECES) for _ in range(rng.randint(1, 14))) for _ in range(300)]
  fuzz += ['Scores: ' + ', '.join(rng.choice(['1', '5', '10', '12', '3']) for _ in range(
      rng.randint(1, 3))) + rng.choice(['', '.', ' ', '\n', '\nok']) for _ in range(100)]
  for n in (2, 3):
    scores, valid = _device(tok, texts + fuzz, n)
    for text, s, v in zip(texts + fuzz, scores, valid):
      want = spct.parse_list_host(text, n)
      assert bool(v) == (want is not None), (text, n)
      if want is not None:
        assert s.tolist() == want, text
      else:
        assert np.isnan(s).all()
  assert sum(spct.parse_list_host(t, 2) is not None for t in fuzz) > 10  # valid ones occur


def test_orders_and_unshuffle():
  order = spct.orders(5, 3, 4, 3)
  assert order.shape == (3, 4, 3) and (np.sort(order, axis=-1) == np.arange(3)).all()
  assert (order == spct.orders(5, 3, 4, 3)).all() and len({tuple(o) for o in order[0]}) > 1
  # shown[g, k, j] is the score of response order[g, k, j]: by hand, response i's score.
  order = np.array([[[2, 0, 1], [0, 1, 2]]], np.int32)
  shown = np.array([[[30, 10, 20], [11, 21, 31]]], np.float32)
  got = np.asarray(spct.unshuffle(shown, order))
  assert got.tolist() == [[10, 11], [20, 21], [30, 31]]


def _forced_by_hand(model, row, prefix):
  """Returns the expected 1..10 score after row + prefix, from unpadded full forwards (float64):
  P(v) = p(v) for 2..9, P(10) = p('1') p('0' | '1'), P(1) = p('1') - P(10), renormalised."""
  tok = model.tokenizer
  one, zero = tok.encode(prefix + '10')[-2:]
  def probs(ids):
    logits = np.asarray(srlm_jax.forward(model.config, model.params, np.asarray(ids)[None]),
                        np.float64)[0, -1]
    p = np.exp(logits - logits.max())
    return p / p.sum()
  base = list(row) + tok.encode(prefix)
  first, after_one = probs(base), probs(base + [one])
  p = {v: first[tok.encode(prefix + str(v))[-1]] for v in range(2, 10)}
  p[10] = first[one] * after_one[zero]
  p[1] = first[one] - p[10]
  total = sum(p.values())
  return sum(v * q for v, q in p.items()) / total, max(p, key=p.get), total


def test_forced_spct_score_is_the_expectation_of_full_forwards(tiny):
  settings = judges.JudgeSettings(kind='spct', k=2, max_new_tokens=6, verdict='forced_always',
                                  template=SPCT.template('compact'))
  prompts, responses = ['What is 2 + 2?'], ['4']
  got = judges.judge_responses(tiny, prompts, responses, settings=settings, seed=3,
                               progress=False)
  comps = rollout.generate_tokens(tiny, SPCT.requests(prompts, responses, settings.template),
                                  n=2, max_new_tokens=6, temperature=0.7, top_p=0.9, seed=3,
                                  progress=False)
  assert got.valid_RxK.all() and got.forced_RxK.all()
  for j, c in enumerate(comps[0]):
    assert SPCT.parse_host(c.text) is None  # a random model writes no verdict: nothing is cut
    body = list(c.tokens[:-1] if c.stop_reason == sampler.StopReason.EOS else c.tokens)
    want, best, mass = _forced_by_hand(tiny, list(c.prompt_tokens) + body, '\nScore: ')
    np.testing.assert_allclose(got.scores_RxK[0, j], want, rtol=1e-4)
    assert got.argmax_RxK[0, j] == best
    np.testing.assert_allclose(got.mass_RxK[0, j], mass, rtol=1e-3)


def test_judge_together_undoes_the_shuffle(tiny):
  """Each forced score of shown position j, recomputed by hand from the same request, lands on
  the response that was shown there."""
  prompts = ['What is 2 + 2?', 'Name a primary colour.']
  responses = [['4', 'Five', 'It is 4.'], ['Blue.', 'Green', 'Red is one.']]
  settings = judges.JudgeSettings(kind='spct', k=2, max_new_tokens=4, verdict='forced_always')
  texts, scores = spct.judge_together(tiny, prompts, responses, settings, seed=7,
                                      progress=False)
  scores_RxK = np.asarray(scores.scores_RxK)
  assert scores_RxK.shape == (6, 2) and np.asarray(scores.valid_RxK).all()
  assert len(texts) == 6 and texts[0] == texts[1] == texts[2]  # one request per sample
  order = spct.orders(7, 2, 2, 3)
  assert (order[:, 0] != order[:, 1]).any() or (order[0, 0] != order[1, 0]).any()
  requests = [spct.together_messages(prompts[g], responses[g], order[g, k])
              for g in range(2) for k in range(2)]
  comps = rollout.generate_tokens(tiny, requests, n=1, max_new_tokens=4, temperature=0.7,
                                  top_p=0.9, seed=7, progress=False)
  for g in range(2):
    for k in range(2):
      c = comps[g * 2 + k][0]
      body = list(c.tokens[:-1] if c.stop_reason == sampler.StopReason.EOS else c.tokens)
      for j in range(3):
        want, _, _ = _forced_by_hand(tiny, list(c.prompt_tokens) + body,
                                     f'\nScore of Response {j + 1}: ')
        np.testing.assert_allclose(scores_RxK[g * 3 + order[g, k, j], k], want, rtol=1e-4)


def test_score_tokens_chain():
  class Digits:
    """One token per character."""

    def encode(self, text):
      return [ord(ch) for ch in text]

  ids, path = forced.score_tokens(Digits(), 'S: ', range(1, 11))
  assert path == [ord('1')] and ids.shape == (10, 2)
  assert ids[9].tolist() == [ord('1'), ord('0')] and ids[0].tolist() == [ord('1'), -1]
  with pytest.raises(ValueError, match='one chain'):
    forced.score_tokens(Digits(), 'S: ', range(1, 21))
