r"""The self-rewarding loop: M0 -> M1 (SFT on IFT + EFT) -> M2 -> ... as the config says.

  python launch/srlm.py --config=configs/demo.py --workdir=/tmp/srlm_demo
  python launch/srlm.py --config=configs/tiny.py --workdir=/tmp/srlm_tiny \
      --config.iterations=1 --config.creation.n_candidates=2

Killed at any point, the same command resumes from the last complete stage (or shard, or
checkpoint) and ends with the same records. Each iteration writes
workdir/iter_<t>/report.md and report.json.

Multi-host: start the same command on every host with --config.distributed=True (TPU pods and
SLURM find their peers themselves; elsewhere add --coordinator_address=host:port
--num_processes=N --process_id=i). The mesh spans every host's devices, process 0 writes the
records, and --workdir must be a filesystem all hosts see (see srlm_jax/distributed.py).
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from srlm_jax import distributed
from srlm_jax import loop

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Loop config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where every stage writes.', required=True)
_INIT_DISTRIBUTED = distributed.define_flags()


def main(argv):
  del argv
  config = _CONFIG.value
  _INIT_DISTRIBUTED(config.distributed)
  # The seed data is read and validated in Loop() before any model is loaded.
  run = loop.Loop(config, _WORKDIR.value, load_model=loop.default_loader(config))
  reports = run.run()
  for t, report in enumerate(reports, 1):
    logging.info('iteration %d: %d pairs', t, report['pairs'])
    if distributed.is_writer():
      print(f'iteration {t}: report at {_WORKDIR.value}/iter_{t}/report.md')


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
