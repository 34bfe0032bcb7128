"""``report.md`` of ``ndk-flax validate``, rendered from the same dictionary that is saved as ``results.json``.

The results dictionary (all arrays as nested lists, times first) has the keys

* ``command``, ``ndk_flax_version``, ``config`` (the resolved :class:`ndk_flax.config.RunConfig`), ``runtime_s``;
* ``time_scales``: ``gradient`` = 1/λ_max(Θ0), ``diffusive`` = σ²/T (``null`` at T = 0);
* ``tolerance``: ``z_tol``, the number of comparisons, the allowances δ; ``passed``; ``max_abs_z`` (``mean``,
  ``variance``, ``all``, and ``beyond_allowance`` = max (|ensemble − theory| − δ)/s.e., which passing bounds by z_tol);
* ``times`` (n_t,), ``points`` (names of the n_p compared points, training points first);
* ``mean`` and ``variance``: each ``theory``, ``ensemble``, ``se``, ``z`` of shape (n_t, n_p);
* ``train_loss`` and ``test_mse``: ``theory`` and ``ensemble`` of shape (n_t,) (of the mean predictor).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

ALPHA = 0.01
"""Family-wise false-alarm probability behind the statistical part of the tolerance."""

TOLERANCE_TEXT = """\
Every recorded time t and every training and test point x gives two comparisons: the ensemble mean of f(x, t)
against the theory's f̄(x, t), and the ensemble variance against the theory's variance. Each discrepancy is measured
in standard errors of the ensemble estimate, z = (ensemble − theory) / s.e., with s.e. = s/√M for the mean and
√((m₄ − s⁴)/M) for the sample variance (m₄ the fourth central moment; no Gaussian assumption). The run passes when

    |ensemble − theory| ≤ z_tol · s.e. + δ    for all K = {n_comparisons} comparisons,

with z_tol = {z_tol:g} and the finite-width allowance δ = κ · scale / N, κ = {kappa:g}, N = {width}:
δ = {mean_atol:.3g} for the mean (scale max|y| = {y_scale:.3g}) and δ = {var_atol:.3g} for the variance
(scale: the largest predicted variance, {var_scale:.3g}).

Why these numbers.
* Statistics. If the trained networks followed the theory exactly, each z would be close to standard normal
  and max |z| over K comparisons would exceed Φ⁻¹(1 − α/(2K)) with probability at most α (union bound); for
  K = {n_comparisons} and α = {alpha:g} that is {bonferroni:.2f} (conservative: neighbouring times are strongly
  correlated). z_tol adds {margin:.2f} to it for two effects of the finite ensemble and step: the sample variance
  of M = {m} members is a skewed χ²-like statistic (relative s.e. √(2/M) = {rel_var_se:.2f}) whose upper tail is
  heavier than the normal one; and the discrete Langevin rule (step η = {eta:g}) relaxes the
  fastest mode by (1 − ηλ_max) per step instead of e^(−ηλ_max), a relative error O(ηλ_max/2) = {half_eta_lambda:.3f}
  in its time constant and stationary variance, at most ≈ {step_z:.2f} standard errors of a variance.
* Finite width. The theory is the N → ∞ limit; the mean and covariance of a width-N network differ from it by
  corrections of relative size O(1/N) with an architecture-dependent constant. δ allows that constant to be
  κ = {kappa:g} ({percent:.2g} % of the scale at N = {width}).
