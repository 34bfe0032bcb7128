"""Figures of the ``ndk-flax`` command, in the house style of :mod:`ndk_flax.style` (no pyplot, no global state).

Time axes are symmetric-log (linear below the first positive time, logarithmic above) so that t = 0, the
gradient-driven phase t ~ 1/λ_max(Θ0) and the diffusive phase t ~ 1/λ = σ²/T all show on one axis. Curves that
coincide within 2 % of the panel's range are drawn and labelled as one group, so that every legend entry matches
a visible line; legends sit below the data and the phase labels above the axes. Heat maps show t = 0 as a separate
strip left of (and below) the logarithmic time range.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

from ndk_flax import style

GROUP_TOL = 0.02
"""Curves closer than this fraction of a panel's y range at every time are drawn as one group."""


class Panel(NamedTuple):
  """One axis: theory curves (n_t_theory, k) against ensemble points (n_t_ens, k) with error bars ``ens_se``.

  ``ens``/``ens_se`` may be None (theory only); ``ens_se`` may be None (points without error bars).

  Examples:
    NTK gradient flow f̄(t) = (1 − e^{−Θ0 t}) y of one training point (Θ0 = 1, y = 1) against ensemble points:

    >>> t = np.array([0.0, 0.1, 1.0, 10.0])
    >>> p = Panel('mean', 'f̄(x, t)', t, 1 - np.exp(-t), t_ens=t, ens=1 - np.exp(-t) + 0.01, ens_se=np.full(4, 0.02))
    >>> p.theory.shape == p.ens.shape, Panel('loss', 'loss', t, np.exp(-2 * t), logy=True).ens is None
    (True, True)
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


def group_curves(curves: np.ndarray, tol: float = GROUP_TOL, logy: bool = False) -> list[list[int]]:
  """Indices of the columns of ``curves`` (n_t, k) grouped when they differ by < ``tol`` × range everywhere.

  Examples:
    >>> group_curves(np.array([[0.0, 0.001, 1.0], [1.0, 1.001, 0.0]]))
    [[0, 1], [2]]
  """
  values = np.log(np.maximum(curves, 1e-300)) if logy else np.asarray(curves, float)
  span = float(np.ptp(values)) or 1.0
  groups: list[list[int]] = []
  for j in range(values.shape[1]):
    for g in groups:
      if np.max(np.abs(values[:, j] - values[:, g[0]])) < tol * span:
        g.append(j)
        break
    else:
      groups.append([j])
  return groups


def _group_label(labels: Sequence[str], members: list[int]) -> str | None:
  if not labels:
    return None
  names = [labels[j] for j in members]
  prefix = names[0].rsplit(' ', 1)[0]
  if len(names) > 1 and all(n.rsplit(' ', 1)[0] == prefix for n in names):
    return f'{prefix} ' + ', '.join(n.rsplit(' ', 1)[-1] for n in names)
  return ', '.join(names)


def _time_axis(ax, times: np.ndarray) -> None:
  from matplotlib.ticker import NullFormatter

  positive = times[times > 0]
  linthresh = float(positive.min()) if positive.size else 1.0
  ax.set_xscale('symlog', linthresh=linthresh, linscale=0.4)
  t_max = float(times.max())
  decades = [10.0**k for k in range(math.ceil(math.log10(linthresh)), math.floor(math.log10(t_max)) + 1)]
  ax.set_xticks([0.0] + decades, ['0'] + [f'$10^{{{round(math.log10(d))}}}$' for d in decades])
  ax.xaxis.set_minor_formatter(NullFormatter())
  ax.set_xlabel('time t = η × steps (symlog, from 0)')
  ax.set_xlim(-0.25 * linthresh, float(times.max()) * 1.3)


def _mark_phases(ax, time_scales: tuple[float, float] | None, t_max: float) -> None:
  """Vertical lines at 1/λ_max(Θ0) and 1/λ = σ²/T, labelled above the axes (never on the curves)."""
  if time_scales is None:
    return
  for value, text, style_ in ((time_scales[0], '1/λmax(Θ0)', '--'), (time_scales[1], 'σ²/T', ':')):
    if math.isfinite(value) and 0 < value <= t_max:
      ax.axvline(value, color='0.45', ls=style_, lw=1, zorder=0)
      ax.text(value, 1.01, text, transform=ax.get_xaxis_transform(), ha='center', va='bottom', fontsize=8, color='0.3')


def time_panels(
  path: str, panels: Sequence[Panel], *, suptitle: str, time_scales: tuple[float, float] | None = None
) -> str:
  """Side-by-side panels of quantities against time, phases marked; saves a PNG at ``path`` and returns it.

  The figure is :data:`ndk_flax.style.COLUMN` inches wide and saved at :data:`ndk_flax.style.DPI`.

  Examples:
    >>> import os, tempfile
    >>> t = np.array([0.0, 0.1, 1.0, 10.0, 100.0])
    >>> f = np.stack([1 - np.exp(-t), 0.5 * (1 - np.exp(-t))], axis=1)  # (n_t, 2): two points
    >>> panel = Panel('mean', 'f̄(x, t)', t, f, t_ens=t, ens=f + 0.01, ens_se=np.full(f.shape, 0.02),
    ...               labels=['train 0', 'train 1'])
    >>> with tempfile.TemporaryDirectory() as d:
    ...   path = time_panels(os.path.join(d, 'mean.png'), [panel], suptitle='mean', time_scales=(1.0, 20.0))
    ...   with open(path, 'rb') as fh:
    ...     png = fh.read(24)
    >>> os.path.basename(path), png[1:4], int.from_bytes(png[16:20], 'big') == round(style.COLUMN * style.DPI)
    ('mean.png', b'PNG', True)
  """
  if not panels:
    raise ValueError('panels must be a non-empty sequence of Panel')
  with style.context():
    n_legend_rows = max((math.ceil(len(p.labels) / 3) for p in panels), default=0)
    fig = style.figure(style.COLUMN, 3.5 + 0.18 * n_legend_rows)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, p in zip(axes, panels):
      theory = np.asarray(p.theory).reshape(len(p.t_theory), -1)
      ens = None if p.ens is None else np.asarray(p.ens).reshape(len(p.t_ens), -1)
      err = None if p.ens_se is None else np.asarray(p.ens_se).reshape(len(p.t_ens), -1)
      for k, members in enumerate(group_curves(theory, logy=p.logy)):
        color = style.PALETTE[k % len(style.PALETTE)]
        ax.plot(p.t_theory, theory[:, members[0]], color=color, label=_group_label(p.labels, members))
        for j in members if ens is not None else ():
          ax.errorbar(
            p.t_ens, ens[:, j], yerr=None if err is None else err[:, j], fmt='o', color=color, capsize=2, lw=1, ms=4
          )
      _time_axis(ax, np.asarray(p.t_theory))
      if p.logy:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_yscale('log')
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:g}'))
        ax.yaxis.set_minor_formatter(NullFormatter())
      _mark_phases(ax, time_scales, float(np.max(p.t_theory)))
      ax.set_title(p.title, pad=16)
      ax.set_ylabel(p.ylabel)
      if p.labels:
        ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.2), ncols=3, handlelength=1.5, columnspacing=1.0)
    note = '\nlines: theory (N → ∞), points: ensemble ± 1 s.e.' if any(p.ens is not None for p in panels) else ''
    fig.suptitle(suptitle + note)
    return style.save(fig, path)


def _strip_coordinates(times: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
  """Cell edges in u = log10 t for the positive ``times`` (geometric midpoints), and a t = 0 strip: its centre
  and edges left of the first positive cell, 8 % of the logarithmic span wide after a gap of 4 %."""
  u = np.log10(times[times > 0])
  mid = 0.5 * (u[1:] + u[:-1])
  edges = np.concatenate([[u[0] - (mid[0] - u[0])], mid, [u[-1] + (u[-1] - mid[-1])]])
  span = float(edges[-1] - edges[0])
  zero_edges = np.array([edges[0] - 0.12 * span, edges[0] - 0.04 * span])
  return edges, float(zero_edges.mean()), zero_edges


def kernel_heatmaps(path: str, times: np.ndarray, maps: Sequence[tuple[str, np.ndarray]], *, suptitle: str) -> str:
  """Heat maps of two-time kernels K(t, s) (rows t, columns s) on logarithmic time axes; saves a PNG at ``path``.

  ``times`` is increasing with at least two positive entries; a row and column at t = 0 (if any) are drawn as a
  separate strip, labelled 0, left of and below the logarithmic range.

  Examples:
    The stationary OU covariance c(t, s) = σ² e^{−λ|t − s|} (docs/theory.md §2), σ = 1, λ = 0.5:

    >>> import os, tempfile
    >>> t = np.array([0.0, 0.1, 1.0, 10.0])
    >>> c = np.exp(-0.5 * np.abs(t[:, None] - t[None, :]))
    >>> with tempfile.TemporaryDirectory() as d:
    ...   path = kernel_heatmaps(os.path.join(d, 'kernel.png'), t, [('C(t, s)', c)], suptitle='OU covariance')
    ...   print(os.path.basename(path), os.path.getsize(path) > 0)
    kernel.png True
    >>> kernel_heatmaps('unused.png', np.array([0.0, 1.0]), [('C', c[:2, :2])], suptitle='')
    Traceback (most recent call last):
    ...
    ValueError: times must be a 1-D increasing array >= 0 with >= 2 positive entries, got [0. 1.]
  """
  times = np.asarray(times, dtype=float)
  if times.ndim != 1 or np.any(np.diff(times) <= 0) or np.sum(times > 0) < 2 or np.any(times < 0):
    raise ValueError(f'times must be a 1-D increasing array >= 0 with >= 2 positive entries, got {times}')
  keep = times > 0
  has_zero = bool(times[0] == 0)
  edges, zero_centre, zero_edges = _strip_coordinates(times)
  with style.context():
    fig = style.figure(style.COLUMN, 2.75)
    axes = fig.subplots(1, len(maps), squeeze=False)[0]
    for ax, (title, matrix) in zip(axes, maps):
      matrix = np.asarray(matrix)
      if matrix.shape != (times.size, times.size):
        raise ValueError(f'{title}: expected a ({times.size}, {times.size}) matrix, got {matrix.shape}')
      lo, hi = float(np.min(matrix)), float(np.max(matrix))
      kw = {'cmap': 'viridis', 'vmin': lo, 'vmax': hi if hi > lo else lo + 1, 'shading': 'flat'}
      mesh = ax.pcolormesh(edges, edges, matrix[np.ix_(keep, keep)], **kw)
      if has_zero:  # the t = 0 row and column, and the (0, 0) corner
        ax.pcolormesh(edges, zero_edges, matrix[:1, keep], **kw)
        ax.pcolormesh(zero_edges, edges, matrix[keep, :1], **kw)
        ax.pcolormesh(zero_edges, zero_edges, matrix[:1, :1], **kw)
      decades = np.arange(math.ceil(edges[0] + 0.05 * (edges[-1] - edges[0])), math.floor(edges[-1]) + 1)
      ticks = ([zero_centre] if has_zero else []) + list(decades)
      labels = (['0'] if has_zero else []) + [f'$10^{{{int(d)}}}$' for d in decades]
      for axis in (ax.xaxis, ax.yaxis):
        axis.set_ticks(ticks, labels)
      ax.grid(False)
      ax.set_aspect('equal')
      ax.set_xlabel('s')
      ax.set_ylabel('t')
      ax.set_title(title, fontsize=9)
      fig.colorbar(mesh, ax=ax, shrink=0.72, pad=0.03, aspect=22)
    fig.suptitle(suptitle)
    return style.save(fig, path)


class WidthPanel(NamedTuple):
  """One axis of a finite-width sweep: discrepancies D(N) = ``values`` ± ``se`` (one per width) and the fit a + c/N
  (``intercept`` a, ``coefficient`` c; docs/theory.md §4).

  Examples:
    >>> WidthPanel('mean', 'D_mean', [0.02, 0.01, 0.005], [0.001] * 3, 0.0, 2.56).coefficient
    2.56
  """

  title: str
  ylabel: str
  values: Sequence[float]
  se: Sequence[float]
  intercept: float
  coefficient: float


def inverse_width_panels(path: str, widths: Sequence[int], panels: Sequence[WidthPanel], *, suptitle: str) -> str:
  """Side-by-side panels of discrepancies against 1/N (linear, from 0: the theory's N → ∞ limit at the left edge,
  widths labelled on the top axis), points ± 1 s.e., with the fitted line a + c/N and the theory's value 0 (legend in
  the first panel); saves a PNG at ``path`` and returns it.

  The figure is :data:`ndk_flax.style.COLUMN` inches wide and saved at :data:`ndk_flax.style.DPI`.

  Examples:
    >>> import os, tempfile
    >>> from PIL import Image
    >>> panel = WidthPanel('mean', 'D_mean', [0.02, 0.01, 0.005], [0.001] * 3, 0.0, 2.56)
    >>> path = inverse_width_panels(os.path.join(tempfile.mkdtemp(), 'w.png'), [128, 256, 512], [panel], suptitle='D')
    >>> Image.open(path).size[0]  # 7 in at 200 dpi
    1400
  """
  inv = 1 / np.asarray(widths, dtype=float)
  if inv.ndim != 1 or inv.size < 2 or not panels:
    raise ValueError(f'need at least 2 widths and one panel, got widths {widths} and {len(panels)} panels')
  line = np.linspace(0, 1.08 * inv.max(), 50)
  with style.context():
    fig = style.figure(style.COLUMN, 3.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, p in zip(axes, panels):
      if len(p.values) != inv.size or len(p.se) != inv.size:
        raise ValueError(f'{p.title}: expected {inv.size} values and standard errors')
      ax.axhline(0, color='0.45', ls='--', lw=1, zorder=0, label='theory (N → ∞): 0')
      ax.plot(line, p.intercept + p.coefficient * line, color=style.PALETTE[1], label='fit a + c/N')
      ax.errorbar(inv, p.values, yerr=p.se, fmt='o', color=style.PALETTE[0], capsize=2, lw=1, ms=4, label='ensemble')
      ax.set_xlim(0, line[-1])
      ax.set_xlabel('1/N')
      ax.set_ylabel(p.ylabel)
      ax.set_title(p.title, fontsize=8.5)
      top = ax.secondary_xaxis('top')
      top.set_xticks(inv[inv >= 0.12 * inv.max()], [str(int(w)) for w, v in zip(widths, inv) if v >= 0.12 * inv.max()])
      top.tick_params(labelsize=8)
    axes[0].legend(loc='best', handlelength=1.5)
    fig.suptitle(suptitle)
    return style.save(fig, path)
