"""Tests of ndk_flax.drift (docs/theory.md §6): hidden two-time kernels, their normalised autocorrelation and floor,
the frozen-readout predictor and its mean-activation limit, and the finite-width measurements.

Closed forms used: Neural Tangents' NNGP of the sub-network (C^l at equal times), the OU correlation of a linear
hidden layer, E[relu(h)] = √(q/2π) and E[relu(h)²] = q/2 (floor 1/π), E[erf(h)] = 0, the NNGP posterior mean.
"""

import math

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from ndk_flax import drift, stax
from ndk_flax._nt import nt_stax

RNG = np.random.default_rng(3)
D = 5
X = RNG.normal(size=(4, D))
Y = np.array([[1.0], [-1.0], [1.0], [-1.0]])
X_TEST = RNG.normal(size=(3, D))
T = 0.1
S1, S2, SA, SB = 1.3, 0.9, 1.1, 0.4  # prior stds of layer 1, layer 2, readout weights and readout bias


def _layers(act, s0=None):
  """Two hidden layers, readout with bias; initial stds s0 (default: the prior stds, i.e. stationary)."""
  s0 = s0 or (S1, S2, SA)
  return [
    stax.Dense(32, W_std=s0[0], W_prior_std=S1),
    act(),
    stax.Dense(32, W_std=s0[1], W_prior_std=S2),
    act(),
    stax.Dense(1, W_std=s0[2], W_prior_std=SA, b_std=SB),
  ]


def _nt_prefix(act, depth, stds):
  layers = []
  for s in stds[:depth]:
    layers += [nt_stax.Dense(32, W_std=s), act()]
  return nt_stax.serial(*layers)[2]


@pytest.mark.parametrize('act, nt_act', [(stax.Erf, nt_stax.Erf), (stax.Relu, nt_stax.Relu)])
def test_equal_time_hidden_kernel_is_nt_nngp_of_the_subnetwork(act, nt_act):
  """C^l(t, t) = NT's NNGP of the sub-network with the prior stds at equilibrium (t = ∞) and with the initial stds
  at t = 0; hidden_network stops after the l-th activation."""
  init = (2.0, 0.5, 1.0)
  layers = _layers(act, init)
  for depth in (1, 2):
    assert len(drift.hidden_network(layers, depth).spec.children) == 2 * depth
    eq = drift.hidden_kernel(layers, depth, X, X_TEST, jnp.inf, jnp.inf, temperature=T)
    np.testing.assert_allclose(eq.nngp, _nt_prefix(nt_act, depth, (S1, S2))(X, X_TEST, 'nngp'), rtol=1e-10)
    start = drift.hidden_kernel(layers, depth, X, X_TEST, 0.0, 0.0, temperature=T)
    np.testing.assert_allclose(start.nngp, _nt_prefix(nt_act, depth, init)(X, X_TEST, 'nngp'), rtol=1e-10)


def test_linear_hidden_layer_autocorrelation_is_the_ou_correlation():
  """With an identity activation ρ^1(t, s) = c(t, s)/√(c(t, t) c(s, s)), c the OU covariance of docs/theory.md §2."""
  s0, s = 2.0, 1.0
  layers = [stax.Dense(8, W_std=s0, W_prior_std=s), stax.Identity(), stax.Dense(1)]
  t = np.array([0.0, 1.0, 5.0, 20.0])
  rho = drift.normalised_autocorrelation(layers, 1, X, t, t, temperature=T)
  lam = T / s**2

  def c(a, b):
    return s0**2 * np.exp(-lam * (a + b)) + s**2 * (np.exp(-lam * abs(a - b)) - np.exp(-lam * (a + b)))

  expected = np.array([[c(a, b) / math.sqrt(c(a, a) * c(b, b)) for b in t] for a in t])
  np.testing.assert_allclose(rho, np.broadcast_to(expected[..., None], rho.shape), rtol=1e-10)
  chex.assert_shape(drift.normalised_autocorrelation(layers, 1, X, t, 3.0, temperature=T), (4, 4))
  chex.assert_shape(drift.normalised_autocorrelation(layers, 1, X, 3.0, t, temperature=T), (4, 4))
  # Times given as Python lists, as ndk_fn accepts them (was a raw JAX TypeError).
  np.testing.assert_array_equal(
    drift.normalised_autocorrelation(layers, 1, X, t.tolist(), t.tolist(), temperature=T), rho
  )


