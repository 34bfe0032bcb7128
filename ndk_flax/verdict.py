"""The pass rule of ``ndk-flax validate`` and its explanation: the one home of both (docs/theory.md §4).

A run compares, at every recorded time t and point x, the ensemble mean and variance of f(x, t) with the theory's.
Each comparison passes when

    |ensemble − theory| ≤ z_tol · s.e. + δ,

with the standard errors of the member statistics under the null hypothesis that the M members are i.i.d. draws
from the predicted Gaussian N(f̄, v) (:data:`MEAN_SE_FORMULA`, :data:`VAR_SE_FORMULA`; the formulas of
``ndk_flax.validate.compare``) and the finite-width allowance δ = κ · scale / N (:func:`allowances`). The run passes
when every comparison passes, i.e. when the deciding statistic max (|ensemble − theory| − δ)/s.e. is ≤ z_tol
(:func:`decide`). :func:`tolerance_text` explains the numbers for a run; :func:`power_problem` refuses a width at
which δ alone would absorb the whole learning signal (such a run could not fail).

Everything here is NumPy only: the CLI, ``ndk_flax.validate`` and ``ndk_flax.report`` import it without JAX.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import numpy as np

WIDTH_ALLOWANCE = 4.0
"""κ of the finite-width allowance δ = κ · scale / N."""

ALPHA = 0.01
"""Family-wise false-alarm probability behind the statistical part of the tolerance."""

MEAN_SE_FORMULA = 's.e. = √(v/M)'
"""Standard error of the member mean, v the predicted variance at (t, x) and M the ensemble size."""

VAR_SE_FORMULA = 's.e. = v · √(2/(M − 1))'
"""Standard error of the unbiased member variance of M Gaussian draws of variance v."""

POWER_FRACTION = 0.5
"""A run must be able to see a mean error of this fraction of the learning signal: δ_mean < fraction · signal."""


def mean_se(variance: Any, n_members: int) -> np.ndarray:
  """√(v/M) (:data:`MEAN_SE_FORMULA`).

  Examples:
    >>> float(mean_se(4.0, 16))
    0.5
  """
  return np.sqrt(np.asarray(variance, dtype=np.float64) / n_members)


def var_se(variance: Any, n_members: int) -> np.ndarray:
  """v √(2/(M − 1)) (:data:`VAR_SE_FORMULA`): Var of the unbiased sample variance of M Gaussian draws is 2v²/(M−1).

  Examples:
    >>> float(var_se(1.0, 3))
    1.0
  """
  return np.asarray(variance, dtype=np.float64) * math.sqrt(2 / (n_members - 1))


class Allowance(NamedTuple):
  """The finite-width allowances δ = κ · scale / N of the mean and of the variance.

  Examples:
    >>> a = allowances(y_scale=1.5, var_scale=0.5, width=100)
    >>> a == Allowance(mean=WIDTH_ALLOWANCE * 1.5 / 100, var=WIDTH_ALLOWANCE * 0.5 / 100)
    True
    >>> round(a.mean, 6), round(a.var, 6)
    (0.06, 0.02)
  """

  mean: float
  var: float


def allowances(y_scale: float, var_scale: float, width: int, kappa: float = WIDTH_ALLOWANCE) -> Allowance:
  """δ_mean = κ max|y| / N and δ_var = κ max v / N: an O(1/N) correction with constant κ.

  Examples:
    >>> allowances(1.5, 0.5, 100)
    Allowance(mean=0.06, var=0.02)
  """
  if width <= 0 or y_scale < 0 or var_scale < 0:
    raise ValueError(f'need width > 0 and scales >= 0, got width={width}, y_scale={y_scale}, var_scale={var_scale}')
  return Allowance(kappa * float(y_scale) / width, kappa * float(var_scale) / width)


def excess(ensemble: Any, theory: Any, se: Any, atol: float) -> np.ndarray:
  """(|ensemble − theory| − δ)/s.e. elementwise: a comparison passes iff this is ≤ z_tol.

  Examples:
    >>> round(float(excess(1.3, 1.0, 0.1, 0.1)), 9)
    2.0
  """
  return (np.abs(np.asarray(ensemble, np.float64) - theory) - atol) / np.asarray(se, np.float64)


def within(ensemble: Any, theory: Any, se: Any, z_tol: float, atol: float = 0.0) -> bool:
  """|ensemble − theory| ≤ z_tol · s.e. + δ everywhere (the comparison form of the rule, no division).

  Examples:
    >>> within([1.0, 1.2], [1.0, 1.0], [0.1, 0.1], 2.0), within([1.0, 1.3], [1.0, 1.0], [0.1, 0.1], 2.0)
    (True, False)
  """
  if not z_tol > 0 or atol < 0:
    raise ValueError(f'need z_tol > 0 and atol >= 0, got z_tol={z_tol}, atol={atol}')
  diff = np.abs(np.asarray(ensemble, np.float64) - theory)
  return bool(np.all(diff <= z_tol * np.asarray(se, np.float64) + atol))


class Worst(NamedTuple):
  """The comparison with the largest excess: which statistic, time index, point index and its excess.

  Examples:
    >>> c = Comparison(np.zeros((2, 2)), np.array([[0.0, 0.1], [0.3, 0.0]]), np.full((2, 2), 0.1))
    >>> w = decide(c, c, 4.0, Allowance(0.0, 0.0)).worst
    >>> w.statistic, w.time_index, w.point_index, round(w.excess, 6)
    ('mean', 1, 0, 3.0)
    >>> w.excess == float(excess(c.ensemble, c.theory, c.se, 0.0).max())
    True
  """

  statistic: str
  time_index: int
  point_index: int
  excess: float


class Verdict(NamedTuple):
  """Outcome of the rule: ``passed`` iff ``statistic`` = max excess ≤ ``z_tol``; ``worst`` is where it is attained.

  Examples:
    >>> c = Comparison(np.zeros((2, 2)), np.array([[0.0, 0.1], [0.3, 0.0]]), np.full((2, 2), 0.1))
    >>> v = decide(c, c, z_tol=4.0, allowance=Allowance(mean=0.05, var=0.0))
    >>> v.passed, round(v.statistic, 6), v.worst.statistic  # (0.3 − 0.05)/0.1 = 2.5 for the mean, 3 for the variance
    (True, 3.0, 'variance')
    >>> v.passed == (v.statistic <= v.z_tol), decide(c, c, 2.9, v.allowance).passed
    (True, False)
  """

  passed: bool
  statistic: float
  z_tol: float
  allowance: Allowance
  worst: Worst


class Comparison(NamedTuple):
  """Theory, ensemble and standard error of one statistic (mean or variance), arrays (n_t, n_points).

  Examples:
    >>> c = Comparison(theory=np.array([[1.0, 2.0]]), ensemble=np.array([[1.1, 1.8]]), se=np.array([[0.1, 0.1]]))
    >>> ((c.ensemble - c.theory) / c.se).round(6).tolist()  # z = (ensemble − theory) / s.e.
    [[1.0, -2.0]]
    >>> within(c.ensemble, c.theory, c.se, z_tol=2.0), within(c.ensemble, c.theory, c.se, z_tol=1.5)
    (True, False)
  """

  theory: np.ndarray
  ensemble: np.ndarray
  se: np.ndarray


def decide(mean: Comparison, variance: Comparison, z_tol: float, allowance: Allowance) -> Verdict:
  """Apply the rule to the mean and variance comparisons.

  Examples:
    >>> c = Comparison(np.zeros((2, 1)), np.array([[0.1], [0.5]]), np.full((2, 1), 0.1))
    >>> v = decide(c, c, 4.5, Allowance(0.0, 0.0))
    >>> v.passed, round(v.statistic, 6), v.worst.statistic, v.worst.time_index
    (False, 5.0, 'mean', 1)
  """
  best = None
  for name, c, atol in (('mean', mean, allowance.mean), ('variance', variance, allowance.var)):
    e = excess(c.ensemble, c.theory, c.se, atol)
    i, j = np.unravel_index(int(np.argmax(e)), e.shape)
    if best is None or e[i, j] > best.excess:
      best = Worst(name, int(i), int(j), float(e[i, j]))
  return Verdict(bool(best.excess <= z_tol), best.excess, float(z_tol), allowance, best)


def power_problem(theory_mean: Any, allowance: Allowance, width: int) -> str | None:
  """Why the run could not fail, or None: the mean allowance δ_mean must stay below ``POWER_FRACTION`` of the
  learning signal max |f̄(x, t) − f̄(x, 0)| (else a theory that predicted no learning at all would pass).

  Examples:
    >>> mean = np.array([[0.0], [0.4]])
    >>> power_problem(mean, Allowance(0.1, 0.0), 100) is None
    True
    >>> power_problem(mean, Allowance(5.0, 0.0), 1)[:23]
    'width = 1 is too small:'
  """
  theory_mean = np.asarray(theory_mean, np.float64)
  signal = float(np.max(np.abs(theory_mean - theory_mean[:1])))
  if allowance.mean < POWER_FRACTION * signal:
    return None
  needed = math.ceil(allowance.mean * width / (POWER_FRACTION * signal)) + 1 if signal > 0 else None
  return (
    f'width = {width} is too small: the finite-width allowance of the mean, δ = {allowance.mean:.3g}, is not below '
    f'{POWER_FRACTION:g} × the learning signal max|f̄(x,t) − f̄(x,0)| = {signal:.3g}, so the run could not fail'
    + (f'; use width >= {needed}' if needed else '; the theory predicts no learning on this grid')
  )


def bonferroni(n_comparisons: int, alpha: float = ALPHA) -> float:
  """Φ⁻¹(1 − α/(2K)): the two-sided normal threshold that K comparisons exceed with probability ≤ α.

  Examples:
    >>> round(bonferroni(1, 0.05), 3)
    1.96
  """
  from statistics import NormalDist

  return float(NormalDist().inv_cdf(1 - alpha / (2 * n_comparisons)))


TOLERANCE_TEXT = """\
Every recorded time t and every training and test point x gives two comparisons: the ensemble mean of f(x, t)
against the theory's f̄(x, t), and the ensemble variance against the theory's variance v(x, t). Each discrepancy is
measured in standard errors of the ensemble estimate, z = (ensemble − theory) / s.e., under the null hypothesis that
the M members are independent draws from the predicted Gaussian N(f̄, v): {mean_se_formula} for the mean and
{var_se_formula} for the unbiased sample variance (the Gaussian formula). The run passes when

    |ensemble − theory| ≤ z_tol · s.e. + δ    for all K = {n_comparisons} comparisons,

