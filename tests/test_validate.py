"""Tests of ndk_flax.validate on synthetic ensembles drawn from a known Gaussian (exact null distribution)."""

import numpy as np
import pytest

from ndk_flax._nt import Gaussian
from ndk_flax.ensemble import EnsembleRecord
from ndk_flax.validate import compare, two_time_overlap

TIMES = np.array([0.0, 1.0, 2.0])
MEAN = np.array([[0.0, 0.0], [0.5, -0.2], [0.8, -0.3]])[..., None]  # (n_t, n, 1)
VAR = np.array([[1.0, 0.5], [0.6, 0.4], [0.3, 0.2]])


def _predictor(mean=MEAN, var=VAR):
  def predict(t, x_test=None, compute_cov=False):
    np.testing.assert_array_equal(t, TIMES)
    cov = np.stack([np.diag(v) for v in var])
    return Gaussian(mean, cov) if compute_cov else mean

  return predict


def _record(n_members, seed=0):
  rng = np.random.default_rng(seed)
  train = MEAN[None] + np.sqrt(VAR)[None, ..., None] * rng.standard_normal((n_members,) + MEAN.shape)
  return EnsembleRecord(TIMES, train, train[:, :, :1], None)


def test_members_from_the_predicted_gaussian_pass():
  """Members drawn from N(theory mean, theory var): z ~ N(0, 1), so |z| < 4 everywhere (12 entries)."""
  report = compare(_record(4000), _predictor(), points='train')
  assert report.points == 'train' and report.n_members == 4000
  assert report.passed(4.0) and report.max_abs_z < 4
  np.testing.assert_allclose(report.mean_se, np.sqrt(VAR[..., None] / 4000))
  np.testing.assert_allclose(report.var_se, VAR[..., None] * np.sqrt(2 / 3999))


def test_a_wrong_theory_fails_and_an_allowance_can_absorb_it():
  shifted = MEAN + 0.1  # 0.1 is ≥ 8 standard errors (≤ √1/4000 = 0.016) for every entry
  report = compare(_record(4000), _predictor(mean=shifted), points='train')
  assert not report.passed(4.0) and report.max_abs_z > 6
  assert report.passed(4.0, mean_atol=0.1)
  assert not compare(_record(4000), _predictor(var=2 * VAR), points='train').passed(4.0)


def test_test_points_and_mean_only():
  rec = _record(500)
  report = compare(rec, lambda t, x, compute_cov: MEAN[:, :1], x_test=np.zeros((1, 3)), compute_var=False)
  assert report.points == 'test' and report.var_z is None and report.ensemble_var is None
  np.testing.assert_allclose(report.mean_se, rec.test.std(0, ddof=1) / np.sqrt(500))


def test_compare_errors():
  rec = _record(10)
  with pytest.raises(TypeError, match='EnsembleRecord'):
    compare({'train': 1}, _predictor())
  with pytest.raises(ValueError, match='same data'):
    compare(rec, _predictor(mean=MEAN[:, :1]), points='train')
  with pytest.raises(ValueError, match='at least 2 members'):
    compare(_record(1), _predictor(), points='train')
  with pytest.raises(ValueError, match='no test outputs'):
    compare(rec._replace(test=None), _predictor(), x_test=np.zeros((1, 3)))
  with pytest.raises(ValueError, match='not positive'):
    compare(rec, _predictor(var=0 * VAR), points='train')
  with pytest.raises(ValueError, match='z_tol'):
    compare(rec, _predictor(), points='train').passed(0.0)


def test_two_time_overlap_of_independent_features():
  """Features a_i(x, t) i.i.d. N(0, 1) over units, constant in time: K(t, s, x, x') = δ_xx' for every (t, s)."""
  rng = np.random.default_rng(1)
  base = rng.standard_normal((64, 1, 3, 256))
  emp = two_time_overlap(np.repeat(base, 2, axis=1))  # (M, n_t=2, n=3, N=256)
  assert emp.mean.shape == (2, 2, 3, 3)
  expected = np.broadcast_to(np.eye(3), (2, 2, 3, 3))
  assert np.all(np.abs(emp.mean - expected) <= 5 * emp.se + 1e-12)
  np.testing.assert_allclose(emp.se[0, 0, 0, 0], np.sqrt(2 / 256 / 64), rtol=0.3)  # Var(χ²_N/N) = 2/N
  with pytest.raises(ValueError, match='members'):
    two_time_overlap(np.ones((3, 2)))


def test_compare_uses_and_checks_the_record_inputs():
  """A record that keeps its inputs: the test points by default (the predictor gets the record's x_test), the
  training points on request; an x_test that differs from the record's (values or shape) is refused instead of
  reporting a huge z; a record without kept inputs needs x_test for its test points."""
  rng = np.random.default_rng(2)
  x_train, x_test = rng.normal(size=(2, 3)), rng.normal(size=(1, 3))
  rec = _record(500)._replace(x_train=x_train, x_test=x_test)
  seen = []

  def predictor(t, x, compute_cov=False):
    seen.append(x)
    return MEAN[:, :1] if x is not None else MEAN

  report = compare(rec, predictor, compute_var=False)
  assert report.points == 'test' and seen[-1] is x_test
  np.testing.assert_allclose(report.ensemble_mean, rec.test.mean(0))
  assert compare(rec, predictor, points='train', compute_var=False).points == 'train' and seen[-1] is None
  assert compare(rec, predictor, x_test=x_test.copy(), compute_var=False).points == 'test'
  with pytest.raises(ValueError, match=r"x_test differs from the record's test inputs \(max \|difference\| 0.1"):
    compare(rec, predictor, x_test=x_test + 0.1, compute_var=False)
  with pytest.raises(ValueError, match=r'differs .*shape \(2, 3\) vs \(1, 3\)'):
    compare(rec, predictor, x_test=x_train, compute_var=False)
  with pytest.raises(ValueError, match='pass the x_test it was trained with'):
    compare(_record(10), predictor, compute_var=False)
  with pytest.raises(ValueError, match="points='train'"):
    compare(rec, predictor, x_test=x_test, points='train')
