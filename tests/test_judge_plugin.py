"""A second judge registered as one module (rating_judge.py): another verdict line and scale,
through judging, records, the report's histogram, evaluation, pairing and EFT targets."""

import random

import jax
import numpy as np
import pytest

import rating_judge
import srlm_jax
from srlm_jax import data
from srlm_jax import evaluate
from srlm_jax import judges
from srlm_jax import report
from srlm_jax import validate
from srlm_jax.judges import parser
from srlm_jax.rewards import pairs

PROMPTS = ['What is 2 + 2?', 'Name a primary colour.']
RESPONSES = ['4', 'Blue is one.']
RATING = judges.get('rating')
GRAMMARS = [rating_judge.JUDGE.grammar, parser.Grammar('Rating', 1, 10),
            parser.Grammar('grade', 0, 100, decimals=True), parser.Grammar('Score', 3, 12)]


@pytest.fixture(scope='module')
def tiny():
  return srlm_jax.load('tiny')


def test_registry():
  assert {'additive', 'rating'} <= set(judges.names()) and rating_judge.JUDGE is RATING
  assert RATING.score_values == tuple(range(1, 10))
  with pytest.raises(ValueError, match="unknown judge kind 'nope'"):
    judges.get('nope')
  with pytest.raises(ValueError, match='already registered'):
    judges.register(judges.Judge('rating', parser.SCORE, {}, 'x', '\n'))


def test_a_judge_module_path_is_a_kind():
  """creation.judge.kind may name the module that registers a judge (as config.stages does)."""
  assert judges.get('rating_judge') is RATING
  with pytest.raises(ValueError, match='importable module that registers one'):
    judges.get('no_such_judge_module')
  with pytest.raises(ValueError, match='holds 0 registered judges'):
    judges.get('srlm_jax.judges.parser')
  assert validate.judge_kind('rating_judge') is None
  assert 'registered judge' in validate.judge_kind('nope')


def _texts(grammar, seed, count):
  """Returns verdict-like texts for a grammar: good and bad numbers, other lines, endings."""
  rng = random.Random(seed)
  word = grammar.keyword
  numbers = [str(v) for v in grammar.values] + [
      str(grammar.high + 1), str(grammar.low - 1), '0' + str(grammar.high), f'{grammar.high}.0',
      f'{grammar.high}.5', f'{grammar.low}.25', f'{grammar.high}0', '', 'x', '1.', '10.0.1']
  out = []
  for _ in range(count):
    marker = (rng.choice(['', '', '', ' ', '**', '> ', 'Final ']) +
              ''.join(c.upper() if rng.random() < 0.3 else c for c in word) +
              rng.choice(['', ' ', '*']) + rng.choice([':'] * 6 + [';', '::']) +
              rng.choice(['', ' ', ' **']) +
              rng.choice(numbers if rng.random() < 0.5 else numbers[:len(grammar.values)]) +
              rng.choice(['', '', '', '.', '/10', ' points', '\n', '\n\nok', '0', '.5', '**']))
    lines = [rng.choice(['Fine.', 'Score: 4', 'a rating: 3', '', 'é中', marker])
             for _ in range(rng.randrange(3))]  # earlier lines never count
    out.append('\n'.join(lines + [marker]))
  return out


