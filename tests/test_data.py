"""Tests for srlm_jax.data (and the TFDS builders): mappings, malformed records, real counts."""

import collections
import json
import os
import subprocess
import sys

import pytest

from srlm_jax import data
from srlm_jax import judges

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, rows):
  path.write_text(''.join((r if isinstance(r, str) else json.dumps(r)) + '\n' for r in rows))
  return str(path)


def _msg(mid, parent, role, text='t', rank=None, lang='en', deleted=False, review=True):
  return {'message_id': mid, 'parent_id': parent, 'text': text, 'role': role, 'lang': lang,
          'rank': rank, 'deleted': deleted, 'review_result': review}


@pytest.mark.parametrize('score', range(6))
def test_judgment_text_ends_in_its_score(score):
  text = data.judgment_text(score)
  assert text.splitlines()[-1] == f'Score: {score}'
  assert judges.get('additive').parse_host(text) == score
  assert len(text.split()) < 100


def test_score_mappings():
  assert [data.rank_score(r) for r in range(7)] == [5, 4, 3, 2, 1, 1, 1]
  assert [data.quality_score_to_score(q) for q in (0, 0.09, 0.1, 0.29, 0.5, 0.7, 0.9, 1)] == [
      0, 0, 1, 1, 3, 4, 5, 5]
  with pytest.raises(ValueError, match='0..5'):
    data.judgment_text(6)


def test_tree_filters_and_reports(tmp_path):
  path = _write(tmp_path / 'trees.jsonl', [
      _msg('r1', None, 'prompter', 'Question one'),
      _msg('a1', 'r1', 'assistant', 'best', rank=0),
      _msg('a2', 'r1', 'assistant', 'second', rank=1),
      _msg('a3', 'r1', 'assistant', 'deleted one', rank=2, deleted=True),
      _msg('a4', 'r1', 'assistant', 'unreviewed', rank=2, review=None),
      _msg('a5', 'r1', 'assistant', 'unranked'),
      _msg('p2', 'a1', 'prompter', 'a follow-up'),
      _msg('r2', None, 'prompter', 'Pregunta', lang='es'),
      _msg('r3', None, 'prompter', 'Question three'),
      _msg('b1', 'r3', 'assistant', 'only rank 1', rank=1)])
  groups, report = data.first_turns(path)
  assert [g['id'] for g in groups] == ['r1', 'r3']
  assert report['read'] == 10 and report['dropped'] == {
      'later turn (not a root or its reply)': 1, 'reply: deleted': 1,
      'reply: review not passed': 1, 'root prompt: not en': 1}
  ift, report = data.ift_from_trees(path)
  assert ift == [{'id': 'r1', 'prompt': 'Question one', 'response': 'best'}]
  assert report['dropped'] == {'no kept rank-0 reply': 1}
  assert data.ift_from_trees(path, exclude=['  question ONE '])[0] == []
  rankings, report = data.eft_eval_from_trees(path)
  assert [[r['id'] for r in g['responses']] for g in rankings] == [['a1', 'a2']]
  assert [r['score'] for r in rankings[0]['responses']] == [5, 4]
  [pair] = data.pairs_from_rankings(rankings)
  assert (pair['chosen'], pair['rejected'], pair['chosen_rank']) == ('best', 'second', 0)
  eft = data.eft_from_rankings(rankings)
  assert [e['score'] for e in eft] == [5, 4] and eft[0]['judgment'].endswith('Score: 5')


@pytest.mark.parametrize('row, message', [
    ('{"message_id": "x", ', r'bad\.jsonl:2: malformed JSON'),
    ({'message_id': 'x', 'parent_id': None, 'role': 'prompter', 'lang': 'en', 'rank': None,
      'deleted': False, 'review_result': True}, r"bad\.jsonl:2: missing field 'text'"),
    (dict(_msg('x', None, 'prompter'), rank='first'), r"bad\.jsonl:2: field 'rank' must be a "
                                                      r'non-negative integer or null'),
    (dict(_msg('x', None, 'prompter'), rank=-1), r"bad\.jsonl:2: field 'rank'"),
    (dict(_msg('x', None, 'prompter'), deleted='no'), r"bad\.jsonl:2: field 'deleted' must be "
                                                      'true or false'),
    (dict(_msg('x', None, 'prompter'), text=7), r"bad\.jsonl:2: field 'text' must be a string"),
    (_msg('x', None, 'moderator'), r'bad\.jsonl:2: field "role"'),
    (_msg('ok', None, 'prompter'), r"bad\.jsonl:2: duplicate message_id 'ok' \(first at line 1"),
])
def test_malformed_trees_name_file_and_line(tmp_path, row, message):
  path = _write(tmp_path / 'bad.jsonl', [_msg('ok', None, 'prompter'), row])
  with pytest.raises(ValueError, match=message):
    data.first_turns(path)


