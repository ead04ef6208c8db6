"""Judges: one module per judge, a registry, the verdict parser, and judging on the device.

  base.py      Judge (requests, verdict grammar, score scale, EFT targets), JudgeSettings,
               JudgeScores (the device result), the registry: register / get / names
  parser.py    a verdict grammar -> a token automaton run on the device, and its host regex
  forced.py    forced verdicts: the score's expectation under the next-token distribution
  judging.py   judge(model, judge, prompts, responses, settings, seed) -> (texts, JudgeScores)
  records.py   judgment records (JSONL), their stats and score histogram (the host edge)
  additive.py  the paper's additive 0-5 rubric (registered as 'additive')

A new judge is one module that builds a `Judge` and `register`s it (tests/rating_judge.py is
one); a config names it in `creation.judge.kind`, by its name once imported or by the module's
path (imported on first use).
"""

from srlm_jax.judges import additive  # registers 'additive'
from srlm_jax.judges.base import (EFT_TARGETS, FIELDS, VERDICTS, Judge, JudgeScores,
                                  JudgeSettings, JudgeTemplate, get, get_template, mean_valid,
                                  names, quote, register, score_json)
from srlm_jax.judges.judging import Judgments, judge, judge_responses, to_host
from srlm_jax.judges.records import judgment_records, judgment_stats, score_histogram
