"""Final-answer extraction and safe arithmetic evaluation for free-form responses.

No `eval()`: expressions are parsed by a small recursive-descent parser over exact fractions
that accepts only numbers, + - * / (also x, ×, ÷), unary minus and parentheses. Anything else
is not an expression (returns None), so a response cannot run code or crash the checker.

Extraction rules (the last match wins, since a response may revise itself):
  * `final_number`: the number after the last "Answer:" (case-insensitive; also "answer is");
    without one, the last number in the text. Commas in 1,234 are thousands separators.
  * `final_expression`: the text after the last "Answer:" up to the end of its line, left of
    any "="; without one, the last line that holds an operator between numbers.
"""

import fractions
import re
from typing import List, Optional, Tuple

Fraction = fractions.Fraction

_NUMBER = r'-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?'
_NUMBER_RE = re.compile(_NUMBER)
_ANSWER_RE = re.compile(r'(?:answer\s*(?:is)?\s*[:=]?|\\boxed\{)\s*', re.IGNORECASE)
_TOKEN_RE = re.compile(r'\s*(?:(\d+(?:\.\d+)?)|([-+*/x×÷()]))')
# An equation written in a step: an arithmetic left side, '=', a number.
_EQUATION_RE = re.compile(r'([\d\s.+\-*/x×÷()]*\d[\d\s.+\-*/x×÷()]*)=\s*(' + _NUMBER + ')')
_OPS = {'x': '*', '×': '*', '÷': '/'}


def parse_number(text: str) -> Optional[Fraction]:
  """Returns the exact value of a number string (commas allowed as separators), or None."""
  try:
    return Fraction(text.replace(',', ''))
  except (ValueError, ZeroDivisionError):
    return None


def _tokens(text: str) -> Optional[List[str]]:
  """Returns the expression's tokens (numbers and operators), or None on any other char."""
  out, pos, text = [], 0, text.strip()
  while pos < len(text):
    m = _TOKEN_RE.match(text, pos)
    if not m:
      return None
    out.append(m.group(1) or _OPS.get(m.group(2), m.group(2)))
    pos = m.end()
    while pos < len(text) and text[pos].isspace():
      pos += 1
  return out


class _Parser:
  """expr := term (('+'|'-') term)*; term := unary (('*'|'/') unary)*; unary := '-' unary |
  atom; atom := number | '(' expr ')'."""

  def __init__(self, tokens):
    self.tokens, self.pos, self.numbers = tokens, 0, []

  def peek(self):
    return self.tokens[self.pos] if self.pos < len(self.tokens) else None

  def take(self):
    self.pos += 1
    return self.tokens[self.pos - 1]

  def expr(self):
    value = self.term()
    while self.peek() in ('+', '-'):
      op, rhs = self.take(), self.term()
      value = value + rhs if op == '+' else value - rhs
    return value

  def term(self):
    value = self.unary()
    while self.peek() in ('*', '/'):
      op, rhs = self.take(), self.unary()
      if op == '/' and rhs == 0:
        raise ZeroDivisionError
      value = value * rhs if op == '*' else value / rhs
    return value

  def unary(self):
    if self.peek() == '-':
      self.take()
      return -self.unary()
    return self.atom()

  def atom(self):
    tok = self.peek()
    if tok is None:
      raise ValueError('unexpected end')
    self.take()
    if tok == '(':
      value = self.expr()
      if self.peek() != ')':
        raise ValueError('missing )')
      self.take()
      return value
    if tok[0].isdigit():
      value = Fraction(tok)
      self.numbers.append(value)
      return value
    raise ValueError(f'unexpected {tok!r}')


def evaluate(text: str) -> Optional[Tuple[Fraction, List[Fraction]]]:
  """Returns (exact value, the numbers it uses in order) of an arithmetic expression, or None."""
  tokens = _tokens(text)
  if not tokens:
    return None
  parser = _Parser(tokens)
  try:
    value = parser.expr()
  except (ValueError, ZeroDivisionError):
    return None
  if parser.pos != len(tokens):
    return None
  return value, parser.numbers


def _after_last_answer(text: str) -> Optional[str]:
  """Returns the rest of the line after the last answer marker, or None without one."""
  matches = list(_ANSWER_RE.finditer(text))
  if not matches:
    return None
  return text[matches[-1].end():].split('\n', 1)[0]


def final_number(text: str) -> Optional[Fraction]:
  """Returns the response's final numeric answer (see the module docstring), or None."""
  tail = _after_last_answer(text)
  if tail is not None:
    m = _NUMBER_RE.search(tail)
    if m:
      return parse_number(m.group(0))
  numbers = _NUMBER_RE.findall(text)
  return parse_number(numbers[-1]) if numbers else None


def final_expression(text: str) -> Optional[str]:
  """Returns the response's final expression string (see the module docstring), or None."""
  tail = _after_last_answer(text)
  if tail is not None:
    return tail.split('=', 1)[0].strip().rstrip('.').strip('`$ ') or None
  for line in reversed(text.strip().split('\n')):
    lhs = line.split('=', 1)[0].strip().rstrip('.')
    if re.search(r'\d\s*[-+*/x×÷]\s*\(?\s*\d', lhs):
      # The arithmetic part only: drop a leading label such as "So".
      m = re.search(r'[\d(][\d\s.+\-*/x×÷()]*$', lhs)
      return m.group(0).strip() if m else None
  return None


def equations(text: str) -> List[Tuple[str, bool]]:
  """Returns each arithmetic `lhs = number` in the text with whether it is right (a left side
  that does not parse as arithmetic, e.g. algebra, is skipped)."""
  out = []
  for m in _EQUATION_RE.finditer(text):
    lhs = m.group(1).strip()
    if not re.search(r'\d\s*[-+*/x×÷]', lhs):
      continue  # '= 5' after a bare number is a restatement, not a computation
    got = evaluate(lhs)
    if got is None:
      continue  # not arithmetic ('2x + 3 = 16' is algebra): no claim to check
    out.append((f'{lhs} = {m.group(2)}', got[0] == parse_number(m.group(2))))
  return out
