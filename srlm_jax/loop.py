"""The self-rewarding loop's entry point: the pipeline's runner under the names it had.

`Loop(config, workdir, load_model=...).run()` runs M0 -SFT-> M1 and config.stages for each
iteration, resumably; srlm_jax/pipeline/runner.py says what the work directory holds and
srlm_jax/pipeline/stages/ what each stage writes.
"""

from srlm_jax import train
from srlm_jax.pipeline import runner
from srlm_jax.pipeline import seeds
from srlm_jax import store

Loop = runner.Runner
default_loader = runner.default_loader
read_seed_data = seeds.read_seed_data
data_path = seeds.data_path
EMBEDDED = seeds.EMBEDDED
is_done = store.is_done
read_records = store.read_records
# Crash testing: the process SIGKILLs itself on reaching the named point, '<stage>' (its work
# done, DONE not yet written), '<stage>:shard' (its first shard written), 'm1_sft', or
# '<training stage>:checkpoint' (inside training, its first checkpoint written).
KILL_AT_ENV = train.KILL_AT_ENV
# The built-in iteration stages in their default order (configs/common.py: config.stages).
STAGES = ('prompts', 'candidates', 'judgments', 'pairs', 'dpo', 'eval', 'guard')
