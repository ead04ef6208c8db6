r"""DPO on preference pairs against a frozen reference (AI Feedback Training: M_t -> M_{t+1}).

  python launch/dpo.py --config=configs/dpo.py --workdir=/tmp/srlm/dpo \
      --config.model=/tmp/srlm/m1_hf --config.train_data=/tmp/srlm/pairs.jsonl

Resumes from the latest checkpoint in --workdir; the final params go to --workdir/params.
--help lists the config's fields; Orbax/absl/jax INFO logs show only with --verbosity=0.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from srlm_jax import config_help
from srlm_jax import console
from srlm_jax import distributed
from srlm_jax import train
from srlm_jax import validate
from srlm_jax import workdir

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints, metrics.jsonl and params go here.')
_INIT_DISTRIBUTED = distributed.define_flags()
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  console.quiet_third_party()
  _INIT_DISTRIBUTED(_CONFIG.value.distributed)
  validate.check_train_config(_CONFIG.value, 'dpo')  # before the workdir is touched
  with workdir.locked(_WORKDIR.value):  # one run at a time in a workdir
    train.run_dpo(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  config_help.handle_help(sys.argv, __doc__, config_help.config_path('dpo.py'))
  app.run(main)
