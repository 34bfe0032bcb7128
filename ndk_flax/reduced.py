"""Reduced small-temperature equations of Langevin learning in slow time τ = λt (docs/theory.md §5).

For T → 0 the two learning phases separate. In the gradient-driven phase (t = O(1)) the mean follows NTK gradient
flow and ends on the NTK interpolant; in the diffusive phase (t = O(1/λ), λ = T/σ²) the training error stays O(T)
and the test prediction moves from the NTK(σ0²) interpolant to the noise-free NNGP(σ²) interpolant. Writing
Y − f̄(X, t) = λ ε(τ) with τ = λt, the leading order in T of the Volterra equation of docs/theory.md §4 is

    Y = R(τ, 0, X, X) Θ0⁻¹ Y + ∫_0^τ R(τ, τ', X, X) ε(τ') dτ'           (first kind in ε)
    f̄(x*, τ) = R(τ, 0, x*, X) Θ0⁻¹ Y + ∫_0^τ R(τ, τ', x*, X) ε(τ') dτ'

with Θ0 = R(0, 0, X, X) and the kernels at the real times τ/λ. The first term is the whole gradient-driven phase
(∫_0^∞ R(t, s) e^{−Θ0 s} Y ds → R(t, 0) Θ0⁻¹ Y when R does not move on the scale 1/eig Θ0). The result does not
depend on T at fixed τ; the full solution (``ndk_flax.predict``) differs from it by O(T). Ends: the NTK interpolant
Θ0(x*, X) Θ0⁻¹ Y at τ = 0 and the noise-free NNGP interpolant K(x*, X) K⁻¹ Y at τ = ∞ (K the equilibrium NNGP,
prior variances σ²), where also λ ε → T K⁻¹ Y.

The first-kind equation is solved with the midpoint rule (ε at interval midpoints, the equation collocated at the
nodes: a stable second-order method for first-kind Volterra equations with R(τ, τ) invertible) on a uniform τ grid;
requested τ off the grid get a last, partial interval collocated at τ itself. The same solve with twice the step
(as many steps, so one compiled solver serves both) gives the error estimate.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ndk_flax import _validation as V
from ndk_flax import resources

DEFAULT_MAX_STEP = 0.05
"""Default step of the fine τ grid (the kernels move on the scale Δτ ~ 1)."""
DEFAULT_MAX_KERNEL_PAIRS = 10**7
"""Default cap on the kernel time pairs of one reduced solve (≈ 2 (τ_max/max_step)²): larger requests are refused."""


class ReducedSolution(NamedTuple):
  """Leading-order solution of the reduced small-T equations.

  Attributes:
    taus: (n_τ,) the requested slow times τ = λt (``inf`` allowed last).
    times: (n_τ,) the real times t = τ/λ at the given temperature.
    rate: λ, the relaxation rate defining τ (the slowest one, T/max σ², for a layer).
    mean: (n_τ, n, out) f̄(x*, τ) at the test inputs to leading order in T; without ``x_test``, f̄(X, τ) = Y − λ ε(τ)
      on the training inputs (first order in T).
    residual: (n_τ, P, out) the training residual Y − f̄(X, t) = λ ε(τ) (first order in T).
    error_estimate: max |fine − coarse| / (3 max |fine|) over f̄ and over ε, for the grid and the grid of twice its
      step: the estimated relative error of the returned (fine) solution, second order in the step; 0 if no
      finite τ was asked.

  Examples:
    >>> import numpy as np
    >>> from ndk_flax.reduced import ReducedSolution
    >>> taus = np.array([0.0, 1.0, np.inf])
    >>> y, lam_eps = np.ones((1, 4, 1)), np.full((3, 4, 1), 0.01)
    >>> sol = ReducedSolution(taus, taus / 0.5, 0.5, y - lam_eps, lam_eps, 0.0)  # on X: f̄(X, τ) = Y − λε(τ)
    >>> sol.times.tolist(), sol.mean.shape
    ([0.0, 2.0, inf], (3, 4, 1))
  """

  taus: np.ndarray
  times: np.ndarray
  rate: float
  mean: jax.Array
  residual: jax.Array
  error_estimate: float


NDKFn = Callable[..., Any]
_SINGULAR = 1e-12
"""Θ0 counts as singular when its smallest eigenvalue is below this fraction of its largest."""


def _ndk_and_rate(layer_or_ndk_fn, temperature: float, relaxation_rate) -> tuple[NDKFn, float]:
  if hasattr(layer_or_ndk_fn, 'ndk_fn'):
    ndk_fn = layer_or_ndk_fn.ndk_fn
    if relaxation_rate is None:
      relaxation_rate = min(layer_or_ndk_fn.relaxation_rates(temperature))
  elif callable(layer_or_ndk_fn):
    ndk_fn = layer_or_ndk_fn
    if relaxation_rate is None:
      raise ValueError('`relaxation_rate` (λ defining τ = λt, e.g. T/σ²) must be given with a bare `ndk_fn`.')
  else:
    raise TypeError(
      '`layer_or_ndk_fn` must be an NDKLayer (with an `ndk_fn` method) or a callable '
      f'ndk_fn(x1, x2, t1, t2, *, temperature), got {type(layer_or_ndk_fn).__name__}.'
    )
  return ndk_fn, V.positive('relaxation_rate', relaxation_rate)


_ROW_BUDGET = 2**22
"""Kernel elements (rows × columns × n1 × P) per ``ndk_fn`` call."""
_SHARED_SOLVE_ELEMENTS = 2**24
"""Up to this many kernel elements, the solve's rows are computed on X ∪ x* (one kernel compilation, not two)."""


