"""``report.md`` of ``ndk-flax validate``, rendered from the same dictionary that is saved as ``results.json``.

The results dictionary (all arrays as nested lists, times first) has the keys

* ``command``, ``ndk_flax_version``, ``config`` (the resolved :class:`ndk_flax.config.RunConfig`), ``runtime_s``;
* ``time_scales``: ``gradient`` = 1/λ_max(Θ0), ``diffusive`` = σ²/T (``null`` at T = 0);
* ``tolerance``: ``z_tol``, the number of comparisons, the allowances δ; ``passed``; ``max_abs_z`` (``mean``,
  ``variance``, ``all``, and ``beyond_allowance`` = max (|ensemble − theory| − δ)/s.e., which passing bounds by z_tol);
  ``worst`` (``statistic``, ``time_index``, ``point_index``, ``excess``: where that maximum is attained) and
  ``sign_patterns`` (per statistic: points above / below the theory at the last time, range of ensemble/theory);
  the rule and its explanation live in :mod:`ndk_flax.verdict`;
* ``times`` (n_t,), ``points`` (names of the n_p compared points, training points first);
* ``mean`` and ``variance``: each ``theory``, ``ensemble``, ``se``, ``z`` of shape (n_t, n_p);
* ``train_loss`` and ``test_mse``: ``theory`` and ``ensemble`` of shape (n_t,) (of the mean predictor).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from ndk_flax import verdict


def fmt(x: Any) -> str:
  """Numbers in the report: 4 significant digits (``inf`` and ``nan`` spelled out, None as a dash).

  Examples:
    >>> fmt(0.123456), fmt(float('inf')), fmt(None)
    ('0.1235', 'inf', '—')
  """
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


def summary_lines(results: Mapping[str, Any]) -> list[str]:
  """The five-line summary that opens ``report.md``: verdict, deciding statistic and threshold, time scales, worst
  comparison, systematic sign patterns at the last time. Every number is a ``results`` number (4 digits).

  Examples:
    A run on one training and one test point, 2 record times, M = 33 members of width N = 100:

    >>> import numpy as np
    >>> from ndk_flax import verdict
    >>> v_theory = np.array([[1.0, 1.0], [0.2, 0.5]])
    >>> mean = verdict.Comparison(np.array([[0.0, 0.0], [0.6, 0.4]]), np.array([[0.02, -0.01], [0.65, 0.43]]),
    ...                           verdict.mean_se(v_theory, 33))
    >>> var = verdict.Comparison(v_theory, np.array([[1.1, 0.9], [0.22, 0.55]]), verdict.var_se(v_theory, 33))
    >>> v = verdict.decide(mean, var, 4.5, verdict.allowances(y_scale=1.0, var_scale=1.0, width=100))
    >>> def stat(c):
    ...   z = (c.ensemble - c.theory) / c.se
    ...   return {'theory': c.theory.tolist(), 'ensemble': c.ensemble.tolist(), 'se': c.se.tolist(), 'z': z.tolist()}
    >>> stats = {'mean': stat(mean), 'variance': stat(var)}
    >>> results = {
    ...   'passed': v.passed, 'worst': v.worst._asdict(), 'times': [0.0, 1.0], 'points': ['train 0', 'test 0'],
    ...   'tolerance': {'z_tol': 4.5, 'n_comparisons': 8, 'width_allowance_kappa': verdict.WIDTH_ALLOWANCE,
    ...                 'mean_atol': v.allowance.mean, 'var_atol': v.allowance.var},
    ...   'max_abs_z': {'all': max(np.abs(s['z']).max() for s in stats.values()), 'beyond_allowance': v.statistic},
    ...   'time_scales': {'gradient': 0.5, 'diffusive': 20.0},
    ...   'sign_patterns': [verdict.sign_pattern(k, c)._asdict() for k, c in (('mean', mean), ('variance', var))],
    ...   **stats,
    ... }
    >>> import textwrap
    >>> for line in summary_lines(results):
    ...   print(textwrap.fill(line, 110))
    1. **PASSED**: the ensemble agrees with the theory; the largest discrepancy (the variance at t = 0, train 0)
    is 0.24 standard errors beyond the finite-width allowance, within the 4.5 allowed.
    2. Deciding statistic: max (|ensemble − theory| − δ)/s.e. = 0.24 ≤ z_tol = 4.5, over K = 8 comparisons, with
    finite-width allowances δ = 0.04 (mean) and 0.04 (variance); max |z| without δ: 0.6423.
    3. Time scales: gradient phase 1/λ_max(Θ0) = 0.5, diffusive phase 1/λ = σ²/T = 20; recorded up to t = 1.
    4. Worst comparison: variance at t = 0, train 0: ensemble 1.1 vs theory 1, s.e. 0.25, z = 0.4.
    5. At the last time t = 1: the ensemble mean is above the theory at all 2 points (ensemble/theory
    1.075–1.083); the ensemble variance is above the theory at all 2 points (ensemble/theory 1.1–1.1).
  """
  tol, ts, w = results['tolerance'], results['time_scales'], results['worst']
  times, points = results['times'], results['points']
  kind = 'mean' if w['statistic'] == 'mean' else 'variance'
  i, j = w['time_index'], w['point_index']
  stat = results[kind]
  cmp = '≤' if results['passed'] else '>'
  diffusive = fmt(ts['diffusive']) if ts['diffusive'] is not None else '∞ (T = 0)'
  patterns = []
  for p in results['sign_patterns']:
    n = p['above'] + p['below']
    if p['above'] == 0 or p['below'] == 0:
      side = 'above' if p['below'] == 0 else 'below'
      patterns.append(
        f'the ensemble {p["statistic"]} is {side} the theory at all {n} points '
        f'(ensemble/theory {fmt(p["ratio_min"])}–{fmt(p["ratio_max"])})'
      )
    else:
      patterns.append(f'{p["statistic"]}: {p["above"]} points above, {p["below"]} below the theory')
  return [
    f'1. **{"PASSED" if results["passed"] else "FAILED"}**: {verdict.sentence(results).split(": ", 1)[1]}',
    f'2. Deciding statistic: max (|ensemble − theory| − δ)/s.e. = {fmt(results["max_abs_z"]["beyond_allowance"])} '
    f'{cmp} z_tol = {fmt(tol["z_tol"])}, over K = {tol["n_comparisons"]} comparisons, with finite-width allowances '
    f'δ = {fmt(tol["mean_atol"])} (mean) and {fmt(tol["var_atol"])} (variance); max |z| without δ: '
    f'{fmt(results["max_abs_z"]["all"])}.',
    f'3. Time scales: gradient phase 1/λ_max(Θ0) = {fmt(ts["gradient"])}, diffusive phase 1/λ = σ²/T = {diffusive}; '
    f'recorded up to t = {fmt(times[-1])}.',
    f'4. Worst comparison: {kind} at t = {fmt(times[i])}, {points[j]}: ensemble {fmt(stat["ensemble"][i][j])} vs '
    f'theory {fmt(stat["theory"][i][j])}, s.e. {fmt(stat["se"][i][j])}, z = {fmt(stat["z"][i][j])}.',
    f'5. At the last time t = {fmt(times[-1])}: ' + '; '.join(patterns) + '.',
  ]


def render(results: Mapping[str, Any]) -> str:
  """The markdown report of ``results`` (see the module docstring for the keys).

  Examples:
    The results of :func:`summary_lines`' example, with what the rest of the report reads:

    >>> import numpy as np
    >>> from ndk_flax import verdict
    >>> v_theory = np.array([[1.0, 1.0], [0.2, 0.5]])
    >>> mean = verdict.Comparison(np.array([[0.0, 0.0], [0.6, 0.4]]), np.array([[0.02, -0.01], [0.65, 0.43]]),
    ...                           verdict.mean_se(v_theory, 33))
    >>> var = verdict.Comparison(v_theory, np.array([[1.1, 0.9], [0.22, 0.55]]), verdict.var_se(v_theory, 33))
    >>> v = verdict.decide(mean, var, 4.5, verdict.allowances(y_scale=1.0, var_scale=1.0, width=100))
    >>> def stat(c):
    ...   z = (c.ensemble - c.theory) / c.se
    ...   return {'theory': c.theory.tolist(), 'ensemble': c.ensemble.tolist(), 'se': c.se.tolist(), 'z': z.tolist()}
    >>> stats = {'mean': stat(mean), 'variance': stat(var)}
    >>> results = {
    ...   'passed': v.passed, 'worst': v.worst._asdict(), 'times': [0.0, 1.0], 'points': ['train 0', 'test 0'],
    ...   'tolerance': {'z_tol': 4.5, 'n_comparisons': 8, 'width_allowance_kappa': verdict.WIDTH_ALLOWANCE,
    ...                 'mean_atol': v.allowance.mean, 'var_atol': v.allowance.var},
    ...   'max_abs_z': {'all': max(np.abs(s['z']).max() for s in stats.values()), 'beyond_allowance': v.statistic},
    ...   'time_scales': {'gradient': 0.5, 'diffusive': 20.0},
    ...   'sign_patterns': [verdict.sign_pattern(k, c)._asdict() for k, c in (('mean', mean), ('variance', var))],
    ...   **stats,
    ... }
    >>> from ndk_flax.config import RunConfig
    >>> results.update(
    ...   command='ndk-flax validate', ndk_flax_version='0.0', targets=[1.0, 0.5],
    ...   config=RunConfig(width=100, n_members=33, n_train=1, n_test=1).to_dict(),
    ...   runtime_s={'theory': 1.0, 'ensemble': 2.0, 'total': 3.0, 'cpu': 5.0},
    ...   train_loss={'theory': [0.5, 0.08], 'ensemble': [0.4802, 0.06125]},  # ½ (y − f̄)² at t = 0 and t = 1
    ...   test_mse={'theory': [0.25, 0.01], 'ensemble': [0.2601, 0.0049]},
    ... )
    >>> text = render(results)
    >>> text.splitlines()[2:7] == summary_lines(results)
    True
    >>> for line in text.splitlines():
    ...   if line.startswith('#'):
    ...     print(line)
    # ndk-flax validate: infinite-width theory vs a Langevin-trained ensemble
    ## What was run
    ## Time scales
    ## Tolerance
    ## Summary per recorded time
    ## Figures
    ## Appendix: theory vs ensemble at every recorded time and point
    >>> sum(line.startswith('| 1 | test 0 |') for line in text.splitlines())  # one appendix row per (t, point)
    1
  """
  cfg, ts = results['config'], results['time_scales']
  times, points = results['times'], results['points']
  mean, var = results['mean'], results['variance']
  n_train = sum(p.startswith('train') for p in points)
  eta_lambda = cfg['learning_rate'] / ts['gradient']
  steps = int(round(times[-1] / cfg['learning_rate']))
  lines = [
    '# ndk-flax validate: infinite-width theory vs a Langevin-trained ensemble',
    '',
    *summary_lines(results),
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
    f'step η = {fmt(cfg["learning_rate"])}, time t = η × steps, trained up to t = {fmt(times[-1])} '
    f'({steps} steps, {len(times)} record times, read from the recorded data), noise ξ '
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
    verdict.tolerance_text(results),
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
    '## Figures',
    '',
    '* `mean.png`: mean predictor vs time on training and test points.',
    '* `variance.png`: variance of the predictor vs time.',
    '* `loss.png`: training loss and test error vs time, the two phases marked.',
    '* `kernel.png`: two-time kernel C(t, s, x, x) (and R) of the first training point.',
  ]
  lines += [
    '',
    '## Appendix: theory vs ensemble at every recorded time and point',
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
  return '\n'.join(lines)


def _support_text(name: str, fit: Mapping[str, Any], z: float) -> str:
  """Whether the fit of one discrepancy supports 1/N scaling, and if not, which condition fails."""
  c = f'c = {fmt(fit["coefficient"])} ± {fmt(fit["coefficient_se"])}'
  p = f'χ² = {fmt(fit["chi2"])} on {fit["dof"]} d.o.f., p = {fmt(fit["p_value"])}'
  if fit['supports_inverse_width']:
    return f'the {name} discrepancy supports 1/N scaling ({c}, {p})'
  reasons = []
  if fit['p_value'] < 0.01:
    reasons.append('a + c/N does not fit (p < 0.01)')
  if abs(fit['coefficient']) <= 2 * fit['coefficient_se']:
    reasons.append('no 1/N term is resolved (|c| ≤ 2 s.e.)')
  if abs(fit['intercept']) >= z * fit['intercept_se']:
    reasons.append(f'the N → ∞ limit a = {fmt(fit["intercept"])} ± {fmt(fit["intercept_se"])} is not 0')
  return f'the {name} discrepancy does not show 1/N scaling: {"; ".join(reasons)} ({c}, {p})'


def sweep_sentence(results: Mapping[str, Any]) -> str:
  """The verdict of a finite-width sweep in one sentence (the first line of its ``report.md``).

  Examples:
    >>> fit = {'coefficient': 2.0, 'coefficient_se': 0.5, 'intercept': 0.0, 'intercept_se': 0.01, 'chi2': 1.0,
    ...        'dof': 3, 'p_value': 0.8, 'supports_inverse_width': True}
    >>> sweep_sentence({'passed': True, 'intercept_z': 3.0, 'fit': {'mean': fit, 'variance': fit}}).split(';')[0]
    'PASSED: extrapolated to N → ∞ the ensembles agree with the theory (both intercepts within 3 s.e. of 0)'
  """
  z = results['intercept_z']
  head = (
    f'PASSED: extrapolated to N → ∞ the ensembles agree with the theory (both intercepts within {z:g} s.e. of 0)'
    if results['passed']
    else f'FAILED: extrapolated to N → ∞ the ensembles differ from the theory (an intercept beyond {z:g} s.e. of 0)'
  )
  return head + '; ' + '; '.join(_support_text(k, results['fit'][k], z) for k in ('mean', 'variance')) + '.'


def render_sweep(results: Mapping[str, Any]) -> str:
  """``report.md`` of ``ndk-flax validate --widths ...``: the verdict, the fit table, the discrepancy per width.

  Keys of ``results``: ``command``, ``ndk_flax_version``, ``config``, ``runtime_s``, ``widths``, ``scale`` (s),
  ``times`` (the record times used, t > 0), ``discrepancy`` (``mean``, ``mean_se``, ``variance``, ``variance_se``,
  one per width), ``fit`` (``mean`` and ``variance``: the fields of :class:`ndk_flax.width_sweep.InverseWidthFit`),
  ``intercept_z`` and ``passed``.

  Examples:
    >>> from ndk_flax.width_sweep import fit_inverse_width
    >>> n, d, se = [128, 256, 512], [0.021, 0.0095, 0.0052], [0.001] * 3
    >>> fit = fit_inverse_width(n, d, se)._asdict()
    >>> cfg = {'learning_rate': 0.02, 'depth': 1, 'activation': 'erf', 'bias': False, 'W_std': 2.0, 'W_prior_std': 1.0,
    ...        'temperature': 0.05, 'noise': 'gaussian', 'n_members': 64, 'seed': 0, 'dataset': 'regression',
    ...        'n_train': 6, 'n_test': 4, 'data_seed': 0}
    >>> results = {'command': 'ndk-flax validate --widths 128,256,512', 'ndk_flax_version': '0', 'config': cfg,
    ...            'runtime_s': {'theory': 1.0, 'ensembles': [1.0, 2.0, 4.0], 'total': 8.0, 'cpu': 9.0},
    ...            'widths': n, 'scale': 1.0, 'times': [1.0, 2.0], 'intercept_z': 3.0, 'passed': True,
    ...            'discrepancy': {'mean': d, 'mean_se': se, 'variance': d, 'variance_se': se},
    ...            'fit': {'mean': fit, 'variance': fit}}
    >>> print(render_sweep(results).splitlines()[10])
    | mean | 2.732 | 0.237 | -0.00055 | 0.001225 | 0.6007 | 1 | 0.4383 | yes |
  """
  cfg, d, fits = results['config'], results['discrepancy'], results['fit']
  steps = int(round(results['times'][-1] / cfg['learning_rate']))
  lines = [
    '# ndk-flax validate --widths: finite-width discrepancy from the infinite-width theory',
    '',
    sweep_sentence(results),
    '',
    '## Fit D(N) = a + c/N',
    '',
    'Weighted least squares over the widths; c is the O(1/N) coefficient (in units of s = max |y| for the mean, '
    's² for the variance), a the N → ∞ limit (0 if the theory is right); χ² of the residuals in standard errors.',
    '',
  ]
  rows = []
  for name in ('mean', 'variance'):
    f = fits[name]
    rows.append(
      [
        name,
        fmt(f['coefficient']),
        fmt(f['coefficient_se']),
        fmt(f['intercept']),
        fmt(f['intercept_se']),
        fmt(f['chi2']),
        str(f['dof']),
        fmt(f['p_value']),
        'yes' if f['supports_inverse_width'] else 'no',
      ]
    )
  lines += _table(['statistic', 'c (1/N coefficient)', 's.e.', 'a (N → ∞)', 's.e.', 'χ²', 'dof', 'p', '1/N?'], rows)
  lines += [
    '',
    '## Discrepancy per width',
    '',
    'D_mean = ⟨f̄_M − f̄⟩/s and D_var = ⟨v̂_M − v⟩/s², averaged over the record times t > 0 and all training and test '
    'points (`ndk_flax.width_sweep.ensemble_discrepancy`); s.e. across members.',
    '',
  ]
  rows = [
    [
      str(n),
      fmt(d['mean'][i]),
      fmt(d['mean_se'][i]),
      fmt(d['variance'][i]),
      fmt(d['variance_se'][i]),
      fmt(results['runtime_s']['ensembles'][i]),
    ]
    for i, n in enumerate(results['widths'])
  ]
  lines += _table(['N', 'D_mean', 's.e.', 'D_var', 's.e.', 'training s'], rows)
  lines += [
    '',
    '## What was run',
    '',
    f'Command: `{results["command"]}` (ndk_flax {results["ndk_flax_version"]}); run time '
    f'{fmt(results["runtime_s"]["total"])} s (theory, solved once: {fmt(results["runtime_s"]["theory"])} s; CPU time '
    f'of all threads {fmt(results["runtime_s"]["cpu"])} s).',
    '',
    f'* Network: {cfg["depth"]} hidden layer(s) of widths N = {", ".join(map(str, results["widths"]))} with '
    f'{cfg["activation"]}, {"with" if cfg["bias"] else "without"} biases; σ0_W = {fmt(cfg["W_std"])}, '
    f'σ_W = {fmt(cfg["W_prior_std"])}; raw parameterisation h = W a/√N + b.',
    f'* Langevin: T = {fmt(cfg["temperature"])}, η = {fmt(cfg["learning_rate"])}, up to t = '
    f'{fmt(results["times"][-1])} ({steps} steps), noise {cfg["noise"]}; M = {cfg["n_members"]} members per width '
    f'(seed {cfg["seed"]}, float32).',
    f'* Data: built-in {cfg["dataset"]} set, P = {cfg["n_train"]} training and {cfg["n_test"]} test points (data '
    f'seed {cfg["data_seed"]}); scale s = max |y| = {fmt(results["scale"])}; {len(results["times"])} record times.',
    '',
    '## Figure',
    '',
    '* `width_sweep.png`: D_mean and D_var against 1/N with ± 1 s.e. and the fitted line.',
  ]
  return '\n'.join(lines)
