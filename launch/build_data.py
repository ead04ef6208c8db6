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
  if _TFDS_DIR.value:
    from srlm_jax import tfds_builders  # pylint: disable=g-import-not-at-top
    summary['tfds'] = tfds_builders.build_all(
        _TFDS_DIR.value, oasst1=_OASST1.value, oasst2_ranked=_RANKED.value,
        oasst2_quality=_QUALITY.value or None)
  with open(os.path.join(out, 'summary.json'), 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=2)
  print(json.dumps(summary['records'], indent=2))


if __name__ == '__main__':
  app.run(main)
