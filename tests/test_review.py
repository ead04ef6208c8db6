"""Human review without a browser: the sample's order, label records and their errors, the
import into a run, Label Studio's formats, and the loopback-only server (issue 19)."""

import http.client
import json
import os

import pytest

from srlm_jax.review import label_studio
from srlm_jax.review import labels as labels_lib
from srlm_jax.review import page as page_lib
from srlm_jax.review import server as server_lib


def pair(k, chosen_score=4.0, rejected_score=1.0):
  return {'id': f'p{k}', 'prompt': f'prompt {k}', 'chosen': f'chosen {k}',
          'rejected': f'rejected {k}', 'chosen_index': 1, 'rejected_index': 0,
          'chosen_score': chosen_score, 'rejected_score': rejected_score}


def sample(n=16, t=1):
  pairs = [pair(k) for k in range(5)]
  # frozen judge: p0 agrees by 3, p1 reverses by 1, p2 ties, p3 reverses by 2, p4 unscored
  ref = {('p0', 1): 4.0, ('p0', 0): 1.0, ('p1', 1): 2.0, ('p1', 0): 3.0, ('p2', 1): 2.0,
         ('p2', 0): 2.0, ('p3', 1): 1.0, ('p3', 0): 3.0, ('p4', 1): None, ('p4', 0): 2.0}
  judgments = [{'id': f'p{k}', 'candidate': c, 'judgments': [f'why {k}.{c}']}
               for k in range(5) for c in (0, 1)]
  return labels_lib.build_sample(pairs, judgments, ref, t=t, n=n, seed=3)


def test_sample_puts_disagreements_first_and_keeps_the_judges_view():
  items = sample()
  assert [i['id'] for i in items] == ['p3', 'p1', 'p2', 'p0', 'p4']
  assert [i['disagreement'] for i in items] == [True, True, False, False, False]
  assert [i['id'] for i in sample(n=2)] == ['p3', 'p1']
  for item in items:
    judge = item['judge_choice']
    other = 'b' if judge == 'a' else 'a'
    k = item['id'][1:]
    assert item[judge] == f'chosen {k}' and item[other] == f'rejected {k}'
    assert item[f'{judge}_self_score'] == 4.0 and item[f'{judge}_reasons'] == [f'why {k}.1']
    assert item['pair_id'] == f'iter_1/p{k}'
  assert {i['judge_choice'] for i in items} == {'a', 'b'}  # the judge's side varies


