"""`ndk_flax.predict`: mean and covariance of the network output over the whole Langevin learning trajectory.

For an infinite ensemble of infinitely wide networks trained by Langevin gradient descent on the summed ½-MSE
loss (THEORY.md §1), every run satisfies (THEORY.md §4)

    f(x, t) = f_free(x, t) + ∫_0^t R(t, s, x, X) [Y − f(X, s)] ds,

with f_free a centred Gaussian process of covariance C(t, s, x, x') and R the Neural Dynamical Kernel. This
module solves that equation for the mean f̄ and the covariance, the way ``neural_tangents.predict.
gradient_descent_mse_ensemble`` does for gradient flow:

* T = 0: R = Θ0 and C = K do not depend on time; closed form in the eigenbasis of Θ0 (as Neural Tangents).
* T > 0, finite t: product-trapezoid (implicit, A-stable) discretisation of the Volterra equation of the second
  kind on a :func:`time_grid`, with step-doubling error control and Richardson extrapolation for the mean, and
  the exact discretisation of δf(X) = (I + 𝓡)^{-1} f_free(X) for the covariance. The mean solver reads R on a
  uniform lattice that resolves only the kernels' own drift (time scale ~1/λ) and interpolates it at the many
  grid pairs the stiff early phase needs; a kernel that depends on t − s only (σ0 = σ) costs one lattice row.
* T > 0, t = ∞: the NNGP posterior with prior variances σ² and noise T, in closed form.

The kernels are only read through the ``ndk_fn(x1, x2, t1, t2, *, temperature)`` contract of
:mod:`ndk_flax.stax` (fields ``nngp`` = C and ``ndk`` = R, leading axes ``(len(t1), len(t2))`` for 1-D times),
so a hand-written ``ndk_fn`` works as well.

The reduced small-temperature equations in slow time τ = λt (THEORY.md §5) are :func:`reduced_small_temperature_mean`
and :func:`composite_small_temperature_mean`, defined in :mod:`ndk_flax.reduced` and exported here.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ndk_flax import _validation as V
from ndk_flax._nt import Gaussian
from ndk_flax.reduced import composite_small_temperature_mean, reduced_small_temperature_mean

__all__ = [
  'DEFAULT_FIRST_STEP',
  'DEFAULT_GROWTH',
  'DEFAULT_KERNEL_ELEMENTS',
  'DEFAULT_RTOL',
  'Gaussian',
  'LangevinPredictor',
  'TimeScales',
  'composite_small_temperature_mean',
  'langevin_mse_ensemble',
  'reduced_small_temperature_mean',
  'time_grid',
]

NDKFn = Callable[..., Any]
"""``ndk_fn(x1, x2, t1, t2, *, temperature)`` returning an object with ``nngp`` and ``ndk`` fields."""

DEFAULT_FIRST_STEP = 0.5
"""Default first step of the solver's base grid, in units of the gradient time scale 1/λ_max(Θ0)."""
DEFAULT_GROWTH = 0.2
"""Default geometric growth of the base grid's steps (h_{k+1} = (1 + growth) h_k)."""
DEFAULT_RTOL = 1e-3
"""Default accuracy target of the mean, relative to max |Y|."""
DEFAULT_KERNEL_ELEMENTS = 2**22
"""Default bound on n_times · n1 · n2 per ``ndk_fn`` call made by the solver (its memory per call)."""


class TimeScales(NamedTuple):
  """The two time scales of Langevin learning (THEORY.md §5).

  Attributes:
    gradient: 1/λ_max(Θ0), the fastest relaxation of the gradient-driven phase (Θ0 = R(0, 0, X, X)).
    diffusive: 1/min λ with λ = T/σ² over the parameter groups (∞ at T = 0), the time scale of weight diffusion.
  """

  gradient: float
  diffusive: float


# ----------------------------------------------------------------------------------------------------------
# Time grids.


def time_grid(
  t_max: float, *, first_step: float, growth: float = DEFAULT_GROWTH, max_step: float = math.inf
) -> np.ndarray:
  """Grid 0 = t_0 < t_1 < … < t_n = t_max resolving both learning phases.

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


def _bisect(grid: np.ndarray) -> np.ndarray:
  """The grid with the midpoint of every interval inserted (step halving)."""
  fine = np.empty(2 * len(grid) - 1, dtype=grid.dtype)
  fine[0::2] = grid
  fine[1::2] = 0.5 * (grid[1:] + grid[:-1])
  return fine


def _interior_weights(grid: jax.Array) -> jax.Array:
  """Composite trapezoid weights (t_{j+1} − t_{j−1})/2 of the nodes t_j < t (t_{−1} := t_0) for a row t on the grid."""
  n = grid.shape[0]
  j = jnp.arange(n)
  return 0.5 * (grid[jnp.minimum(j + 1, n - 1)] - grid[jnp.maximum(j - 1, 0)])


def _trapezoid_row(grid: jax.Array, k: jax.Array, t_star: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Product-trapezoid weights of ∫_0^{t*} g(s) ds on the nodes t_0 … t_k (t_k < t* ≤ t_{k+1}) and t* itself.

  Returns (w, w_star): w has the grid's length and is zero beyond k (all of it when k = −1, i.e. t* = 0).
  On grid nodes (t* = t_{k+1}) these are the usual composite trapezoid weights; off the grid the last interval is
  [t_k, t*] (Nyström interpolation, consistent with the second-order scheme).
  """
  j = jnp.arange(grid.shape[0])
  interior = _interior_weights(grid)
  kc = jnp.maximum(k, 0)
  t_k = grid[kc]
  half_last = 0.5 * (t_star - t_k)
  w_k = 0.5 * (t_k - grid[jnp.maximum(kc - 1, 0)]) + half_last
  w = jnp.where(j < k, interior, jnp.where(j == k, w_k, 0.0))
  return w, jnp.where(k >= 0, half_last, 0.0)


# ----------------------------------------------------------------------------------------------------------
# Memory.


def _available_memory() -> int:
  """Bytes the covariance may allocate: free accelerator memory, or MemAvailable of the host."""
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != 'cpu' else None
  if stats and 'bytes_limit' in stats:
    return int(stats['bytes_limit'] - stats.get('bytes_in_use', 0))
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return int(0.5 * os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))


# ----------------------------------------------------------------------------------------------------------
# The predictor.


_RING = 12
"""Lattice rows a solver row at time t can touch: [⌊t/h⌋ − 4, ⌊t/h⌋ + 7] (cubic stencils, ±1 rounding)."""


