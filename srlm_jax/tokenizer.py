"""One tokenizer interface over Hugging Face tokenizers (tokenizer.json or GGUF) and sentencepiece.

`from_pretrained(path)` accepts a tokenizer directory, a .gguf file or a sentencepiece
tokenizer.model. Chat formatting uses the tokenizer's own chat template when it has one, and
otherwise Llama 2's `[INST]` format, tokenised turn by turn as Meta's reference code does:

    <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {assistant} </s>
    <s>[INST] {user} [/INST]   (no line break between the turns)

`vocab_texts()` gives the text each id adds to a decoded sequence, so that device code can
scan generated ids for patterns such as 'Score: 4' without decoding them on the host.
A GGUF file's vocabulary is rebuilt from its metadata by `gguf_tokenizer`.
"""

from collections.abc import Iterable, Mapping, Sequence
import functools
import os
import re

from srlm_jax import gguf_tokenizer

# The package uses transformers for tokenizers only; without torch installed (the main path)
# transformers would advise at import that its models are unavailable, which is noise here.
os.environ.setdefault('TRANSFORMERS_NO_ADVISORY_WARNINGS', '1')

# Special tokens that end a generated turn, in the order preferred as the primary eos id.
_END_OF_TURN = ('<|im_end|>', '<|eot_id|>', '<end_of_turn>', '<|end|>', '<|eom_id|>',
                '<|endoftext|>', '<|end_of_text|>', '</s>', '<eos>')
_BYTE_PIECE = re.compile(r'<0x([0-9A-Fa-f]{2})>')
_TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'tokenizer.model', '*.gguf')


def _bytes_text(data: bytes) -> str:
  """Returns `data` as UTF-8 text, or (a lone multi-byte fragment) one latin-1 char per byte."""
  # Fragments of a multi-byte character only ever hold bytes >= 0x80, so the latin-1 fallback
  # keeps ASCII exact and never produces '\ufffd'.
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError:
    return data.decode('latin-1')


def _piece_text(piece: str) -> str:
  """Returns the text of a sentencepiece-style piece: '▁' -> ' ', '<0xNN>' -> that byte's char."""
  match = _BYTE_PIECE.fullmatch(piece)
  return chr(int(match.group(1), 16)) if match else piece.replace('\u2581', ' ')


class Tokenizer:
  """Shared interface; the base class formats chats in Llama 2's `[INST]` style."""

  vocab_size: int  # ids the embedding must cover, added tokens included
  bos_id: int | None
  eos_id: int  # primary end of sequence (the end-of-turn id for chat models)
  eos_ids: tuple[int, ...]  # every id that ends a generated turn, eos_id first
  pad_id: int

  def __init__(self, source: str, bos_text: str = '<s>', eos_text: str = '</s>'):
    self.source = source  # the file or directory it was loaded from, for error messages
    self._bos_text, self._eos_text = bos_text, eos_text

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    """Returns the ids of `text`, with no special tokens unless `add_bos`."""
    raise NotImplementedError

  def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
    """Returns the text of `ids`."""
    raise NotImplementedError

  def vocab_texts(self) -> list[str]:
    """Returns, for every id, the text that token adds after other text ('' for special ones)."""
    return list(self._texts)  # pytype: disable=attribute-error  (a cached_property of subclasses)

  def _llama2_turns(self, messages: Sequence[Mapping[str, str]]) -> list[tuple[str, str | None]]:
    """Returns the (user, assistant or None) turns of a chat, the system prompt merged in."""
    messages = list(messages)
    if messages and messages[0]['role'] == 'system':
      if len(messages) < 2:
        raise ValueError(f'{self.source}: the [INST] chat format needs a user turn after system')
      merged = f'<<SYS>>\n{messages[0]["content"]}\n<</SYS>>\n\n{messages[1]["content"]}'
      messages = [{'role': messages[1]['role'], 'content': merged}] + messages[2:]
    roles = [m['role'] for m in messages]
    if not roles or any(r != ('user' if i % 2 == 0 else 'assistant') for i, r in enumerate(roles)):
      raise ValueError(f'{self.source}: the [INST] chat format needs roles user, assistant, user, '
                       f'... after an optional system message; got {roles}')
    contents = [m['content'].strip() for m in messages] + [None]
    return list(zip(contents[0::2], contents[1::2]))

  def chat_text(self, messages: Sequence[Mapping[str, str]], *,
                add_generation_prompt: bool = True) -> str:
    """Returns the chat as one prompt string, in Llama 2's [INST] format."""
    del add_generation_prompt  # The closing '[/INST]' of a user turn is the generation prompt.
    parts = []
    for user, answer in self._llama2_turns(messages):
      parts.append(f'{self._bos_text}[INST] {user} [/INST]')
      if answer is not None:
        parts.append(f' {answer} {self._eos_text}')
    return ''.join(parts)

  def encode_chat(self, messages: Sequence[Mapping[str, str]], *,
                  add_generation_prompt: bool = True) -> list[int]:
    """Returns the ids of `chat_text(messages)`, each turn tokenised on its own as Meta does."""
    del add_generation_prompt
    ids = []
    for user, answer in self._llama2_turns(messages):
      if answer is None:
        ids += self.encode(f'[INST] {user} [/INST]', add_bos=True)
      else:
        ids += self.encode(f'[INST] {user} [/INST] {answer} ', add_bos=True) + [self.eos_id]
    return ids