def test_autocorrelation_decays_to_the_mean_activation_floor():
  """Stationary autocorrelation ρ^l(t0 + Δ, t0): 1 at Δ = 0, decreasing in Δ, → ⟨φ⟩²/C^l(∞,∞) = 1/π for ReLU
  (E[relu]² / E[relu²] = (q/2π)/(q/2)) and 0 for erf; the deeper erf layer decorrelates faster."""
  lam = T / max(S1, S2) ** 2
  t0 = 80 / lam
  lags = np.array([0.0, 0.5, 2.0, 5.0, 80.0]) / lam
  for act, floor in ((stax.Relu, 1 / math.pi), (stax.Erf, 0.0)):
    layers = _layers(act)
    rho = [np.asarray(drift.normalised_autocorrelation(layers, l, X, t0 + lags, t0, temperature=T)) for l in (1, 2)]
    for l, r in zip((1, 2), rho):
      np.testing.assert_allclose(r[0], 1.0, rtol=1e-12)
      assert np.all(np.diff(r, axis=0) < 0)
      np.testing.assert_allclose(r[-1], floor, atol=1e-10)
      np.testing.assert_allclose(drift.autocorrelation_floor(layers, l, X), floor, atol=1e-10)
    if act is stax.Erf:
      assert np.all(rho[1][1:-1] < rho[0][1:-1])


def test_mean_activation_closed_forms():
  """⟨relu(h)⟩ = √(q/2π) with q^1 = σ1²‖x‖²/d, q^2 = σ2² q^1/2 (E[relu²] = q/2); ⟨erf(h)⟩ = 0."""
  q1 = S1**2 * np.sum(X**2, axis=1) / D
  np.testing.assert_allclose(drift.mean_activation(_layers(stax.Relu), 1, X), np.sqrt(q1 / (2 * np.pi)), rtol=1e-12)
  np.testing.assert_allclose(
    drift.mean_activation(_layers(stax.Relu), 2, X), np.sqrt(S2**2 * q1 / 2 / (2 * np.pi)), rtol=1e-12
  )
  np.testing.assert_allclose(drift.mean_activation(_layers(stax.Erf), 2, X), 0.0, atol=1e-14)
  np.testing.assert_allclose(
    drift.gaussian_mean(stax.Relu(), np.array([0.0, 4.0])), [0.0, 2 / math.sqrt(2 * math.pi)], rtol=1e-12
  )
  with pytest.raises(ValueError, match='elementwise'):
    drift.mean_activation([stax.Dense(4), stax.LayerNorm(), stax.Dense(1)], 1, X)
  with pytest.raises(ValueError, match='variance'):
    drift.gaussian_mean(stax.Relu(), np.array([-1.0]))


def _posterior_weights(nt_act):
  """[K + T I]⁻¹ Y with K the equilibrium NNGP (NT, prior stds) of the whole network."""
  full = nt_stax.serial(
    nt_stax.Dense(32, W_std=S1), nt_act(), nt_stax.Dense(32, W_std=S2), nt_act(), nt_stax.Dense(1, W_std=SA, b_std=SB)
  )[2]
  k = np.asarray(full(X, X, 'nngp'))
  return full, np.linalg.solve(k + T * np.eye(len(X)), Y)


