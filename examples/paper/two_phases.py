"""Two learning phases (docs/theory.md §5): training and test error of the mean predictor vs time, for several T and
several σ0²/σ² at fixed T, on orthogonal inputs with random binary labels.

Theory lines: the small-T composite (NTK gradient flow + reduced diffusive equations, O(T) accurate, one reduced
solve per network serves every T) and, in the full preset, the exact solver of ``ndk_flax.predict``; points: a
Langevin-trained finite-width ensemble. Run: ``python -m examples.paper.two_phases [--quick] [--out DIR]``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from examples.paper import common as C
from ndk_flax.predict import langevin_mse_ensemble
from ndk_flax.reduced import composite_small_temperature_mean

NAME = 'two_phases'


def _crossing(times: np.ndarray, values: np.ndarray, level: float) -> float:
  """First time at which ``values`` crosses ``level`` (log-linear interpolation), nan if never."""
  above = values >= level
  idx = np.flatnonzero(above[1:] != above[:-1])
  if idx.size == 0:
    return math.nan
  i = idx[0]
  frac = (level - values[i]) / (values[i + 1] - values[i])
  return float(np.exp(np.log(times[i]) + frac * (np.log(times[i + 1]) - np.log(times[i]))))


def _curves(net, task: C.Task, temperature: float, times: np.ndarray, max_step: float):
  sol = composite_small_temperature_mean(
    net, task.x, task.y, temperature=temperature, times=times, x_test=task.x_test, max_step=max_step
  )
  return C.mse(sol.train, task.y), C.mse(sol.test, task.y_test), np.asarray(sol.test)


def main(argv: Optional[Sequence[str]] = None) -> dict:
  args = C.parse_args(NAME, __doc__.splitlines()[0], argv)
  quick = args.quick
  p, n_test = (6, 6) if quick else (8, 16)
  temps = [0.1, 0.01, 0.001] if quick else [0.1, 0.01, 0.001, 0.0001]
  small = [t for t in temps if t <= 0.01]  # the claims are about small T
  ratios = [0.25, 4.0] if quick else [0.25, 1.0, 4.0]  # σ0²/σ² at σ = 1
  sigma, ratio_main, t_ratio = 1.0, 4.0, 0.01  # panel A uses σ0²/σ² = 4; panel B uses T = 0.01
  ens_temp = 0.1
  n_members, width = (8, 128) if quick else (32, 512)
  max_step = 0.1
  task = C.orthogonal_task(p, n_test, overlap=0.5, seed=args.seed)
  rep = C.Report(args.out, 'Two learning phases: gradient-driven, then diffusive', args)
  rep.add(
    f'Data: {task.name}, {n_test} test points (each a noisy copy of one training point, overlap 0.5), random '
    '±1 labels. Network: one hidden erf layer, no biases, σ = 1. Errors are mean squared errors of the mean '
    'predictor f̄ over points.',
    '',
  )

  def net_for(ratio):
    return C.network(1, 'erf', math.sqrt(ratio) * sigma, sigma)

  # --- Panel A: several T at σ0²/σ² = 4. ------------------------------------------------------------------
  net = net_for(ratio_main)
  ends = {temperature: C.end_points(net, task, temperature) for temperature in temps + [ens_temp]}
  t_grad = ends[ens_temp].gradient_time
  ntk_err = float(C.mse(ends[ens_temp].ntk, task.y_test))
  rows, curves_a = [], {}
  for temperature in temps:
    t_diff = sigma**2 / temperature
    times = np.geomspace(0.02 * t_grad, 10 * t_diff, 60)
    train, test, _ = _curves(net, task, temperature, times, max_step)
    eq = float(C.mse(ends[temperature].equilibrium, task.y_test))
    curves_a[temperature] = (times, train, test)
    t_fit = _crossing(times, train, 0.01 * train[0])
    t_half = _crossing(times, test, 0.5 * (ntk_err + eq))
    plateau = math.sqrt(t_grad * t_diff)
    i_plateau = int(np.argmin(np.abs(np.log(times / plateau))))
    rows.append(
      [temperature, t_fit, float(train[i_plateau]), float(test[i_plateau]), t_half, t_half * temperature / sigma**2, eq]
    )
  rep.results['vs_temperature'] = {
    'sigma0_sq_over_sigma_sq': ratio_main,
    'gradient_time': t_grad,
    'ntk_interpolant_test_mse': ntk_err,
    'rows': rows,
    'columns': [
      'T',
      't_fit',
      'train_mse_plateau',
      'test_mse_plateau',
      't_half',
      't_half_T_over_sigma2',
      'equilibrium_test_mse',
    ],
  }
  rep.add(
    '## Several temperatures (σ0²/σ² = 4)',
    '',
    f'Gradient time scale 1/λ_max(Θ0) = {t_grad:.3g}; NTK-interpolant test MSE (end of the gradient phase, '
    f'T → 0) = {ntk_err:.4f}. t_fit: training MSE at 1% of its initial value (—: never, the O(T) plateau '
    'lies above it); plateau: t = √(t_grad σ²/T); t_half: the test MSE is halfway between the NTK interpolant '
    'and equilibrium; equilibrium: NNGP posterior K(x*, X)[K + T I]⁻¹Y (closed form).',
    '',
  )
  rep.table(
    ['T', 't_fit', 'train MSE (plateau)', 'test MSE (plateau)', 't_half', 't_half·T/σ²', 'test MSE (equilibrium)'], rows
  )

  # --- Panel B: several σ0²/σ² at T = 0.01. ----------------------------------------------------------------
  rows_b, curves_b = [], {}
  t_diff = sigma**2 / t_ratio
  for ratio in ratios:
    net_r = net_for(ratio)
    end = C.end_points(net_r, task, t_ratio)
    tg = end.gradient_time
    times = np.geomspace(0.02 * tg, 10 * t_diff, 60)
    train, test, _ = _curves(net_r, task, t_ratio, times, max_step)
    curves_b[ratio] = (times, train, test)
    ntk = float(C.mse(end.ntk, task.y_test))
    eq = float(C.mse(end.equilibrium, task.y_test))
    diffusive = times > 0.1 * t_diff
    rows_b.append([ratio, tg, ntk, float(test[diffusive].min()), float(test[diffusive].max()), eq])
  rep.results['vs_ratio'] = {
    'temperature': t_ratio,
    'rows': rows_b,
    'columns': [
      'sigma0_sq_over_sigma_sq',
      'gradient_time',
      'ntk_test_mse',
      'min_test_mse_diffusive',
      'max_test_mse_diffusive',
      'equilibrium_test_mse',
    ],
  }
  rep.add(f'## Several σ0²/σ² (T = {t_ratio})', '')
  rep.table(
    [
      'σ0²/σ²',
      '1/λ_max(Θ0)',
      'test MSE NTK end',
      'min test MSE (t > 0.1σ²/T)',
      'max test MSE (t > 0.1σ²/T)',
      'test MSE equilibrium',
    ],
    rows_b,
  )

  # --- Exact solver (full preset) and ensemble. --------------------------------------------------------------
  exact, predictors = {}, {}
  if not quick:
    for temperature in temps[:2]:
      times = curves_a[temperature][0]
      predictors[temperature] = predictor = langevin_mse_ensemble(net, task.x, task.y, temperature=temperature)
      exact[temperature] = (C.mse(predictor(times), task.y), C.mse(predictor(times, task.x_test), task.y_test))
    gap = {t: float(np.max(np.abs(exact[t][1] - curves_a[t][2]))) for t in exact}
    rep.results['composite_vs_exact_max_test_mse_gap'] = gap
    rep.add(
      'Small-T composite vs the exact solver, max |Δ test MSE| over time: '
      + ', '.join(f'T = {t}: {g:.2g}' for t, g in gap.items())
      + ' (O(T), as expected).',
      '',
    )
  lam_max = 1 / t_grad
  lr = min(0.05, 0.5 / lam_max)
  ens_times = np.array([0.3, 1.0, 3.0]) * t_grad
  ens_times = np.concatenate([ens_times, np.array([0.3, 1.0, 3.0, 10.0]) / ens_temp])
  ens = C.ensemble_points(
    net, task, temperature=ens_temp, times=ens_times, n_members=n_members, width=width, learning_rate=lr, seed=args.seed
  )
  if ens_temp in predictors:
    theory_test, source = np.asarray(predictors[ens_temp](ens.times, task.x_test)), 'exact solver'
  else:
    theory_test = np.asarray(
      composite_small_temperature_mean(
        net, task.x, task.y, temperature=ens_temp, times=ens.times, x_test=task.x_test, max_step=max_step
      ).test
    )
    source = 'small-T composite (O(T) = O(0.1) approximation)'
  z = C.z_scores(ens.test, ens.test_se, theory_test)
  z_eq = C.z_scores(ens.test[-1], ens.test_se[-1], ends[ens_temp].equilibrium)
  rep.results['ensemble'] = {
    'temperature': ens_temp,
    'n_members': n_members,
    'width': width,
    'learning_rate': lr,
    'times': ens.times,
    'max_abs_z_per_time': np.max(np.abs(z), axis=(1, 2)),
    'theory': source,
    'max_abs_z_last_vs_equilibrium': float(np.max(np.abs(z_eq))),
    'ensemble_test_mse': C.ensemble_mse(ens.test, ens.test_se, task.y_test),
    'seconds': ens.seconds,
  }
  rep.add(
    f'## Ensemble (T = {ens_temp}, σ0²/σ² = {ratio_main}, M = {n_members}, width {width}, step {lr:.3g})',
    '',
    f'Mean test output vs the theory ({source}), max |z| over test points per time (z = (ensemble − theory)/s.e.):',
    '',
  )
  rep.table(
    ['t', 'max |z|', 'ensemble test MSE (finite-M variance subtracted)'],
    [
      [float(t), float(np.max(np.abs(zz))), float(e)]
      for t, zz, e in zip(ens.times, z, C.ensemble_mse(ens.test, ens.test_se, task.y_test))
    ],
  )
  rep.add(
    f'At t = {ens.times[-1]:g} = {ens.times[-1] * ens_temp:.0f} σ²/T the ensemble mean is within '
    f'max |z| = {float(np.max(np.abs(z_eq))):.2f} of the closed-form equilibrium (NNGP posterior).',
    '',
  )

  # --- Figure. -------------------------------------------------------------------------------------------------
  fig, axes = C.figure(1, 3, row_height=3.4)
  axes = axes[0]
  colors = C.plt.rcParams['axes.prop_cycle'].by_key()['color']
  for i, (temperature, (times, train, test)) in enumerate(curves_a.items()):
    axes[0].plot(times, train, color=colors[i], label=f'T = {temperature}')
    axes[1].plot(times, test, color=colors[i], label=f'T = {temperature}')
    if temperature in exact:
      axes[0].plot(times, exact[temperature][0], ':', color='k', lw=1)
      axes[1].plot(times, exact[temperature][1], ':', color='k', lw=1)
    if temperature == ens_temp:
      axes[1].plot(
        ens.times,
        C.ensemble_mse(ens.test, ens.test_se, task.y_test),
        'o',
        color=colors[i],
        ms=4,
        label=f'ensemble M={n_members}, N={width}',
      )
      axes[0].plot(ens.times, C.ensemble_mse(ens.train, ens.train_se, task.y), 'o', color=colors[i], ms=4)
  for i, (ratio, (times, train, test)) in enumerate(curves_b.items()):
    axes[2].plot(times, test, color=colors[i], label=f'σ0²/σ² = {ratio:g}')
  axes[0].set_yscale('log')
  axes[0].set_title(f'training MSE (σ0²/σ² = {ratio_main:g})')
  axes[1].set_title(f'test MSE (σ0²/σ² = {ratio_main:g})')
  axes[2].set_title(f'test MSE (T = {t_ratio})')
  for ax in axes:
    C.log_time_axis(ax)
    C.legend_below(ax, ncols=1)
  fig.suptitle('Two phases: lines small-T theory, dotted exact solver (full preset), points ensemble')
  rep.figure(fig, 'two_phases.png', 'Training (log scale) and test MSE of the mean predictor vs time.')

  # --- Claims. -------------------------------------------------------------------------------------------------
  rows_small = np.array([r for r in rows if r[0] in small])
  t_fits = rows_small[:, 1]
  rep.claim(
    'The gradient-driven phase (training error → O(T)) takes t = O(1/λ_max(Θ0)), independent of T',
    bool(np.all(np.abs(t_fits / t_fits[0] - 1) < 0.2) and np.all(t_fits < 100 * t_grad)),
    f't_fit = {", ".join(f"{v:.3g}" for v in t_fits)} for T = {small} (1/λ_max(Θ0) = {t_grad:.3g})',
  )
  plateau = rows_small[:, 2] / np.array(small) ** 2
  rep.claim(
    'In the diffusive phase the training error stays O(T) (MSE O(T²))',
    bool(np.all(np.abs(plateau / plateau[0] - 1) < 0.5)),
    f'training MSE on the plateau / T² = {", ".join(f"{v:.3g}" for v in plateau)} for T = {small}',
  )
  scaled = rows_small[:, 5]
  rep.claim(
    'The diffusive phase runs on the time scale σ²/T (t_half ∝ 1/T)',
    bool(np.all(np.abs(scaled / scaled[0] - 1) < 0.2)),
    f't_half·T/σ² = {", ".join(f"{v:.3g}" for v in scaled)} for T = {small}',
  )
  ntk_errs = np.array([r[2] for r in rows_b])
  eq_errs = np.array([r[5] for r in rows_b])
  rep.claim(
    'σ0²/σ² sets the gradient phase (its end point and speed) while the equilibrium depends on σ only',
    bool(np.ptp(ntk_errs) > 0.01 and np.ptp(eq_errs) < 1e-9),
    f'NTK-end test MSE {", ".join(f"{v:.3g}" for v in ntk_errs)}; equilibrium '
    f'{", ".join(f"{v:.4g}" for v in eq_errs)} for σ0²/σ² = {ratios}',
  )
  C.ensemble_agreement_claim(
    rep,
    'Finite-width Langevin ensembles follow the theory',
    z,
    z_eq,
    n_members,
    f'vs the {source} over {len(ens.times)} times × {n_test} test points',
  )
  return rep.write()


if __name__ == '__main__':
  main()
