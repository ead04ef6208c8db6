r"""The self-rewarding loop: M0 -> M1 (SFT on IFT + EFT) -> M2 -> ... as the config says.

  python launch/srlm.py --config=configs/demo.py --workdir=/tmp/srlm_demo
  python launch/srlm.py --config=configs/tiny.py --workdir=/tmp/srlm_tiny \
      --config.iterations=1 --config.creation.n_candidates=2

Killed at any point, the same command resumes from the last complete stage (or shard, or
checkpoint) and ends with the same records. Each iteration writes
workdir/iter_<t>/report.md and report.json.

Console: a config summary, one bar per stage with the run's ETA, a line per stage (done,
skipped, resumed) and an end table; Orbax/absl/jax INFO logs only with --verbosity=0.
--dry_run prints the resolved config and each stage's size, then exits without loading a
model; --help lists the config's fields. Metrics: workdir/tensorboard (the [tensorboard] extra)
and W&B with --config.logging.wandb_project=<project>.

Multi-host: start the same command on every host with --config.distributed=True (TPU pods and
SLURM find their peers themselves; elsewhere add --coordinator_address=host:port
--num_processes=N --process_id=i). The mesh spans every host's devices, process 0 writes the
records, and --workdir must be a filesystem all hosts see (see srlm_jax/distributed.py).
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from srlm_jax import config_help
from srlm_jax import console
from srlm_jax import distributed
from srlm_jax import loop
from srlm_jax import validate

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Loop config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where every stage writes.', required=True)
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the resolved config, the stages and '
                              'their sizes, then exit (no model is loaded).')
_INIT_DISTRIBUTED = distributed.define_flags()


def main(argv):
  del argv
  config = _CONFIG.value
  console.quiet_third_party()
  if _DRY_RUN.value:
    validate.check_loop_config(config)
    seeds = loop.read_seed_data(config)  # reads and checks the seed files; no model
    print(console.dry_run_text(config, _WORKDIR.value, len(seeds['ift']), len(seeds['eft'])))
    return
  _INIT_DISTRIBUTED(config.distributed)
  # The seed data is read and validated in Loop() before any model is loaded.
  run = loop.Loop(config, _WORKDIR.value, load_model=loop.default_loader(config))
  run.run()  # its console ends with a table saying where each iteration's report is


if __name__ == '__main__':
  config_help.handle_help(sys.argv, __doc__, config_help.config_path('demo.py'))
  flags.mark_flag_as_required('config')
  app.run(main)