with z_tol = {z_tol:g} and the finite-width allowance δ = κ · scale / N, κ = {kappa:g}, N = {width}:
δ = {mean_atol:.3g} for the mean (scale max|y| = {y_scale:.3g}) and δ = {var_atol:.3g} for the variance
(scale: the largest predicted variance, {var_scale:.3g}).

Why these numbers.
* Statistics. If the trained networks followed the theory exactly, each z would be close to standard normal
  and max |z| over K comparisons would exceed Φ⁻¹(1 − α/(2K)) with probability at most α (union bound); for
  K = {n_comparisons} and α = {alpha:g} that is {bonferroni:.2f} (conservative: neighbouring times are strongly
  correlated). z_tol adds {margin:.2f} to it for two effects of the finite ensemble and step: the sample variance
  of M = {m} members is a skewed χ²-like statistic (relative s.e. √(2/(M − 1)) = {rel_var_se:.2f}) whose upper tail
  is heavier than the normal one; and the discrete Langevin rule (step η = {eta:g}) relaxes the
  fastest mode by (1 − ηλ_max) per step instead of e^(−ηλ_max), a relative error O(ηλ_max/2) = {half_eta_lambda:.3f}
  in its time constant and stationary variance, at most ≈ {step_z:.2f} standard errors of a variance.