def _cubic_stencil(x, h):
  """First lattice index i0 and the 4 cubic Lagrange weights at nodes i0 … i0 + 3 interpolating at x ≥ 0 on the
  lattice {i·h} (centred, i0 = ⌊x/h⌋ − 1, one-sided near 0). Works on NumPy and JAX arrays."""
  xp = jnp if isinstance(x, jax.Array) else np
  z = x / h
  i0 = xp.maximum(xp.floor(z) - 1, 0)
  return i0.astype(xp.int32), _lagrange4(z - i0)


def _lagrange4(r):
  """Cubic Lagrange weights of the nodes 0, 1, 2, 3 at position r (…, 4)."""
  xp = jnp if isinstance(r, jax.Array) else np
  return xp.stack(
    [
      -(r - 1) * (r - 2) * (r - 3) / 6,
      r * (r - 2) * (r - 3) / 2,
      -r * (r - 1) * (r - 3) / 2,
      r * (r - 1) * (r - 2) / 6,
    ],
    axis=-1,
  )


class _Lattice(NamedTuple):
  """Kernel lattice: R(a·h, b·h, ·, X) for 0 ≤ b ≤ a < size; stationary when R(t, s) depends on t − s only."""

  h: float
  size: int
  stationary: bool


def _pad(grid: jax.Array, chunk: int) -> jax.Array:
  """Pad a grid to a whole number of chunks by repeating its last time."""
  return jnp.concatenate([grid, jnp.full((-grid.shape[0] % chunk,), grid[-1], grid.dtype)])


