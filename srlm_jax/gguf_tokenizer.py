"""GGUF tokenizer metadata -> a transformers fast tokenizer, without transformers' GGUF reader.

llama.cpp stores a model's vocabulary in its GGUF metadata (`tokenizer.ggml.*`: tokens, token
types, merges, the pre-tokenizer type, special token ids, the chat template). `load(path)` builds
the same byte-level BPE pipeline from them with the `tokenizers` package; `tokenizer.from_gguf`
wraps the result. transformers' own GGUF reader is not used because it imports torch.
"""

import functools


@functools.cache
def byte_decoder() -> dict[str, int]:
  """Returns GPT-2's byte-level BPE map from printable stand-in chars back to bytes.

  Byte-level vocabularies (GGUF's and tokenizer.json's alike) spell tokens in this alphabet.
  """
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1),
               *range(ord('®'), ord('ÿ') + 1)]
  chars, extra = dict(zip(printable, printable)), 0
  for b in range(256):
    if b not in chars:
      chars[b], extra = 256 + extra, extra + 1
  return {chr(c): b for b, c in chars.items()}


# llama.cpp's GGUF token types (gguf.TokenType): control tokens are the special ones, such as
# <|im_end|>; user-defined ones are added tokens that are matched whole but are not special.
_GGUF_CONTROL, _GGUF_USER_DEFINED = 3, 4
# How each `tokenizer.ggml.pre` value splits text before byte-level BPE, as llama.cpp does:
# None is GPT-2's own split; 'digits' puts each digit on its own first (StarCoder, SmolLM).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r'\p{N}{1,3}', r'\p{N}')
_GGUF_PRE_SPLITS = {
    'default': None, 'gpt-2': None, 'gpt2': None,
    'smollm': 'digits', 'starcoder': 'digits', 'refact': 'digits',
    'llama-bpe': _LLAMA3_SPLIT, 'llama3': _LLAMA3_SPLIT, 'llama-v3': _LLAMA3_SPLIT,
    'smaug-bpe': _LLAMA3_SPLIT, 'falcon3': _LLAMA3_SPLIT,
    'qwen2': _QWEN2_SPLIT, 'deepseek-r1-qwen': _QWEN2_SPLIT,
}


def tokenizer_fields(path: str) -> dict:
  """Returns the GGUF file's `tokenizer.*` metadata, keyed without the 'tokenizer.' prefix."""
  import gguf  # pylint: disable=g-import-not-at-top
  try:
    reader = gguf.GGUFReader(path)
  except (OSError, ValueError) as e:
    raise ValueError(f'{path}: not a readable GGUF file ({e})') from e
  return {k[len('tokenizer.'):]: f.contents() for k, f in reader.fields.items()
          if k.startswith('tokenizer.')}


def _byte_level_pre_tokenizer(pre: str, path: str):
  """Returns the tokenizers pre-tokenizer of a byte-level GGUF vocabulary's pre-tokenizer type."""
  from tokenizers import pre_tokenizers, Regex  # pylint: disable=g-import-not-at-top
  if pre not in _GGUF_PRE_SPLITS:
    raise ValueError(f'{path}: GGUF pre-tokenizer type tokenizer.ggml.pre={pre!r} is not '
                     f'supported (supported: {sorted(_GGUF_PRE_SPLITS)}); load the model\'s '
                     'Hugging Face directory (tokenizer.json) instead')
  split = _GGUF_PRE_SPLITS[pre]
  if split is None:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if split == 'digits':
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                             use_regex=True)])
  return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior='isolated'),
                                  pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                           use_regex=False)])


@functools.lru_cache(maxsize=4)
def load(path: str, mtime: float):
  """Returns a transformers fast tokenizer built from a GGUF file's tokenizer metadata (cached).

  Only the `gguf` and `tokenizers` packages read the file: transformers' own GGUF reader imports
  torch. Byte-level BPE vocabularies (tokenizer.ggml.model 'gpt2': GPT-2, SmolLM, Llama 3,
  Qwen2) are supported; others are an error naming the file and the model type.
  """
  del mtime  # Part of the cache key only, so an edited file is read again.
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, models  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  fields = tokenizer_fields(path)
  kind = fields.get('ggml.model')
  if kind != 'gpt2':
    raise ValueError(f'{path}: GGUF tokenizer model tokenizer.ggml.model={kind!r} is not supported '
                     "(only byte-level BPE, 'gpt2'); load the model's Hugging Face directory "
                     '(tokenizer.json or tokenizer.model) instead')
  tokens = [str(t) for t in fields['ggml.tokens']]
  types = list(fields.get('ggml.token_type') or [1] * len(tokens))
  merges = [tuple(m.split(' ', 1)) for m in fields.get('ggml.merges') or ()]
  byte_of = byte_decoder()
  char_of = {b: c for c, b in byte_of.items()}
  # Tokens are stored in GPT-2's byte alphabet; a token spelt otherwise is respelt from its UTF-8
  # bytes, as transformers does, so that every id keeps its own vocabulary entry.
  vocab = {(t if all(c in byte_of for c in t) else ''.join(char_of[b] for b in t.encode('utf-8'))):
           i for i, t in enumerate(tokens)}
  if len(vocab) != len(tokens):
    raise ValueError(f'{path}: tokenizer.ggml.tokens holds {len(tokens) - len(vocab)} duplicate '
                     'tokens')
  backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None,
                                            continuing_subword_prefix='', end_of_word_suffix='',
                                            fuse_unk=False))
  backend.pre_tokenizer = _byte_level_pre_tokenizer(fields.get('ggml.pre', 'default'), path)
  backend.decoder = decoders.ByteLevel()
  # A control token spelt outside the byte alphabet is a mislabelled one (transformers skips it
  # too): adding it would grow the vocabulary past the embedding.
  backend.add_special_tokens([
      tokenizers.AddedToken(t, special=True, normalized=False)
      for t, kind in zip(tokens, types) if kind == _GGUF_CONTROL and all(c in byte_of for c in t)])
  backend.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False)
                      for t, kind in zip(tokens, types) if kind == _GGUF_USER_DEFINED])
  named = {}
  for name, key in (('bos_token', 'bos_token_id'), ('eos_token', 'eos_token_id'),
                    ('unk_token', 'unknown_token_id'), ('pad_token', 'padding_token_id')):
    i = fields.get(f'ggml.{key}')
    if i is not None:
      if not 0 <= int(i) < len(tokens):
        raise ValueError(f'{path}: tokenizer.ggml.{key}={i} is outside the {len(tokens)} tokens')
      named[name] = tokens[int(i)]
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend, chat_template=fields.get('chat_template'),
      add_bos_token=bool(fields.get('ggml.add_bos_token', False)),
      add_eos_token=bool(fields.get('ggml.add_eos_token', False)), **named)
