"""Tests of ndk_flax.width_sweep: the 1/N fit recovers known coefficients from synthetic ensembles."""

import math

import numpy as np
import pytest

from ndk_flax.width_sweep import _chi2_sf, ensemble_discrepancy, fit_inverse_width

WIDTHS = np.array([128, 256, 512, 1024, 2048])
C_MEAN, C_VAR = 6.0, -40.0  # the O(1/N) coefficients of the synthetic ensembles (mean and variance)


def _ensemble(rng, width, n_members=4000):
  """Members f ~ N(μ + C_MEAN s/N, v (1 + C_VAR/(N ⟨v⟩)) ...) elementwise: D_mean = C_MEAN/N, D_var = C_VAR/N
  (scale s = 1) exactly in expectation."""
  mu = np.array([[0.3, -0.2, 0.5], [0.1, 0.0, -0.4]])[..., None]
  var = np.array([[1.0, 0.5, 0.8], [0.6, 0.9, 0.7]])[..., None]
  shift_var = C_VAR / width  # the same absolute variance shift at every entry
  f = mu + C_MEAN / width + np.sqrt(var + shift_var) * rng.standard_normal((n_members,) + mu.shape)
  return f, mu, var


def test_fit_recovers_known_inverse_width_coefficients():
  """Synthetic ensembles with D_mean = 6/N, D_var = −40/N (M = 4000 per width): the fitted coefficients are within
  3 standard errors of the truth, the intercepts within 3 s.e. of 0, and the data are judged to support 1/N.
  Sharp: the standard errors resolve the coefficient (|c| > 2 s.e. is required), and a coefficient 3 s.e. off would
  be outside the band."""
  rng = np.random.default_rng(0)
  ds = [ensemble_discrepancy(*_ensemble(rng, w)) for w in WIDTHS]
  for values, errors, truth in (
    ([d.mean for d in ds], [d.mean_se for d in ds], C_MEAN),
    ([d.var for d in ds], [d.var_se for d in ds], C_VAR),
  ):
    fit = fit_inverse_width(WIDTHS, values, errors)
    assert abs(fit.coefficient - truth) < 3 * fit.coefficient_se, (fit, truth)
    assert abs(fit.intercept) < 3 * fit.intercept_se
    assert fit.supports_inverse_width and fit.dof == 3
    assert fit.coefficient_se < abs(truth) / 3


def test_fit_rejects_data_that_scale_as_inverse_square_root():
  """D = 0.5/√N ± 1e-3 over N = 128…2048: the best a + c/N line misses (χ² ≈ 20 on 3 degrees of freedom, p < 0.01)
  and needs an intercept a far from 0 (≈ 17 s.e.), so 1/N scaling is not supported."""
  fit = fit_inverse_width(WIDTHS, 0.5 / np.sqrt(WIDTHS), np.full(WIDTHS.size, 1e-3))
  assert fit.p_value < 0.01 and abs(fit.intercept) > 10 * fit.intercept_se and not fit.supports_inverse_width


def test_discrepancy_standard_errors_match_the_spread_over_repeats():
  """Over 200 repeated ensembles of the same law, D_mean and D_var scatter with the standard deviation that their
  standard errors predict (within 25 %, the sampling accuracy of a standard deviation from 200 draws is 5 %)."""
  rng = np.random.default_rng(1)
  ds = [ensemble_discrepancy(*_ensemble(rng, 256, n_members=200)) for _ in range(200)]
  for values, errors in (
    ([d.mean for d in ds], [d.mean_se for d in ds]),
    ([d.var for d in ds], [d.var_se for d in ds]),
  ):
    assert abs(np.std(values, ddof=1) / np.mean(errors) - 1) < 0.25


def test_chi2_survival_function_closed_forms():
  for x in (0.1, 1.0, 3.0, 10.0, 40.0):
    assert _chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-10)
    assert _chi2_sf(x, 1) == pytest.approx(math.erfc(math.sqrt(x / 2)), rel=1e-8)
    assert _chi2_sf(x, 4) == pytest.approx(math.exp(-x / 2) * (1 + x / 2), rel=1e-10)


def test_bad_input():
  with pytest.raises(ValueError, match='length >= 3'):
    fit_inverse_width([1, 2], [0.0, 0.0], [1.0, 1.0])
  with pytest.raises(ValueError, match='distinct'):
    fit_inverse_width([1, 1, 2], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
  with pytest.raises(ValueError, match='members'):
    ensemble_discrepancy(np.zeros((3, 2)), np.zeros(3))
