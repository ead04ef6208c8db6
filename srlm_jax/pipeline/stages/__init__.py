"""The built-in stages, one module each; importing this package registers them all.

`register` and `get` are the registry's (srlm_jax/pipeline/stage.py): a stage elsewhere
registers itself the same way and is named in config.stages by its dotted module path.
"""

# pylint: disable=g-bad-import-order,unused-import
from srlm_jax.pipeline.stage import get
from srlm_jax.pipeline.stage import names
from srlm_jax.pipeline.stage import register
from srlm_jax.pipeline.stage import Stage
from srlm_jax.pipeline.stages import sft
from srlm_jax.pipeline.stages import prompts
from srlm_jax.pipeline.stages import candidates
from srlm_jax.pipeline.stages import judgments
from srlm_jax.pipeline.stages import pairs
from srlm_jax.pipeline.stages import judge_pairs
from srlm_jax.pipeline.stages import dpo
from srlm_jax.pipeline.stages import eval  # pylint: disable=redefined-builtin
from srlm_jax.pipeline.stages import grpo
from srlm_jax.pipeline.stages import guard
from srlm_jax.pipeline.stages import review
from srlm_jax.pipeline.stages import human_pairs
from srlm_jax.pipeline.stages import tasks
from srlm_jax.pipeline.stages import steps
from srlm_jax.pipeline.stages import step_dpo
from srlm_jax.pipeline.stages import verified
from srlm_jax.pipeline.stages import rpo
