"""Tests of ndk_flax.reduced: the small-T equations in slow time τ = λt (docs/theory.md §5).

Checks: the τ = 0 and τ = ∞ ends against Neural Tangents' NTK and NNGP interpolants (closed forms), the approach of
large finite τ to τ = ∞ (a check of the Volterra solver itself), T-independence at fixed τ, self-consistency of the
training residual, solver convergence, and (slow) the O(T) gap to the full solver of ``ndk_flax.predict``.
"""

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from ndk_flax import stax
from ndk_flax._nt import nt_stax
from ndk_flax.reduced import composite_small_temperature_mean, reduced_small_temperature_mean

RNG = np.random.default_rng(0)
D = 4
X = np.sqrt(D) * np.eye(D)  # orthogonal training inputs, ‖x‖² = d
Y = np.array([[1.0], [-1.0], [-1.0], [1.0]])
X_TEST = RNG.normal(size=(3, D))
X_TEST = np.sqrt(D) * X_TEST / np.linalg.norm(X_TEST, axis=1, keepdims=True)
S0, S = 2.0, 1.0  # σ0 ≠ σ: the NTK and NNGP interpolants differ


def _net(s0=S0, s=S):
  return stax.serial(stax.Dense(16, W_std=s0, W_prior_std=s), stax.Erf(), stax.Dense(1, W_std=s0, W_prior_std=s))


NET = _net()


def _nt_kernels(std):
  """NT's NNGP and (raw = NT ntk / std²) NTK of the same bias-free network with all W_std = std."""
  _, _, kernel_fn = nt_stax.serial(nt_stax.Dense(16, W_std=std), nt_stax.Erf(), nt_stax.Dense(1, W_std=std))
  return lambda a, b, get: np.asarray(kernel_fn(a, b, get)) / (std**2 if get == 'ntk' else 1.0)


