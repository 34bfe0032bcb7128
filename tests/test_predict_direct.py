"""The predictor's fast path (kernel lattice, cubic interpolation, ring buffer, Richardson extrapolation) against a
direct solver written here in NumPy: the product-trapezoid discretisation with the exact kernels on a fine grid
(docs/theory.md §4), at P = 48 for a stationary (σ = σ0) and a non-stationary (σ = 0.8 σ0) erf network, mean and
covariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ndk_flax import predict, stax

P, N_TEST, D, TEMPERATURE = 48, 4, 4, 0.05


def _problem(prior_std):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(P + N_TEST, D))
  x *= np.sqrt(D) / np.linalg.norm(x, axis=1, keepdims=True)
  y = np.sign(x[:P, :1]) + 0.3 * x[:P, 1:2]
  layer = stax.serial(
    stax.Dense(8, W_std=1.0, W_prior_std=prior_std), stax.Erf(), stax.Dense(1, W_std=1.0, W_prior_std=prior_std)
  )
  return layer, x[:P], y, x[P:]


def _kernel_rows(layer, x1, grid):
  """t ↦ (C, R)(t, grid, x1, X), compiled once per grid."""
  fn = jax.jit(lambda x1, t: layer.ndk_fn(x1, x1[:P], t[None], grid, temperature=TEMPERATURE))

  def rows(t):
    k = fn(x1, jnp.asarray(t))
    return np.asarray(k.nngp[0], np.float64), np.asarray(k.ndk[0], np.float64)

  return rows


def _weights(grid, i):
  """Trapezoid weights of ∫_0^{t_i} on nodes t_0 … t_i."""
  w = np.zeros(i + 1)
  h = np.diff(grid[: i + 1])
  w[:-1] += h / 2
  w[1:] += h / 2
  return w


def _direct_mean(layer, x, y, x_test, grid):
  """g_i = Y − f̄(X, t_i) from (I + w_ii R_ii) g_i = Y − Σ_{j<i} w_ij R_ij g_j, and
  f̄(x*, t_i) = Σ_{j≤i} w_ij R(t_i, t_j, x*, X) g_j."""
  x1 = np.concatenate([x, x_test])
  rows = _kernel_rows(layer, x1, grid)
  g = np.zeros((len(grid), P, 1))
  g[0] = y
  test = np.zeros((len(grid), N_TEST, 1))
  for i in range(1, len(grid)):
    r = rows(grid[i])[1][: i + 1]
    w = _weights(grid, i)
    history = np.einsum('j,jmp,jpo->mo', w[:i], r[:i], g[:i])
    g[i] = np.linalg.solve(np.eye(P) + w[i] * r[i, :P], y - history[:P])
    test[i] = history[P:] + w[i] * r[i, P:] @ g[i]
  return y - g, test


def _direct_covariance(layer, x, x_test, grid):
  """Cov f(x*, t_i) of δf(x*) = f_free(x*) − B A⁻¹ f_free(X) on the grid (A = I + trapezoid 𝓡, B its x* rows)."""
  n = len(grid)
  x1 = np.concatenate([x, x_test])
  rows = _kernel_rows(layer, x1, grid)
  a = np.eye(n * P)
  b = np.zeros((n, N_TEST, n * P))
  c_xx = np.zeros((n * P, n * P))
  c_tx = np.zeros((n, N_TEST, n * P))
  c_tt = np.zeros((n, N_TEST, N_TEST))
  for i in range(n):
    c, r = rows(grid[i])
    w = _weights(grid, i) if i else np.zeros(1)
    for j in range(i + 1):
      a[i * P : (i + 1) * P, j * P : (j + 1) * P] += w[j] * r[j, :P]
      b[i, :, j * P : (j + 1) * P] = w[j] * r[j, P:]
    c_xx[i * P : (i + 1) * P] = c[:, :P].transpose(1, 0, 2).reshape(P, n * P)
    c_tx[i] = c[:, P:].transpose(1, 0, 2).reshape(N_TEST, n * P)
    full = layer.ndk_fn(x_test, None, np.array([grid[i]]), np.array([grid[i]]), temperature=TEMPERATURE).nngp
    c_tt[i] = np.asarray(full[0, 0], np.float64)
  q = np.linalg.solve(a.T, np.transpose(b, (2, 0, 1)).reshape(n * P, -1)).reshape(n * P, n, N_TEST).transpose(1, 2, 0)
  cross = np.einsum('imk,ink->imn', q, c_tx)
  return c_tt - cross - np.swapaxes(cross, 1, 2) + np.einsum('imk,kl,inl->imn', q, c_xx, q)


@pytest.mark.slow
@pytest.mark.parametrize('prior_std', [1.0, 0.8], ids=['stationary', 'non-stationary'])
def test_fast_path_matches_direct_fine_grid_solver(prior_std):
  layer, x, y, x_test = _problem(prior_std)
  predictor = predict.langevin_mse_ensemble(layer, x, y, temperature=TEMPERATURE)
  t_max = 1.5 * predictor.time_scales.diffusive
  coarse = predict.time_grid(t_max, first_step=0.1 * predictor.time_scales.gradient, growth=0.15, max_step=t_max / 40)
  fine = predict.grid.bisect(coarse)
  requested = coarse[1::6]
  # Richardson extrapolation of the direct solutions on the two grids: the reference (error ≪ rtol).
  (train_c, test_c), (train_f, test_f) = (_direct_mean(layer, x, y, x_test, g) for g in (coarse, fine))
  ref_train = (train_f[::2] + (train_f[::2] - train_c) / 3)[1::6]
  ref_test = (test_f[::2] + (test_f[::2] - test_c) / 3)[1::6]
  bound = predict.DEFAULT_RTOL * np.abs(y).max()
  assert np.abs(train_f[::2] - train_c).max() / 3 < bound / 2  # even the fine solution alone is within the bound
  out = predictor.predict(requested, x_test)
  assert out.stats.mean.stationary == (prior_std == 1.0)
  np.testing.assert_allclose(out.mean, ref_test, rtol=0, atol=bound)
  np.testing.assert_allclose(predictor(requested), ref_train, rtol=0, atol=bound)
  # Covariance: the same discretisation on a given grid, with exact kernels, must agree to rounding.
  cov_grid = coarse[::3]
  cov_times = cov_grid[2::4]
  cov_predictor = predict.langevin_mse_ensemble(layer, x, y, temperature=TEMPERATURE, cov_grid=cov_grid)
  cov = cov_predictor(cov_times, x_test, compute_cov=True).covariance
  direct = _direct_covariance(layer, x, x_test, cov_grid)[2::4]
  np.testing.assert_allclose(cov, direct, rtol=0, atol=1e-9 * np.abs(direct).max())
