"""The progress bar a long loop (the sampler, the training loop) reports to.

Such loops take `progress`: True/False (a tqdm bar of their own on process 0, or none) or a
callable such as `console.Console.progress` that returns the running stage's bar, so that every
shard of a stage advances one bar labelled with the stage's name.
"""

from typing import Any

import tqdm

from srlm_jax import distributed


def progress_bar(progress: Any, total: int, *, initial: int = 0, desc: str = '',
                 unit: str = 'it'):
  """Returns a bar for `total` units: progress(...) when it is callable, else a tqdm bar.

  `progress` is what the sampler and the training loop take: True/False (a bar of their own on
  process 0, or none) or a callable such as `Console.progress` that returns the stage's bar.
  """
  if callable(progress):
    return progress(total=total, initial=initial, desc=desc, unit=unit)
  return tqdm.tqdm(total=total, initial=initial, desc=desc or None, unit=unit,
                   disable=not (progress and distributed.is_writer()))
