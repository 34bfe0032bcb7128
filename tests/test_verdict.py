"""The pass rule of ``ndk-flax validate`` (ndk_flax.verdict): its text states the formulas the code uses, the
deciding statistic is the rule, and a width that could not fail is refused."""

import math

import numpy as np
import pytest
from scipy.stats import norm

from ndk_flax import verdict
from ndk_flax._nt import Gaussian
from ndk_flax.ensemble import EnsembleRecord
from ndk_flax.validate import compare

TIMES = np.array([0.0, 1.0, 2.0])


def _formula(text: str):
  """The right-hand side of 's.e. = …' as a Python function of (v, M)."""
  rhs = text.split('=', 1)[1]
  for a, b in (('√', 'math.sqrt'), ('·', '*'), ('−', '-')):
    rhs = rhs.replace(a, b)
  return lambda v, M: eval(rhs, {'math': math, 'v': v, 'M': M})  # the formula is our own constant


def _report(n_members: int, seed: int = 0, var=None):
  rng = np.random.default_rng(seed)
  var = np.array([[1.0, 0.5], [0.6, 0.4], [0.3, 0.2]]) if var is None else var
  mean = np.zeros((3, 2, 1))
  train = np.sqrt(var)[None, ..., None] * rng.standard_normal((n_members, 3, 2, 1))

  def predictor(t, x_test=None, compute_cov=False):
    return Gaussian(mean, np.stack([np.diag(v) for v in var])) if compute_cov else mean

  return compare(EnsembleRecord(TIMES, train, train[:, :, :1], None), predictor, points='train'), var


def test_the_stated_standard_errors_are_the_ones_compare_uses():
  report, var = _report(50)
  for formula, field in ((verdict.MEAN_SE_FORMULA, 'mean_se'), (verdict.VAR_SE_FORMULA, 'var_se')):
    stated = np.vectorize(_formula(formula))(var, 50)[..., None]
    np.testing.assert_allclose(getattr(report, field), stated, rtol=1e-12)
  np.testing.assert_allclose(report.mean_se, verdict.mean_se(var, 50)[..., None], rtol=1e-12)
  np.testing.assert_allclose(report.var_se, verdict.var_se(var, 50)[..., None], rtol=1e-12)


def test_var_se_is_the_spread_of_the_gaussian_sample_variance():
  """Monte Carlo: 20 000 sample variances of M = 9 Gaussian draws of variance 2 spread by v √(2/(M − 1))."""
  draws = np.random.default_rng(3).normal(0, math.sqrt(2.0), (20_000, 9)).var(axis=1, ddof=1)
  # the s.e. of a sample std over 20 000 draws is ≈ 1 %; 5 % is > 4 of those
  assert draws.std() == pytest.approx(float(verdict.var_se(2.0, 9)), rel=0.05)
  assert not draws.std() == pytest.approx(float(verdict.var_se(2.0, 9)) * 1.15, rel=0.05)  # a 15 % error is seen


def test_tolerance_text_states_those_formulas_and_no_other():
  results = {
    'config': {'n_members': 64, 'width': 256, 'learning_rate': 0.02, 'n_train': 2},
    'tolerance': {'n_comparisons': 24, 'z_tol': 4.5, 'width_allowance_kappa': 4.0, 'mean_atol': 0.02, 'var_atol': 0.01},
    'time_scales': {'gradient': 0.2},
    'mean': {'se': [[0.1, 0.2]]},
    'variance': {'theory': [[0.5, 0.6]]},
    'targets': [1.0, -1.2, 0.3],
  }
  text = verdict.tolerance_text(results)
  assert verdict.MEAN_SE_FORMULA in text and verdict.VAR_SE_FORMULA in text
  assert 'm₄' not in text and 'no Gaussian assumption' not in text
  assert f'{norm.isf(0.01 / 48):.2f}' in text  # the union-bound threshold for K = 24, α = 1 %
  assert 'δ = 0.02 for the mean (scale max|y| = 1.2)' in text


def test_bonferroni_is_the_normal_quantile():
  for k in (1, 24, 240):
    assert verdict.bonferroni(k) == pytest.approx(norm.isf(0.01 / (2 * k)), rel=1e-9)


def test_decide_is_the_elementwise_rule_and_finds_the_worst_point():
  rng = np.random.default_rng(0)
  theory = rng.normal(size=(4, 5))
  se = rng.uniform(0.05, 0.2, size=(4, 5))
  for trial in range(20):
    ens = theory + rng.normal(size=(4, 5)) * se * rng.uniform(0.5, 2.5)
    mean = verdict.Comparison(theory, ens, se)
    var = verdict.Comparison(np.abs(theory), np.abs(theory) * (1 + 0.1 * rng.normal(size=(4, 5))), se)
    allowance = verdict.Allowance(0.01 * trial, 0.005)
    v = verdict.decide(mean, var, 4.0, allowance)
    brute = [((np.abs(c.ensemble - c.theory) - a) / c.se) for c, a in ((mean, allowance.mean), (var, allowance.var))]
    assert v.statistic == pytest.approx(max(b.max() for b in brute))
    rule = verdict.within(ens, theory, se, 4.0, allowance.mean) and verdict.within(
      var.ensemble, var.theory, se, 4.0, allowance.var
    )
    assert v.passed == rule
    worst = brute[v.worst.statistic == 'variance']
    assert worst[v.worst.time_index, v.worst.point_index] == pytest.approx(v.statistic)


def test_validation_report_passed_is_the_same_rule():
  report, _ = _report(64, seed=1)
  for z_tol in (0.5, 1.0, 2.0, 4.0):
    v = verdict.decide(
      verdict.Comparison(report.theory_mean[..., 0], report.ensemble_mean[..., 0], report.mean_se[..., 0]),
      verdict.Comparison(report.theory_var[..., 0], report.ensemble_var[..., 0], report.var_se[..., 0]),
      z_tol,
      verdict.Allowance(0.0, 0.0),
    )
    assert report.passed(z_tol) == v.passed


def test_power_problem_refuses_exactly_where_the_allowance_reaches_half_the_signal():
  mean = np.array([[0.0, 0.0], [0.25, 0.5]])  # signal max|f̄(t) − f̄(0)| = 0.5
  for width in (1, 10, 24, 25, 30):
    allowance = verdict.allowances(1.5, 0.5, width)  # δ_mean = 6/N
    assert (verdict.power_problem(mean, allowance, width) is None) == (6 / width < 0.25), width
  assert 'use width >= 25' in verdict.power_problem(mean, verdict.allowances(1.5, 0.5, 24), 24)


def test_sign_pattern_names_a_one_sided_excess():
  theory = np.ones((2, 4))
  above = verdict.sign_pattern('variance', verdict.Comparison(theory, theory * [1.07, 1.1, 1.2, 1.22], theory))
  assert above.systematic and above.above == 4 and (above.ratio_min, above.ratio_max) == pytest.approx((1.07, 1.22))
  mixed = verdict.sign_pattern('mean', verdict.Comparison(theory, theory * [0.9, 1.1, 1.2, 1.0], theory))
  assert not mixed.systematic and (mixed.above, mixed.below) == (2, 1)