class HFTokenizer(Tokenizer):
  """A transformers tokenizer (from tokenizer.json or GGUF metadata)."""

  def __init__(self, tok, source: str):
    super().__init__(source, tok.bos_token or '<s>', tok.eos_token or '</s>')
    self.hf = tok
    self.vocab_size = len(tok)
    self.bos_id = tok.bos_token_id
    template = tok.chat_template if isinstance(tok.chat_template, str) else ''
    specials = {t.content: i for i, t in tok.added_tokens_decoder.items() if t.special}
    ends = [specials[t] for t in _END_OF_TURN if t in specials]
    # A chat model's turns end with the end-of-turn token its template writes, not its eos.
    eos = next((specials[t] for t in _END_OF_TURN if t in specials and t in template),
               tok.eos_token_id if tok.eos_token_id is not None else (ends + [None])[0])
    if eos is None:
      raise ValueError(f'{source}: the tokenizer has no eos token and none of {_END_OF_TURN}')
    self.eos_id = eos
    self.eos_ids = (eos,) + tuple(sorted((set(ends) | {tok.eos_token_id}) - {eos, None}))
    self.pad_id = eos if tok.pad_token_id is None else tok.pad_token_id

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    """Returns the ids of `text` read as plain text (no special tokens), BOS first if `add_bos`."""
    ids = self._plain_ids(text)
    return [self.bos_id] + ids if add_bos and self.bos_id is not None else ids

  def _plain_ids(self, text: str) -> list[int]:
    """Returns the ids of `text` with special-token strings in it split into ordinary pieces."""
    if not text:
      return []
    if self._plain is not None:
      return list(self._plain.encode(text, add_special_tokens=False).ids)
    return list(self.hf.encode(text, add_special_tokens=False, split_special_tokens=True))

  @functools.cached_property
  def _plain(self):
    """Returns a copy of the backend tokenizer that never matches special tokens, or None."""
    backend = getattr(self.hf, 'backend_tokenizer', None)
    if backend is None:
      return None
    import tokenizers  # pylint: disable=g-import-not-at-top
    # A copy: the flag lives on the tokenizer object, which the transformers wrapper shares.
    plain = tokenizers.Tokenizer.from_str(backend.to_str())
    plain.encode_special_tokens = True
    return plain

  @functools.cached_property
  def _specials(self) -> tuple[dict[str, int], re.Pattern | None]:
    """Returns the special tokens by text and a regex matching any of them, longest first."""
    specials = {t.content: i for i, t in self.hf.added_tokens_decoder.items() if t.special}
    texts = sorted(specials, key=len, reverse=True)
    return specials, re.compile('|'.join(map(re.escape, texts))) if texts else None

  def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
    """Returns the text of `ids`."""
    return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)

  def chat_text(self, messages: Sequence[Mapping[str, str]], *,
                add_generation_prompt: bool = True) -> str:
    """Returns the chat rendered by the tokenizer's template (Llama 2's format without one)."""
    if not self.hf.chat_template:
      return super().chat_text(messages)
    return self.hf.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)

  def _chat_pieces(self, messages: Sequence[Mapping[str, str]],
                   add_generation_prompt: bool) -> list[tuple[str, bool]]:
    """Returns the rendered chat as (text, is_message_content) pieces in order.

    The template is rendered twice: with each content replaced by a marker, which gives the
    template's own text between contents, and with the real contents, which gives each content
    as the template writes it (some templates trim it).
    """
    messages = [dict(m) for m in messages]
    contents = [m['content'] for m in messages]
    mark = '\ue000'
    while any(mark in c for c in contents):  # a marker no content holds
      mark += '\ue000'
    marks = [f'{mark}{i}\ue001' for i in range(len(messages))]
    skeleton = self.chat_text([dict(m, content=k) for m, k in zip(messages, marks)],
                              add_generation_prompt=add_generation_prompt)
    full = self.chat_text(messages, add_generation_prompt=add_generation_prompt)
    parts = re.split(f'({re.escape(mark)}\\d+\ue001)', skeleton)
    pieces, pos = [], 0
    for j, part in enumerate(parts):
      if j % 2 == 0:
        if not full.startswith(part, pos):
          raise ValueError(f'{self.source}: the chat template renders text that depends on the '
                           f'message contents at character {pos}; cannot keep contents apart')
        pieces.append((part, False))
        pos += len(part)
        continue
      i, after = int(part[len(mark):-1]), parts[j + 1]
      content = contents[i]
      for written in dict.fromkeys((content, content.strip(), content.lstrip(), content.rstrip())):
        if full.startswith(written + after, pos):
          break
      else:
        raise ValueError(f'{self.source}: the chat template changes message {i}\'s content '
                         'beyond trimming whitespace; cannot keep contents apart')
      pieces.append((written, True))
      pos += len(written)
    if pos != len(full):
      raise ValueError(f'{self.source}: the chat template rendered {len(full) - pos} characters '
                       'past the message contents it was given')
    return pieces

  def encode_chat(self, messages: Sequence[Mapping[str, str]], *,
                  add_generation_prompt: bool = True) -> list[int]:
    """Returns the chat's ids: the template's special tokens as such, contents as plain text.

    Contents are never searched for special tokens, so a reply that quotes '<|im_end|>' cannot
    close its turn. Text between two special tokens is encoded in one piece, as
    `apply_chat_template(tokenize=True)` does, so a chat whose contents hold no special-token
    text gets exactly transformers' ids.
    """
    if not self.hf.chat_template:
      return super().encode_chat(messages)
    specials, pattern = self._specials
    ids, run = [], []
    for text, is_content in self._chat_pieces(messages, add_generation_prompt):
      start = 0
      for match in ([] if is_content or pattern is None else pattern.finditer(text)):
        run.append(text[start:match.start()])
        ids += self._plain_ids(''.join(run)) + [specials[match.group()]]
        run, start = [], match.end()
      run.append(text[start:])
    return ids + self._plain_ids(''.join(run))

  @functools.cached_property
  def _texts(self) -> list[str]:
    added = self.hf.added_tokens_decoder
    special = set(self.hf.all_special_ids) | {i for i, t in added.items() if t.special}
    decoder = getattr(getattr(self.hf, 'backend_tokenizer', None), 'decoder', None)
    byte_level, byte_of = 'ByteLevel' in str(decoder), gguf_tokenizer.byte_decoder()
    texts = []
    for i, token in enumerate(self.hf.convert_ids_to_tokens(list(range(self.vocab_size)))):
      if token is None or i in special:
        texts.append('')
      elif i in added:
        texts.append(added[i].content)
      elif byte_level:
        texts.append(_bytes_text(b''.join(
            bytes([byte_of[c]]) if c in byte_of else c.encode('utf-8') for c in token)))
      else:
        texts.append(_piece_text(token))
    return texts