def test_ends_are_the_ntk_and_nngp_interpolants():
  """τ = 0: Θ0(x*, X) Θ0⁻¹ Y with the raw NTK at σ0; τ = ∞: K(x*, X) K⁻¹ Y with the NNGP at σ; and λε(∞) = T K⁻¹Y."""
  temperature = 0.01
  sol = reduced_small_temperature_mean(
    NET, X, Y, temperature=temperature, taus=[0.0, 4.0, np.inf], x_test=X_TEST, max_step=0.2
  )
  ntk = _nt_kernels(S0)
  nngp = _nt_kernels(S)
  ntk_interp = ntk(X_TEST, X, 'ntk') @ np.linalg.solve(ntk(X, X, 'ntk'), Y)
  k_xx = nngp(X, X, 'nngp')
  nngp_interp = nngp(X_TEST, X, 'nngp') @ np.linalg.solve(k_xx, Y)
  np.testing.assert_allclose(sol.mean[0], ntk_interp, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(sol.mean[-1], nngp_interp, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(sol.residual[-1], temperature * np.linalg.solve(k_xx, Y), rtol=1e-10)
  assert np.max(np.abs(ntk_interp - nngp_interp)) > 0.05  # the two ends are distinguishable
  chex.assert_shape(sol.mean, (3, 3, 1))
  chex.assert_shape(sol.residual, (3, 4, 1))
  np.testing.assert_allclose(sol.times, np.array([0.0, 4.0, np.inf]) / sol.rate)
  np.testing.assert_allclose(sol.rate, temperature / S**2)


def test_large_tau_approaches_the_nngp_interpolant_and_converges():
  """The Volterra solution at τ = 8 is within 2e-3 of the τ = ∞ closed form (the kernels relax as e^{−τ}; the
  remaining gap is O(e^{−8}) ≈ 3e-4 times O(1) coefficients) and the residual λε(τ) approaches T K⁻¹Y likewise.
  Halving the step changes the result by less than the estimated error of the coarse solution."""
  kw = dict(temperature=0.02, taus=[1.0, 8.0, np.inf], x_test=X_TEST)
  coarse = reduced_small_temperature_mean(NET, X, Y, max_step=0.4, **kw)
  fine = reduced_small_temperature_mean(NET, X, Y, max_step=0.2, **kw)
  np.testing.assert_allclose(fine.mean[1], fine.mean[2], atol=2e-3)
  np.testing.assert_allclose(fine.residual[1], fine.residual[2], rtol=2e-2)
  assert fine.error_estimate < coarse.error_estimate < 0.05
  scale = float(np.max(np.abs(fine.mean[:2])))
  assert float(np.max(np.abs(fine.mean[:2] - coarse.mean[:2]))) <= coarse.error_estimate * scale


def test_independent_of_temperature_and_consistent_on_training_set():
  """At fixed τ the reduced solution does not depend on T (λ ∝ T): identical for T = 1e-3 and T = 1. On the
  training inputs the leading-order prediction is Y (collocation) and ``mean`` = Y − λε."""
  kw = dict(taus=[0.3, 1.3, 4.0], max_step=0.2)  # the grids (and compilations) of the test above
  a = reduced_small_temperature_mean(NET, X, Y, temperature=1e-3, x_test=X_TEST, **kw)
  b = reduced_small_temperature_mean(NET, X, Y, temperature=1.0, x_test=X_TEST, **kw)
  np.testing.assert_allclose(a.mean, b.mean, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(a.residual / a.rate, b.residual / b.rate, rtol=1e-9)
  on_train = reduced_small_temperature_mean(NET, X, Y, temperature=1e-3, x_test=X, **kw)
  np.testing.assert_allclose(on_train.mean, np.broadcast_to(Y, on_train.mean.shape), atol=1e-3)
  default = reduced_small_temperature_mean(NET, X, Y, temperature=1e-3, **kw)
  np.testing.assert_allclose(default.mean, Y[None] - default.residual, rtol=1e-12)


def test_bare_ndk_fn_and_validation():
  sol = reduced_small_temperature_mean(
    NET.ndk_fn, X, Y, temperature=0.1, taus=[np.inf], x_test=X_TEST, relaxation_rate=0.1
  )  # closed form only: no solve to compile
  chex.assert_shape(sol.mean, (1, 3, 1))
  assert sol.error_estimate == 0.0
  with pytest.raises(ValueError, match='relaxation_rate'):
    reduced_small_temperature_mean(NET.ndk_fn, X, Y, temperature=0.1, taus=[0.0])
  with pytest.raises(ValueError, match='temperature'):
    reduced_small_temperature_mean(NET, X, Y, temperature=0.0, taus=[0.0])
  with pytest.raises(ValueError, match='taus'):
    reduced_small_temperature_mean(NET, X, Y, temperature=0.1, taus=[1.0, 0.5])
  with pytest.raises(ValueError, match='taus'):
    reduced_small_temperature_mean(NET, X, Y, temperature=0.1, taus=[-1.0])
  with pytest.raises(ValueError, match='y_train'):
    reduced_small_temperature_mean(NET, X, Y[:3], temperature=0.1, taus=[0.0])
  with pytest.raises(ValueError, match='x_test'):
    reduced_small_temperature_mean(NET, X, Y, temperature=0.1, taus=[0.0], x_test=X_TEST[:, :2])
  with pytest.raises(ValueError, match='max_step'):
    reduced_small_temperature_mean(NET, X, Y, temperature=0.1, taus=[0.0], max_step=0.0)
  with pytest.raises(TypeError, match='layer_or_ndk_fn'):
    reduced_small_temperature_mean(3, X, Y, temperature=0.1, taus=[0.0])
  with pytest.raises(ValueError, match='singular'):
    reduced_small_temperature_mean(
      NET, np.concatenate([X, X[:1]]), np.concatenate([Y, Y[:1]]), temperature=0.1, taus=[0.0]
    )


def test_composite_ends_and_validation():
  """The composite starts at f̄(x*, 0) = 0 and f̄(X, 0) = 0 (e^{0} Y + λε(0) − … : the residual is Y + O(T)), and at
  t = ∞ is the noise-free NNGP interpolant (train: Y − T K⁻¹Y)."""
  temperature = 0.01
  comp = composite_small_temperature_mean(NET, X, Y, temperature=temperature, times=[0.0, np.inf], x_test=X_TEST)
  red = reduced_small_temperature_mean(NET, X, Y, temperature=temperature, taus=[np.inf], x_test=X_TEST)
  np.testing.assert_allclose(comp.test[0], 0.0, atol=1e-12)
  np.testing.assert_allclose(comp.test[1], red.mean[0], rtol=1e-10)
  np.testing.assert_allclose(comp.train[1], Y - red.residual[0], rtol=1e-10)
  assert composite_small_temperature_mean(NET, X, Y, temperature=temperature, times=[np.inf]).test is None
  with pytest.raises(ValueError, match='times'):
    composite_small_temperature_mean(NET, X, Y, temperature=temperature, times=[2.0, 1.0])


@pytest.mark.slow
def test_gap_to_full_solver_shrinks_linearly_in_temperature():
  """|f̄_full − f̄_small-T| = O(T): the slope of log gap vs log T over T = 0.04, 0.02, 0.01 is 1 ± 0.3 for the
  reduced solution at fixed τ = 1 and for the composite (both phases) on the test inputs at t = 1 (gradient phase)
  and t = 1/λ (diffusive phase). Every gap is > 5 times the full solver's own error estimate, so solver error moves
  a slope by < 0.15."""
  from ndk_flax.predict import langevin_mse_ensemble

  temps = np.array([0.04, 0.02, 0.01])
  red = reduced_small_temperature_mean(NET, X, Y, temperature=0.01, taus=[1.0], x_test=X_TEST, max_step=0.1)
  gaps, solver_errors = [], []
  for temperature in temps:
    full = langevin_mse_ensemble(NET, X, Y, temperature=temperature, rtol=1e-3)
    lam = min(NET.relaxation_rates(temperature))
    times = np.array([1.0, 1 / lam])
    comp = composite_small_temperature_mean(
      NET, X, Y, temperature=temperature, times=times, x_test=X_TEST, max_step=0.1
    )
    out = full.predict(times, X_TEST)
    test = out.mean
    solver_errors.append(out.stats.mean.error_estimate)
    gaps.append([float(jnp.max(jnp.abs(test[-1] - red.mean[0]))), *np.max(np.abs(test - comp.test), axis=(1, 2))])
  gaps = np.array(gaps)
  slopes = np.polyfit(np.log(temps), np.log(gaps), 1)[0]
  assert np.all(np.abs(slopes - 1) < 0.3), (gaps, slopes)
  assert gaps.min() > 5 * max(solver_errors) and gaps.max() < 0.2, (gaps, solver_errors)


@pytest.mark.parametrize('kw', [dict(taus=[1e3]), dict(taus=[1.0], max_step=1e-6)], ids=['tau=1e3', 'max_step=1e-6'])
def test_huge_reduced_requests_are_refused_with_a_cost_estimate(kw):
  """τ = 1e3 or max_step = 1e-6 would run for minutes: refused up front, naming the estimate and the cap."""
  with pytest.raises(ValueError, match=r'needs about .* kernel time pairs.*`max_kernel_pairs`'):
    reduced_small_temperature_mean(NET, X, Y, temperature=0.01, **kw)
  with pytest.raises(ValueError, match='max_kernel_pairs'):
    composite_small_temperature_mean(
      NET, X, Y, temperature=0.01, times=[kw['taus'][0] / 0.01], max_step=kw.get('max_step', 0.05)
    )