@pytest.mark.parametrize('kind, row, message', [
    ('ranked', {'question': 'q', 'answer': 'a'}, r"bad\.jsonl:2: missing field 'rank'"),
    ('ranked', {'question': 'q', 'answer': 'a', 'rank': 0.5}, r"bad\.jsonl:2: field 'rank'"),
    ('ranked', {'question': ['q'], 'answer': 'a', 'rank': 0}, r"bad\.jsonl:2: field 'question'"),
    ('quality', {'prompt_id': 'p', 'prompt_text': 'q', 'response_id': 'r',
                 'response_text': 'a', 'quality_score': 1.5}, r'bad\.jsonl:2: .* in \[0, 1\]'),
    ('quality', {'prompt_id': 'p', 'prompt_text': 'q', 'response_text': 'a',
                 'quality_score': 0.5}, r"bad\.jsonl:2: missing field 'response_id'"),
    ('quality', {'prompt_id': 'p', 'prompt_text': 'q', 'response_id': 'r',
                 'response_text': 'a', 'quality_score': 'high'},
     r"bad\.jsonl:2: field 'quality_score' must be a number or null"),
])
def test_malformed_flat_files_name_file_and_line(tmp_path, kind, row, message):
  good = ({'question': 'g', 'answer': 'h', 'rank': 0.0} if kind == 'ranked' else
          {'prompt_id': 'p0', 'prompt_text': 'g', 'response_id': 'r0', 'response_text': 'h',
           'quality_score': 0.5})
  path = _write(tmp_path / 'bad.jsonl', [good, row])
  with pytest.raises(ValueError, match=message):
    data.eft_from_flat(path, kind)


def test_malformed_prompt_sets_name_file_and_entry(tmp_path):
  path = tmp_path / 'outputs.json'
  path.write_text(json.dumps([{'instruction': 'i', 'output': 'o'}, {'output': 'o'}]))
  with pytest.raises(ValueError, match=r"outputs\.json:entry 1: missing field 'instruction'"):
    data.alpaca_eval_prompts(str(path))
  bad = _write(tmp_path / 'q.jsonl', [{'question_id': 1, 'turns': ['a']},
                                      {'question_id': 2, 'turns': []}])
  with pytest.raises(ValueError, match=r'q\.jsonl:2: field "turns"'):
    data.mt_bench_prompts(bad)


def test_flat_filters(tmp_path):
  ranked = _write(tmp_path / 'ranked.jsonl', [
      {'question': 'Q1', 'answer': 'A', 'rank': 0.0}, {'question': 'Q1', 'answer': 'B', 'rank': 1},
      {'question': ' q1', 'answer': 'a', 'rank': 0}, {'question': 'Q2', 'answer': 'C', 'rank': 3},
      {'question': 'Held out', 'answer': 'D', 'rank': 0}, {'question': 'Q3', 'answer': ' ',
                                                           'rank': 0}])
  ift, report = data.ift_from_ranked(ranked, exclude=['held OUT'])
  assert [(r['prompt'], r['response']) for r in ift] == [('Q1', 'A')]
  assert report['dropped'] == {'held-out prompt': 1, 'empty text': 1,
                               'duplicate (prompt, response)': 1, 'not rank 0': 2}
  quality = _write(tmp_path / 'quality.jsonl', [
      {'prompt_id': 'p', 'prompt_text': 'Q1', 'response_id': 'r1', 'response_text': 'A',
       'quality_score': 0.2},
      {'prompt_id': 'p', 'prompt_text': 'Q1', 'response_id': 'r2', 'response_text': 'E',
       'quality_score': None},
      {'prompt_id': 'p', 'prompt_text': 'Q1', 'response_id': 'r3', 'response_text': 'F',
       'quality_score': 0.95, 'language': 'de'},
      {'prompt_id': 'p', 'prompt_text': 'Q1', 'response_id': 'r4', 'response_text': 'G',
       'quality_score': 0.66}])
  eft, reports = data.eft_train(ranked, quality, exclude=['held out'])
  assert [(r['response'], r['score']) for r in eft] == [('A', 5), ('B', 4), ('C', 2), ('G', 3)]
  assert reports[1]['dropped'] == {'quality_score null': 1, 'not en': 1,
                                   'in an earlier source': 1}
  assert all(judges.get('additive').parse_host(r['judgment']) == r['score'] for r in eft)