class LangevinPredictor:
  """Mean and covariance of the network output f(x, t) of the infinite ensemble (THEORY.md §4).

  Built by :func:`langevin_mse_ensemble`; call as ``predictor(t, x_test=None, compute_cov=False)``.
  """

  def __init__(
    self,
    ndk_fn: NDKFn,
    x_train: jax.Array,
    y_train: jax.Array,
    temperature: float,
    relaxation_rates: Optional[tuple[float, ...]],
    rtol: float,
    max_refinements: int,
    first_step: Optional[float],
    growth: float,
    cov_grid: Optional[np.ndarray],
    memory_limit: Optional[float],
    max_kernel_elements: int,
  ):
    self._ndk_fn = ndk_fn
    self._x = x_train
    self._y = y_train
    self.temperature = temperature
    self._rates = relaxation_rates
    self._rtol = rtol
    self._max_refinements = max_refinements
    self._growth = growth
    self._cov_grid = cov_grid
    self._memory_limit = memory_limit
    self._max_elements = max_kernel_elements
    self._p = x_train.shape[0]
    zero = jnp.zeros((1,), y_train.dtype)
    nngp, ndk = self._kernel(x_train, x_train, zero, zero)
    self._k0, self._theta0 = nngp[0, 0], ndk[0, 0]
    if not bool(jnp.all(jnp.isfinite(self._theta0)) & jnp.all(jnp.isfinite(self._k0))):
      raise ValueError('`ndk_fn` returned non-finite kernels at t = 0 on `x_train`.')
    self._evals, self._evecs = jnp.linalg.eigh(self._theta0)
    lam_max = float(self._evals[-1])
    if not lam_max > 0:
      raise ValueError(f'Θ0 = R(0, 0, X, X) must have a positive eigenvalue, got λ_max = {lam_max}.')
    self._lam_max = lam_max
    self._first_step = DEFAULT_FIRST_STEP / lam_max if first_step is None else first_step
    self._max_step = self._kernel_drift_time() if temperature > 0 else math.inf
    self._mean: Optional[tuple[_Lattice, dict, dict]] = None
    self.error_estimate: Optional[float] = None
    self._ring_row = jax.jit(self._ring_row_impl, donate_argnums=2)
    self._lattice_row = jax.jit(self._lattice_row_impl, static_argnums=4)
    self._solve_block = jax.jit(self._solve_block_impl, static_argnums=8, donate_argnums=4)
    self._request_block = jax.jit(self._request_block_impl)
    self._assemble = jax.jit(self._assemble_impl)
    self._cov_rows = jax.jit(self._cov_rows_impl)

  # --- public API -------------------------------------------------------------------------------------------

  @property
  def time_scales(self) -> TimeScales:
    """:class:`TimeScales` (1/λ_max(Θ0), 1/min λ) of this run."""
    if self.temperature == 0:
      return TimeScales(1 / self._lam_max, math.inf)
    if self._rates is None:
      raise ValueError(
        'The diffusive time scale 1/min λ needs the relaxation rates λ = T/σ²: pass '
        '`relaxation_rates` to `langevin_mse_ensemble` when giving a bare `ndk_fn`.'
      )
    return TimeScales(1 / self._lam_max, 1 / min(self._rates))

  def __call__(self, t, x_test=None, compute_cov: bool = False) -> Union[jax.Array, Gaussian]:
    """Mean (and covariance) of f(x, t) over the ensemble.

    Args:
      t: a time or a strictly increasing 1-D array of times ≥ 0; ``jnp.inf`` (last) gives equilibrium.
      x_test: inputs shaped like ``x_train``; None means the training points X.
      compute_cov: also return the covariance over the ensemble (the same for every output channel).

    Returns:
      The mean f̄(x, t), shaped (len(t), n, out) ((n, out) for scalar ``t``), or with ``compute_cov``
      ``Gaussian(mean, covariance)`` with covariance (len(t), n, n) ((n, n) for scalar ``t``).
    """
    times, scalar = V.increasing_times('t', t)
    x_test = None if x_test is None else V.inputs_like('x_test', x_test, self._x)
    if not isinstance(compute_cov, bool):
      raise TypeError(f'`compute_cov` must be a bool, got {compute_cov!r}.')
    if self.temperature == 0:
      mean, cov = self._frozen(times, x_test, compute_cov)
    else:
      finite = times[np.isfinite(times)]
      parts = []
      if finite.size:
        if compute_cov:
          self._precheck_covariance_memory(finite, x_test)
        parts.append((self._mean_at(finite, x_test), self._covariance(finite, x_test) if compute_cov else None))
      if finite.size < times.size:
        parts.append(self._equilibrium(x_test, compute_cov))
      mean = jnp.concatenate([m for m, _ in parts])
      cov = jnp.concatenate([c for _, c in parts]) if compute_cov else None
    if scalar:
      mean = mean[0]
      cov = None if cov is None else cov[0]
    return Gaussian(mean, cov) if compute_cov else mean

  def train_loss(self, t) -> jax.Array:
    """½ Σ_μ ‖y_μ − f̄(x_μ, t)‖² per time (the loss of the ensemble mean), shape (len(t),) or scalar."""
    mean = self(t)
    return 0.5 * jnp.sum((self._y - mean) ** 2, axis=(-2, -1))

  def test_mse(self, t, x_test, y_test) -> jax.Array:
    """Mean over points and outputs of (f̄(x*, t) − y*)², shape (len(t),) or scalar."""
    if x_test is None:
      raise ValueError('`x_test` must be given to compute the test MSE.')
    y_test = V.batched_array('y_test', y_test, 2)
    x_test = V.inputs_like('x_test', x_test, self._x)
    if y_test.shape != (x_test.shape[0], self._y.shape[1]):
      raise ValueError(
        f'`y_test` must have shape (n_test, out) = ({x_test.shape[0]}, {self._y.shape[1]}), got {y_test.shape}.'
      )
    mean = self(t, x_test)
    return jnp.mean((mean - y_test) ** 2, axis=(-2, -1))

  # --- kernels ----------------------------------------------------------------------------------------------

  def _kernel(self, x1, x2, t1, t2) -> tuple[jax.Array, jax.Array]:
    """(C, R), each of shape (len(t1), len(t2), n1, n2), through the ``ndk_fn`` contract."""
    out = self._ndk_fn(x1, x2, t1, t2, temperature=self.temperature)
    try:
      nngp, ndk = out.nngp, out.ndk
    except AttributeError:
      raise TypeError(
        f'`ndk_fn` must return an object with `nngp` and `ndk` fields (e.g. a TwoTimeKernel), got {type(out).__name__}.'
      ) from None
    expected = (t1.shape[0], t2.shape[0], x1.shape[0], x2.shape[0])
    for name, k in (('nngp', nngp), ('ndk', ndk)):
      if k.shape != expected:
        raise ValueError(
          f'`ndk_fn(...).{name}` must have shape (len(t1), len(t2), n1, n2) = {expected} (a '
          f'network with one output axis, as Neural Tangents with trace_axes=(-1,)), '
          f'got {k.shape}.'
        )
    return nngp.astype(self._y.dtype), ndk.astype(self._y.dtype)

  def _chunk(self, n1: int, n_times: int) -> int:
    """Times per ``ndk_fn`` call for kernel rows against x_train, within ``max_kernel_elements``."""
    return int(min(n_times, max(1, self._max_elements // (n1 * self._p))))

  def _kernel_row(self, x1, x2, t, grid, chunk):
    """C(t, s_j, x1, x2) and R(t, s_j, x1, x2) for every s_j of ``grid`` (whole chunks), ``chunk`` times a call."""

    def one(ts):
      nngp, ndk = self._kernel(x1, x2, t[None], ts)
      return nngp[0], ndk[0]

    nngp, ndk = lax.map(one, grid.reshape(-1, chunk))
    shape = (grid.shape[0], x1.shape[0], x2.shape[0])
    return nngp.reshape(shape), ndk.reshape(shape)

  def _kernel_drift_time(self) -> float:
    """Largest lag τ (on a log scale, 4 per decade) with ‖K(τ, 0) − K(0, 0)‖ ≤ growth · ‖K(0, 0)‖ for K = C and R
    on (up to 16 of) the training points: the grid's step cap, since the kernels drift on that scale in t − s
    at every t (≈ growth/λ for a single parameter group)."""
    xs = self._x[:16]
    lags = np.logspace(-2, 12, 57) / self._lam_max
    times = jnp.asarray(np.concatenate([[0.0], lags]), self._y.dtype)
    drift = []
    for k in self._kernel(xs, xs, times, times[:1]):
      k = np.asarray(k[:, 0], np.float64)
      drift.append(np.linalg.norm(k[1:] - k[0], axis=(1, 2)) / np.linalg.norm(k[0]))
    within = np.maximum(*drift) <= self._growth
    if within.all():
      return math.inf
    first_out = int(np.argmin(within))
    return float(lags[max(first_out - 1, 0)])

  # --- T = 0 and t = ∞: closed forms --------------------------------------------------------------------------

  def _frozen(self, times: np.ndarray, x_test, compute_cov: bool):
    """T = 0: f̄(X, t) = (I − e^{−Θ0 t})Y, f̄(x*, t) = Θ0(x*, X) Θ0^{-1}(I − e^{−Θ0 t})Y (Neural Tangents'
    gradient flow, with its convention that modes with eigenvalue ≤ 0 are not learned) and the covariances
    of δf(X, t) = e^{−Θ0 t} f0(X), δf(x*, t) = f0(x*) − Θ0(x*, X) Θ0^{-1}(I − e^{−Θ0 t}) f0(X)."""
    dtype = self._y.dtype
    ev = jnp.maximum(self._evals, 0)[None, :]
    v = self._evecs
    t = jnp.asarray(times, dtype)[:, None]
    positive = ev > 0
    safe = jnp.where(positive, ev, 1)
    decay = jnp.where(positive, jnp.exp(-safe * t), 1)  # e^{−λ t}
    learnt = jnp.where(positive, -jnp.expm1(-safe * t) / safe, 0)  # (1 − e^{−λ t}) / λ
    vy = v.T @ self._y
    if x_test is None:
      mean = self._y[None] - jnp.einsum('pi,ti,io->tpo', v, decay, vy)
      if not compute_cov:
        return mean, None
      e_t = jnp.einsum('pi,ti,qi->tpq', v, decay, v)
      return mean, jnp.einsum('tpq,qr,tsr->tps', e_t, self._k0, e_t)
    zero = jnp.zeros((1,), dtype)
    k_tx, theta_tx = (k[0, 0] for k in self._kernel(x_test, self._x, zero, zero))
    m_t = jnp.einsum('mp,pi,ti,qi->tmq', theta_tx, v, learnt, v)  # Θ0(x*, X) Θ0^{-1}(I − e^{−Θ0 t})
    mean = m_t @ self._y
    if not compute_cov:
      return mean, None
    k_tt = self._kernel(x_test, x_test, zero, zero)[0][0, 0]
    cross = m_t @ k_tx.T
    cov = k_tt - cross - jnp.swapaxes(cross, 1, 2) + jnp.einsum('tmp,pq,tnq->tmn', m_t, self._k0, m_t)
    return mean, cov

  def _equilibrium(self, x_test, compute_cov: bool):
    """t = ∞, T > 0: NNGP posterior with K = C(∞, ∞) (prior variances σ²) and noise variance T."""
    inf = jnp.full((1,), jnp.inf, self._y.dtype)
    k_xx = self._kernel(self._x, self._x, inf, inf)[0][0, 0]
    factor = jax.scipy.linalg.cho_factor(k_xx + self.temperature * jnp.eye(self._p, dtype=self._y.dtype))
    k_tx = k_xx if x_test is None else self._kernel(x_test, self._x, inf, inf)[0][0, 0]
    mean = k_tx @ jax.scipy.linalg.cho_solve(factor, self._y)
    if not compute_cov:
      return mean[None], None
    k_tt = k_xx if x_test is None else self._kernel(x_test, x_test, inf, inf)[0][0, 0]
    cov = k_tt - k_tx @ jax.scipy.linalg.cho_solve(factor, k_tx.T)
    return mean[None], (0.5 * (cov + cov.T))[None]

  # --- T > 0, finite t: the mean ------------------------------------------------------------------------------
  #
  # The dynamics need a fine time grid (stiff NTK eigenvalues early, the diffusive scale late), but the kernels only
  # drift on the weights' time scale ~1/λ. So R is evaluated on a uniform lattice R(a·h, b·h) (b ≤ a) resolving
  # that drift and interpolated (cubic Lagrange in u = t − s and s, whose stencils stay in the causal region s ≤ t)
  # at the grid pairs: O((t_max/h)² P²) kernel work instead of O(n_t² P²). A solver row at time t only touches
  # lattice rows a ∈ [⌊t/h⌋ − 4, ⌊t/h⌋ + 7], kept in a ring buffer while sweeping t upwards: O(t_max/h · P²) memory.

  def _lattice(self, t_max: float) -> _Lattice:
    """Lattice spacing: 8 × the kernel drift time (≈ growth/λ), halved until the interpolated R on (up to 8 of) the
    training points matches ``ndk_fn`` within rtol · max|R(0, 0)| at probe pairs (edges s = 0, s = t and random
    ones). The lattice is marked stationary when R(t, s) = R(t − s, 0) within that tolerance at every probe (all
    groups start at their prior, σ0 = σ): its rows are then shifts of one row."""
    xs = self._x[:8]
    dtype = self._y.dtype
    scale = float(jnp.max(jnp.abs(self._theta0[:8, :8])))
    rng = np.random.default_rng(0)
    t = t_max * np.concatenate([[1.0, 1.0, 1.0], rng.uniform(size=29)])
    s = t * np.concatenate([[0.0, 1.0, 0.5], rng.uniform(size=29)])

    def ndk(t1, t2):
      times = (jnp.asarray(np.atleast_1d(t), dtype) for t in (t1, t2))
      return np.asarray(self._kernel(xs, xs, *times)[1], np.float64)

    exact = [ndk(ti, si)[0, 0] for ti, si in zip(t, s)]
    drift = max(np.abs(ex - ndk(ti - si, 0.0)[0, 0]).max() for ti, si, ex in zip(t, s, exact)) / scale
    h = min(8 * self._max_step, t_max / 4)
    q = np.arange(4)
    for _ in range(12):
      err = 0.0
      for ti, si, ex in zip(t, s, exact):
        a0, la = _cubic_stencil(np.float64(ti - si), h)
        b0, lb = _cubic_stencil(np.float64(si), h)
        nodes = ndk(h * (a0 + b0 + np.arange(7)), h * (b0 + q))
        interp = np.einsum('p,q,pqmn->mn', la, lb, nodes[q[:, None] + q[None, :], q[None, :]])
        err = max(err, np.abs(interp - ex).max() / scale)
      if err <= self._rtol:
        break
      h /= 2
    else:
      warnings.warn(
        f'The kernel lattice did not reach interpolation error rtol = {self._rtol:.2g} '
        f'(got {err:.2g} at spacing {h:.3g}).',
        RuntimeWarning,
        stacklevel=4,
      )
    return _Lattice(h, math.floor(t_max / h) + 9, drift + err <= self._rtol)

  def _lattice_row_impl(self, x, x1, a, h, size):
    """Lattice row a: R(a·h, b·h, x1, X) for b ≤ a (zero beyond), shape (n1, size, P), ``chunk`` columns a call."""
    chunk = self._chunk(x1.shape[0], size)
    width = -(-size // chunk) * chunk

    def add(c, row):
      ts = (c * chunk + jnp.arange(chunk)) * h
      return lax.dynamic_update_slice_in_dim(row, self._kernel(x1, x, (a * h)[None], ts)[1][0], c * chunk, 0)

    row = lax.fori_loop(0, a // chunk + 1, add, jnp.zeros((width, x1.shape[0], self._p), self._y.dtype))
    return jnp.swapaxes(row[:size], 0, 1)

  def _ring_row_impl(self, x, x1, ring, a, h, master):
    """Store lattice row a in ring slot a mod _RING: from ``ndk_fn``, or for a stationary lattice as a shift of
    ``master`` = [row size − 1, zeros] (R(a·h, b·h) = R((size − 1)h, (size − 1 − a + b)h))."""
    size = ring.shape[2]
    if master is None:
      row = self._lattice_row_impl(x, x1, a, h, size)
    else:
      row = lax.dynamic_slice_in_dim(master, size - 1 - a, size, axis=1)
    return ring.at[:, a % _RING].set(row)

  @staticmethod
  def _window_nodes(ring, w):
    """The 16 lattice nodes N[:, p, q] = R((β0 + p + q)h, (β0 + q)h) of the cubic stencils of pairs (t, s) with
    ⌊s/h⌋ = w and 0 ≤ t − s < h (β0 = max(w − 1, 0)); returns (β0, N of shape (n1, 4, 4, P))."""
    four = jnp.arange(4)
    b0 = jnp.maximum(w - 1, 0)
    cols = b0 + four[None, :]
    return b0, ring[:, (cols + four[:, None]) % _RING, cols]

  @staticmethod
  def _old_history(ring, h, grid, g, t_rows, w_rows):
    """Σ_j w_rows[r, j] R̃(t_rows[r], t_j, x1, X) g_j for a block of rows, R̃ the interpolated kernel: the weighted
    g_j are scattered onto the lattice nodes of their cubic stencils (a = α + β, b = β, held by ring slot
    a mod _RING; all in the ring's window) and contracted with the ring once for the whole block. (B, n1, out)."""
    four = jnp.arange(4)
    size = ring.shape[2]
    a0, la = _cubic_stencil(jnp.maximum(t_rows[:, None] - grid[None, :], 0), h)
    b0, lb = _cubic_stencil(grid, h)
    coef = w_rows[:, :, None, None] * la[:, :, :, None] * lb[None, :, None, :]
    beta = b0[None, :, None, None] + four
    slot = (a0[:, :, None, None] + four[:, None] + beta) % _RING
    rows = jnp.arange(t_rows.shape[0])[:, None, None, None]
    scattered = (
      jnp.zeros((t_rows.shape[0], _RING, size) + g.shape[1:], g.dtype)
      .at[rows, slot, beta]
      .add(coef[..., None, None] * g[None, :, None, None], mode='drop')
    )
    # A plain matrix product (XLA:CPU lowers the equivalent 4-index einsum ~30× slower).
    n_rows, out = scattered.shape[0], scattered.shape[-1]
    flat = jnp.moveaxis(scattered.reshape(n_rows, -1, out), 0, 1).reshape(-1, n_rows * out)
    return jnp.moveaxis((ring.reshape(ring.shape[0], -1) @ flat).reshape(ring.shape[0], n_rows, out), 0, 1)

  def _solve_block_impl(self, y, ring, h, grid, g, w, r0, r1, block):
    """Grid rows r0 … r1 − 1 (< r0 + block, all in lattice window w) of the trapezoid scheme,
    (I + w_ii R̃(t_i, t_i)) g_i = Y − Σ_{j<i} w_j R̃(t_i, t_j) g_j, g = Y − f̄(X, ·): the part j < r0 for the whole
    block at once, then j ∈ [r0, i) row by row with the window's 16 stencil nodes (such pairs have ⌊t_j/h⌋ = w,
    0 ≤ t_i − t_j < h)."""
    p, n = self._p, grid.shape[0]
    interior = _interior_weights(grid)
    rows = r0 + jnp.arange(block)
    t_rows = grid[jnp.minimum(rows, n - 1)]
    old = self._old_history(
      ring, h, grid, g[:n], t_rows, jnp.broadcast_to(jnp.where(jnp.arange(n) < r0, interior, 0), (block, n))
    )[:, :p]  # rows beyond P: test points
    b0, nodes = self._window_nodes(ring, w)
    nodes = nodes[:p]
    l_s = _lagrange4(t_rows / h - b0)
    w_new = interior[jnp.minimum(rows, n - 1)]

    def step(r, g_block):
      t_i = t_rows[r]
      l_u = _lagrange4((t_i - t_rows) / h)
      c = jnp.einsum('j,jp,jq,jko->pqko', jnp.where(jnp.arange(block) < r, w_new, 0), l_u, l_s, g_block)
      history = old[r] + nodes.reshape(nodes.shape[0], -1) @ c.reshape(-1, c.shape[-1])
      r_star = jnp.einsum('q,mqk->mk', l_s[r], nodes[:, 0])
      a = jnp.eye(p, dtype=y.dtype) + 0.5 * (t_i - grid[r0 + r - 1]) * r_star
      return g_block.at[r].set(jnp.linalg.solve(a, y - history))

    g_block = lax.fori_loop(0, r1 - r0, step, lax.dynamic_slice_in_dim(g, r0, block))
    return lax.dynamic_update_slice_in_dim(g, g_block, r0, 0)

  def _request_block_impl(self, y, ring, h, grid, g, w, times):
    """Nyström rows at a block of requested times (all in lattice window w) on a solved grid:
    (I + w_* R̃(t*, t*, X, X)) g(t*) = Y − Σ_{t_j < t*} w_j R̃(t*, t_j, X, X) g_j and
    f̄(x, t*) = Σ_j w_j R̃(t*, t_j, x, X) g_j + w_* R̃(t*, t*, x, X) g(t*) for the rows x1[P:]."""
    p = self._p
    k = jnp.searchsorted(grid, times, side='left') - 1
    weights, w_star = jax.vmap(_trapezoid_row, (None, 0, 0))(grid, k, times)
    history = self._old_history(ring, h, grid, g, times, weights)
    b0, nodes = self._window_nodes(ring, w)
    r_star = jnp.einsum('rq,mqk->rmk', _lagrange4(times / h - b0), nodes[:, 0]) * w_star[:, None, None]
    g_star = jnp.linalg.solve(jnp.eye(p, dtype=y.dtype) + r_star[:, :p], y - history[:, :p])
    return g_star, history[:, p:] + r_star[:, p:] @ g_star

  def _block_size(self, n: int, rows: int) -> int:
    """Rows per block for ``rows`` rows of one window: 1, 8 or 64 (few compiled shapes), with the block's scattered
    terms (block × n × 16 × P × out values) within 16 × ``max_kernel_elements``; the ring is read once a block."""
    cap = max(1, min(64, 16 * self._max_elements // (16 * n * self._p * self._y.shape[1])))
    return int(min(8 ** math.ceil(math.log(rows, 8)), 8 ** math.floor(math.log(cap, 8))))

  def _sweep(self, x1: jax.Array, lattice: _Lattice, jobs: list) -> None:
    """Sweep t upwards through the lattice windows, keeping the ring of lattice rows for x1 and running, in each
    window w and in list order, the rows of every job whose times t have ⌊t/h⌋ = w. A job is
    (sorted times, run(ring, w, lo, hi)) with [lo, hi) the indices of its times in window w."""
    dtype = self._y.dtype
    rows = _RING + 2 * lattice.stationary  # the ring, and the doubled master row of a stationary lattice
    ring_bytes = rows * lattice.size * x1.shape[0] * self._p * np.dtype(dtype).itemsize
    available = _available_memory() if self._memory_limit is None else self._memory_limit
    if ring_bytes > available:
      raise MemoryError(
        f'The mean solver needs about {ring_bytes / 2**30:.2f} GiB for {_RING} kernel lattice rows '
        f'of {lattice.size} times × {x1.shape[0]} × {self._p} points, but only '
        f'{available / 2**30:.2f} GiB are available: request fewer test points at once, an '
        f'earlier last time (t = inf gives equilibrium in closed form), or a larger `rtol`.'
      )
    ring = jnp.zeros((x1.shape[0], _RING, lattice.size, self._p), dtype)
    h = jnp.asarray(lattice.h, dtype)
    windows = [np.floor(times / lattice.h).astype(np.int64) for times, _ in jobs]
    master = None
    if lattice.stationary:
      master = jnp.concatenate(
        [self._lattice_row(self._x, x1, lattice.size - 1, h, lattice.size), jnp.zeros_like(ring[:, 0])], axis=1
      )
    for a in range(min(8, lattice.size)):
      ring = self._ring_row(self._x, x1, ring, a, h, master)
    for w in range(int(max(ws[-1] for ws in windows)) + 1):
      if w > 0 and w + 7 < lattice.size:
        ring = self._ring_row(self._x, x1, ring, w + 7, h, master)
      for (_, run), ws in zip(jobs, windows):
        lo, hi = np.searchsorted(ws, w, 'left'), np.searchsorted(ws, w, 'right')
        if hi > lo:
          run(ring, w, int(lo), int(hi))

  def _solve_job(self, lattice: _Lattice, grid: np.ndarray, state: dict):
    """Sweep job solving the trapezoid scheme on ``grid`` into ``state['g']`` (g = Y − f̄(X, ·) on the nodes)."""
    dtype = self._y.dtype
    h = jnp.asarray(lattice.h, dtype)
    pad = self._block_size(len(grid), 64)
    grid_j = jnp.asarray(grid, dtype)
    g = jnp.zeros((len(grid) + pad,) + self._y.shape, dtype).at[0].set(self._y)
    state.update(grid=grid_j, g=g[: len(grid)])

    def run(ring, w, lo, hi):
      nonlocal g
      lo = max(lo, 1)
      block = self._block_size(len(grid), hi - lo) if hi > lo else 1
      for r0 in range(lo, hi, block):
        g = self._solve_block(self._y, ring, h, grid_j, g, w, r0, min(r0 + block, hi), block)
      state['g'] = g[: len(grid)]

    return grid, run

  def _request_job(self, lattice: _Lattice, state: dict, times: np.ndarray, test: bool, out: list):
    """Sweep job appending f̄ at ``times`` (Nyström rows on the solution in ``state``, train or test rows) to out."""
    dtype = self._y.dtype
    h = jnp.asarray(lattice.h, dtype)
    n = len(state['grid'])
    padded = jnp.asarray(np.concatenate([times, np.full(64, times[-1])]), dtype)

    def run(ring, w, lo, hi):
      block = self._block_size(n, hi - lo)
      for r0 in range(lo, hi, block):
        g, f = self._request_block(self._y, ring, h, state['grid'], state['g'], w, padded[r0 : r0 + block])
        out.append((f if test else self._y[None] - g)[: min(block, hi - r0)])

    return times, run

  def _mean_at(self, times: np.ndarray, x_test) -> jax.Array:
    """Mean at finite times, (n_t, n, out): the Richardson extrapolation f_fine + (f_fine − f_coarse)/3 of the
    solutions on a grid and its bisection. The grid solutions are cached; a request beyond the cached time
    solves again, bisecting until the step-doubling estimate max|g_fine − g_coarse|/3 of the fine solution's
    error is ≤ rtol · max|Y|. Grid rows and requested rows share one sweep (x1 = X ∪ x_test)."""
    t_max = float(times[-1])
    x1 = self._x if x_test is None else jnp.concatenate([self._x, x_test])
    test = x_test is not None
    if self._mean is not None and float(self._mean[2]['grid'][-1]) >= t_max:
      lattice, *states = self._mean
      outs = [[], []]
      self._sweep(x1, lattice, [self._request_job(lattice, s, times, test, o) for s, o in zip(states, outs)])
    else:
      lattice = self._lattice(t_max)
      coarse = time_grid(t_max, first_step=self._first_step, growth=self._growth, max_step=self._max_step)
      states = [{}, {}]
      jobs = [self._solve_job(lattice, coarse, states[0])]
      target = self._rtol * max(float(jnp.max(jnp.abs(self._y))), np.finfo(np.dtype(self._y.dtype)).tiny)
      for refinement in itertools.count():
        jobs.append(self._solve_job(lattice, _bisect(np.asarray(states[0]['grid'], np.float64)), states[1]))
        outs = [[], []]
        self._sweep(x1, lattice, jobs + [self._request_job(lattice, s, times, test, o) for s, o in zip(states, outs)])
        err = float(jnp.max(jnp.abs(states[1]['g'][::2] - states[0]['g']))) / 3
        if err <= target or refinement == self._max_refinements:
          break
        states, jobs = [states[1], {}], []
      if err > target:
        warnings.warn(
          f'The mean solver reached max_refinements={self._max_refinements} with an estimated error '
          f'{err:.3g} > rtol·max|Y| = {target:.3g} ({len(states[1]["grid"])} grid times up to '
          f't = {t_max:g}); raise `max_refinements` or lower `first_step`.',
          RuntimeWarning,
          stacklevel=3,
        )
      self.error_estimate = err
      self._mean = (lattice, *states)
    coarse, fine = (jnp.concatenate(out) for out in outs)
    return fine + (fine - coarse) / 3

  # --- T > 0, finite t: the covariance ------------------------------------------------------------------------

  def _default_cov_grid(self, t_max: float) -> np.ndarray:
    """The mean solver's final fine grid (solving the mean up to t_max if it is not cached)."""
    if self._mean is None or float(self._mean[2]['grid'][-1]) < t_max:
      self._mean_at(np.array([t_max]), None)
    return np.asarray(self._mean[2]['grid'], np.float64)

  def _covariance_grid(self, t_max: float) -> np.ndarray:
    """Nodes of ``cov_grid`` (default: the mean solver's fine grid) below t_max, starting at 0."""
    base = self._default_cov_grid(t_max) if self._cov_grid is None else self._cov_grid
    if base[-1] < t_max:
      raise ValueError(f'`cov_grid` must reach the last requested time {t_max:g}, but it ends at {base[-1]:g}.')
    return np.union1d(base[base < t_max], [0.0])

  def _check_covariance_memory(self, n_c: int, x_test, t_max: float) -> None:
    """Raise MemoryError, saying how much is needed, if the covariance on n_c grid times does not fit."""
    p = self._p
    m = p + (0 if x_test is None else x_test.shape[0])
    itemsize = np.dtype(self._y.dtype).itemsize
    size = n_c * p
    # A' = D^{-1}A and C' = D^{-1} C D^{-T} (two dense (n_c·P)² matrices) plus per-time rows and kernel chunks.
    need = itemsize * (2 * size**2 + 6 * size * m + 8 * self._max_elements)
    available = _available_memory() if self._memory_limit is None else self._memory_limit
    if need > available:
      fits = int(math.sqrt(max(available / itemsize - 8 * self._max_elements, 0) / 2) / p)
      raise MemoryError(
        f'The covariance on a grid of {n_c} times with P = {p} training points needs about '
        f'{need / 2**30:.2f} GiB (two dense (n_times·P)² = ({size})² matrices in '
        f'{np.dtype(self._y.dtype).name}), but only {available / 2**30:.2f} GiB are available. Pass a coarser '
        f'`cov_grid` (at most ~{fits} times below t = {t_max:g}) or raise `memory_limit`.'
      )

  def _precheck_covariance_memory(self, times: np.ndarray, x_test) -> None:
    """Fail before any solving when even the smallest possible covariance grid does not fit (the default grid
    has at least the nodes of the mean solver's first bisected grid)."""
    t_max = float(times[-1])
    if t_max == 0:
      return
    if self._cov_grid is None:
      base = _bisect(time_grid(t_max, first_step=self._first_step, growth=self._growth, max_step=self._max_step))
    else:
      base = self._cov_grid
    self._check_covariance_memory(len(np.union1d(base[base < t_max], [0.0])), x_test, t_max)

  def _covariance(self, times: np.ndarray, x_test) -> jax.Array:
    """Covariance of f(x, t) at finite times (THEORY.md §4), exact for the trapezoid discretisation on the
    covariance grid: δf(X) = A^{-1} f_free(X) with A = I + (trapezoid 𝓡), block lower triangular; requested
    times are Nyström rows on that grid."""
    t_max = float(times[-1])
    grid = self._covariance_grid(t_max) if t_max > 0 else np.zeros(1)
    self._check_covariance_memory(len(grid), x_test, t_max)
    grid_j = jnp.asarray(grid, self._y.dtype)
    a, c, d_inv = self._assemble(self._x, grid_j)
    return self._cov_rows(self._x, a, c, d_inv, grid_j, jnp.asarray(times, self._y.dtype), x_test)

  def _assemble_impl(self, x, grid: jax.Array):
    """A' = D^{-1} A (unit block lower triangular) and C' = D^{-1} C D^{-T} on the grid, D = blockdiag(A_ii),
    A_ij = w_ij R(t_i, t_j, X, X) (j < i), A_ii = I + w_ii R(t_i, t_i, X, X), C_ij = C(t_i, t_j, X, X)."""
    n_c, p, dtype = grid.shape[0], self._p, self._y.dtype
    eye = jnp.eye(p, dtype=dtype)
    r_diag = lax.map(lambda t: self._kernel(x, x, t[None], t[None])[1][0, 0], grid)
    w_diag = jnp.concatenate([jnp.zeros((1,), dtype), 0.5 * jnp.diff(grid)])
    d_inv = jnp.linalg.inv(eye + w_diag[:, None, None] * r_diag)
    chunk = self._chunk(p, n_c)
    grid_p = _pad(grid, chunk)
    cols = jnp.arange(n_c)

    def block_row(i):
      nngp, ndk = (k[:n_c] for k in self._kernel_row(x, x, grid[i], grid_p, chunk))
      w, _ = _trapezoid_row(grid, i - 1, grid[i])
      a_row = jnp.einsum('ab,j,jbc->ajc', d_inv[i], w, ndk) + (cols == i)[None, :, None] * eye[:, None, :]
      c_row = jnp.einsum('ab,jbc,jdc->ajd', d_inv[i], nngp, d_inv)
      return a_row.reshape(p, n_c * p), c_row.reshape(p, n_c * p)

    a, c = lax.map(block_row, cols)
    return a.reshape(n_c * p, n_c * p), c.reshape(n_c * p, n_c * p), d_inv

  def _cov_rows_impl(self, x, a, c, d_inv, grid, times, x_test):
    """Covariance at each requested time t* (a Nyström row on the grid, x1 = X or X ∪ x*).

    With B = [w_j R(t*, t_j, x1, X)]_j, D* = I + w_* R(t*, t*, X, X) and H = w_* R(t*, t*, x1, X) D*^{-1}:
    δf(x1, t*) = L f_free(x1, t*) − B' δf(X, grid), L = I − H S_X, B' = B − H B_X (S_X picks the X rows).
    With Q = B' A'^{-1}: Cov = L C(t*, t*) Lᵀ − Q D^{-1} C(grid, t*; X, x1) Lᵀ − (…)ᵀ + Q C' Qᵀ.
    """
    n_c, p, dtype = grid.shape[0], self._p, self._y.dtype
    x1 = x if x_test is None else jnp.concatenate([x, x_test])
    m1 = x1.shape[0]
    out = slice(0, p) if x_test is None else slice(p, m1)
    chunk = self._chunk(m1, n_c)
    grid_p = _pad(grid, chunk)
    select_x = jnp.eye(m1, p, dtype=dtype).T

    def one(t_star):
      k = jnp.searchsorted(grid, t_star, side='left') - 1
      w, w_star = _trapezoid_row(grid, k, t_star)
      nngp, ndk = (kk[:n_c] for kk in self._kernel_row(x1, x, t_star, grid_p, chunk))
      c_ss, r_ss = (kk[0, 0] for kk in self._kernel(x1, x1, t_star[None], t_star[None]))
      d_star = jnp.eye(p, dtype=dtype) + w_star * r_ss[:p, :p]
      h = jnp.linalg.solve(d_star.T, w_star * r_ss[out, :p].T).T
      b = jnp.einsum('j,jmp->mjp', w, ndk).reshape(m1, n_c * p)
      ell = jnp.eye(m1, dtype=dtype)[out] - h @ select_x
      q = lax.linalg.triangular_solve(a, b[out] - h @ b[:p], left_side=False, lower=True, unit_diagonal=True)
      cross = q @ jnp.einsum('jab,jmb->jam', d_inv, nngp).reshape(n_c * p, m1) @ ell.T
      return ell @ c_ss @ ell.T - cross - cross.T + q @ c @ q.T

    cov = lax.map(one, times)
    return 0.5 * (cov + jnp.swapaxes(cov, 1, 2))


def langevin_mse_ensemble(
  layer_or_ndk_fn: Union[NDKFn, Any],
  x_train,
  y_train,
  *,
  temperature: float,
  relaxation_rates: Optional[tuple[float, ...]] = None,
  rtol: float = DEFAULT_RTOL,
  max_refinements: int = 4,
  first_step: Optional[float] = None,
  growth: float = DEFAULT_GROWTH,
  cov_grid=None,
  memory_limit: Optional[float] = None,
  max_kernel_elements: int = DEFAULT_KERNEL_ELEMENTS,
) -> LangevinPredictor:
  """Predictor of the output distribution of Langevin-trained wide networks on the summed ½-MSE loss.

  The Langevin analogue of ``neural_tangents.predict.gradient_descent_mse_ensemble`` (THEORY.md §4): the mean
  f̄(x, t) and covariance of f(x, t) over initialisations and noise, for an infinite ensemble of infinitely wide
  networks, at any time t of both learning phases (THEORY.md §5). Our loss is not normalised and our NTK is the
  raw one, so at T = 0 this equals Neural Tangents' at t_NT = t · y_train.size (times σ0⁻² for its W_std-scaled
  kernel of a bias-free network with one σ0).

  Accuracy. T = 0 and t = ∞ are closed forms. For T > 0 the mean at finite t solves the Volterra equation
  f̄(X, t) = ∫_0^t R(t, s, X, X)[Y − f̄(X, s)] ds with the product trapezoid rule (implicit, A-stable, second
  order) on a :func:`time_grid` (first step ``first_step``, default 0.5/λ_max(Θ0); growth ``growth``; steps capped
  at the kernels' drift time) and on its bisection; the grid is bisected again (at most ``max_refinements`` times,
  else a RuntimeWarning) until the step-doubling estimate of the fine solution's error, max|f_fine − f_coarse|/3
  over the grid, is ≤ ``rtol`` · max|Y|. The result is the Richardson extrapolation f_fine + (f_fine − f_coarse)/3.
  R is interpolated (cubic in t − s and s) from a lattice whose spacing is halved until the interpolation error at
  probe pairs is ≤ ``rtol`` · max|R(0, 0)|. Together: |f̄ − f̄_exact| ≤ rtol · max|Y| (checked against closed
  forms in the tests; the estimate is kept in ``predictor.error_estimate``). Requested times off the grid use the
  scheme's own Nyström interpolation. The covariance at finite t > 0 is the exact covariance of the trapezoid
  discretisation on ``cov_grid`` (default: the mean solver's final fine grid) with the exact kernels, second order
  in its step (no extrapolation): with the default grid its error is ≲ 10 · rtol of the largest covariance entry
  (checked in the tests); pass a finer ``cov_grid`` for more, a coarser one for less memory and time.

  Cost. The mean holds O(n_t · P · out) state and a ring of 12 lattice rows, 12 · n_lattice · (P + n_test) · P
  values (checked against the free memory up front): the train-train kernel is never stored whole, the grid
  solution is cached and reused by later requests. Kernel work: n_lattice²/2 time pairs (n_lattice for a
  stationary kernel) instead of n_t²/2. Non-smooth activations (ReLU) make R(t, s) non-smooth at s = t
  (√(t − s) terms), which lowers the order of both the quadrature and the interpolation there; the step-doubling
  estimate then refines the grid more. The covariance needs two dense (n_c·P)² matrices (n_c covariance grid
  times) and O(n_c² P² (P + n_test)) work per requested time: its memory is checked up front and a request that
  does not fit raises MemoryError saying how much it needs.

  Args:
    layer_or_ndk_fn: an :class:`ndk_flax.stax.NDKLayer`, or a callable ``ndk_fn(x1, x2, t1, t2, *,
      temperature)`` returning an object with ``nngp`` = C(t1, t2, x1, x2) and ``ndk`` = R(t1, t2, x1, x2) of shape
      (len(t1), len(t2), n1, n2) for 1-D time arrays (``t1 = t2 = inf``: equilibrium).
    x_train: training inputs (P, ...).
    y_train: training targets (P, out).
    temperature: T ≥ 0.
    relaxation_rates: λ = T/σ² of the parameter groups, for ``time_scales`` when a bare ``ndk_fn`` is given
      (taken from the layer otherwise).
    rtol: accuracy target of the mean relative to max|Y| (T > 0).
    max_refinements: how many times the solver may bisect its grid beyond the first step doubling.
    first_step: first step of the base grid (default 0.5/λ_max(Θ0)).
    growth: relative growth of consecutive steps of the base grid.
    cov_grid: 1-D increasing times ≥ 0 on which the covariance is discretised (requested times are added).
    memory_limit: bytes the covariance may use (default: free memory of the host / accelerator).
    max_kernel_elements: bound on len(t1)·len(t2)·n1·n2 per ``ndk_fn`` call in the solvers.

  Returns:
    :class:`LangevinPredictor`: ``predictor(t, x_test=None, compute_cov=False)`` returns the mean
    (len(t), n, out) or ``Gaussian(mean, covariance)`` with covariance (len(t), n, n); also ``time_scales``,
    ``train_loss(t)`` and ``test_mse(t, x_test, y_test)``.
  """
  temperature = V.temperature(temperature)
  if hasattr(layer_or_ndk_fn, 'ndk_fn'):
    ndk_fn = layer_or_ndk_fn.ndk_fn
    if relaxation_rates is None and hasattr(layer_or_ndk_fn, 'relaxation_rates'):
      relaxation_rates = tuple(layer_or_ndk_fn.relaxation_rates(temperature))
  elif callable(layer_or_ndk_fn):
    ndk_fn = layer_or_ndk_fn
  else:
    raise TypeError(
      '`layer_or_ndk_fn` must be an NDKLayer (with an `ndk_fn` method) or a callable '
      f'ndk_fn(x1, x2, t1, t2, *, temperature), got {type(layer_or_ndk_fn).__name__}.'
    )
  if relaxation_rates is not None:
    relaxation_rates = tuple(
      V.positive('relaxation_rates', r) if temperature > 0 else float(r) for r in relaxation_rates
    )
  x_train = V.batched_array('x_train', x_train, 2)
  y_train = V.batched_array('y_train', y_train, 2)
  if y_train.ndim != 2:
    raise ValueError(f'`y_train` must have shape (P, out), got {y_train.shape}.')
  if y_train.shape[0] != x_train.shape[0]:
    raise ValueError(
      f'`x_train` and `y_train` must hold the same number of points, got {x_train.shape[0]} and {y_train.shape[0]}.'
    )
  y_train = y_train.astype(x_train.dtype)
  rtol = V.positive('rtol', rtol)
  if not isinstance(max_refinements, int) or isinstance(max_refinements, bool) or max_refinements < 0:
    raise ValueError(f'`max_refinements` must be an int >= 0, got {max_refinements!r}.')
  if first_step is not None:
    first_step = V.positive('first_step', first_step)
  growth = V.positive('growth', growth)
  if cov_grid is not None:
    cov_grid, _ = V.increasing_times('cov_grid', cov_grid)
    if not np.all(np.isfinite(cov_grid)):
      raise ValueError('`cov_grid` must hold finite times.')
  if memory_limit is not None:
    memory_limit = V.positive('memory_limit', memory_limit)
  if not isinstance(max_kernel_elements, int) or max_kernel_elements < 1:
    raise ValueError(f'`max_kernel_elements` must be an int >= 1, got {max_kernel_elements!r}.')
  return LangevinPredictor(
    ndk_fn,
    x_train,
    y_train,
    temperature,
    relaxation_rates,
    rtol,
    max_refinements,
    first_step,
    growth,
    cov_grid,
    memory_limit,
    max_kernel_elements,
  )
