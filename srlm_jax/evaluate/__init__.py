"""Evaluation: judge agreement with human rankings, head-to-head win rates, response lengths.

  metrics.py       the numbers, pure numpy (no model): agreement, win rates, lengths
  judging.py       a judge model scores human-ranked responses (resumable shards per judge)
  head_to_head.py  two models' responses compared by a judge, pointwise or pairwise
"""

# pylint: disable=g-multiple-import,unused-import
from srlm_jax.evaluate.head_to_head import (PAIRWISE_TEMPLATE, VERDICT, compare_pairwise,
                                            compare_pointwise, head_to_head, parse_verdict,
                                            respond)
from srlm_jax.evaluate.judging import (cache_key, evaluate_judge, judge_groups,
                                       load_judge_groups)
from srlm_jax.evaluate.metrics import (AGREEMENT_KEYS, LENGTH_EDGES, all_pairs, average_ranks,
                                       bootstrap_weights, judge_agreement, kendall_tau_b,
                                       length_controlled, length_stats, prompt_stats, spearman,
                                       win_rates)