@pytest.mark.parametrize('grammar', GRAMMARS, ids=lambda g: f'{g.keyword}{g.low}-{g.high}')
def test_device_parser_matches_host_regex(tiny, grammar):
  """Other keywords and ranges (two- and three-digit numbers): jitted parser == host regex."""
  tok = tiny.tokenizer
  parse = jax.jit(parser.make_parser(tok, grammar=grammar))
  texts = _texts(grammar, 0, 600)
  rng = random.Random(1)
  rows, expected = [], []
  for text in texts:
    cut = rng.randrange(len(text) + 1)  # the two sides tokenised on their own
    rows.append(tok.encode(text[:cut]) + tok.encode(text[cut:]))
    expected.append(parser.parse_host(text, grammar))
  width = max(map(len, rows))
  tokens = np.full((len(rows), width), tok.pad_id, np.int32)
  for r, ids in enumerate(rows):
    tokens[r, :len(ids)] = ids
  scores, valid = jax.device_get(parse(tokens))
  for text, s, v, want in zip(texts, scores, valid, expected):
    assert bool(v) == (want is not None), (text, s)
    if want is not None:
      np.testing.assert_allclose(s, want, atol=1e-5, err_msg=repr(text))
  assert sum(w is not None for w in expected) > 100  # plenty of valid verdicts among them
  assert parser.parse_host(f'ok\n{grammar.keyword}: {grammar.high}', grammar) == grammar.high


def test_rating_judge_through_records_report_eval_and_pairs(tiny):
  settings = judges.JudgeSettings(kind='rating', k=2, max_new_tokens=8, verdict='forced')
  texts, scores = judges.judge(tiny, 'rating', PROMPTS, RESPONSES, settings, seed=1,
                               progress=False)
  host = judges.to_host(texts, scores)
  assert host.valid_RxK.all() and host.forced_RxK.all()  # a random model writes no verdict
  assert ((host.scores_RxK >= 1) & (host.scores_RxK <= 9)).all()
  assert set(host.argmax_RxK.ravel()) <= set(range(1, 10))
  # The forced verdict is the expectation over the tokens 1..9 after '\nRating: ' of one
  # full forward over the prompt, the judgment and the prefix (as the additive judge's).
  requests = RATING.requests(PROMPTS[:1], RESPONSES[:1], settings.template)
  ids, _ = srlm_jax.rollout.encode_prompts(tiny, requests, max_new_tokens=8)
  roll = srlm_jax.rollout.sample(tiny, ids, n=2, max_new_tokens=8, temperature=0.7,
                                 top_p=0.9, seed=1, progress=False)
  length = int(roll.lengths[0]) - int(roll.stop_reason[0] == 0)
  row = list(ids[0]) + list(np.asarray(roll.tokens[0, :length])) + tiny.tokenizer.encode(
      '\nRating: ')
  logits = np.asarray(srlm_jax.forward(tiny.config, tiny.params, np.asarray([row])))[0, -1]
  p = np.exp(logits - logits.max())[[tiny.tokenizer.encode(f'\nRating: {v}')[-1]
                                     for v in range(1, 10)]]
  np.testing.assert_allclose(host.scores_RxK[0, 0], np.dot(p / p.sum(), range(1, 10)),
                             rtol=1e-4)

  items = [{'id': f'p{i}', 'candidate': 0, 'prompt': q, 'response': r}
           for i, (q, r) in enumerate(zip(PROMPTS, RESPONSES))]
  records = judges.judgment_records(items, host, 'rating')
  assert all(r['judge'] == 'rating' for r in records)
  hist = report.score_histogram(records)  # the bins follow the judge's scale
  assert list(hist) == [str(v) for v in range(1, 10)] + ['invalid']
  assert sum(hist.values()) == 4 and hist['invalid'] == 0
  assert judges.judgment_stats(records)['valid_fraction'] == 1.0

  # Pairing reads only scores: two prompts, each with the judged response and a copy of it.
  scores_PxNxK = jax.numpy.stack([scores.scores_RxK, scores.scores_RxK[::-1]], axis=1)
  valid_PxNxK = jax.numpy.ones(scores_PxNxK.shape, bool)
  out = jax.device_get(pairs.choose_pairs(scores_PxNxK, valid_PxNxK,
                                          np.ones((2, 2), np.int32), np.ones((2, 2), bool)))
  np.testing.assert_allclose(out['mean_PxN'][0], host.mean_R)