@pytest.fixture(scope='module')
def built(shared_data):
  oasst1 = os.path.join(shared_data, 'oasst1', 'en-validation.jsonl')
  flat = os.path.join(shared_data, 'oasst2_en_first_turn')
  rankings, eval_report = data.eft_eval_from_trees(oasst1)
  held = [g['prompt'] for g in rankings]
  ift, ift_report = data.ift_from_ranked(os.path.join(flat, '0_EFT_seed_data_input.jsonl'), held)
  eft, eft_reports = data.eft_train(
      os.path.join(flat, '0_EFT_seed_data_input.jsonl'),
      os.path.join(flat, 'oasst2_evaluation_fine_tuning.jsonl'), held)
  return dict(oasst1=oasst1, rankings=rankings, eval_report=eval_report, ift=ift,
              ift_report=ift_report, eft=eft, eft_reports=eft_reports)


def test_real_oasst1_counts(built):
  """SOURCES.md: 188 roots; 186 with >= 2 ranked first-turn replies; 531 comparisons."""
  groups, report = data.first_turns(built['oasst1'])
  assert report['read'] == 2022 and len(groups) == 188
  assert sum(len(g['replies']) for g in groups) + report['dropped']['reply: deleted'] + report[
      'dropped']['reply: review not passed'] == 568
  ranks = collections.Counter(r['rank'] for g in groups for r in g['replies']
                              if r['rank'] is not None)
  assert ranks == {0: 186, 1: 185, 2: 164, 3: 7}  # 542 ranked first-turn replies
  rankings = built['rankings']
  assert len(rankings) == 186 and sum(len(g['responses']) for g in rankings) == 541
  pairs = data.pairs_from_rankings(rankings)
  assert len(pairs) == 531
  assert all(p['chosen_rank'] < p['rejected_rank'] for p in pairs)
  assert len({p['id'] for p in pairs}) == 531
  assert len(data.ift_from_trees(built['oasst1'])[0]) == 186


def test_real_oasst2_counts_and_disjointness(built):
  """SOURCES.md: 3,032 ranked rows (800 rank 0); 2,844 quality rows, 56 of them null."""
  ift_report, (ranked_report, quality_report) = built['ift_report'], built['eft_reports']
  assert ift_report['read'] == 3032 and ranked_report['read'] == 3032
  assert ift_report['dropped']['not rank 0'] + ift_report['kept'] + sum(
      v for k, v in ift_report['dropped'].items() if k != 'not rank 0') == 3032
  assert len(built['ift']) == 772
  assert quality_report['read'] == 2844 and quality_report['dropped']['quality_score null'] == 56
  assert len(built['eft']) == ranked_report['kept'] + quality_report['kept'] == 5468
  held = {data.normalize_prompt(g['prompt']) for g in built['rankings']}
  for r in built['ift'] + built['eft']:
    assert data.normalize_prompt(r['prompt']) not in held
  assert len({data.normalize_prompt(r['prompt']) for r in built['ift']}) == len(built['ift'])
  assert set(data.score_histogram(built['eft'])) == {0, 1, 2, 3, 4, 5}


def test_real_prompt_sets(shared_data):
  alpaca = data.alpaca_eval_prompts(os.path.join(shared_data, 'alpaca_eval', 'gpt4_1106_preview',
                                                 'model_outputs.json'))
  assert len(alpaca) == 805
  assert collections.Counter(a['dataset'] for a in alpaca)['selfinstruct'] == 252
  davinci = data.alpaca_eval_prompts(os.path.join(shared_data, 'alpaca_eval', 'text_davinci_003',
                                                  'model_outputs.json'))
  assert [a['prompt'] for a in davinci] == [a['prompt'] for a in alpaca]
  mt = data.mt_bench_prompts(os.path.join(shared_data, 'mt_bench', 'question.jsonl'))
  assert len(mt) == 80 and mt[0]['id'] == 'mt_bench:81' and mt[-1]['id'] == 'mt_bench:160'


def test_build_data_script(shared_data, tmp_path):
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'build_data.py'),
                        f'--out_dir={tmp_path}'], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=ROOT), check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert summary['records'] == {'ift': 772, 'eft_train': 5468, 'eft_eval_prompts': 186,
                                'eft_eval_responses': 541, 'human_pairs': 531}
  first = json.loads((tmp_path / 'human_pairs.jsonl').read_text().splitlines()[0])
  assert {'prompt', 'chosen', 'rejected'} <= set(first)
  eft = json.loads((tmp_path / 'eft_train.jsonl').read_text().splitlines()[0])
  assert set(eft) == {'id', 'prompt', 'response', 'judgment', 'score'}


