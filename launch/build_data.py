r"""Builds the OASST seed and evaluation sets as JSONL: IFT, EFT train, EFT eval, human pairs.

  python launch/build_data.py --out_dir=/tmp/srlm_data

Reads the local OASST files (defaults: ../shared/data beside the repository) and writes:
  ift.jsonl          {id, prompt, response}: first-turn prompts with their rank-0 human reply,
                     from --oasst2_ranked (plus --ift_trees, OASST1 message-tree files, if any)
  eft_train.jsonl    {id, prompt, response, judgment, score}: from --oasst2_ranked (score from
                     the rank) and --oasst2_quality (score from quality_score)
  eft_eval.jsonl     {id, prompt, responses: [{id, response, rank, score}]}: the human ranking
                     of each first-turn prompt of --oasst1 with >= 2 ranked replies
  human_pairs.jsonl  {id, prompt, chosen, rejected, ...}: every ranked pair of eft_eval.jsonl
  summary.json       counts: records written, and what each filter dropped
With --eft_source=model a judge model (--eft_judge_model) also writes judgments of the EFT
train responses, and those agreeing with the human labels are kept (srlm_jax/eft.py):
  eft_train_model.jsonl      {id, prompt, response, judgment, score, human_score}: the kept
                             model-written EFT examples (use as data.eft, eft_source 'given')
  eft_model_judgments.jsonl  every judgment written, with `kept`; the keep rate is in
                             summary.json (eft_model)
The eval prompts are held out of IFT and EFT train (matched case- and whitespace-insensitively).
With --tfds_dir the same four sets are also built as TFDS datasets (array_record files, read
without TensorFlow); the OASST configs read them with `configs/smollm2_oasst.py:tfds:<tfds_dir>`,
and any data field takes a split as `tfds:<config>/<split>@<tfds_dir>` (srlm_jax/data.py).
See srlm_jax/data.py for the score mappings.
"""

import json
import logging
import os

from absl import app
from absl import flags

from srlm_jax import data
from srlm_jax import eft as eft_lib

_SHARED = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..',
                                        'shared', 'data'))

_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Where the JSONL files go.', required=True)
_OASST1 = flags.DEFINE_string('oasst1', os.path.join(_SHARED, 'oasst1', 'en-validation.jsonl'),
                              'OASST1 message-tree JSONL: the EFT eval set and human pairs.')
_RANKED = flags.DEFINE_string(
    'oasst2_ranked', os.path.join(_SHARED, 'oasst2_en_first_turn', '0_EFT_seed_data_input.jsonl'),
    'Flat {question, answer, rank} JSONL: IFT (rank 0) and EFT train.')
_QUALITY = flags.DEFINE_string(
    'oasst2_quality',
    os.path.join(_SHARED, 'oasst2_en_first_turn', 'oasst2_evaluation_fine_tuning.jsonl'),
    'Flat {prompt_text, response_text, quality_score, ...} JSONL: EFT train ("" to skip).')
_IFT_TREES = flags.DEFINE_list('ift_trees', [], 'Extra OASST1 message-tree files for IFT.')
_TFDS_DIR = flags.DEFINE_string('tfds_dir', None, 'Also build TFDS datasets here.')
_EFT_SOURCE = flags.DEFINE_enum('eft_source', 'given', eft_lib.SOURCES,
                                "'model': also write model-written EFT (eft_train_model.jsonl).")
_EFT_JUDGE = flags.DEFINE_string('eft_judge_model', 'smollm2-135m-instruct',
                                 'The model that writes the EFT judgments (srlm_jax.load name).')
_EFT_K = flags.DEFINE_integer('eft_k', 3, 'Judgments written per EFT response.')
_EFT_VERDICT = flags.DEFINE_enum('eft_verdict', 'sampled', ('sampled', 'forced', 'forced_always'),
                                 'How each judgment\'s score is read (judges/forced.py).')
_EFT_TOKENS = flags.DEFINE_integer('eft_max_new_tokens', 192, 'Judgment length limit.')
_EFT_TEMPLATE = flags.DEFINE_string('eft_template', 'additive', 'The judge rubric (a name).')
_EFT_TOLERANCE = flags.DEFINE_float('eft_tolerance', 0.5,
                                    'A lone response agrees when |model - human score| <= this.')
_EFT_MAX = flags.DEFINE_integer('eft_max_responses', 0,
                                'Judge only the first N EFT train records (0: all).')


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  rankings, eval_report = data.eft_eval_from_trees(_OASST1.value)
  held_out = [g['prompt'] for g in rankings]
  pairs = data.pairs_from_rankings(rankings)
  ift, ift_report = data.ift_from_ranked(_RANKED.value, held_out)
  reports = {'eft_eval': eval_report, 'ift': [ift_report]}
  for path in _IFT_TREES.value:
    more, report = data.ift_from_trees(path, exclude=held_out + [r['prompt'] for r in ift])
    ift += more
    reports['ift'].append(report)
  eft, reports['eft_train'] = data.eft_train(_RANKED.value, _QUALITY.value or None, held_out)
  out = _OUT_DIR.value
  written = {name: data.write_jsonl(os.path.join(out, f'{name}.jsonl'), records)
             for name, records in (('ift', ift), ('eft_train', eft), ('eft_eval', rankings),
                                   ('human_pairs', pairs))}
  summary = {'records': {'ift': len(ift), 'eft_train': len(eft), 'eft_eval_prompts': len(rankings),
                         'eft_eval_responses': sum(len(g['responses']) for g in rankings),
                         'human_pairs': len(pairs)},
             'eft_train_scores': data.score_histogram(eft), 'files': written,
             'reports': reports}
  eft_model = None
  if _EFT_SOURCE.value == 'model':
    eft_model, summary['eft_model'] = model_written_eft(eft[:_EFT_MAX.value or None], out)
    written['eft_train_model'] = eft_model
  if _TFDS_DIR.value:
    from srlm_jax import tfds_builders  # pylint: disable=g-import-not-at-top
    summary['tfds'] = tfds_builders.build_all(
        _TFDS_DIR.value, oasst1=_OASST1.value, oasst2_ranked=_RANKED.value,
        oasst2_quality=_QUALITY.value or None, eft_model=eft_model)
  with open(os.path.join(out, 'summary.json'), 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=2)
  print(json.dumps(summary['records'], indent=2))


def model_written_eft(records: list, out: str) -> tuple:
  """Returns (the path of the kept model-written EFT JSONL, the keep-rate report)."""
  import srlm_jax  # pylint: disable=g-import-not-at-top
  from srlm_jax import judges  # pylint: disable=g-import-not-at-top
  model = srlm_jax.load(_EFT_JUDGE.value)
  settings = judges.JudgeSettings(k=_EFT_K.value, max_new_tokens=_EFT_TOKENS.value,
                                  verdict=_EFT_VERDICT.value,
                                  template=judges.get_template(_EFT_TEMPLATE.value))
  judged, report = eft_lib.model_written(
      model, 'additive', eft_lib.groups_from_records(records, 'eft_train.jsonl'), settings,
      tolerance=_EFT_TOLERANCE.value, truncate=True)
  data.write_jsonl(os.path.join(out, 'eft_model_judgments.jsonl'), judged)
  path = data.write_jsonl(os.path.join(out, 'eft_train_model.jsonl'), [
      {k: r[k] for k in ('id', 'prompt', 'response', 'judgment', 'score', 'human_score')}
      for r in judged if r['kept']])
  return path, dict(report, judge_model=_EFT_JUDGE.value)


if __name__ == '__main__':
  app.run(main)