def test_label_records_their_errors_and_the_import(tmp_path):
  items = sample()
  label = labels_lib.label_record(items[0], 'b', ' ana ', time='2026-01-01T00:00:00+00:00')
  assert label['chosen'] == items[0]['b'] and label['rejected'] == items[0]['a']
  assert label['reviewer'] == 'ana' and label['choice'] == 'b'
  with pytest.raises(ValueError, match="choice 'c'"):
    labels_lib.label_record(items[0], 'c', 'ana')
  with pytest.raises(ValueError, match='reviewer name'):
    labels_lib.label_record(items[0], 'a', '  ')
  bad = tmp_path / 'bad.jsonl'
  bad.write_text(json.dumps(label) + '\n' + json.dumps(dict(label, choice='left')) + '\n')
  with pytest.raises(ValueError, match=r'bad.jsonl:2: field "choice"'):
    labels_lib.read_labels(str(bad))
  bad.write_text(json.dumps({k: v for k, v in label.items() if k != 'reviewer'}) + '\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'reviewer'"):
    labels_lib.read_labels(str(bad))
  workdir = str(tmp_path / 'run')
  path = labels_lib.import_labels([label], workdir, 1)
  assert path == os.path.join(workdir, 'human_labels', 'iter_1.jsonl')
  again = labels_lib.label_record(items[0], 'tie', 'bo')
  labels_lib.import_labels([again, labels_lib.label_record(items[1], 'a', 'bo')], workdir, 1)
  got = labels_lib.read_labels(path)
  assert [(l['pair_id'], l['choice']) for l in got] == [(items[0]['pair_id'], 'tie'),
                                                         (items[1]['pair_id'], 'a')]
  with pytest.raises(ValueError, match='not a pair of iteration 2'):
    labels_lib.import_labels([label], workdir, 2)


def test_eft_records_follow_the_person_and_skip_ties():
  from srlm_jax import judges  # pylint: disable=g-import-not-at-top
  items = sample()
  judge = judges.get('additive')
  labels = [labels_lib.label_record(items[0], 'a', 'x'), labels_lib.label_record(items[1], 'tie', 'x')]
  assert labels_lib.eft_records(labels, judge) == [
      (items[0]['prompt'], items[0]['a'], judge.eft_judgment(5)),
      (items[0]['prompt'], items[0]['b'], judge.eft_judgment(4))]


def test_label_studio_tasks_and_export(tmp_path):
  items = sample()
  paths = label_studio.write(items, str(tmp_path / 'ls'))
  tasks = json.load(open(paths[0]))
  assert tasks[0]['data']['a'] == items[0]['a'] and tasks[0]['data']['pair_id'] == 'iter_1/p3'
  config = open(paths[1]).read()
  assert '<Pairwise name="comparison" toName="answer_a,answer_b"/>' in config
  assert '$a' in config and '$b' in config and '$prompt' in config
  # what Label Studio's JSON export holds: the tasks with their annotations
  exported = [
      dict(tasks[0], annotations=[{'completed_by': {'email': 'ana@x'}, 'updated_at': 't1',
                                   'result': [{'from_name': 'comparison', 'type': 'pairwise',
                                               'value': {'selected': 'right'}}]}]),
      dict(tasks[1], annotations=[{'completed_by': 7, 'created_at': 't2', 'result': [
          {'from_name': 'tie', 'type': 'choices', 'value': {'choices': ['Tie']}}]}]),
      dict(tasks[2], annotations=[]),
      dict(tasks[3], annotations=[{'was_cancelled': True, 'result': []}])]
  path = tmp_path / 'export.json'
  path.write_text(json.dumps(exported))
  got = label_studio.read_export(str(path))
  assert [(l['pair_id'], l['choice'], l['reviewer'], l['time']) for l in got] == [
      ('iter_1/p3', 'b', 'label-studio:ana@x', 't1'), ('iter_1/p1', 'tie', 'label-studio:7', 't2')]
  assert got[0]['chosen'] == items[0]['b']
  exported[0]['annotations'][0]['result'] = []
  path.write_text(json.dumps(exported))
  with pytest.raises(ValueError, match='task 0: no "comparison"'):
    label_studio.read_export(str(path))


def _request(server, method, path, body=None, headers=None):
  conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
  conn.request(method, path, body=body, headers=headers or {})
  response = conn.getresponse()
  out = response.status, dict(response.getheaders()), response.read()
  conn.close()
  return out


def test_server_serves_loopback_only_and_saves_labels(tmp_path):
  with pytest.raises(ValueError, match='only a loopback address'):
    server_lib.ReviewServer([], str(tmp_path / 'l.jsonl'), host='0.0.0.0')
  items = sample()
  path = str(tmp_path / 'labels.jsonl')
  server = server_lib.ReviewServer(items, path).start()
  try:
    assert server.url.startswith('http://127.0.0.1:')
    assert not server.verify_request(None, ('192.168.1.5', 5000))
    assert not server.verify_request(None, ('::ffff:10.0.0.1', 5000))
    assert server.verify_request(None, ('127.0.0.1', 5000))
    status, headers, body = _request(server, 'GET', '/')
    assert status == 200 and headers['Content-Type'].startswith('text/html')
    assert f"script-src 'nonce-{server.nonce}'" in headers['Content-Security-Policy']
    html = body.decode()
    assert f'<script nonce="{server.nonce}">' in html and 'http' not in html.split('<body>')[1]
    assert 'innerHTML' not in html  # model text goes in with textContent only
    status, _, body = _request(server, 'GET', '/api/items')
    assert status == 200 and json.loads(body)['items'] == items
    # a page on another site (DNS rebinding, or a cross-origin POST) is refused
    status, _, _ = _request(server, 'GET', '/api/items', headers={'Host': 'evil.example:80'})
    assert status == 403
    label = json.dumps({'pair_id': items[0]['pair_id'], 'choice': 'a', 'reviewer': 'ana'})
    json_header = {'Content-Type': 'application/json'}
    status, _, _ = _request(server, 'POST', '/api/label', label,
                            dict(json_header, Origin='http://evil.example'))
    assert status == 403 and not os.path.exists(path)
    status, _, body = _request(server, 'POST', '/api/label', label, json_header)
    assert status == 200 and json.loads(body) == {'saved': items[0]['pair_id'], 'labelled': 1,
                                                  'total': len(items)}
    for bad, why in ((dict(json.loads(label), choice='left'), 'choice'),
                     (dict(json.loads(label), pair_id='iter_9/x'), 'unknown pair_id')):
      status, _, body = _request(server, 'POST', '/api/label', json.dumps(bad), json_header)
      assert status == 400 and why in json.loads(body)['error']
    status, _, _ = _request(server, 'POST', '/api/label', label, {'Content-Type': 'text/plain'})
    assert status == 415
  finally:
    server.stop()
  got = labels_lib.read_labels(path)
  assert [(l['pair_id'], l['choice'], l['reviewer']) for l in got] == [
      (items[0]['pair_id'], 'a', 'ana')]


def test_page_nonce_must_be_plain():
  assert '__NONCE__' not in page_lib.render('abc123')
  with pytest.raises(ValueError):
    page_lib.render('x" onload="y')
