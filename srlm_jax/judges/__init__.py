"""Judges: one module per judge, a registry, the verdict parser, and judging on the device.

  base.py      Judge (requests, verdict grammar, score scale, EFT targets), JudgeSettings,
               JudgeScores (the device result), the registry: register / get / names
  parser.py    a verdict grammar -> a token automaton run on the device, and its host regex
  forced.py    forced verdicts: the score's expectation under the next-token distribution
  judging.py   judge(model, judge, prompts, responses, settings, seed) -> (texts, JudgeScores)
  records.py   judgment records (JSONL), their stats and score histogram (the host edge)
  additive.py  the paper's additive 0-5 rubric (registered as 'additive')
  spct.py      SPCT (DeepSeek-GRM): principles, critique, 1..10 scores; several responses per
               request, shuffled per sample (judge_together) (registered as 'spct')
  voting.py    the meta filter's selection of the top k_meta judgments (SPCT's vote)
  meta_rm.py   the meta RM: a judge of one judgment (registered as 'meta_rm')

A new judge is one module that builds a `Judge` and `register`s it (tests/rating_judge.py is
one); a config names it in `creation.judge.kind`, by its name once imported or by the module's
path (imported on first use).
"""

from srlm_jax.judges import additive  # registers 'additive'
from srlm_jax.judges import meta_rm  # registers 'meta_rm'
from srlm_jax.judges import spct  # registers 'spct'
from srlm_jax.judges import step  # registers 'step' and 'step_pair'
from srlm_jax.judges.base import (AGGREGATES, EFT_TARGETS, FIELDS, VERDICTS, Judge,
                                  JudgeScores, JudgeSettings, JudgeTemplate, aggregate, get,
                                  get_template, mean_valid, names, quote, register, score_json)
from srlm_jax.judges.judging import Judgments, judge, judge_responses, to_host
from srlm_jax.judges.records import judgment_records, judgment_stats, score_histogram
