"""Progress bars over units of work (tqdm), quiet unless asked for and stderr is a terminal: the one home of that
rule, used by the training engine (steps) and the predictor's solver sweeps (kernel pairs and solver rows)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

__all__ = ['progress_bar']


def progress_bar(total: int, desc: str, unit: str, enabled: bool) -> tqdm:
  """A tqdm bar over ``total`` units of work, disabled unless ``enabled`` and stderr is a terminal.

  Examples:
    >>> from ndk_flax._progress import progress_bar
    >>> with progress_bar(3, 'demo', 'step', enabled=True) as bar:  # stderr is not a terminal under doctest
    ...   _ = bar.update(3)
    >>> bar.disable
    True
  """
  return tqdm(total=total, desc=desc, unit=unit, disable=not enabled or not sys.stderr.isatty(), leave=False)
