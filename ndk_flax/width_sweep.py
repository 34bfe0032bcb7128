"""Finite-width sweeps: how an ensemble's discrepancy from the infinite-width theory shrinks with the width N.

At width N the member outputs differ from the infinite-width Gaussian process by O(1/N) in their mean and variance
(docs/theory.md §4). :func:`ensemble_discrepancy` reduces one ensemble to two signed numbers in units of a scale s,

    D_mean = ⟨f̄_M − f̄⟩ / s,      D_var = ⟨v̂_M − v⟩ / s²,

averaged over the recorded times, points and outputs (⟨·⟩), with standard errors computed across members (each
member gives its own average, so the correlation between times and points of one member is accounted for).
:func:`fit_inverse_width` fits D(N) = a + c/N by weighted least squares over several widths and says whether the
data support 1/N scaling (χ² of the fit, and c resolved from 0).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import numpy as np

__all__ = ['Discrepancy', 'InverseWidthFit', 'ensemble_discrepancy', 'fit_inverse_width']


class Discrepancy(NamedTuple):
  """Signed discrepancies of one ensemble from the theory, in units of the scale, with standard errors.

  Attributes:
    mean, mean_se: D_mean = ⟨f̄_M − f̄⟩/s and its standard error.
    var, var_se: D_var = ⟨v̂_M − v⟩/s² and its standard error (None when no variance is given).

  Examples:
    >>> import numpy as np
    >>> from ndk_flax.width_sweep import ensemble_discrepancy
    >>> f = np.array([[1.0], [3.0]])  # M = 2 members, one output; theory mean 1
    >>> d = ensemble_discrepancy(f, np.ones(1), scale=2.0)
    >>> round(d.mean, 6), round(d.mean_se, 6), d.var is None  # D_mean = ⟨f̄_M − f̄⟩/s = (2 − 1)/2
    (0.5, 0.5, True)
  """

  mean: float
  mean_se: float
  var: Optional[float]
  var_se: Optional[float]


def ensemble_discrepancy(outputs: Any, theory_mean: Any, theory_var: Any = None, *, scale: float = 1.0) -> Discrepancy:
  """D_mean and D_var of member outputs (M, n_t, n, out) against the theory mean and variance (n_t, n, out).

  Member m contributes d_m = ⟨f_m − f̄⟩/s and u_m = ⟨(f_m − f̄_M)² M/(M − 1) − v⟩/s²; D is their member average and
  the standard error their standard deviation over √M (for D_var this neglects the O(1/M) dependence of the u_m
  through f̄_M).

  Examples:
    >>> import numpy as np
    >>> f = np.random.default_rng(0).normal(0.1, 1.0, size=(4000, 2, 3, 1))
    >>> d = ensemble_discrepancy(f, np.zeros((2, 3, 1)), np.ones((2, 3, 1)))
    >>> round(d.mean, 1), abs(d.var) < 4 * d.var_se
    (0.1, True)
  """
  f = np.asarray(outputs, dtype=np.float64)
  mu = np.asarray(theory_mean, dtype=np.float64)
  if f.ndim < 2 or f.shape[1:] != mu.shape:
    raise ValueError(f'outputs must be (members, *theory_mean.shape) = (M, {mu.shape}), got {f.shape}')
  m = f.shape[0]
  if m < 2:
    raise ValueError(f'need at least 2 members, got {m}')
  if not (isinstance(scale, (int, float, np.floating)) and math.isfinite(scale) and scale > 0):
    raise ValueError(f'scale must be finite and > 0, got {scale!r}')
  if not np.all(np.isfinite(f)) or not np.all(np.isfinite(mu)):
    raise ValueError('outputs and theory_mean must be finite')
  axes = tuple(range(1, f.ndim))
  d = (f - mu).mean(axis=axes) / scale
  if theory_var is None:
    return Discrepancy(float(d.mean()), float(d.std(ddof=1) / math.sqrt(m)), None, None)
  v = np.broadcast_to(np.asarray(theory_var, dtype=np.float64), mu.shape)
  if not np.all(np.isfinite(v)) or np.any(v < 0):
    raise ValueError('theory_var must be finite and >= 0')
  u = ((f - f.mean(0)) ** 2 * (m / (m - 1)) - v).mean(axis=axes) / scale**2
  return Discrepancy(
    float(d.mean()), float(d.std(ddof=1) / math.sqrt(m)), float(u.mean()), float(u.std(ddof=1) / math.sqrt(m))
  )


class InverseWidthFit(NamedTuple):
  """Weighted least-squares fit D(N) = a + c/N.

  Attributes:
    coefficient, coefficient_se: c (the O(1/N) coefficient) and its standard error.
    intercept, intercept_se: a (the N → ∞ limit; 0 if the theory is right) and its standard error.
    chi2, dof: χ² of the residuals in units of their standard errors, and n_widths − 2 degrees of freedom.
    p_value: P(χ²_dof ≥ chi2) under the 1/N model.
    supports_inverse_width: the 1/N model fits (p ≥ 0.01), c is resolved (|c| > 2 s.e.) and a is consistent with
      0 (|a| < 3 s.e.).

  Examples:
    >>> import numpy as np
    >>> from ndk_flax.width_sweep import fit_inverse_width
    >>> n = np.array([64, 128, 256, 512])
    >>> fit = fit_inverse_width(n, 0.01 + 8.0 / n, np.full(4, 0.002))  # a = 0.01 is 0.01/a_se ≈ 6 s.e. from 0
    >>> round(fit.coefficient, 6), round(fit.intercept, 6), fit.dof
    (8.0, 0.01, 2)
    >>> fit.supports_inverse_width
    False
  """

  coefficient: float
  coefficient_se: float
  intercept: float
  intercept_se: float
  chi2: float
  dof: int
  p_value: float
  supports_inverse_width: bool


def _chi2_sf(x: float, k: int) -> float:
  """P(χ²_k ≥ x) by the regularised upper incomplete gamma function (series / continued fraction)."""
  if x <= 0:
    return 1.0
  a, z = k / 2, x / 2
  if z < a + 1:  # series for the lower function
    term = total = 1 / a
    n = a
    for _ in range(500):
      n += 1
      term *= z / n
      total += term
      if term < total * 1e-15:
        break
    return max(0.0, 1 - total * math.exp(-z + a * math.log(z) - math.lgamma(a)))
  b, c, d = z + 1 - a, 1e300, 1 / (z + 1 - a)  # Lentz continued fraction for the upper function
  h = d
  for i in range(1, 500):
    an = -i * (i - a)
    b += 2
    d = an * d + b
    d = 1 / (d if abs(d) > 1e-300 else 1e-300)
    c = b + an / c
    c = c if abs(c) > 1e-300 else 1e-300
    h *= d * c
    if abs(d * c - 1) < 1e-15:
      break
  return math.exp(-z + a * math.log(z) - math.lgamma(a)) * h


def fit_inverse_width(widths: Any, values: Any, se: Any) -> InverseWidthFit:
  """Fit D(N) = a + c/N to discrepancies ``values`` ± ``se`` measured at ``widths`` (at least 3 widths).

  Examples:
    >>> import numpy as np
    >>> n = np.array([128, 256, 512, 1024, 2048])
    >>> fit = fit_inverse_width(n, 20.0 / n, np.full(5, 0.005))
    >>> round(fit.coefficient, 6), abs(fit.intercept) < 1e-9, fit.supports_inverse_width
    (20.0, True, True)
  """
  n = np.asarray(widths, dtype=np.float64).reshape(-1)
  y = np.asarray(values, dtype=np.float64).reshape(-1)
  s = np.asarray(se, dtype=np.float64).reshape(-1)
  if not (n.shape == y.shape == s.shape) or n.size < 3:
    raise ValueError(f'widths, values and se must be 1-D of one length >= 3, got {n.shape}, {y.shape}, {s.shape}')
  if np.any(n <= 0) or not np.all(np.isfinite(n)) or np.unique(n).size != n.size:
    raise ValueError(f'widths must be distinct, finite and > 0, got {n}')
  if not np.all(np.isfinite(y)) or not np.all(np.isfinite(s)) or np.any(s <= 0):
    raise ValueError('values must be finite and se finite and > 0')
  design = np.stack([np.ones_like(n), 1 / n], axis=1) / s[:, None]
  target = y / s
  cov = np.linalg.inv(design.T @ design)
  a, c = cov @ design.T @ target
  chi2 = float(np.sum((target - design @ np.array([a, c])) ** 2))
  dof = n.size - 2
  p = _chi2_sf(chi2, dof) if dof > 0 else 1.0
  a_se, c_se = math.sqrt(cov[0, 0]), math.sqrt(cov[1, 1])
  supports = p >= 0.01 and abs(c) > 2 * c_se and abs(a) < 3 * a_se
  return InverseWidthFit(float(c), c_se, float(a), a_se, chi2, dof, float(p), bool(supports))