class SentencePieceTokenizer(Tokenizer):
  """A sentencepiece model (Llama 2 style) with Llama 2's [INST] chat format."""

  def __init__(self, sp, source: str):
    if sp.eos_id() < 0:
      raise ValueError(f'{source}: the sentencepiece model has no eos piece')
    bos_text = sp.id_to_piece(sp.bos_id()) if sp.bos_id() >= 0 else ''
    super().__init__(source, bos_text, sp.id_to_piece(sp.eos_id()))
    self.sp = sp
    self.vocab_size = sp.get_piece_size()
    self.bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
    self.eos_id = sp.eos_id()
    self.eos_ids = (self.eos_id,)
    self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else self.eos_id

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    """Returns the ids of `text`, with no special tokens unless `add_bos`."""
    ids = self.sp.encode(text)
    return [self.bos_id] + ids if add_bos and self.bos_id is not None else ids

  def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
    """Returns the text of `ids`; control pieces such as <s> appear unless `skip_special`."""
    ids = [int(i) for i in ids]
    if skip_special:
      return self.sp.decode(ids)  # sentencepiece drops control pieces itself
    parts, run = [], []
    for i in ids:
      if self.sp.is_control(i):
        parts += [self.sp.decode(run), self.sp.id_to_piece(i)]
        run = []
      else:
        run.append(i)
    return ''.join(parts + [self.sp.decode(run)])

  @functools.cached_property
  def _texts(self) -> list[str]:
    sp = self.sp
    return ['' if sp.is_control(i) or sp.is_unknown(i) else _piece_text(sp.id_to_piece(i))
            for i in range(self.vocab_size)]