class _Grid(NamedTuple):
  """Uniform τ grid with step h, N steps (nodes nh, midpoints (j + ½)h), and the requested finite τ's partial
  last intervals: start node k_q, length δ_q = τ_q − k_q h and midpoint m*_q. ``cols`` are the kernel columns
  [0, midpoints…, m*…, ∞] shared by every kernel row."""

  h: float
  n_steps: int
  starts: np.ndarray
  lengths: np.ndarray
  cols: np.ndarray


def _make_grid(top: float, n_steps: int, h: float, finite: np.ndarray) -> _Grid:
  k = np.floor(finite / h)
  k = np.clip(np.where(finite - k * h < 0.5 * h, k - 1, k), 0, n_steps - 1)
  lengths = finite - k * h
  mids = h * (np.arange(n_steps) + 0.5)
  cols = np.concatenate([[0.0], mids, k * h + 0.5 * lengths, [np.inf]])
  return _Grid(h, n_steps, k.astype(np.int64), lengths, cols)


class _Kernels(NamedTuple):
  """Calls ``ndk_fn`` in blocks of ``chunk`` rows against fixed columns, so that every call has one shape (one
  compilation of the network's kernel per x1); returns R(τ_rows/λ, cols/λ, x1, X) and C at (∞, ∞)."""

  ndk_fn: NDKFn
  temperature: float
  rate: float
  x: jax.Array
  chunk: int

  def rows(self, x1, taus: np.ndarray, cols: np.ndarray):
    """Yields (first row index, ndk block (chunk, len(cols), n1, P), nngp block) for ``taus`` (padded)."""
    for first in range(0, taus.size, self.chunk):
      block = taus[first : first + self.chunk]
      block = np.concatenate([block, np.full(self.chunk - block.size, block[-1])])
      out = self.ndk_fn(x1, self.x, block / self.rate, cols / self.rate, temperature=self.temperature)
      yield first, out.ndk, out.nngp


