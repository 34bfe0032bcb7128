"""Time grids of the Volterra solvers and their product-trapezoid weights (docs/theory.md §5)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ndk_flax import _validation as V

__all__ = ['DEFAULT_GROWTH', 'bisect', 'interior_weights', 'pad', 'time_grid', 'trapezoid_row']

DEFAULT_GROWTH = 0.2
"""Default geometric growth of the base grid's steps (h_{k+1} = (1 + growth) h_k)."""


def time_grid(
  t_max: float, *, first_step: float, growth: float = DEFAULT_GROWTH, max_step: float = math.inf
) -> np.ndarray:
  """Grid 0 = t_0 < t_1 < … < t_n = t_max resolving both learning phases (docs/theory.md §5).

  Steps grow geometrically from h_0 ≤ ``first_step``, h_{k+1} = (1 + growth) h_k, until they reach ``max_step``,
  then stay uniform (≤ ``max_step``) up to t_max. Without the cap:

      t_k = t_max ((1 + g)^k − 1) / ((1 + g)^n − 1),   n = ⌈log(1 + g t_max / first_step) / log(1 + g)⌉.

  The grid is nearly uniform (step ≈ first_step) while t ≲ first_step/g, i.e. dense through the gradient-driven
  phase when first_step ~ 1/λ_max(Θ0), then geometric (≈ 1/log(1 + g) points per e-fold of t), so an exponential
  relaxation at any rate ρ is met with step h ≲ first_step + g/ρ around its own time t ~ 1/ρ, with O(log t_max)
  points. The cap keeps the step below the diffusive correlation time (e.g. max_step = g/λ with λ = T/σ²): at
  t ≫ 1/λ the kernels still vary on that scale in |t − s|.

  Args:
    t_max: the last time, finite and > 0.
    first_step: upper bound on the first step h_0 (> 0).
    growth: g > 0, the relative growth of consecutive steps.
    max_step: upper bound on every step (> 0, default none).

  Returns:
    float64 NumPy array of the n + 1 grid times.

  Examples:
    >>> from ndk_flax.predict import time_grid
    >>> time_grid(10.0, first_step=1.0, growth=0.5).round(2).tolist()
    [0.0, 0.76, 1.9, 3.6, 6.16, 10.0]
  """
  t_max = V.positive('t_max', t_max)
  first_step = V.positive('first_step', first_step)
  growth = V.positive('growth', growth)
  if not max_step > 0:
    raise ValueError(f'`max_step` must be > 0, got {max_step!r}.')
  log_g = math.log1p(growth)
  n = max(1, math.ceil(math.log1p(growth * t_max / first_step) / log_g))
  k = np.arange(n + 1, dtype=np.float64)
  grid = t_max * np.expm1(k * log_g) / np.expm1(n * log_g)
  if np.diff(grid).max() > max_step:
    n_geo = max(0, math.floor(math.log(max_step / first_step) / log_g)) if max_step > first_step else 0
    geo = first_step * np.expm1(np.arange(n_geo + 1) * log_g) / growth
    n_uniform = max(1, math.ceil((t_max - geo[-1]) / max_step))
    grid = np.concatenate([geo[:-1], np.linspace(geo[-1], t_max, n_uniform + 1)])
  grid[-1] = t_max
  return np.unique(grid)


def bisect(grid: np.ndarray) -> np.ndarray:
  """The grid with the midpoint of every interval inserted (step halving).

  Examples:
    >>> from ndk_flax.predict.grid import bisect
    >>> import numpy as np
    >>> bisect(np.array([0.0, 1.0, 3.0])).tolist()
    [0.0, 0.5, 1.0, 2.0, 3.0]
  """
  fine = np.empty(2 * len(grid) - 1, dtype=grid.dtype)
  fine[0::2] = grid
  fine[1::2] = 0.5 * (grid[1:] + grid[:-1])
  return fine