* Finite width. The theory is the N → ∞ limit; the mean and covariance of a width-N network differ from it by
  corrections of relative size O(1/N) with an architecture-dependent constant. δ allows that constant to be
  κ = {kappa:g} ({percent:.2g} % of the scale at N = {width}).
* Not vacuous. δ is {delta_in_median_se:.2f} median / {delta_in_min_se:.2f} smallest standard errors of the mean
  (s.e. {median_mean_se:.3g} / {min_mean_se:.3g}), so the rule flags any mean off by more than about
  {detect_median:.3g} at a typical point and {detect_min:.3g} at the best-measured one (scale of y: {y_scale:.3g}).
  Widths at which δ reaches half the learning signal are refused before the run. A wrong kernel, a wrong time or
  temperature scale, or a missing noise or prior-decay term in the trainer shifts the predictions by more than
  that over a learning curve; the README reports the measured power of the default run against deliberately
  perturbed theories."""


def tolerance_text(results: Mapping[str, Any]) -> str:
  """The tolerance paragraph of ``report.md``: the pass rule with the run's numbers and why they were chosen.

  ``results`` is the dictionary saved as ``results.json`` (see ``ndk_flax.report``).

  Examples:
    >>> results = {
    ...   'config': {'n_members': 64, 'width': 256, 'learning_rate': 0.02, 'n_train': 2},
    ...   'tolerance': {'n_comparisons': 24, 'z_tol': 4.5, 'width_allowance_kappa': 4.0, 'mean_atol': 0.02,
    ...                 'var_atol': 0.01},
    ...   'time_scales': {'gradient': 0.2},
    ...   'mean': {'se': [[0.1, 0.2]]},
    ...   'variance': {'theory': [[0.5, 0.6]]},
    ...   'targets': [1.0, -1.2, 0.3],
    ... }
    >>> text = tolerance_text(results)
    >>> MEAN_SE_FORMULA in text and VAR_SE_FORMULA in text
    True
    >>> f'K = 24 and α = 0.01 that is {bonferroni(24):.2f}' in text  # the union-bound threshold Φ⁻¹(1 − α/(2K))
    True
    >>> print(text.splitlines()[9])
    δ = 0.02 for the mean (scale max|y| = 1.2) and δ = 0.01 for the variance
  """
  cfg, tol = results['config'], results['tolerance']
  m, width = cfg['n_members'], cfg['width']
  threshold = bonferroni(tol['n_comparisons'])
  half_eta_lambda = 0.5 * cfg['learning_rate'] / results['time_scales']['gradient']
  se = np.asarray(results['mean']['se'])
  median_mean_se, min_mean_se = float(np.median(se)), float(np.min(se))
  y_scale = float(np.max(np.abs(results['targets'][: cfg['n_train']])))
  return TOLERANCE_TEXT.format(
    mean_se_formula=MEAN_SE_FORMULA,
    var_se_formula=VAR_SE_FORMULA,
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
    rel_var_se=math.sqrt(2 / (m - 1)),
    eta=cfg['learning_rate'],
    half_eta_lambda=half_eta_lambda,
    step_z=half_eta_lambda / math.sqrt(2 / (m - 1)),
    percent=100 * tol['width_allowance_kappa'] / width,
    delta_in_median_se=tol['mean_atol'] / median_mean_se,
    delta_in_min_se=tol['mean_atol'] / min_mean_se,
    median_mean_se=median_mean_se,
    min_mean_se=min_mean_se,
    detect_median=tol['z_tol'] * median_mean_se + tol['mean_atol'],
    detect_min=tol['z_tol'] * min_mean_se + tol['mean_atol'],
  )


def sentence(results: Mapping[str, Any]) -> str:
  """The verdict in plain words (the CLI's closing line and the first line of ``report.md``'s summary).

  Examples:
    >>> r = {'passed': True, 'tolerance': {'z_tol': 4.5}, 'times': [0.0, 80.0], 'points': ['train 0'],
    ...      'worst': {'statistic': 'variance', 'time_index': 1, 'point_index': 0, 'excess': 2.29}}
    >>> import textwrap
    >>> print(textwrap.fill(sentence(r), 100))
    PASSED: the ensemble agrees with the theory; the largest discrepancy (the variance at t = 80, train
    0) is 2.29 standard errors beyond the finite-width allowance, within the 4.5 allowed.
  """
  w, z_tol = results['worst'], results['tolerance']['z_tol']
  where = f'the {w["statistic"]} at t = {results["times"][w["time_index"]]:.4g}, {results["points"][w["point_index"]]}'
  largest = f'the largest discrepancy ({where}) is {w["excess"]:.3g} standard errors beyond the finite-width allowance'
  if results['passed']:
    return f'PASSED: the ensemble agrees with the theory; {largest}, within the {z_tol:g} allowed.'
  return f'FAILED: the ensemble disagrees with the theory; {largest}, more than the {z_tol:g} allowed.'


class SignPattern(NamedTuple):
  """At the last recorded time: on how many points the ensemble statistic lies above and below the theory, and the
  range of ensemble/theory over the points (a systematic pattern when all lie on one side).

  Examples:
    >>> SignPattern('variance', above=3, below=0, ratio_min=1.01, ratio_max=1.2).systematic
    True
    >>> SignPattern('mean', above=2, below=1, ratio_min=0.9, ratio_max=1.1).systematic
    False
  """

  statistic: str
  above: int
  below: int
  ratio_min: float
  ratio_max: float

  @property
  def systematic(self) -> bool:
    return self.above == 0 or self.below == 0


def sign_pattern(statistic: str, c: Comparison) -> SignPattern:
  """:class:`SignPattern` of ``c`` at its last time (ratios where the theory is 0 are left out).

  Examples:
    >>> c = Comparison(np.ones((2, 3)), np.array([[1.0, 1, 1], [1.1, 1.2, 1.05]]), np.ones((2, 3)))
    >>> p = sign_pattern('variance', c)
    >>> p.above, p.below, p.systematic, round(p.ratio_max, 3)
    (3, 0, True, 1.2)
  """
  theory, ens = np.asarray(c.theory, np.float64)[-1], np.asarray(c.ensemble, np.float64)[-1]
  diff = ens - theory
  nonzero = theory != 0
  ratio = ens[nonzero] / theory[nonzero] if np.any(nonzero) else np.array([math.nan])
  return SignPattern(statistic, int(np.sum(diff > 0)), int(np.sum(diff < 0)), float(ratio.min()), float(ratio.max()))
