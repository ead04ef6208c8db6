"""Self-instruction prompt parsing, filtering and deduplication."""

import numpy as np
import pytest

from srlm_jax import instructions

SEEDS = ['Explain how a rainbow forms.', 'Write a haiku about autumn leaves.',
         'What is the difference between weather and climate?', 'List five uses for baking soda.',
         'How do I reverse a list in Python?', 'Summarize the plot of a heist movie.',
         'Give me tips for a job interview.', 'Translate "good morning" into French.',
         'Why is the sky blue?']


def test_few_shot_request_numbers_examples_and_asks_for_the_next():
  text = instructions.few_shot_request(SEEDS[:3])
  assert 'Task 1: Explain how a rainbow forms.' in text
  assert 'Task 3: What is the difference' in text
  assert text.endswith('Task 4:')


def test_draw_examples_without_replacement():
  rng = np.random.default_rng(0)
  draws = instructions.draw_examples(SEEDS, 50, 8, rng)
  assert all(len(set(d)) == 8 and set(d) <= set(SEEDS) for d in draws)
  with pytest.raises(ValueError, match='at least 8 seed prompts'):
    instructions.draw_examples(SEEDS[:5], 1, 8, rng)


@pytest.mark.parametrize('raw, expected', [
    ('Describe the water cycle in simple terms.', 'Describe the water cycle in simple terms.'),
    ('Task 10: Describe the water cycle.\n\nThe water cycle is...', 'Describe the water cycle.'),
    ('**Task 9:** How do bees make honey?\nAnswer: Bees collect nectar', 'How do bees make honey?'),
    ('"Write a limerick about a cat."', 'Write a limerick about a cat.'),
    ('1. Name three planets.\nTask 10: something else', 'Name three planets.'),
    ('   ', ''),
])
def test_extract_prompt(raw, expected):
  assert instructions.extract_prompt(raw) == expected


def test_rouge_l_against_hand_computed_values():
  a, b = 'the cat sat on the mat'.split(), 'the cat lay on a mat'.split()
  # LCS = the cat on mat (4); P = 4/6, R = 4/6, F1 = 2/3.
  assert instructions.rouge_l(a, b) == pytest.approx(2 / 3)
  assert instructions.rouge_l(a, a) == 1.0
  assert instructions.rouge_l(a, []) == 0.0
  assert instructions.rouge_l('a b c d'.split(), 'd c b a'.split()) == pytest.approx(0.25)


@pytest.mark.parametrize('prompt, reason', [
    ('', 'empty'), ('Sure!', 'too_short'), ('word ' * 200, 'too_long'),
    ('The mitochondria is the powerhouse of the cell.', 'not_an_instruction'),
    ('Explain photosynthesis to a child.', None), ('Is coffee bad for your heart?', None),
])
def test_reject_reason(prompt, reason):
  assert instructions.reject_reason(prompt) == reason


def test_select_prompts_filters_and_deduplicates():
  raw = ['Explain how a rainbow forms.',  # copy of a seed
         'Describe how volcanoes erupt and why.',
         'describe how volcanoes erupt, and why!',  # exact duplicate after normalising
         'Describe how volcanoes erupt and explain why.',  # near duplicate (ROUGE-L 0.93)
         'Explain how a rainbow is formed.',  # near duplicate of a seed
         'A sentence that is not a task at all.',
         '',
         'Write a short poem about the sea.']
  sel = instructions.select_prompts(raw, SEEDS)
  assert [p for _, p in sel.kept] == ['Describe how volcanoes erupt and why.',
                                      'Write a short poem about the sea.']
  reasons = {i: r for i, _, r in sel.rejected}
  assert reasons == {0: 'copy_of_seed', 2: 'duplicate', 3: 'near_duplicate',
                     4: 'near_duplicate_of_seed', 5: 'not_an_instruction', 6: 'empty'}
  assert sel.counts() == {'generated': 8, 'kept': 2, 'copy_of_seed': 1, 'duplicate': 1,
                          'near_duplicate': 1, 'near_duplicate_of_seed': 1,
                          'not_an_instruction': 1, 'empty': 1}
