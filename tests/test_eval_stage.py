"""The eval stage's instruction-following checkers (evaluate/ifeval.py) on hand-written cases,
the embedded prompt file, and the accuracies against a hand count."""

import json

import numpy as np
import pytest

from srlm_jax.evaluate import ifeval
from srlm_jax.pipeline import seeds

# (instruction, a response that follows it, one that does not)
CASES = [
    ({'type': 'word_count', 'relation': 'at_least', 'n': 5},
     "It's a bright, sunny day outside.", 'Too short here.'),
    ({'type': 'word_count', 'relation': 'at_most', 'n': 3}, 'Yes, it does.',
     'No, it really does not.'),
    ({'type': 'word_count', 'relation': 'exactly', 'n': 2}, 'Hello there!', 'Hello'),
    ({'type': 'bullet_count', 'n': 3}, 'Benefits:\n* one\n* two\n- three',
     '* one\n* two\nthree'),
    ({'type': 'paragraph_count', 'n': 2}, 'First part.\n\nSecond part.', 'One block\nof text.'),
    ({'type': 'keywords', 'words': ['coffee', 'toast']}, 'Toast and COFFEE.',
     'Coffee and toaster.'),
    ({'type': 'forbidden_words', 'words': ['tree']}, 'Streets full of oaks.', 'A tall tree.'),
    ({'type': 'keyword_frequency', 'word': 'wave', 'relation': 'at_least', 'n': 2},
     'Wave after wave.', 'A wavelike waves.'),
    ({'type': 'lowercase'}, 'all quiet here.', 'all quiet Here.'),
    ({'type': 'uppercase'}, 'CAREFUL: WET FLOOR!', 'CAREFUL: wet floor!'),
    ({'type': 'no_commas'}, 'No commas at all.', 'One, two.'),
    ({'type': 'json_format'}, '```json\n{"city": "Tokyo", "country": "Japan"}\n```',
     'city: Tokyo'),
    ({'type': 'title'}, '<<Sea Song>>\nWaves roll in.', '<Sea Song>\nWaves roll in.'),
    ({'type': 'end_phrase', 'phrase': 'Any questions?'}, 'Save a little. Any questions?\n',
     'Any questions? Save a little.'),
    ({'type': 'start_phrase', 'phrase': 'Yes'}, 'Yes, most cats can swim.', 'Most cats: yes.'),
    ({'type': 'postscript', 'marker': 'P.S.'}, 'Thank you!\n\nP.S. See you soon.',
     'Thank you! PS see you.'),
    ({'type': 'placeholders', 'n': 2}, 'Join us on [date] at [place].', 'Join us on [date].'),
    ({'type': 'highlights', 'n': 2}, '*Boil* the water, then *wait*.', '*Boil* the water.'),
    ({'type': 'quotation'}, '"The moon orbits Earth."', 'The moon orbits "Earth".'),
]


def test_every_checker_has_hand_cases():
  assert sorted({c[0]['type'] for c in CASES}) == sorted(ifeval.CHECKERS)


@pytest.mark.parametrize('instruction, good, bad', CASES,
                         ids=[f'{c[0]["type"]}-{i}' for i, c in enumerate(CASES)])
def test_checker_on_hand_cases(instruction, good, bad):
  assert ifeval.check(instruction, good)
  assert not ifeval.check(instruction, bad)


def test_loose_forgives_a_preamble_and_markdown():
  record = {'prompt': 'p', 'instructions': [{'type': 'lowercase'},
                                            {'type': 'highlights', 'n': 1}]}
  verdicts = ifeval.follows(record, 'Sure! Here it is:\nall *lowercase* text')
  assert verdicts == {'strict': [False, True], 'loose': [True, True]}


def test_embedded_prompts_are_valid_and_cover_the_checkers():
  records = ifeval.load_prompts(seeds.data_path('embedded:ifeval_prompts.jsonl'))
  assert len(records) >= 16
  assert {i['type'] for r in records for i in r['instructions']} == set(ifeval.CHECKERS)


@pytest.mark.parametrize('line, message', [
    ('{"prompt": "Hi", "instructions": [{"type": "shout"}]}', r"instructions\[0\].type 'shout'"),
    ('{"prompt": "Hi", "instructions": [{"type": "word_count", "n": 3}]}', 'lacks relation'),
    ('{"prompt": "", "instructions": [{"type": "lowercase"}]}', '"prompt" must be'),
    ('{"prompt": "Hi"}', '"instructions" must be'),
    ('not json', 'not valid JSON'),
])
def test_bad_prompt_file_names_file_line_and_field(tmp_path, line, message):
  path = tmp_path / 'if.jsonl'
  path.write_text('{"prompt": "ok", "instructions": [{"type": "no_commas"}]}\n' + line + '\n')
  with pytest.raises(ValueError, match=f'{path}:2: .*{message}'):
    ifeval.load_prompts(str(path))


def test_score_against_a_hand_count():
  records = [
      {'id': 'a', 'prompt': 'p', 'instructions': [{'type': 'no_commas'}, {'type': 'lowercase'}]},
      {'id': 'b', 'prompt': 'p', 'instructions': [{'type': 'uppercase'}]},
      {'id': 'c', 'prompt': 'p', 'instructions': [{'type': 'word_count', 'relation': 'at_most',
                                                   'n': 2}]},
  ]
  responses = ['no commas here', 'Not upper', 'Sure:\ntwo words']
  scores, audit = ifeval.score(records, responses, n_boot=200, seed=0)
  # strict: a follows both, b fails, c has 3 words -> prompts 1/3, instructions 2/4;
  # loose: c without its first line has 2 words -> prompts 2/3, instructions 3/4
  assert scores['prompt_strict'] == pytest.approx(1 / 3)
  assert scores['instruction_strict'] == pytest.approx(2 / 4)
  assert scores['prompt_loose'] == pytest.approx(2 / 3)
  assert scores['instruction_loose'] == pytest.approx(3 / 4)
  lo, hi = scores['prompt_strict_ci']
  assert 0.0 <= lo <= 1 / 3 <= hi <= 1.0
  assert [a['strict'] for a in audit] == [[True, True], [False], [False]]
  json.dumps(scores)  # JSON-ready
  assert np.isfinite(scores['prompt_loose_ci']).all()


def test_identical_responses_are_ties_whatever_the_judge_says(monkeypatch):
  import importlib  # pylint: disable=g-import-not-at-top
  head_to_head = importlib.import_module('srlm_jax.evaluate.head_to_head')  # the module
  monkeypatch.setattr(head_to_head, 'compare_pointwise',
                      lambda *a, **k: np.array([1, -1, 1], np.int64))
  out = head_to_head.head_to_head(None, ['p', 'q', 'r'], ['x', 'y', 'z'], ['x', 'w', 'z'],
                                  [3, 3, 3], [3, 3, 3], None, n_boot=50)
  assert out['outcomes'] == [0, -1, 0] and out['identical'] == 2
  assert out['win_rate'] == pytest.approx((0.5 + 0 + 0.5) / 3)