def interior_weights(grid: jax.Array) -> jax.Array:
  """Composite trapezoid weights (t_{j+1} − t_{j−1})/2 of the nodes t_j < t (t_{−1} := t_0) for a row t on the grid.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ndk_flax.predict.grid import interior_weights
    >>> interior_weights(jnp.array([0.0, 1.0, 3.0])).tolist()
    [0.5, 1.5, 1.0]
  """
  n = grid.shape[0]
  j = jnp.arange(n)
  return 0.5 * (grid[jnp.minimum(j + 1, n - 1)] - grid[jnp.maximum(j - 1, 0)])


def trapezoid_row(grid: jax.Array, k: jax.Array, t_star: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Product-trapezoid weights of ∫_0^{t*} g(s) ds on the nodes t_0 … t_k (t_k < t* ≤ t_{k+1}) and t* itself.

  Returns (w, w_star): w has the grid's length and is zero beyond k (all of it when k = −1, i.e. t* = 0).
  On grid nodes (t* = t_{k+1}) these are the usual composite trapezoid weights. Off the grid the last interval
  [t_k, t*] (δ = t* − t_k, inside a step h = t_{k+1} − t_k) gets the trapezoid rule plus (δ/12)(h² − δ²) g'', with g''
  the divided difference on t_{k−1}, t_k, t*: the error of the row is then (1/12) ∫_0^{t*} h(s)² g''(s) ds + O(h⁴),
  smooth in t* like the error on the grid, so Nyström rows between grid nodes do not zig-zag and the Richardson
  extrapolation of two grids cancels it (plain partial trapezoid leaves a term ∝ δ(h² − δ²) of period h).

  Examples:
    >>> import jax.numpy as jnp
    >>> from ndk_flax.predict.grid import trapezoid_row
    >>> grid = jnp.array([0.0, 1.0, 3.0])
    >>> w, w_star = trapezoid_row(grid, jnp.array(1), jnp.array(2.0))
    >>> w.tolist(), float(w_star)  # exact for g = 1 and g = s: sums 2.0 and 0.75·2 + 0.5·1 = 2.0
    ([0.75, 0.5, 0.0], 0.75)
    >>> w, w_star = trapezoid_row(grid, jnp.array(1), jnp.array(3.0))  # on a node: composite trapezoid
    >>> w.tolist(), float(w_star)
    ([0.5, 1.5, 0.0], 1.0)
  """
  n = grid.shape[0]
  j = jnp.arange(n)
  interior = interior_weights(grid)
  kc = jnp.maximum(k, 0)
  t_k = grid[kc]
  delta = t_star - t_k
  h1 = t_k - grid[jnp.maximum(kc - 1, 0)]
  h = jnp.maximum(grid[jnp.minimum(kc + 1, n - 1)] - t_k, delta)  # the step holding t* (δ beyond the last node)
  # Smooth end: + (δ/12)(h² − δ²) F'' with F'' the divided difference on t_{k−1}, t_k, t*, so that the error of
  # the row, (1/12) ∫_0^{t*} h(s)² F''(s) ds + O(h⁴), is smooth in t* (zero on grid nodes, δ ∈ {0, h}).
  curved = k >= 1
  c_star = jnp.where(curved, (h**2 - delta**2) / (6 * (delta + jnp.where(curved, h1, 1.0))), 0.0)
  c_prev = c_star * delta / jnp.where(curved, h1, 1.0)
  w_k = 0.5 * h1 + 0.5 * delta - c_star - c_prev
  w = jnp.where(j < k - 1, interior, jnp.where(j == k - 1, interior + c_prev, jnp.where(j == k, w_k, 0.0)))
  return w, jnp.where(k >= 0, 0.5 * delta + c_star, 0.0)


def pad(grid: jax.Array, chunk: int) -> jax.Array:
  """Pad a grid to a whole number of chunks by repeating its last time.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ndk_flax.predict.grid import pad
    >>> pad(jnp.array([0.0, 1.0, 3.0]), 2).tolist()
    [0.0, 1.0, 3.0, 3.0]
  """
  return jnp.concatenate([grid, jnp.full((-grid.shape[0] % chunk,), grid[-1], grid.dtype)])
