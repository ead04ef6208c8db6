r"""Samples completions for a JSONL file of prompts and writes them as JSONL.

Each input line is {"prompt": "..."} or {"messages": [{"role": ..., "content": ...}, ...]}; other
fields are copied to the output, which adds "completions" (n strings), "stop_reasons",
"num_tokens" and the sampling settings.

  python launch/sample.py --model=smollm2-135m-instruct --prompts=prompts.jsonl \
      --out=/tmp/samples.jsonl --n=4 --max_new_tokens=256 --temperature=0.7 --top_p=0.9
"""

import json

from absl import app
from absl import flags

import srlm_jax
from srlm_jax import console
from srlm_jax import rollout

_MODEL = flags.DEFINE_string('model', 'smollm2-135m-instruct',
                             'A model directory the loop wrote (<workdir>/iter_1/dpo/params), a '
                             'Hugging Face directory, a .gguf file or smollm2-135m-instruct.')
_PROMPTS = flags.DEFINE_string('prompts', None, 'JSONL, one {"prompt"} or {"messages"} a line.',
                               required=True)
_OUT = flags.DEFINE_string('out', None, 'Where to write the JSONL results.', required=True)
_N = flags.DEFINE_integer('n', 1, 'Completions per prompt.')
_MAX_NEW_TOKENS = flags.DEFINE_integer('max_new_tokens', 256, 'Tokens to generate at most.')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.0, '0 is greedy.')
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'Nucleus filter (1 keeps everything).')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'Keep the k most likely tokens (0 keeps everything).')
_MIN_P = flags.DEFINE_float('min_p', 0.0, 'Drop tokens below min_p times the top probability.')
_STOP = flags.DEFINE_multi_string('stop', [], 'A stop string (repeatable).')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', None, 'Prompts per device batch.')
_DTYPE = flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16'], 'Param dtype (default: file).')
_TRUNCATE = flags.DEFINE_bool(
    'truncate_prompts', False, 'A prompt too long for the model\'s context beside max_new_tokens '
    'loses the middle of its tokens (recorded as prompt_truncated) instead of being an error.')


def read_prompts(path: str) -> tuple[list, list]:
  """Returns (the records of a prompts JSONL file, each with a 'prompt' or 'messages' field,
  and each record's 'file:line')."""
  records, places = [], []
  with open(path, encoding='utf-8') as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f'{path}:{line_no}'
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{where}: not valid JSON ({e})') from e
      if not isinstance(record, dict) or ('prompt' in record) == ('messages' in record):
        raise ValueError(f'{where}: expected an object with exactly one of "prompt" (a string) or '
                         f'"messages" (a list of {{"role", "content"}})')
      if 'prompt' in record and not isinstance(record['prompt'], str):
        raise ValueError(f'{where}: "prompt" must be a string, not '
                         f'{type(record["prompt"]).__name__}')
      msgs = record.get('messages', [])
      if 'messages' in record and (not isinstance(msgs, list) or not msgs or not all(
          isinstance(m, dict) and isinstance(m.get('role'), str) and
          isinstance(m.get('content'), str) for m in msgs)):
        raise ValueError(f'{where}: "messages" must be a non-empty list of '
                         '{"role": str, "content": str}')
      records.append(record)
      places.append(where)
  if not records:
    raise ValueError(f'{path}: no prompts')
  return records, places


def main(argv):
  del argv
  console.quiet_third_party()  # absl/jax INFO logs only with --verbosity
  records, places = read_prompts(_PROMPTS.value)
  model = srlm_jax.load(_MODEL.value, dtype=_DTYPE.value)
  settings = dict(n=_N.value, max_new_tokens=_MAX_NEW_TOKENS.value,
                  temperature=_TEMPERATURE.value, top_p=_TOP_P.value, top_k=_TOP_K.value,
                  min_p=_MIN_P.value, stop=tuple(_STOP.value), seed=_SEED.value)
  prompts = [r['prompt'] if 'prompt' in r else r['messages'] for r in records]
  # Each prompt must fit the model's context beside max_new_tokens: an error naming file:line
  # before any sampling, or a truncation recorded per record.
  results = rollout.generate_tokens(model, prompts, batch_size=_BATCH_SIZE.value, where=places,
                                    truncate=_TRUNCATE.value, **settings)
  with open(_OUT.value, 'w', encoding='utf-8') as f:
    for record, comps in zip(records, results):
      out = dict(record, completions=[c.text for c in comps],
                 stop_reasons=[c.stop_reason.name.lower() for c in comps],
                 num_tokens=[len(c.tokens) for c in comps],
                 **({'prompt_truncated': comps[0].prompt_truncated} if _TRUNCATE.value else {}),
                 sampling=dict(settings, stop=list(settings['stop']), model=_MODEL.value))
      f.write(json.dumps(out, ensure_ascii=False) + '\n')
  print(f'wrote {len(results)} prompts x {_N.value} completions to {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