* Not vacuous. δ is {delta_in_median_se:.2f} median / {delta_in_min_se:.2f} smallest standard errors of the mean
  (s.e. {median_mean_se:.3g} / {min_mean_se:.3g}), so the rule flags any mean off by more than about
  {detect_median:.3g} at a typical point and {detect_min:.3g} at the best-measured one (scale of y: {y_scale:.3g}).
  A wrong kernel, a wrong time or temperature scale, or a missing noise or prior-decay term in the trainer shifts
  the predictions by more than that over a learning curve; the README reports the measured power of the default
  run against deliberately perturbed theories."""


def fmt(x: Any) -> str:
  """Numbers in the report: 4 significant digits (``inf`` and ``nan`` spelled out)."""
  if x is None:
    return '—'
  x = float(x)
  if not math.isfinite(x):
    return str(x)
  return f'{x:.4g}'


def _row(cells) -> str:
  return '| ' + ' | '.join(cells) + ' |'


def _table(header, rows) -> list[str]:
  return [_row(header), _row(['---'] * len(header)), *[_row(r) for r in rows]]


def bonferroni(n_comparisons: int, alpha: float = ALPHA) -> float:
  """Φ⁻¹(1 − α/(2K)): the two-sided normal threshold that K comparisons exceed with probability ≤ α."""
  from scipy.stats import norm

  return float(norm.isf(alpha / (2 * n_comparisons)))


def tolerance_text(results: Mapping[str, Any]) -> str:
  """The tolerance paragraph: the pass rule with its numbers and why they were chosen."""
  import numpy as np

  cfg, tol = results['config'], results['tolerance']
  m, width = cfg['n_members'], cfg['width']
  threshold = bonferroni(tol['n_comparisons'])
  half_eta_lambda = 0.5 * cfg['learning_rate'] / results['time_scales']['gradient']
  median_mean_se = float(np.median(results['mean']['se']))
  y_scale = float(np.max(np.abs(results['targets'][: cfg['n_train']])))
  min_mean_se = float(np.min(results['mean']['se']))
  return TOLERANCE_TEXT.format(
    n_comparisons=tol['n_comparisons'],
    z_tol=tol['z_tol'],
    kappa=tol['width_allowance_kappa'],
    width=width,
    mean_atol=tol['mean_atol'],
    var_atol=tol['var_atol'],
    y_scale=y_scale,
    var_scale=float(np.max(results['variance']['theory'])),
    alpha=ALPHA,
    bonferroni=threshold,
    margin=tol['z_tol'] - threshold,
    m=m,
    rel_var_se=math.sqrt(2 / m),
    eta=cfg['learning_rate'],
    half_eta_lambda=half_eta_lambda,
    step_z=half_eta_lambda / math.sqrt(2 / m),
    percent=100 * tol['width_allowance_kappa'] / width,
    delta_in_median_se=tol['mean_atol'] / median_mean_se,
    delta_in_min_se=tol['mean_atol'] / min_mean_se,
    median_mean_se=median_mean_se,
    min_mean_se=min_mean_se,
    detect_median=tol['z_tol'] * median_mean_se + tol['mean_atol'],
    detect_min=tol['z_tol'] * min_mean_se + tol['mean_atol'],
  )


def render(results: Mapping[str, Any]) -> str:
  """The markdown report of ``results`` (see the module docstring for the keys)."""
  cfg, ts, tol = results['config'], results['time_scales'], results['tolerance']
  times, points = results['times'], results['points']
  mean, var = results['mean'], results['variance']
  n_train = sum(p.startswith('train') for p in points)
  verdict = 'PASSED' if results['passed'] else 'FAILED'
  eta_lambda = cfg['learning_rate'] / ts['gradient']
  lines = [
    '# ndk-flax validate: infinite-width theory vs a Langevin-trained ensemble',
    '',
    f'**{verdict}**: max (|ensemble − theory| − δ)/s.e. = {fmt(results["max_abs_z"]["beyond_allowance"])} '
    f'{"≤" if results["passed"] else ">"} z_tol = {fmt(tol["z_tol"])} (δ: the finite-width allowance, see '
    f'Tolerance); max |z| = {fmt(results["max_abs_z"]["all"])} (mean: {fmt(results["max_abs_z"]["mean"])}, '
    f'variance: {fmt(results["max_abs_z"]["variance"])}).',
    '',
    '## What was run',
    '',
    f'Command: `{results["command"]}` (ndk_flax {results["ndk_flax_version"]}); '
    f'run time {fmt(results["runtime_s"]["total"])} s (theory {fmt(results["runtime_s"]["theory"])} s, '
    f'ensemble {fmt(results["runtime_s"]["ensemble"])} s; CPU time of all threads '
    f'{fmt(results["runtime_s"]["cpu"])} s).',
    '',
    f'* Network: {cfg["depth"]} hidden layer(s) of width N = {cfg["width"]} with {cfg["activation"]}, '
    f'{"with" if cfg["bias"] else "without"} biases, scalar output; raw parameterisation h = W a/√N + b.',
    f'* Initialisation σ0_W = {fmt(cfg["W_std"])}, prior σ_W = {fmt(cfg["W_prior_std"])}'
    + (f', σ0_b = {fmt(cfg["b_std"])}, σ_b = {fmt(cfg["b_prior_std"])}' if cfg['bias'] else '')
    + '.',
    f'* Langevin dynamics on the summed ½-MSE loss: temperature T = {fmt(cfg["temperature"])}, '
    f'step η = {fmt(cfg["learning_rate"])}, time t = η × steps up to t_max = {fmt(cfg["t_max"])} '
    f'({int(round(cfg["t_max"] / cfg["learning_rate"]))} steps), noise ξ '
    + (
      '~ N(0, 1) (Euler–Maruyama).'
      if cfg.get('noise', 'gaussian') == 'gaussian'
      else '= ±1 (Rademacher: the weak Euler scheme, same mean and covariance as Gaussian increments).'
    ),
    f'* Ensemble: M = {cfg["n_members"]} independently initialised networks trained in float32 (the theory in '
    f'float64), seed {cfg["seed"]}; data: built-in {cfg["dataset"]} set, '
    f'P = {cfg["n_train"]} training and {cfg["n_test"]} test points on a circle in R³ '
    f'(data seed {cfg["data_seed"]}; see `ndk_flax.data`).',
    '',
    '## Time scales',
    '',
    f'* Gradient-driven phase: 1/λ_max(Θ0) = {fmt(ts["gradient"])} (Θ0 = R(0,0,X,X), the raw NTK at σ0²); '
    f'η λ_max(Θ0) = {fmt(eta_lambda)}.',
    f'* Diffusive phase: 1/λ = σ²/T = {fmt(ts["diffusive"]) if ts["diffusive"] is not None else "∞ (T = 0)"}.',
    '',
    '## Tolerance',
    '',
    tolerance_text(results),
    '',
    '## Summary per recorded time',
    '',
    'Training loss ½ Σ_μ (y_μ − f̄(x_μ, t))² and test error (1/n*) Σ (y* − f̄(x*, t))² of the mean '
    'predictor '
    "(the ensemble's columns use the ensemble mean, so they include its sampling noise, on average ½ Σ s.e.² "
    'and mean s.e.² respectively); max |z| over the points.',
    '',
  ]
  rows = []
  for i, t in enumerate(times):
    rows.append(
      [
        fmt(t),
        fmt(results['train_loss']['theory'][i]),
        fmt(results['train_loss']['ensemble'][i]),
        fmt(results['test_mse']['theory'][i]),
        fmt(results['test_mse']['ensemble'][i]),
        fmt(max(abs(z) for z in mean['z'][i])),
        fmt(max(abs(z) for z in var['z'][i])),
      ]
    )
  lines += _table(
    [
      't',
      'train loss (theory)',
      'train loss (ensemble)',
      'test error (theory)',
      'test error (ensemble)',
      'max abs z (mean)',
      'max abs z (variance)',
    ],
    rows,
  )
  lines += [
    '',
    '## Theory vs ensemble at every recorded time and point',
    '',
    f'Points `train i` are the P = {n_train} training inputs, `test i` the test inputs. z = (ensemble − theory) / s.e.',
    '',
  ]
  rows = []
  for i, t in enumerate(times):
    for j, name in enumerate(points):
      rows.append(
        [
          fmt(t),
          name,
          fmt(mean['theory'][i][j]),
          fmt(mean['ensemble'][i][j]),
          fmt(mean['se'][i][j]),
          fmt(mean['z'][i][j]),
          fmt(var['theory'][i][j]),
          fmt(var['ensemble'][i][j]),
          fmt(var['se'][i][j]),
          fmt(var['z'][i][j]),
        ]
      )
  lines += _table(
    [
      't',
      'point',
      'mean (theory)',
      'mean (ensemble)',
      's.e.',
      'z',
      'variance (theory)',
      'variance (ensemble)',
      's.e.',
      'z',
    ],
    rows,
  )
  lines += [
    '',
    '## Figures',
    '',
    '* `mean.png`: mean predictor vs time on training and test points.',
    '* `variance.png`: variance of the predictor vs time.',
    '* `loss.png`: training loss and test error vs time, the two phases marked.',
    '* `kernel.png`: two-time kernel C(t, s, x, x) (and R) of the first training point.',
    '',
  ]
  return '\n'.join(lines)