@pytest.mark.parametrize('act, nt_act', [(stax.Erf, nt_stax.Erf), (stax.Relu, nt_stax.Relu)])
def test_frozen_readout_ends(act, nt_act):
  """Δ = 0: the NNGP posterior mean K(x*, X)[K + T I]⁻¹Y. Δ = ∞: [σ_a² ⟨φ(x*)⟩⟨φ(X)⟩ᵀ + σ_b²][K + T I]⁻¹Y with the
  closed-form ⟨relu⟩ = √(q/2π) (q^2 = σ2² σ1²‖x‖²/(2d)) and ⟨erf⟩ = 0; Δ = 80/λ is already there."""
  layers = _layers(act)
  lam = T / max(S1, S2) ** 2
  f = np.asarray(
    drift.frozen_readout_mean(
      layers, X, Y, temperature=T, drift_times=[0.0, 0.3 / lam, 80.0 / lam, np.inf], x_test=X_TEST
    )
  )
  full, alpha = _posterior_weights(nt_act)
  np.testing.assert_allclose(f[0], np.asarray(full(X_TEST, X, 'nngp')) @ alpha, rtol=1e-9)
  if act is stax.Relu:
    m = lambda x: np.sqrt(S2**2 * S1**2 * np.sum(x**2, axis=1) / D / 2 / (2 * np.pi))
    limit = (SA**2 * np.outer(m(X_TEST), m(X)) + SB**2) @ alpha
  else:
    limit = np.full((3, 1), SB**2 * np.sum(alpha))
  np.testing.assert_allclose(f[3], limit, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(f[2], limit, rtol=1e-8, atol=1e-10)
  assert np.max(np.abs(f[1] - f[0])) > 1e-2 and np.max(np.abs(f[1] - limit)) > 1e-2
  on_train = drift.frozen_readout_mean(layers, X, Y, temperature=T, drift_times=[0.0])
  np.testing.assert_allclose(on_train[0], np.asarray(full(X, X, 'nngp')) @ alpha, rtol=1e-9)


def test_frozen_readout_validation():
  layers = _layers(stax.Erf)
  with pytest.raises(ValueError, match='temperature'):
    drift.frozen_readout_mean(layers, X, Y, temperature=0.0, drift_times=[0.0])
  with pytest.raises(ValueError, match='drift_times'):
    drift.frozen_readout_mean(layers, X, Y, temperature=T, drift_times=[-1.0])
  with pytest.raises(ValueError, match='y_train'):
    drift.frozen_readout_mean(layers, X, Y[:2], temperature=T, drift_times=[0.0])
  with pytest.raises(ValueError, match='x_test'):
    drift.frozen_readout_mean(layers, X, Y, temperature=T, drift_times=[0.0], x_test=X_TEST[:, :2])
  with pytest.raises(ValueError, match='Dense readout'):
    drift.frozen_readout_mean(layers[:-1] + [stax.Dense(1), stax.Erf()], X, Y, temperature=T, drift_times=[0.0])
  with pytest.raises(TypeError, match='list of layers'):
    drift.frozen_readout_mean(stax.serial(*layers), X, Y, temperature=T, drift_times=[0.0])
  with pytest.raises(ValueError, match='layer_index'):
    drift.hidden_network(layers, 3)
  with pytest.raises(ValueError, match='layer_index'):
    drift.hidden_network(layers, 0)


def test_linear_readout_accuracy():
  """Affine least-squares readout sign(α f + β): separable by a threshold away from 0 → 1; constant predictions →
  the majority sign; anti-correlated predictions are flipped by α < 0; one accuracy per leading index."""
  y_tr = np.array([1.0, 1.0, -1.0, -1.0])
  y_te = np.array([1.0, -1.0, -1.0])
  f_tr = np.array([[5.0, 6.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0], [-5.0, -6.0, -2.0, -3.0]])
  f_te = np.array([[5.5, 2.5, 1.0], [1.0, 1.0, 1.0], [-5.5, -2.5, -1.0]])
  np.testing.assert_allclose(drift.linear_readout_accuracy(f_tr, y_tr, f_te, y_te), [1.0, 1 / 3, 1.0])
  np.testing.assert_allclose(
    drift.linear_readout_accuracy(f_tr[..., None], y_tr[:, None], f_te[..., None], y_te[:, None]), [1.0, 1 / 3, 1.0]
  )
  with pytest.raises(ValueError, match='f_test'):
    drift.linear_readout_accuracy(f_tr, y_tr, f_te[:, :2], y_te)


def test_empirical_autocorrelation_of_known_features():
  """Features a(t) = ρ_t z + √(1 − ρ_t²) w_t (z, w_t i.i.d. normal, N units): the estimate of ρ(t, 0) is within 4
  standard errors of ρ_t (the ratio estimator's bias is O(1/N) = 1e-3 ≪ se ≈ 0.01)."""
  rng = np.random.default_rng(0)
  m, n_units, rho_t = 16, 1000, np.array([1.0, 0.7, 0.2])
  z = rng.normal(size=(m, 1, 2, n_units))
  w = rng.normal(size=(m, 3, 2, n_units))
  a = rho_t[None, :, None, None] * z + np.sqrt(1 - rho_t**2)[None, :, None, None] * w
  est = drift.empirical_autocorrelation(a)
  chex.assert_shape(est.mean, (3, 2))
  np.testing.assert_allclose(est.mean[0], 1.0)
  assert np.all(np.abs(est.mean[1:] - rho_t[1:, None]) <= 4 * est.se[1:] + 1e-3)
  pooled = drift.empirical_autocorrelation(a, average_points=True)
  np.testing.assert_allclose(pooled.mean, est.mean.mean(-1), rtol=1e-12)
  assert np.all(np.abs(pooled.mean[1:] - rho_t[1:]) <= 4 * pooled.se[1:] + 1e-3)
  with pytest.raises(ValueError, match='reference'):
    drift.empirical_autocorrelation(a, reference=5)
  with pytest.raises(ValueError, match='members'):
    drift.empirical_autocorrelation(a[:1])


@pytest.mark.slow
def test_ensemble_hidden_overlap_matches_hidden_kernel():
  """Trained Langevin ensemble (width N = 128, M = 32, all weights plastic, σ0 ≠ σ): the member average of
  (1/N) Σ_i φ_i(x, t) φ_i(x', s) is within 5 standard errors (across members) + 2/N of C^1(t, s, x, x') at all
  4 × 4 time pairs and 7 × 7 input pairs (~400 distinct, correlated entries; with 31 degrees of freedom
  P(|t| > 5) ≈ 2e-5 each, so a false alarm has probability < 1%). The 2/N allows the O(1/N) finite-width bias
  (the gradient moves each hidden weight by O(1/√N) with a readout-sign factor that averages out at first
  order; measured mean z ≈ 0); the Langevin step error is O(ηλ) = 4e-3 relative. A 7% error in C would fail."""
  from ndk_flax.ensemble import train_ensemble
  from ndk_flax.validate import two_time_overlap

  layers = [stax.Dense(128, W_std=1.5, W_prior_std=1.0), stax.Erf(), stax.Dense(1)]
  temperature, width = 0.2, 128
  times = np.array([0.0, 2.0, 5.0, 10.0])
  rec = train_ensemble(
    stax.serial(*layers),
    X,
    Y,
    temperature=temperature,
    learning_rate=0.02,
    record_times=times,
    n_members=32,
    width=width,
    x_test=X_TEST,
    record_hidden=True,
    progress=False,
  )
  x_all = np.concatenate([X, X_TEST])
  est = two_time_overlap(rec.hidden[0])
  theory = np.asarray(drift.hidden_kernel(layers, 1, x_all, x_all, times, times, temperature=temperature).nngp)
  assert np.all(np.abs(est.mean - theory) <= 5 * est.se + 2 / width), np.max(np.abs(est.mean - theory) / est.se)
  rho = drift.empirical_autocorrelation(rec.hidden[0])
  rho_theory = np.asarray(drift.normalised_autocorrelation(layers, 1, x_all, times, 0.0, temperature=temperature))
  assert np.all(np.abs(rho.mean - rho_theory) <= 5 * rho.se + 2 / width)
  assert rho_theory[-1].max() < 0.7  # the code has drifted measurably


@pytest.mark.slow
def test_frozen_readout_ensemble_matches_theory():
  """Members equilibrated by Langevin training (t0 = 4/λ), readout frozen, hidden weights drifting (exact OU): the
  member mean of f(x*, t0 + Δ) is within 4 standard errors of frozen_readout_mean at Δ = 0, 1/λ and 20/λ, up to an
  O(1/N) finite-width allowance of 0.05 (N = 128)."""
  layers = [stax.Dense(128, W_std=1.0), stax.Relu(), stax.Dense(1)]
  temperature = 0.2
  lam = temperature
  drift_times = np.array([0.0, 1.0, 20.0]) / lam
  rec = drift.frozen_readout_ensemble(
    layers,
    X,
    Y,
    temperature=temperature,
    learning_rate=0.02,
    equilibration_time=4 / lam,
    drift_times=drift_times,
    n_members=64,
    width=128,
    x_test=X_TEST,
  )
  chex.assert_shape(rec.test, (64, 3, 3, 1))
  theory = np.asarray(
    drift.frozen_readout_mean(layers, X, Y, temperature=temperature, drift_times=drift_times, x_test=X_TEST)
  )
  mean = rec.test.mean(0)
  se = rec.test.std(0, ddof=1) / math.sqrt(rec.test.shape[0])
  assert np.all(np.abs(mean - theory) <= 4 * se + 0.05), (mean[..., 0], theory[..., 0], se[..., 0])
  assert np.max(np.abs(theory[0] - theory[-1])) > 0.2  # the drift changes the prediction measurably


def test_frozen_readout_ensemble_refuses_an_unstable_learning_rate():
  """learning_rate = 5 used to return all-zero outputs; it is refused with η λ_max(Θ0) before training."""
  layers = [stax.Dense(16, W_std=1.0), stax.Relu(), stax.Dense(1)]
  with pytest.raises(ValueError, match=r'η = 5 is unstable: η λ_max\(Θ0\) = .* >= 1'):
    drift.frozen_readout_ensemble(
      layers,
      X,
      Y,
      temperature=0.2,
      learning_rate=5.0,
      equilibration_time=50.0,
      drift_times=[0.0, 1.0],
      n_members=2,
      width=16,
    )