def _require(path: str, what: str) -> None:
  """Raises FileNotFoundError naming `path` and `what` was looked for, when it does not exist."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: no such file or directory; expected {what}')


def from_gguf(path: str) -> Tokenizer:
  """Returns the tokenizer stored in a GGUF file's metadata, with its chat template."""
  _require(path, 'a .gguf file')
  path = os.path.abspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: is not a file; expected a .gguf file')
  return HFTokenizer(gguf_tokenizer.load(path, os.path.getmtime(path)), path)


def from_sentencepiece(path: str) -> Tokenizer:
  """Returns the tokenizer of a sentencepiece model file or of a directory holding one."""
  import sentencepiece  # pylint: disable=g-import-not-at-top
  if os.path.isdir(path):
    path = os.path.join(path, 'tokenizer.model')
  _require(path, 'a sentencepiece tokenizer.model')
  sp = sentencepiece.SentencePieceProcessor()
  try:
    sp.load(path)
  except (OSError, RuntimeError) as e:
    raise ValueError(f'{path}: not a readable sentencepiece model ({e})') from e
  return SentencePieceTokenizer(sp, path)


def from_pretrained(path: str) -> Tokenizer:
  """Returns the tokenizer of a directory, a .gguf file or a sentencepiece model file."""
  _require(path, f'a tokenizer directory (with one of {_TOKENIZER_FILES}), a .gguf file or a '
           'tokenizer.model file')
  if os.path.isfile(path):
    if path.endswith('.gguf'):
      return from_gguf(path)
    if os.path.basename(path) in ('tokenizer.json', 'tokenizer_config.json'):
      return from_pretrained(os.path.dirname(path) or '.')
    return from_sentencepiece(path)
  names = os.listdir(path)
  if 'tokenizer.json' in names:
    # tokenizer.json holds the whole pipeline; the generic class reads it as written, and unlike
    # AutoTokenizer it does not import transformers' model configs (which import torch).
    from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top
    return HFTokenizer(PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True), path)
  if 'tokenizer_config.json' in names:
    from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
    return HFTokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True), path)
  if 'tokenizer.model' in names:
    return from_sentencepiece(os.path.join(path, 'tokenizer.model'))
  ggufs = sorted(n for n in names if n.endswith('.gguf'))
  if len(ggufs) == 1:
    return from_gguf(os.path.join(path, ggufs[0]))
  raise FileNotFoundError(
      f'{path}: no tokenizer files; looked for {_TOKENIZER_FILES}' +
      (f' (found several .gguf files, pass one: {ggufs})' if ggufs else ''))