def test_tfds_builders_match_the_jsonl_builders(built, shared_data, tmp_path):
  pytest.importorskip('tensorflow_datasets')
  pytest.importorskip('array_record')
  from srlm_jax import tfds_builders  # pylint: disable=g-import-not-at-top
  flat = os.path.join(shared_data, 'oasst2_en_first_turn')
  sources = dict(oasst1=built['oasst1'],
                 oasst2_ranked=os.path.join(flat, '0_EFT_seed_data_input.jsonl'),
                 oasst2_quality=os.path.join(flat, 'oasst2_evaluation_fine_tuning.jsonl'))
  counts = tfds_builders.build_all(str(tmp_path), **sources)
  assert counts == {'ift': {'train': 772}, 'eft_train': {'train': 5468},
                    'eft_eval': {'validation': 186}, 'human_pairs': {'validation': 531}}
  pairs = tfds_builders.load('human_pairs', str(tmp_path), **sources)['validation']
  expected = data.pairs_from_rankings(built['rankings'])
  for i in (0, 530):
    assert pairs[i]['chosen'].decode() == expected[i]['chosen']
    assert pairs[i]['rejected_rank'] == expected[i]['rejected_rank']
  ranking = tfds_builders.load('eft_eval', str(tmp_path), **sources)['validation'][0]
  assert [r.decode() for r in ranking['responses']['response']] == [
      r['response'] for r in built['rankings'][0]['responses']]
  eft = tfds_builders.load('eft_train', str(tmp_path), **sources)['train'][7]
  assert eft['judgment'].decode() == built['eft'][7]['judgment']
  assert eft['score'] == built['eft'][7]['score']


def _head(src: str, dst, n: int) -> str:
  with open(src, encoding='utf-8') as f, open(dst, 'w', encoding='utf-8') as out:
    for _, line in zip(range(n), f):
      out.write(line)
  return str(dst)


def test_build_data_writes_model_written_eft(shared_data, tmp_path):
  """--eft_source=model: a judge model (the tiny one here) judges the EFT train responses; the
  kept ones are exactly the judgments marked kept, and TFDS packages the same records."""
  pytest.importorskip('tensorflow_datasets')
  pytest.importorskip('array_record')
  flat = os.path.join(shared_data, 'oasst2_en_first_turn')
  oasst1 = _head(os.path.join(shared_data, 'oasst1', 'en-validation.jsonl'), tmp_path / 'o1.jsonl',
                 300)
  ranked = _head(os.path.join(flat, '0_EFT_seed_data_input.jsonl'), tmp_path / 'r.jsonl', 40)
  args = [f'--oasst1={oasst1}', f'--oasst2_ranked={ranked}',
          '--oasst2_quality=', f'--out_dir={tmp_path / "out"}', f'--tfds_dir={tmp_path / "tfds"}',
          '--eft_source=model', '--eft_judge_model=tiny:0', '--eft_verdict=forced', '--eft_k=2',
          '--eft_max_new_tokens=4', '--eft_template=compact', '--eft_max_responses=12',
          '--eft_tolerance=5.0']  # every lone response agrees: the plumbing, not the filter
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'build_data.py'), *args],
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=ROOT), check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
  judged = [json.loads(l) for l in (tmp_path / 'out' / 'eft_model_judgments.jsonl').open()]
  kept = [json.loads(l) for l in (tmp_path / 'out' / 'eft_train_model.jsonl').open()]
  assert summary['eft_model']['judgments'] == len(judged) == 24
  assert summary['eft_model']['kept'] == len(kept) == sum(r['kept'] for r in judged) == 24
  assert [r['judgment'] for r in kept] == [r['judgment'] for r in judged if r['kept']]
  eft = [json.loads(l) for l in (tmp_path / 'out' / 'eft_train.jsonl').open()][:12]
  assert sorted({r['response'] for r in judged}) == sorted({r['response'] for r in eft})
  assert summary['tfds']['eft_train_model'] == {'train': 24}
  packaged = data.read_source(f'tfds:eft_train_model/train@{tmp_path / "tfds"}')
  assert [obj['judgment'] for _, _, obj in packaged] == [r['judgment'] for r in kept]
  assert [obj['score'] for _, _, obj in packaged] == pytest.approx([r['score'] for r in kept])