@jax.jit
def _solve_block(eps, block, first, h, y, theta_inv_y):
  """Midpoint rule for the node rows n = first … first + chunk − 1 of ``block`` (R(nh, cols, X, X)): solves
  h R(τ_n, m_{n−1}) ε_{n−1} = Y − R(τ_n, 0)Θ0⁻¹Y − Σ_{j<n−1} h R(τ_n, m_j) ε_j in turn (n = 0 and padding rows
  beyond N are skipped)."""
  n_steps = eps.shape[0]

  def body(i, eps):
    n = first + i
    row = block[i]
    mids = row[1 : n_steps + 1]
    history = h * jnp.einsum('jab,jbo->ao', mids, eps)  # ε_j = 0 for j ≥ n − 1 (not solved yet)
    j = jnp.clip(n - 1, 0, n_steps - 1)
    new = jnp.linalg.solve(h * mids[j], y - row[0] @ theta_inv_y - history)
    return jnp.where((n >= 1) & (n <= n_steps), eps.at[j].set(new), eps)

  return lax.fori_loop(0, block.shape[0], body, eps)


@jax.jit
def _evaluate_block(eps, block, h, starts, lengths, m_cols, taus, y, theta_inv_y):
  """(f̄(x1, τ), ε(τ)) for a block of requested finite τ (rows R(τ_q, cols, x1, X), x1 = X ∪ x*).

  The whole intervals below τ_{k_q} keep their midpoint values ε_j; the last, partial interval gets its own value
  ε*, solved from the equation collocated at τ_q itself, δ R(τ_q, m*_q) ε* = Y − R(τ_q, 0)Θ0⁻¹Y − Σ_{j<k_q} h
  R(τ_q, m_j) ε_j, so the training equation holds exactly at every requested τ; then f̄(x1, τ_q) = R(τ_q, 0)Θ0⁻¹Y +
  Σ_{j<k_q} h R(τ_q, m_j) ε_j + δ R(τ_q, m*_q) ε*. ε(τ) is ε* moved from m* to τ with the slope of the grid values.
  """
  n_steps, p = eps.shape[0], y.shape[0]

  def one(row, k, length, m_col, tau):
    start = row[0] @ theta_inv_y
    whole = jnp.einsum('j,jab,jbo->ao', jnp.where(jnp.arange(n_steps) < k, h, 0.0), row[1 : n_steps + 1], eps)
    partial = row[m_col]
    safe = jnp.where(length > 0, length, 1.0)
    eps_star = jnp.where(length > 0, jnp.linalg.solve(safe * partial[:p], y - start[:p] - whole[:p]), eps[0])
    i = jnp.clip(jnp.floor(tau / h - 0.5), 0, n_steps - 2).astype(jnp.int32)
    slope = (eps[i + 1] - eps[i]) / h
    m_star = k * h + 0.5 * length
    return (
      start + whole + length * partial @ eps_star,
      eps_star + (tau - jnp.where(length > 0, m_star, 0.5 * h)) * slope,
    )

  return jax.vmap(one)(block, starts, lengths, m_cols, taus)


class _Prepared(NamedTuple):
  ndk_fn: NDKFn
  temperature: float
  rate: float
  x: jax.Array
  y: jax.Array
  x_test: Optional[jax.Array]


def _prepare(layer_or_ndk_fn, x_train, y_train, x_test, temperature, relaxation_rate) -> _Prepared:
  """Validated inputs and λ."""
  temperature = V.temperature(temperature, allow_zero=False, hint=' (τ = λt with λ = T/σ²)')
  ndk_fn, rate = _ndk_and_rate(layer_or_ndk_fn, temperature, relaxation_rate)
  x = V.batched_array('x_train', x_train, 2)
  y = V.batched_array('y_train', y_train, 2).astype(x.dtype)
  if y.ndim != 2 or y.shape[0] != x.shape[0]:
    raise ValueError(
      f'`y_train` must have shape (P, out) with P = {x.shape[0]} (the rows of `x_train`), got {y.shape}.'
    )
  if x_test is not None:
    x_test = V.inputs_like('x_test', x_test, x)
  return _Prepared(ndk_fn, temperature, rate, x, y, x_test)


