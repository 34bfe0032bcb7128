"""The house style of every figure (the ``ndk-flax`` command and the paper scripts in examples/paper).

One set of matplotlib rcParams (:data:`RC`) and one resolution (:data:`DPI`): figures are drawn at their printed
size in inches (:data:`COLUMN` wide for one panel row) and saved at 200 dpi, so a figure shown at its size is at
200 dpi, above the 150 dpi asked for print. Fonts are 10–11 pt at that size. Nothing is changed globally: the CLI
draws inside :func:`context`; a script that owns its process may call :func:`use`.
"""

from __future__ import annotations

from typing import Any

DPI = 200
"""Resolution of every saved PNG (dots per inch of the figure's size)."""

COLUMN = 7.0
"""Width in inches of a full-width figure (a slide or a two-column page)."""

PALETTE = ('#0072B2', '#D55E00', '#009E73', '#CC79A7', '#E69F00', '#56B4E9', '#000000', '#F0E442')
"""Okabe–Ito colours: distinguishable with the common colour-vision deficiencies."""

RC: dict[str, Any] = {
  'font.size': 10,
  'axes.titlesize': 10.5,
  'axes.labelsize': 10,
  'xtick.labelsize': 9,
  'ytick.labelsize': 9,
  'legend.fontsize': 8.5,
  'figure.titlesize': 11,
  'lines.linewidth': 1.6,
  'lines.markersize': 4.5,
  'axes.spines.top': False,
  'axes.spines.right': False,
  'axes.grid': True,
  'grid.alpha': 0.25,
  'grid.linewidth': 0.6,
  'legend.frameon': False,
  'figure.dpi': 100,
  'savefig.dpi': DPI,
  'figure.constrained_layout.use': True,
  'figure.constrained_layout.w_pad': 0.1,
  'figure.constrained_layout.h_pad': 0.06,
  'image.cmap': 'viridis',
}
"""The rcParams of every figure (the colour cycle is :data:`PALETTE`)."""


def _params() -> dict[str, Any]:
  from cycler import cycler

  return {**RC, 'axes.prop_cycle': cycler(color=list(PALETTE))}


def context():
  """``with style.context(): ...``: draw in the house style without touching the global rcParams.

  Examples:
    >>> import matplotlib
    >>> with context():
    ...   print(matplotlib.rcParams['savefig.dpi'])
    200.0
  """
  import matplotlib

  return matplotlib.rc_context(_params())


def use() -> None:
  """Set the house style for the whole process (for scripts that own their process, e.g. the paper scripts).

  Examples:
    >>> import matplotlib
    >>> from ndk_flax import style
    >>> with matplotlib.rc_context():  # restores the global rcParams afterwards
    ...   style.use()
    ...   print(matplotlib.rcParams['savefig.dpi'], matplotlib.rcParams['axes.prop_cycle'].by_key()['color'][0])
    200.0 #0072B2
  """
  import matplotlib

  matplotlib.rcParams.update(_params())


def figure(width: float, height: float):
  """A matplotlib Figure of ``width`` × ``height`` inches, without pyplot (no global figure registry).

  Examples:
    >>> with context():
    ...   fig = figure(7.0, 3.0)
    >>> [int(v) for v in fig.get_size_inches() * DPI]
    [1400, 600]
  """
  from matplotlib.figure import Figure

  return Figure(figsize=(width, height))


def save(fig, path: str) -> str:
  """Save ``fig`` at :data:`DPI` with its size kept (no tight bounding box: the promised pixel size holds).

  Examples:
    >>> import os, tempfile
    >>> import matplotlib
    >>> matplotlib.use('Agg')
    >>> import matplotlib.image
    >>> from ndk_flax import style
    >>> with tempfile.TemporaryDirectory() as tmp, style.context():
    ...   fig = style.figure(1.5, 1.0)
    ...   path = style.save(fig, os.path.join(tmp, 'panel.png'))
    ...   print(os.path.basename(path), matplotlib.image.imread(path).shape[:2])  # (height, width) = 200 dpi × size
    panel.png (200, 300)
  """
  fig.savefig(path, dpi=DPI)
  return path