def test_rating_agreement_reads_the_top_of_its_scale(tiny, monkeypatch):
  """evaluate's '5-best' counts responses at the judge's top score (9), not at 5."""
  def fake(model, prompts, responses, settings, **kwargs):
    del model, kwargs
    assert settings.kind == 'rating'
    mean = np.array([9.0 if 'best' in r else 5.0 for r in responses], np.float32)
    return judges.Judgments([['Rating: x']] * len(mean), mean[:, None],
                            np.ones((len(mean), 1), bool), mean, np.ones(len(mean), np.int32))
  monkeypatch.setattr(judges, 'judge_responses', lambda *a, **k: fake(*a, **k))
  groups = [{'id': 'g', 'prompt': 'q', 'responses': ['best', 'ok'], 'ranks': [0, 1],
             'pairs': [[0, 1]]}]
  metrics, _ = evaluate.evaluate_judge(tiny, groups, judges.JudgeSettings(kind='rating', k=1),
                                       n_boot=10)
  assert metrics['five_best'] == 1.0 and metrics['counts']['scored_5'] == 1


def test_rating_eft_data_and_targets():
  rankings = [{'id': 'g', 'prompt': 'q', 'responses': [
      {'id': 'a', 'response': 'r0', 'rank': 0, 'score': RATING.rank_score(0)},
      {'id': 'b', 'response': 'r1', 'rank': 9, 'score': RATING.rank_score(9)}]}]
  eft = data.eft_from_rankings(rankings, judge=RATING)
  assert [r['score'] for r in eft] == [9, 2]  # max(low + 1, high - rank)
  assert [r['judgment'] for r in eft] == ['Rating: 9', 'Rating: 2']
  assert all(RATING.parse_host(r['judgment']) == r['score'] for r in eft)
  assert RATING.eft_target('Fine answer.\nRating: 7', 'score_only') == 'Rating: 7'
  assert RATING.eft_target('Fine.\nRating: 7', 'judgment') == 'Fine.\nRating: 7'
  assert [RATING.quality_score(q) for q in (0, 0.5, 1)] == [1, 5, 9]
  with pytest.raises(ValueError, match='integer in 1..9'):
    RATING.eft_judgment(10)
  with pytest.raises(ValueError, match='no final "Rating: X" verdict'):
    RATING.eft_target('Score: 4', 'score_only')


def test_forced_verdicts_read_a_multi_token_scale_along_one_chain(tiny):
  """A 1..10 scale is forced with SmolLM2's tokenizer ('10' is '1', '0': read as a product,
  tests/test_spct.py checks the number); 1..20 ('1x' and '2x') has no one chain: a clear error
  before any sampling. Its sampled verdicts are parsed (test above)."""
  ten = judges.Judge('rating10', parser.Grammar('Rating', 1, 10), {'r': rating_judge.RUBRIC},
                     'r', '\nRating: ')  # an unregistered Judge object works as well
  settings = judges.JudgeSettings(kind='rating10', k=1, max_new_tokens=4, verdict='forced')
  texts, scores = judges.judge(tiny, ten, PROMPTS, RESPONSES, settings, progress=False)
  assert len(texts) == 2 and np.asarray(scores.valid_RxK).all()
  assert ((np.asarray(scores.scores_RxK) >= 1) & (np.asarray(scores.scores_RxK) <= 10)).all()
  twenty = judges.Judge('rating20', parser.Grammar('Rating', 1, 20), {'r': rating_judge.RUBRIC},
                        'r', '\nRating: ')
  with pytest.raises(ValueError, match=r"one chain of tokens.*'20' is"):
    judges.judge(tiny, twenty, PROMPTS, RESPONSES, settings, progress=False)
  texts, scores = judges.judge(tiny, ten, PROMPTS, RESPONSES,
                               judges.JudgeSettings(kind='rating10', k=1, max_new_tokens=4),
                               progress=False)
  assert len(texts) == 2 and scores.scores_RxK.shape == (2, 1)
