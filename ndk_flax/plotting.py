"""Figures of the ``ndk-flax`` command (matplotlib, Agg backend; small PNGs).

Time axes are symmetric-log (linear below the first positive time, logarithmic above) so that t = 0, the
gradient-driven phase t ~ 1/λ_max(Θ0) and the diffusive phase t ~ 1/λ = σ²/T all show on one axis.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np

_DPI = 80


class Panel(NamedTuple):
  """One axis: theory curves (n_t_theory, k) against ensemble points (n_t_ens, k) with error bars ``ens_se``.

  ``ens``/``ens_se`` may be None (theory only); ``ens_se`` may be None (points without error bars).
  """

  title: str
  ylabel: str
  t_theory: np.ndarray
  theory: np.ndarray
  t_ens: np.ndarray | None = None
  ens: np.ndarray | None = None
  ens_se: np.ndarray | None = None
  labels: Sequence[str] = ()
  logy: bool = False


def _time_axis(ax, times: np.ndarray) -> None:
  positive = times[times > 0]
  ax.set_xscale('symlog', linthresh=float(positive.min()) if positive.size else 1.0)
  ax.set_xlabel('time t = learning rate × steps')


def _mark_phases(ax, time_scales: tuple[float, float] | None, t_max: float) -> None:
  """Vertical lines at the gradient time scale 1/λ_max(Θ0) and the diffusive time scale 1/λ_min."""
  if time_scales is None:
    return
  for value, text, style in (
    (time_scales[0], 'gradient phase\n1/λmax(Θ0)', '--'),
    (time_scales[1], 'diffusive phase\n1/λ = σ²/T', ':'),
  ):
    if math.isfinite(value) and 0 < value <= t_max:
      ax.axvline(value, color='0.4', ls=style, lw=1)
      ax.text(
        value,
        0.98,
        text,
        transform=ax.get_xaxis_transform(),
        ha='center',
        va='top',
        fontsize=7,
        color='0.3',
        bbox={'fc': 'white', 'ec': 'none', 'alpha': 0.7, 'pad': 1},
      )


def time_panels(
  path: str, panels: Sequence[Panel], *, suptitle: str, time_scales: tuple[float, float] | None = None
) -> str:
  """Side-by-side panels of quantities against time, phases marked; saves a PNG at ``path`` and returns it."""
  if not panels:
    raise ValueError('panels must be a non-empty sequence of Panel')
  fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for ax, p in zip(axes[0], panels):
    theory = np.asarray(p.theory).reshape(len(p.t_theory), -1)
    for j in range(theory.shape[1]):
      color = colors[j % len(colors)]
      label = p.labels[j] if j < len(p.labels) else None
      ax.plot(p.t_theory, theory[:, j], color=color, lw=1.4, label=label)
      if p.ens is not None:
        ens = np.asarray(p.ens).reshape(len(p.t_ens), -1)[:, j]
        err = None if p.ens_se is None else np.asarray(p.ens_se).reshape(len(p.t_ens), -1)[:, j]
        ax.errorbar(p.t_ens, ens, yerr=err, fmt='o', ms=3.5, color=color, capsize=2, lw=1)
    _time_axis(ax, np.asarray(p.t_theory))
    if p.logy:
      ax.set_yscale('log')
    _mark_phases(ax, time_scales, float(np.max(p.t_theory)))
    ax.set_title(p.title, fontsize=10)
    ax.set_ylabel(p.ylabel)
    if p.labels:
      ax.legend(fontsize=7, loc='best', ncols=2)
  fig.suptitle(
    suptitle + '  (lines: theory, points: ensemble ± 1 s.e.)' if any(p.ens is not None for p in panels) else suptitle,
    fontsize=10,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=_DPI)
  plt.close(fig)
  return path


def _log_edges(times: np.ndarray) -> np.ndarray:
  """Cell edges around increasing positive ``times``: geometric midpoints, outer edges mirrored in log t."""
  log_t = np.log(times)
  mid = 0.5 * (log_t[1:] + log_t[:-1])
  return np.exp(np.concatenate([[2 * log_t[0] - mid[0]], mid, [2 * log_t[-1] - mid[-1]]]))


def kernel_heatmaps(path: str, times: np.ndarray, maps: Sequence[tuple[str, np.ndarray]], *, suptitle: str) -> str:
  """Heat maps of two-time kernels K(t, s) (rows t, columns s) on logarithmic time axes; saves a PNG at ``path``.

  ``times`` is increasing with at least two positive entries; rows and columns at t = 0 (if any) are not drawn.
  """
  times = np.asarray(times, dtype=float)
  if times.ndim != 1 or np.any(np.diff(times) <= 0) or np.sum(times > 0) < 2:
    raise ValueError(f'times must be a 1-D increasing array with >= 2 positive entries, got {times}')
  keep = times > 0
  edges = _log_edges(times[keep])
  fig, axes = plt.subplots(1, len(maps), figsize=(4.4 * len(maps), 3.8), squeeze=False)
  for ax, (title, matrix) in zip(axes[0], maps):
    matrix = np.asarray(matrix)
    if matrix.shape != (times.size, times.size):
      raise ValueError(f'{title}: expected a ({times.size}, {times.size}) matrix, got {matrix.shape}')
    mesh = ax.pcolormesh(edges, edges, matrix[np.ix_(keep, keep)], cmap='viridis', shading='flat')
    fig.colorbar(mesh, ax=ax, shrink=0.85)
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('s')
    ax.set_ylabel('t')
    ax.set_title(title, fontsize=10)
  fig.suptitle(suptitle, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=_DPI)
  plt.close(fig)
  return path
