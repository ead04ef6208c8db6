"""Serves the labelling page and a review sample on loopback, and saves each label.

Only loopback is served: the server binds a loopback address (any other is an error), drops a
connection from a non-loopback peer before reading it, answers 403 to a request whose Host is
not this loopback address and port (a DNS-rebinding page) or whose Origin is another site.

  GET  /            the page (page.py)
  GET  /api/items   {"items": [...], "labels": {pair_id: choice}, "reviewer": name}
  POST /api/label   {"pair_id", "choice": "a"|"b"|"tie", "reviewer"} -> the label is merged
                    into the labels file (labels.py: one per pair, the latest wins)
"""

import http.server
import ipaddress
import json
import logging
import secrets
import socket
import threading
from typing import Optional, Sequence

from srlm_jax.review import labels as labels_lib
from srlm_jax.review import page as page_lib

MAX_BODY = 1 << 16  # a label is a few hundred bytes


def is_loopback(host: str) -> bool:
  """Returns whether host is a loopback IP address (127.0.0.0/8, ::1)."""
  try:
    return ipaddress.ip_address(host.split('%')[0]).is_loopback
  except ValueError:
    return False


class _Handler(http.server.BaseHTTPRequestHandler):
  """One request: refused unless it is from loopback, for this host, from this origin."""
  server: 'ReviewServer'

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    logging.info('review page: ' + format, *args)

  def _send(self, code: int, body: bytes, content_type: str) -> None:
    self.send_response(code)
    self.send_header('Content-Type', content_type)
    self.send_header('Content-Length', str(len(body)))
    self.send_header('Cache-Control', 'no-store')
    self.send_header('X-Content-Type-Options', 'nosniff')
    self.send_header('Referrer-Policy', 'no-referrer')
    self.send_header('Content-Security-Policy',
                     f"default-src 'none'; script-src 'nonce-{self.server.nonce}'; "
                     f"style-src 'nonce-{self.server.nonce}'; connect-src 'self'; "
                     "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    self.end_headers()
    self.wfile.write(body)

  def _json(self, code: int, obj) -> None:
    self._send(code, json.dumps(obj, ensure_ascii=False).encode(), 'application/json')

  def _allowed(self) -> bool:
    if not is_loopback(self.client_address[0]):
      self._json(403, {'error': 'only loopback clients are served'})
      return False
    if self.headers.get('Host') not in self.server.hosts:
      self._json(403, {'error': f'Host must be one of {sorted(self.server.hosts)}'})
      return False
    origin = self.headers.get('Origin')
    if origin is not None and origin not in self.server.origins:
      self._json(403, {'error': 'cross-origin requests are refused'})
      return False
    return True

  def do_GET(self):  # pylint: disable=invalid-name
    """Serves the page and the items."""
    if not self._allowed():
      return
    if self.path == '/':
      self._send(200, page_lib.render(self.server.nonce).encode(), 'text/html; charset=utf-8')
    elif self.path == '/api/items':
      self._json(200, {'items': self.server.items, 'reviewer': self.server.reviewer,
                       'labels': {k: v['choice'] for k, v in self.server.labels().items()}})
    else:
      self._json(404, {'error': f'no such page: {self.path}'})

  def do_POST(self):  # pylint: disable=invalid-name
    """Saves one label."""
    if not self._allowed():
      return
    if self.path != '/api/label':
      self._json(404, {'error': f'no such endpoint: {self.path}'})
      return
    if self.headers.get_content_type() != 'application/json':
      self._json(415, {'error': 'expected Content-Type: application/json'})
      return
    size = int(self.headers.get('Content-Length') or 0)
    if not 0 < size <= MAX_BODY:
      self._json(413, {'error': f'body of {size} bytes (1..{MAX_BODY})'})
      return
    try:
      body = json.loads(self.rfile.read(size))
      item = self.server.by_id.get(body.get('pair_id')) if isinstance(body, dict) else None
      if item is None:
        raise ValueError(f'unknown pair_id in {str(body)[:80]!r}')
      label = self.server.save(labels_lib.label_record(item, body.get('choice'),
                                                       body.get('reviewer')))
    except ValueError as e:  # json.JSONDecodeError included
      self._json(400, {'error': str(e)})
      return
    self._json(200, {'saved': label['pair_id'], 'labelled': len(self.server.labels()),
                     'total': len(self.server.items)})


class ReviewServer(http.server.ThreadingHTTPServer):
  """The review page for `items`, saving labels to labels_path, on a loopback address."""
  daemon_threads = True

  def __init__(self, items: Sequence[dict], labels_path: str, host: str = '127.0.0.1',
               port: int = 0, reviewer: str = ''):
    if not is_loopback(host):
      raise ValueError(f'review server host {host!r}: only a loopback address is allowed '
                       '(127.0.0.1 or ::1)')
    if ':' in host:
      self.address_family = socket.AF_INET6
    super().__init__((host, port), _Handler)
    self.items = list(items)
    self.by_id = {item['pair_id']: item for item in self.items}
    self.labels_path = labels_path
    self.reviewer = reviewer
    self.nonce = secrets.token_hex(16)
    self._lock = threading.Lock()
    self._thread: Optional[threading.Thread] = None
    bound = self.server_address[1]
    names = ['127.0.0.1', 'localhost'] if ':' not in host else ['[::1]', 'localhost']
    self.hosts = {f'{n}:{bound}' for n in names}
    self.origins = {f'http://{h}' for h in self.hosts}

  @property
  def url(self) -> str:
    """Returns the page's address."""
    host = self.server_address[0]
    return f'http://{f"[{host}]" if ":" in host else host}:{self.server_address[1]}/'

  def verify_request(self, request, client_address) -> bool:
    """Returns whether to serve a connection: from a loopback peer only (others are closed)."""
    return is_loopback(client_address[0])

  def labels(self) -> dict:
    """Returns {pair_id: label} of the labels file's labels for this sample's pairs."""
    return {label['pair_id']: label for label in labels_lib.read_labels(self.labels_path)
            if label['pair_id'] in self.by_id}

  def save(self, label: dict) -> dict:
    """Merges one label into the labels file (atomically); returns it."""
    with self._lock:
      labels_lib.write_labels(self.labels_path, labels_lib.merge(
          labels_lib.read_labels(self.labels_path), [label]))
    return label

  def start(self) -> 'ReviewServer':
    """Serves in a daemon thread; returns self."""
    self._thread = threading.Thread(target=self.serve_forever, daemon=True)
    self._thread.start()
    return self

  def stop(self) -> None:
    """Stops serving and closes the socket."""
    self.shutdown()
    self.server_close()
    if self._thread is not None:
      self._thread.join()
