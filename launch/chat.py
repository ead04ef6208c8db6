r"""Loads a model and prints its greedy reply to one chat message.

  python launch/chat.py --model=smollm2-135m-instruct \
      --prompt="Give me three tips for learning a language." --max_new_tokens=64
  python launch/chat.py --model=/tmp/srlm_demo/iter_1/dpo/params   # M2, as the demo wrote it
"""

from absl import app
from absl import flags

import srlm_jax
from srlm_jax import console

_MODEL = flags.DEFINE_string('model', 'smollm2-135m-instruct',
                             'A model directory the loop wrote (<workdir>/iter_1/dpo/params), a '
                             'Hugging Face directory, a .gguf file or smollm2-135m-instruct.')
_PROMPT = flags.DEFINE_string('prompt', 'What is the capital of France?', 'The user message.')
_SYSTEM = flags.DEFINE_string('system', None, 'An optional system message.')
_MAX_NEW_TOKENS = flags.DEFINE_integer('max_new_tokens', 64, 'Tokens to generate at most.')
_DTYPE = flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16'], 'Param dtype (default: file).')


def main(argv):
  del argv
  console.quiet_third_party()  # absl/jax INFO logs only with --verbosity
  model = srlm_jax.load(_MODEL.value, dtype=_DTYPE.value)
  messages = [{'role': 'system', 'content': _SYSTEM.value}] if _SYSTEM.value else []
  messages.append({'role': 'user', 'content': _PROMPT.value})
  [[reply]] = srlm_jax.generate(model, [messages], max_new_tokens=_MAX_NEW_TOKENS.value,
                                progress=False)
  print(reply)


if __name__ == '__main__':
  app.run(main)
