"""A launcher's --help: its docstring, its own flags and every field of its config file.

Config files comment each field where it is set (`c.creation.n_candidates = 4  # N responses
per prompt`, or a comment block on the lines above); `field_comments` reads those comments
back from the file and the config files it loads (`load('sft')` in common.py puts sft.py's
fields under `sft.`), so the help shows each field's resolved default with its comment.

  if __name__ == '__main__':
    config_help.handle_help(sys.argv, __doc__, default_config='configs/sft.py')
    app.run(main)
"""

import io
import os
import re
import sys
import tokenize
from typing import Optional, Sequence

from srlm_jax import config_files

HELP_ARGS = ('--help', '-h', '-help', '--helpshort', '-?')
_ASSIGN = re.compile(r'^\s*c\.([\w.]+)\s*=')
_LOAD_SUBCONFIG = re.compile(r"^\s*c\.([\w.]+)\s*=\s*load\('(\w+)'\)")
_LOAD_BASE = re.compile(r"""(?:load\('(\w+)'\)|['"](\w+)\.py['"])""")


def _comments(source: str) -> dict:
  """Returns {line number: comment text} of the source's comments."""
  out = {}
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      out[tok.start[0]] = tok.string.lstrip('#').strip()
  return out


def field_comments(path: str, prefix: str = '', _seen: Optional[set] = None) -> dict:
  """Returns {field path: comment} for a config file and the config files it loads.

  A field's comment is its trailing comment, else the comment lines right above it. A field
  that a file sets again keeps the comment of the file it builds on (e.g. tiny.py on common.py),
  followed by the file's own comment as `[tiny.py: ...]`.
  """
  seen = _seen if _seen is not None else set()
  path = os.path.abspath(path)
  if path in seen or not os.path.exists(path):
    return {}
  seen.add(path)
  with open(path, encoding='utf-8') as f:
    source = f.read()
  lines = source.splitlines()
  comments = _comments(source)
  out = {}  # in the order the fields are set, the configs a file loads at the load
  here, name = os.path.dirname(path), os.path.basename(path)
  for number, line in enumerate(lines, 1):
    sub = _LOAD_SUBCONFIG.match(line)
    loaded = []
    if sub:  # c.sft = load('sft').get_config(): sft.py's fields under 'sft.'
      loaded = [(f'{sub.group(2)}.py', f'{prefix}{sub.group(1)}.')]
    elif not line.lstrip().startswith(('#', 'def ')):
      loaded = [(f'{a or b}.py', prefix) for a, b in _LOAD_BASE.findall(line)]
    for file, sub_prefix in loaded:
      for key, text in field_comments(os.path.join(here, file), sub_prefix, seen).items():
        out.setdefault(key, text)
    target = _ASSIGN.match(line)
    if not target:
      continue
    text = comments.get(number, '') if '#' in line else ''
    if not text:  # a comment block directly above the assignment
      block, k = [], number - 1
      while k >= 1 and lines[k - 1].strip().startswith('#'):
        block.insert(0, comments.get(k, ''))
        k -= 1
      text = ' '.join(block)
    key = f'{prefix}{target.group(1)}'
    if text and out.get(key):  # a field this file changes: its meaning, then why it changed
      out[key] = f'{out[key]} [{name}: {text}]'
    elif text:
      out[key] = text
  return out


def config_path(name: str) -> str:
  """Returns the path of configs/<name> in this checkout, relative to the working directory."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return os.path.relpath(os.path.join(root, 'configs', name))


load_config = config_files.get_config  # a --config value ('path.py' or 'path.py:arg')


def flatten(config, prefix: str = '') -> list:
  """Returns [(dotted field name, value)] of every leaf field of a ConfigDict."""
  out = []
  for key, value in config.items():
    if hasattr(value, 'items') and hasattr(value, 'to_dict'):
      out += flatten(value, f'{prefix}{key}.')
    else:
      out.append((f'{prefix}{key}', value))
  return out


def field_lines(spec: str) -> list:
  """Returns one line per field of the config: `name = default  comment`."""
  path = spec.partition(':')[0]
  comments = field_comments(path)
  order = {k: i for i, k in enumerate(comments)}  # the files' order, not ConfigDict's sorted one
  fields = sorted(((k, repr(v)) for k, v in flatten(load_config(spec))),
                  key=lambda kv: order.get(kv[0], len(order)))
  width = min(max(len(k) + len(v) + 3 for k, v in fields), 48)
  lines = []
  for key, value in fields:
    left = f'{key} = {value}'
    if len(left) > width:
      left = left[:width - 3] + '...'
    lines.append(f'  {left:<{width}}  {comments.get(key, "")}'.rstrip())
  return lines


def help_text(argv: Sequence[str], doc: str, default_config: str) -> str:
  """Returns the launcher's help: docstring, flags (main module) and config fields."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  spec = default_config
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      spec = arg.split('=', 1)[1]
    elif arg == '--config' and i + 1 < len(argv):
      spec = argv[i + 1]
  lines = [doc.strip(), '', 'flags:']
  module_flags = [f for m in (sys.argv[0], 'srlm_jax.distributed')
                  for f in flags.FLAGS.get_flags_for_module(m)]
  for flag in sorted(module_flags, key=lambda f: f.name):
    if flag.name == 'config':
      continue
    default = '' if flag.default is None else f' (default: {flag.default!r})'
    lines.append(f'  --{flag.name}: {flag.help}{default}')
  lines += ['  --verbosity: 0 shows INFO logs (Orbax, absl, jax), which are off by default',
            '  --helpfull: every absl flag', '',
            f'--config={spec} (or another config file); its fields, overridden with '
            '--config.<field>=<value>:']
  try:
    lines += field_lines(spec)
  except Exception as e:  # pylint: disable=broad-except
    lines.append(f'  (could not load {spec}: {type(e).__name__}: {e}; its fields are commented '
                 'in the file)')
  return '\n'.join(lines)


def handle_help(argv: Sequence[str], doc: str, default_config: str) -> None:
  """Prints help_text and exits 0 when argv asks for --help; returns otherwise."""
  if not any(a in HELP_ARGS for a in argv[1:]):
    return
  print(help_text(argv, doc, default_config))
  sys.exit(0)
