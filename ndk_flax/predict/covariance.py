"""The covariance at T > 0 and finite t (docs/theory.md §4): δf(X) = (I + 𝓡)^{-1} f_free(X), exact for the
product-trapezoid discretisation on a covariance grid; requested times are Nyström rows on that grid."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ndk_flax import resources
from ndk_flax.predict.grid import pad, trapezoid_row
from ndk_flax.predict.kernels import KernelAccess, require_finite

__all__ = ['CovarianceSolver', 'closed_form_bytes', 'covariance_bytes']


def covariance_bytes(n_grid: int, p: int, n_test: Optional[int], n_times: int, itemsize: int, max_elements: int) -> int:
  """Peak bytes of the T > 0 covariance on ``n_grid`` grid times: A' and C' (two dense (n_grid·P)² matrices), the
  per-time rows (6 n_grid·P·m), the per-time m × m blocks (6 m²), the result (n_times·n²) and kernel chunks,
  m = P + n_test (n = n_test, or P without test points).

  Examples:
    Dominated by the two (n_grid·P)² matrices: 1000 grid times, P = 10, float64:

    >>> need = covariance_bytes(1000, 10, None, n_times=1, itemsize=8, max_elements=0)
    >>> need, round(need / (2 * 8 * (1000 * 10) ** 2), 3)
    (1604806400, 1.003)
  """
  m = p + (n_test or 0)
  n = n_test or p
  size = n_grid * p
  return itemsize * (2 * size**2 + 6 * size * m + 6 * m * m + 2 * n_times * n * n + 8 * max_elements)


def closed_form_bytes(p: int, n_test: Optional[int], n_times: int, itemsize: int) -> int:
  """Peak bytes of a closed-form covariance (T = 0, t = 0, t = ∞): the n × n kernel blocks and the result.

  Examples:
    >>> closed_form_bytes(3, None, n_times=2, itemsize=8) == 8 * (4 * 6 * 6 + 2 * 2 * 3 * 3 + 2 * 2 * 3 * 3)
    True
    >>> closed_form_bytes(3, 5, n_times=1, itemsize=4)  # 4 · (4 · 8² + 2 · 5² + 2 · 5 · 3)
    1344
  """
  n = n_test or p
  return itemsize * (4 * (p + n) * (p + n) + 2 * n_times * n * n + 2 * n_times * n * p)


@dataclasses.dataclass(frozen=True, eq=False)
class CovarianceSolver:
  """Covariance of f(x, t) at finite times t > 0 for one training problem (stateless, see :class:`MeanSolver`).

  Examples:
    One raw Dense layer on x = I₃ (σ0_W = 1, σ_W = 2, T = 1/2): each output is an OU process
    df = −(f − y)/3 dt − λ f dt + √(2T/3) dB, λ = T/σ² = 1/8, so its variance is
    v(t) = e^{−2at}/3 + (T/3)(1 − e^{−2at})/a with a = 1/3 + λ. The trapezoid covariance on a grid of step 0.05
    agrees to second order in the step:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from ndk_flax import stax
    >>> from ndk_flax.predict.kernels import KernelAccess
    >>> x, y = jnp.eye(3), jnp.array([[1.0], [-1.0], [0.5]])
    >>> access = KernelAccess(stax.Dense(1, W_prior_std=2.0).ndk_fn, x, y, 0.5, 2**20)
    >>> t = np.array([1.0, 2.0])
    >>> cov = CovarianceSolver(access, None)(np.linspace(0.0, 2.0, 41)[:-1], t, None)  # grid nodes below t_max
    >>> a = 1 / 3 + 0.125
    >>> v = np.exp(-2 * a * t) / 3 + (0.5 / 3) * (1 - np.exp(-2 * a * t)) / a
    >>> cov.shape, bool(np.allclose(cov, v[:, None, None] * np.eye(3), atol=1e-4))
    ((2, 3, 3), True)
  """

  access: KernelAccess
  memory_limit: Optional[float]

  def __post_init__(self):
    object.__setattr__(self, '_assemble', jax.jit(self._assemble_impl))
    object.__setattr__(self, '_rows', jax.jit(self._rows_impl))

  def check_memory(self, n_grid: int, x_test, n_times: int, t_max: float) -> None:
    """Raise MemoryError, before any work, when the covariance on n_grid grid times does not fit."""
    access = self.access
    p, itemsize = access.p, access.dtype.itemsize
    n_test = None if x_test is None else x_test.shape[0]
    need = covariance_bytes(n_grid, p, n_test, n_times, itemsize, access.max_elements)
    available = resources.available_bytes() if self.memory_limit is None else self.memory_limit
    fits = int(math.sqrt(max(available / itemsize - 8 * access.max_elements, 0) / 2) / p)
    resources.require_memory(
      f'The covariance at {n_times} times of {n_test or p} points on a grid of {n_grid} times with P = {p} training '
      f'points (two dense (n_grid·P)² = ({n_grid * p})² matrices in {access.dtype.name})',
      need,
      remedy=f'pass a coarser `cov_grid` (at most ~{fits} times below t = {t_max:g}), request fewer test points or '
      'times at once, or raise `memory_limit`',
      limit=available,
    )

  def __call__(self, grid: np.ndarray, times: np.ndarray, x_test) -> jax.Array:
    """Covariance (n_t, n, n) at finite times ≤ grid[-1]·(1 + …) with the grid's nodes below t_max."""
    self.check_memory(len(grid), x_test, len(times), float(times[-1]))
    access = self.access
    grid_j = jnp.asarray(grid, access.dtype)
    a, c, d_inv = self._assemble(access.x, grid_j)
    require_finite(
      'The covariance system (R and C on the covariance grid)', a.sum() + c.sum(), f'on the grid up to t = {grid[-1]:g}'
    )
    cov = self._rows(access.x, a, c, d_inv, grid_j, jnp.asarray(times, access.dtype), x_test)
    for i in np.flatnonzero(~np.asarray(jnp.all(jnp.isfinite(cov), axis=(1, 2))))[:1]:
      raise FloatingPointError(f'The covariance is not finite at t = {times[i]:g}: check the kernel function there.')
    return cov

  def _assemble_impl(self, x: jax.Array, grid: jax.Array):
    """A' = D^{-1} A (unit block lower triangular) and C' = D^{-1} C D^{-T} on the grid, D = blockdiag(A_ii),
    A_ij = w_ij R(t_i, t_j, X, X) (j < i), A_ii = I + w_ii R(t_i, t_i, X, X), C_ij = C(t_i, t_j, X, X)."""
    access = self.access.with_inputs(x)
    n_c, p, dtype = grid.shape[0], access.p, access.dtype
    eye = jnp.eye(p, dtype=dtype)
    r_diag = lax.map(lambda t: access(x, x, t[None], t[None])[1][0, 0], grid)
    w_diag = jnp.concatenate([jnp.zeros((1,), dtype), 0.5 * jnp.diff(grid)])
    d_inv = jnp.linalg.inv(eye + w_diag[:, None, None] * r_diag)
    chunk = access.chunk(p, n_c)
    grid_p = pad(grid, chunk)
    cols = jnp.arange(n_c)

    def block_row(i):
      nngp, ndk = (k[:n_c] for k in access.row(x, x, grid[i], grid_p, chunk))
      w, _ = trapezoid_row(grid, i - 1, grid[i])
      a_row = jnp.einsum('ab,j,jbc->ajc', d_inv[i], w, ndk) + (cols == i)[None, :, None] * eye[:, None, :]
      c_row = jnp.einsum('ab,jbc,jdc->ajd', d_inv[i], nngp, d_inv)
      return a_row.reshape(p, n_c * p), c_row.reshape(p, n_c * p)

    a, c = lax.map(block_row, cols)
    return a.reshape(n_c * p, n_c * p), c.reshape(n_c * p, n_c * p), d_inv

  def _rows_impl(self, x, a, c, d_inv, grid, times, x_test):
    """Covariance at each requested time t* (a Nyström row on the grid, x1 = X or X ∪ x*).

    With B = [w_j R(t*, t_j, x1, X)]_j, D* = I + w_* R(t*, t*, X, X) and H = w_* R(t*, t*, x1, X) D*^{-1}:
    δf(x1, t*) = L f_free(x1, t*) − B' δf(X, grid), L = I − H S_X, B' = B − H B_X (S_X picks the X rows).
    With Q = B' A'^{-1}: Cov = L C(t*, t*) Lᵀ − Q D^{-1} C(grid, t*; X, x1) Lᵀ − (…)ᵀ + Q C' Qᵀ.
    """
    access = self.access.with_inputs(x)
    n_c, p, dtype = grid.shape[0], access.p, access.dtype
    x1 = x if x_test is None else jnp.concatenate([x, x_test])
    m1 = x1.shape[0]
    out = slice(0, p) if x_test is None else slice(p, m1)
    chunk = access.chunk(m1, n_c)
    grid_p = pad(grid, chunk)
    select_x = jnp.eye(m1, p, dtype=dtype).T

    def one(t_star):
      k = jnp.searchsorted(grid, t_star, side='left') - 1
      w, w_star = trapezoid_row(grid, k, t_star)
      nngp, ndk = (kk[:n_c] for kk in access.row(x1, x, t_star, grid_p, chunk))
      c_ss, r_ss = (kk[0, 0] for kk in access(x1, x1, t_star[None], t_star[None]))
      d_star = jnp.eye(p, dtype=dtype) + w_star * r_ss[:p, :p]
      h = jnp.linalg.solve(d_star.T, w_star * r_ss[out, :p].T).T
      b = jnp.einsum('j,jmp->mjp', w, ndk).reshape(m1, n_c * p)
      ell = jnp.eye(m1, dtype=dtype)[out] - h @ select_x
      q = lax.linalg.triangular_solve(a, b[out] - h @ b[:p], left_side=False, lower=True, unit_diagonal=True)
      cross = q @ jnp.einsum('jab,jmb->jam', d_inv, nngp).reshape(n_c * p, m1) @ ell.T
      return ell @ c_ss @ ell.T - cross - cross.T + q @ c @ q.T

    cov = lax.map(one, times)
    return 0.5 * (cov + jnp.swapaxes(cov, 1, 2))