def reduced_small_temperature_mean(
  layer_or_ndk_fn: Union[Any, NDKFn],
  x_train,
  y_train,
  *,
  temperature: float,
  taus,
  x_test=None,
  relaxation_rate: Optional[float] = None,
  max_step: float = DEFAULT_MAX_STEP,
  max_kernel_pairs: int = DEFAULT_MAX_KERNEL_PAIRS,
) -> ReducedSolution:
  """Mean predictor of Langevin learning to leading order in T, in slow time τ = λt (docs/theory.md §5).

  Solves Y = R(τ, 0, X, X) Θ0⁻¹Y + ∫_0^τ R(τ, τ', X, X) ε(τ') dτ' for the scaled training residual ε and returns
  f̄(x*, τ) = R(τ, 0, x*, X) Θ0⁻¹Y + ∫_0^τ R(τ, τ', x*, X) ε(τ') dτ' (kernels at real times τ/λ). Useful at small T,
  where the full solver (``ndk_flax.predict.langevin_mse_ensemble``) must resolve both 1/eig Θ0 and 1/λ; the two
  agree up to O(T) at fixed τ (checked in the tests). τ = 0 gives the NTK interpolant Θ0(x*, X) Θ0⁻¹Y, τ = ∞ the
  noise-free NNGP interpolant K(x*, X) K⁻¹Y (closed forms).

  Accuracy: midpoint rule on a uniform grid of step ≤ ``max_step`` up to the largest finite τ (second order;
  ``error_estimate`` from the same solve at twice the step). Cost: about 2 (τ_max/max_step)² kernel evaluations
  of size P × P, plus (P + n_test) × P per grid step and requested τ.

  Args:
    layer_or_ndk_fn: an ``ndk_flax.stax`` layer, or ``ndk_fn(x1, x2, t1, t2, *, temperature)`` returning ``.ndk`` of
      shape (len(t1), len(t2), n1, n2) for 1-D times (then ``relaxation_rate`` is required).
    x_train: (P, ...) training inputs; y_train: (P, out) targets.
    temperature: T > 0; it only converts τ to real times (t = τ/λ) — the result does not depend on it.
    taus: strictly increasing slow times τ ≥ 0 (``inf`` allowed last).
    x_test: (n, ...) inputs for ``mean``; None gives f̄(X) = Y − λε on the training inputs.
    relaxation_rate: λ defining τ (default for a layer: min of ``layer.relaxation_rates(T)`` = T/max σ²).
    max_step: largest τ step of the fine grid (> 0).
    max_kernel_pairs: cap on the estimated kernel time pairs; a larger request (large τ, tiny ``max_step``) is
      refused up front with its estimate.

  Returns:
    :class:`ReducedSolution`.

  Examples:
    One linear layer with σ0 ≠ σ (weights σ0_W = σ_W = 1, biases σ0_b = 1, σ_b = 2), so the two ends differ: τ = 0
    gives the NTK interpolant Θ0(x*, X) Θ0⁻¹Y and τ = ∞ the NNGP interpolant K(x*, X) K⁻¹Y, with λ ε(∞) = T K⁻¹Y.

    >>> import numpy as np
    >>> from ndk_flax import stax
    >>> from ndk_flax.reduced import reduced_small_temperature_mean
    >>> net = stax.serial(stax.Dense(1, W_std=1.0, b_std=1.0, W_prior_std=1.0, b_prior_std=2.0))
    >>> x, y, x_test = 2.0 * np.eye(4), np.array([[1.0], [0.0], [-1.0], [2.0]]), np.array([[1.6, 1.2, 0.0, 0.0]])
    >>> sol = reduced_small_temperature_mean(
    ...   net, x, y, temperature=0.01, taus=[0.0, 1.0, np.inf], x_test=x_test, max_step=0.5
    ... )
    >>> round(sol.rate, 6), sol.times.round(3).tolist()  # λ = T / max σ² and t = τ/λ
    (0.0025, [0.0, 400.0, inf])
    >>> np.asarray(sol.mean, float).ravel().round(4).tolist()  # f̄(x*, τ) moves from the NTK to the NNGP interpolant
    [0.64, 0.6123, 0.6118]
    >>> both = np.concatenate([x, x_test])
    >>> theta0 = np.asarray(net.ndk_fn(both, x, 0.0, 0.0, temperature=0.01).ndk)
    >>> k = np.asarray(net.ndk_fn(both, x, np.inf, np.inf, temperature=0.01).nngp)
    >>> bool(np.allclose(sol.mean[0], theta0[4:] @ np.linalg.solve(theta0[:4], y), atol=1e-5))
    True
    >>> bool(np.allclose(sol.mean[-1], k[4:] @ np.linalg.solve(k[:4], y), atol=1e-5))
    True
    >>> bool(np.allclose(sol.residual[-1], 0.01 * np.linalg.solve(k[:4], y), atol=1e-6))
    True
  """
  prep = _prepare(layer_or_ndk_fn, x_train, y_train, x_test, temperature, relaxation_rate)
  taus = V.increasing_times('taus', taus)[0]
  return _reduced(prep, taus, V.positive('max_step', max_step), V.positive('max_kernel_pairs', max_kernel_pairs))[0]


