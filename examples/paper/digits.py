"""Real data: binary tasks of scikit-learn's bundled 8×8 handwritten digits (0-vs-1 and 4-vs-9), our stand-in for
the paper's MNIST/CIFAR subsets: test error of the mean predictor over both learning phases (docs/theory.md §5).

Theory lines: small-T composite (NTK gradient flow + reduced diffusive equations) for several T, and in the full
preset the exact solver at one T; points: a Langevin-trained ensemble. The end points are closed forms: the NTK
interpolant (end of the gradient phase) and the NNGP posterior (equilibrium).
Run: ``python -m examples.paper.digits [--quick] [--out DIR]``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from examples.paper import common as C
from ndk_flax.predict import langevin_mse_ensemble
from ndk_flax.reduced import composite_small_temperature_mean

NAME = 'digits'
NETWORKS = {'erf σ0²=4σ²': ('erf', 2.0), 'relu σ0=σ': ('relu', 1.0)}  # one hidden layer, σ = 1, no biases


def main(argv: Optional[Sequence[str]] = None) -> dict:
  args = C.parse_args(NAME, __doc__.splitlines()[0], argv)
  quick = args.quick
  p, n_test = (16, 60) if quick else (60, 240)
  temps = [0.01] if quick else [0.01, 0.001]
  exact_temp = ens_temp = 0.1  # one temperature: the exact solver, the theory and the ensemble share a panel
  n_members, width = (8, 128) if quick else (32, 512)
  tasks = [C.digits_task(pair, p, n_test, seed=args.seed) for pair in ((0, 1), (4, 9))]
  rep = C.Report(args.out, 'Digits 0-vs-1 and 4-vs-9: test error over the two learning phases', args)
  rep.add(
    f'Data: scikit-learn digits (8×8, no download), P = {p} balanced training images, {n_test} test images, '
    'labels ±1, pixels/16 scaled by one global factor. Networks: one hidden layer (width ∞ in theory), '
    'no biases, σ = 1. Class error = fraction of test images with sign(f̄) ≠ label.',
    '',
  )

  networks = {k: v for k, v in NETWORKS.items() if not quick or v[0] == 'erf'}
  rows, curves = [], {}
  for task in tasks:
    for name, (act, sigma0) in networks.items():
      net = C.network(1, act, sigma0, 1.0)
      for temperature in temps:
        end = C.end_points(net, task, temperature)
        t_grad, ntk = end.gradient_time, end.ntk
        times = np.geomspace(0.02 * t_grad, 10 / temperature, 60)
        sol = composite_small_temperature_mean(
          net, task.x, task.y, temperature=temperature, times=times, x_test=task.x_test, max_step=0.1
        )
        test_mse, test_err = C.mse(sol.test, task.y_test), C.class_error(sol.test, task.y_test)
        eq = end.equilibrium
        curves[(task.name, name, temperature)] = (times, test_mse, test_err, C.mse(sol.train, task.y))
        best = int(np.argmin(test_mse))
        rows.append(
          [
            task.name,
            name,
            temperature,
            t_grad,
            float(C.mse(ntk, task.y_test)),
            float(C.class_error(ntk, task.y_test)),
            float(test_mse[best]),
            float(times[best]),
            float(test_err[best]),
            float(C.mse(eq, task.y_test)),
            float(C.class_error(eq, task.y_test)),
            float(np.min(C.mse(sol.train, task.y))),
          ]
        )
  columns = [
    'task',
    'network',
    'T',
    'gradient_time',
    'ntk_end_mse',
    'ntk_end_class_error',
    'best_mse',
    'best_t',
    'best_class_error',
    'equilibrium_mse',
    'equilibrium_class_error',
    'min_train_mse',
  ]
  rep.results.update(columns=columns, rows=rows)
  rep.add(
    '## Test error at the end of each phase',
    '',
    'NTK end: Θ0(x*, X)Θ0⁻¹Y (closed form); equilibrium: NNGP posterior K(x*, X)[K + T I]⁻¹Y (closed form); '
    'best: minimum of the small-T theory over time; min train MSE: its minimum over time (the plateau).',
    '',
  )
  rep.table(
    [
      'task',
      'network',
      'T',
      '1/λmax(Θ0)',
      'MSE NTK end',
      'class err NTK end',
      'best MSE',
      'at t',
      'class err best',
      'MSE equilibrium',
      'class err equilibrium',
      'min train MSE',
    ],
    rows,
  )

  # --- Exact solver (full preset) and ensemble on 4-vs-9 with erf. -------------------------------------------
  task = tasks[1]
  act, sigma0 = NETWORKS['erf σ0²=4σ²']
  net = C.network(1, act, sigma0, 1.0)
  end = C.end_points(net, task, ens_temp)
  t_grad = end.gradient_time
  exact = None
  if not quick:
    times = np.geomspace(0.02 * t_grad, 10 / exact_temp, 40)
    predictor = langevin_mse_ensemble(net, task.x, task.y, temperature=exact_temp)
    exact = (times, C.mse(predictor(times, task.x_test), task.y_test))
    approx = composite_small_temperature_mean(
      net, task.x, task.y, temperature=exact_temp, times=times, x_test=task.x_test, max_step=0.1
    )
    gap = float(np.max(np.abs(exact[1] - C.mse(approx.test, task.y_test))))
    rep.results['exact_vs_composite_max_test_mse_gap'] = {'T': exact_temp, 'gap': gap}
    rep.add(f'Exact solver vs small-T composite at T = {exact_temp} (4-vs-9, erf): max |Δ test MSE| = {gap:.3g}.', '')
  # The theory at the ensemble's own parameters (same network, data and T), drawn with the ensemble points.
  ens_times = np.geomspace(0.02 * t_grad, 10 / ens_temp, 40)
  ens_theory = composite_small_temperature_mean(
    net, task.x, task.y, temperature=ens_temp, times=ens_times, x_test=task.x_test, max_step=0.1
  )
  lr = min(0.02, 0.5 * t_grad)
  ens = C.ensemble_points(
    net,
    task,
    temperature=ens_temp,
    times=np.array([3 * t_grad, 1 / ens_temp, 10 / ens_temp]),
    n_members=n_members,
    width=width,
    learning_rate=lr,
    seed=args.seed,
  )
  z_eq = C.z_scores(ens.test[-1], ens.test_se[-1], end.equilibrium)
  ens_err = C.class_error(ens.test, task.y_test)
  rep.results['ensemble'] = {
    'task': task.name,
    'temperature': ens_temp,
    'times': ens.times,
    'n_members': n_members,
    'width': width,
    'max_abs_z_last_vs_equilibrium': float(np.max(np.abs(z_eq))),
    'class_error': ens_err,
    'test_mse': C.ensemble_mse(ens.test, ens.test_se, task.y_test),
  }
  rep.add(
    f'Ensemble ({task.name}, erf σ0² = 4σ², T = {ens_temp}, M = {n_members}, width {width}): test class error '
    f'{", ".join(f"{e:.3f}" for e in ens_err)} at t = {", ".join(f"{t:.3g}" for t in ens.times)}; at the last '
    f'time (10σ²/T) the mean output is within max |z| = {np.max(np.abs(z_eq)):.2f} of the closed-form '
    f'equilibrium over the {n_test} test images.',
    '',
  )

  # --- Figure. -------------------------------------------------------------------------------------------------
  fig, axes = C.figure(2, 2, row_height=3.3)
  for col, task_ in enumerate(tasks):
    for key, (times, test_mse, test_err, _) in curves.items():
      if key[0] != task_.name:
        continue
      label = f'{key[1]}, T = {key[2]}'
      axes[0, col].plot(times, test_mse, label=label)
      axes[1, col].plot(times, test_err, label=label)
    axes[0, col].set_title(f'{task_.name}: test MSE')
    axes[1, col].set_title(f'{task_.name}: test class error')
    if all(np.max(v[2]) == 0 for k, v in curves.items() if k[0] == task_.name):
      axes[1, col].text(
        0.5, 0.5, 'class error 0 at every time\n(the task is separable)', transform=axes[1, col].transAxes, ha='center'
      )
  if exact is not None:
    axes[0, 1].plot(exact[0], exact[1], 'k:', label=f'exact solver, erf, T = {exact_temp}')
    axes[1, 1].plot([], [], 'k:', label=f'exact solver (top), erf, T = {exact_temp}')
  same = f'erf σ0²=4σ², T = {ens_temp}'
  axes[0, 1].plot(ens_times, C.mse(ens_theory.test, task.y_test), '--', color='k', lw=1.2, label=f'theory {same}')
  axes[1, 1].plot(
    ens_times, C.class_error(ens_theory.test, task.y_test), '--', color='k', lw=1.2, label=f'theory {same}'
  )
  axes[0, 1].plot(
    ens.times,
    C.ensemble_mse(ens.test, ens.test_se, task.y_test),
    'o',
    color='k',
    label='_ensemble',  # finite-M variance subtracted from the MSE
  )
  axes[1, 1].plot(ens.times, ens_err, 'o', color='k', label=f'ensemble {same} (M = {n_members}, N = {width})')
  for ax in axes.ravel():
    C.log_time_axis(ax)
  for ax in axes[1]:
    C.legend_below(ax, ncols=1)
  fig.suptitle("Mean predictor vs time (lines: small-T theory, N → ∞; black: at the ensemble's T)")
  rep.figure(fig, 'digits.png', 'Test MSE and class error of the mean predictor vs time (lines: small-T theory).')

  # --- Claims. -------------------------------------------------------------------------------------------------
  changes = [(r[0], r[1], r[2], r[4], r[9], r[11]) for r in rows]
  rep.claim(
    'After the training error has converged (plateau, MSE ≪ 1), the diffusive phase still changes the '
    'test error (from the NTK interpolant to the NNGP posterior)',
    any(c[5] < 0.05 and abs(c[3] - c[4]) > 0.005 for c in changes),
    '; '.join(f'{t} {n} T={temp}: train MSE {tr:.1e}, test MSE {a:.4f} → {b:.4f}' for t, n, temp, a, b, tr in changes),
  )
  dips = [r for r in rows if r[6] < min(r[4], r[9]) - 2e-3]
  rep.claim(
    'Non-monotonic test error in the diffusive phase (an optimal stopping time) can occur',
    bool(dips),
    ', '.join(f'{r[0]} {r[1]}: best {r[6]:.4f} < ends {r[4]:.4f}, {r[9]:.4f}' for r in dips)
    or 'no dip below both ends in these runs',
  )
  thr = C.z_threshold(n_members, n_test)
  rep.claim(
    'Finite-width ensemble agrees with the theory at equilibrium (Bonferroni bound, α = 1 %)',
    bool(np.max(np.abs(z_eq)) < thr),
    f'max |z| = {np.max(np.abs(z_eq)):.2f} over {n_test} test images; bound {thr:.2f} for M = {n_members}',
  )
  return rep.write()


if __name__ == '__main__':
  main()