class _Extras(NamedTuple):
  theta0: jax.Array  # Θ0 = R(0, 0, X, X)
  theta0_rows: Optional[jax.Array]  # R(0, 0, X ∪ x*, X) when τ = 0 was requested


def _theta_inv_y(theta0, y):
  evals = jnp.linalg.eigvalsh(theta0)
  if not float(evals[0]) > _SINGULAR * float(evals[-1]):
    raise ValueError(
      f'Θ0 = R(0, 0, X, X) is singular on `x_train` (eigenvalues {float(evals[0]):.3g} … '
      f'{float(evals[-1]):.3g}): the NTK interpolant is not defined (duplicate inputs?).'
    )
  return jnp.linalg.solve(theta0, y)


def _reduced(
  prep: _Prepared, taus: np.ndarray, max_step: float, max_kernel_pairs: float
) -> tuple[ReducedSolution, _Extras]:
  """Solve on the grid of step h and on the grid of step 2h (same number of steps, so the same kernel shapes and
  compiled functions), evaluate at the requested τ; the fine solution is returned, their difference estimates its
  error."""
  _, temperature, rate, x, y, x_test = prep
  x_all = x if x_test is None else jnp.concatenate([x, x_test])
  p, n_all = x.shape[0], x_all.shape[0]
  finite = taus[np.isfinite(taus)]
  has_inf = finite.size < taus.size
  top = max(float(finite[-1]) if finite.size else 0.0, 2 * max_step)
  n_steps = 2 * max(2, math.ceil(top / max_step / 2))
  resources.require_work(
    f'The reduced equations up to τ = {top:g} with step {max_step:g}',
    2 * (n_steps + 1) * (n_steps + finite.size),
    unit='kernel time pairs',
    cap=max_kernel_pairs,
    cap_name='max_kernel_pairs',
  )
  h = top / n_steps
  grids = [_make_grid(top, n_steps, h, finite), _make_grid(2 * top, n_steps, 2 * h, finite)]
  eval_taus = np.concatenate([finite, [np.inf]]) if has_inf else finite
  n_cols = grids[0].cols.size
  chunk = int(max(1, min(max(n_steps + 1, eval_taus.size), _ROW_BUDGET // (n_cols * n_all * p))))
  kernels = _Kernels(prep.ndk_fn, temperature, rate, x, chunk)
  # The solve only needs rows on X; rows on X ∪ x* reuse the evaluation's compiled kernel when that is cheap.
  x_solve = x_all if (n_steps + 1) * n_cols * n_all * p <= _SHARED_SOLVE_ELEMENTS else x
  theta0 = theta_inv_y = theta0_rows = k_inf = None
  solutions = []
  for grid in grids:
    eps = jnp.zeros((n_steps,) + y.shape, y.dtype)
    for first, ndk, _ in kernels.rows(x_solve, grid.h * np.arange(n_steps + 1), grid.cols):
      ndk = ndk[:, :, :p]
      if theta0 is None:
        theta0 = ndk[0, 0]
        theta_inv_y = _theta_inv_y(theta0, y)
      eps = _solve_block(eps, ndk, first, grid.h, y, theta_inv_y)
    means, epss = [], []
    for first, ndk, nngp in kernels.rows(x_all, eval_taus, grid.cols):
      rows = np.arange(first, first + chunk)
      q = np.minimum(rows, max(finite.size - 1, 0))
      if finite.size:
        mean, e = _evaluate_block(
          eps, ndk, grid.h, grid.starts[q], grid.lengths[q], 1 + n_steps + q, finite[q], y, theta_inv_y
        )
        keep = rows < finite.size
        means.append(mean[keep])
        epss.append(e[keep])
      if has_inf and first <= eval_taus.size - 1 < first + chunk:
        k_inf = nngp[eval_taus.size - 1 - first, -1]
      if finite.size and finite[0] == 0 and first == 0:
        theta0_rows = ndk[0, 0]
    solutions.append((jnp.concatenate(means), jnp.concatenate(epss)) if finite.size else None)
  mean_out, residuals = [], []
  error = 0.0
  if finite.size:
    (mean, eps), (mean_c, eps_c) = solutions
    error = max(float(jnp.max(jnp.abs(f - c)) / jnp.max(jnp.abs(f))) for f, c in ((mean, mean_c), (eps, eps_c))) / 3
    mean_out.append(y[None] - rate * eps if x_test is None else mean[:, p:])
    residuals.append(rate * eps)
  if has_inf:
    k_inv_y = jnp.linalg.solve(k_inf[:p], y)
    mean_out.append((y - temperature * k_inv_y)[None] if x_test is None else (k_inf[p:] @ k_inv_y)[None])
    residuals.append((temperature * k_inv_y)[None])
  solution = ReducedSolution(taus, taus / rate, rate, jnp.concatenate(mean_out), jnp.concatenate(residuals), error)
  return solution, _Extras(theta0, theta0_rows)


class CompositeSolution(NamedTuple):
  """Small-T mean over both phases: ``times`` (n_t,), ``train`` = f̄(X, t) (n_t, P, out), ``test`` = f̄(x*, t)
  (n_t, n, out) or None without ``x_test``.

  Examples:
    >>> import numpy as np
    >>> from ndk_flax.reduced import CompositeSolution
    >>> sol = CompositeSolution(np.array([0.0, np.inf]), np.zeros((2, 4, 1)), None)
    >>> sol.train.shape, sol.test is None
    ((2, 4, 1), True)
  """

  times: np.ndarray
  train: jax.Array
  test: Optional[jax.Array]


def composite_small_temperature_mean(
  layer_or_ndk_fn: Union[Any, NDKFn],
  x_train,
  y_train,
  *,
  temperature: float,
  times,
  x_test=None,
  relaxation_rate: Optional[float] = None,
  max_step: float = DEFAULT_MAX_STEP,
  max_kernel_pairs: int = DEFAULT_MAX_KERNEL_PAIRS,
) -> CompositeSolution:
  """Small-T mean predictor over both learning phases at once (matched asymptotics of docs/theory.md §5).

  The gradient-driven phase (NTK gradient flow with Θ0, times t = O(1)) and the diffusive phase (the reduced
  equations in τ = λt) overlap on the NTK interpolant, so

      f̄(x*, t) ≈ Θ0(x*, X) Θ0⁻¹ (I − e^{−Θ0 t}) Y + [f̄_red(x*, λt) − f̄_red(x*, 0)]
      Y − f̄(X, t) ≈ e^{−Θ0 t} Y + λ ε(λt)

  with an O(T) error uniformly in t (the training residual: O(T) relative to its size in the diffusive phase, where
  it is O(T) itself). The reduced part does not depend on T at fixed τ, so it is cheap to redo for many T (the
  compiled solver is reused). Checked against the full solver in the tests.

  Args:
    times: strictly increasing real times t ≥ 0 (``inf`` allowed last: the noise-free NNGP interpolant, and
      T K⁻¹Y for the residual).
    Others: as :func:`reduced_small_temperature_mean`.

  Returns:
    :class:`CompositeSolution` (training and, with ``x_test``, test means).

  Examples:
    The network of :func:`reduced_small_temperature_mean`'s example (λ = T/4): the mean starts at f̄ = 0 on x*,
    the training mean approaches Y − T K⁻¹Y as t → ∞, and at t = ∞ the test mean is K(x*, X) K⁻¹Y.

    >>> import numpy as np
    >>> from ndk_flax import stax
    >>> from ndk_flax.reduced import composite_small_temperature_mean
    >>> net = stax.serial(stax.Dense(1, W_std=1.0, b_std=1.0, W_prior_std=1.0, b_prior_std=2.0))
    >>> x, y, x_test = 2.0 * np.eye(4), np.array([[1.0], [0.0], [-1.0], [2.0]]), np.array([[1.6, 1.2, 0.0, 0.0]])
    >>> sol = composite_small_temperature_mean(
    ...   net, x, y, temperature=0.01, times=[0.0, 400.0, np.inf], x_test=x_test, max_step=0.5
    ... )
    >>> sol.train.shape, sol.test.shape
    ((3, 4, 1), (3, 1, 1))
    >>> np.asarray(sol.test, float).ravel().round(4).tolist()
    [0.0, 0.6123, 0.6118]
    >>> k = np.asarray(net.ndk_fn(np.concatenate([x, x_test]), x, np.inf, np.inf, temperature=0.01).nngp)
    >>> bool(np.allclose(sol.train[-1], y - 0.01 * np.linalg.solve(k[:4], y), atol=1e-5))
    True
    >>> bool(np.allclose(sol.test[-1], k[4:] @ np.linalg.solve(k[:4], y), atol=1e-5))
    True
  """
  prep = _prepare(layer_or_ndk_fn, x_train, y_train, x_test, temperature, relaxation_rate)
  times = V.increasing_times('times', times)[0]
  taus = prep.rate * times if times[0] == 0 else np.concatenate([[0.0], prep.rate * times])
  red, extras = _reduced(prep, taus, V.positive('max_step', max_step), V.positive('max_kernel_pairs', max_kernel_pairs))
  offset = taus.size - times.size
  y, p = prep.y, prep.x.shape[0]
  evals, evecs = jnp.linalg.eigh(extras.theta0)
  t = jnp.asarray(times, y.dtype)[:, None]
  decay = jnp.where(jnp.isinf(t), 0.0, jnp.exp(-evals[None] * jnp.where(jnp.isinf(t), 0.0, t)))  # (n_t, P)
  train = y[None] - jnp.einsum('pi,ti,qi,qo->tpo', evecs, decay, evecs, y) - red.residual[offset:]
  if prep.x_test is None:
    return CompositeSolution(times, train, None)
  theta_tx = extras.theta0_rows[p:]
  learnt = jnp.einsum('mp,pi,ti,qi,qo->tmo', theta_tx, evecs, (1 - decay) / evals[None], evecs, y)
  return CompositeSolution(times, train, learnt + red.mean[offset:] - red.mean[0])
