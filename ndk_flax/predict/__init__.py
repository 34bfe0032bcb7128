"""`ndk_flax.predict`: mean and covariance of the network output over the whole Langevin learning trajectory.

For an infinite ensemble of infinitely wide networks trained by Langevin gradient descent on the summed ½-MSE
loss (docs/theory.md §1), every run satisfies (docs/theory.md §4)

    f(x, t) = f_free(x, t) + ∫_0^t R(t, s, x, X) [Y − f(X, s)] ds,

with f_free a centred Gaussian process of covariance C(t, s, x, x') and R the Neural Dynamical Kernel. This
package solves that equation for the mean f̄ and the covariance, the way ``neural_tangents.predict.
gradient_descent_mse_ensemble`` does for gradient flow. Its modules, one concept each:

* :mod:`~ndk_flax.predict.grid`: time grids and product-trapezoid weights;
* :mod:`~ndk_flax.predict.kernels`: access to C and R through the ``ndk_fn`` contract, with checks;
* :mod:`~ndk_flax.predict.lattice`: the uniform kernel lattice, its cubic interpolation and ring buffer;
* :mod:`~ndk_flax.predict.mean`: the Volterra mean solver (T > 0, finite t);
* :mod:`~ndk_flax.predict.covariance`: the covariance (T > 0, finite t) and its memory estimate;
* :mod:`~ndk_flax.predict.closed_forms`: T = 0, t = 0 and t = ∞;
* memory and cost refusals: :mod:`ndk_flax.resources`; the training points are sharded over all visible devices
  by :mod:`ndk_flax._sharding` (docs/scaling.md).

The public :class:`LangevinPredictor` is stateless: every call computes from scratch, results never depend on
earlier calls. :meth:`LangevinPredictor.predict` also returns what the solver did (:class:`PredictionStats`).

The kernels are only read through ``ndk_fn(x1, x2, t1, t2, *, temperature)`` of :mod:`ndk_flax.stax` (fields
``nngp`` = C and ``ndk`` = R, leading axes ``(len(t1), len(t2))`` for 1-D times), so a hand-written ``ndk_fn``
works as well. The reduced small-temperature equations in slow time τ = λt (docs/theory.md §5) are
:func:`reduced_small_temperature_mean` and :func:`composite_small_temperature_mean` of :mod:`ndk_flax.reduced`,
exported here.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from ndk_flax import _validation as V
from ndk_flax._nt import Gaussian
from ndk_flax._sharding import shard_points
from ndk_flax.predict import closed_forms, covariance
from ndk_flax.predict.grid import DEFAULT_GROWTH, bisect, time_grid
from ndk_flax.predict.kernels import KernelAccess, NDKFn, require_finite
from ndk_flax.predict.mean import MeanSolver, MeanStats
from ndk_flax.reduced import composite_small_temperature_mean, reduced_small_temperature_mean
from ndk_flax.resources import require_memory

__all__ = [
  'DEFAULT_FIRST_STEP',
  'DEFAULT_GROWTH',
  'DEFAULT_KERNEL_ELEMENTS',
  'DEFAULT_MAX_GRID_TIMES',
  'DEFAULT_MAX_KERNEL_PAIRS',
  'DEFAULT_RTOL',
  'Gaussian',
  'LangevinPredictor',
  'MeanStats',
  'Prediction',
  'PredictionStats',
  'TimeScales',
  'composite_small_temperature_mean',
  'langevin_mse_ensemble',
  'reduced_small_temperature_mean',
  'time_grid',
]

DEFAULT_FIRST_STEP = 0.5
"""Default first step of the solver's base grid, in units of the gradient time scale 1/λ_max(Θ0)."""
DEFAULT_RTOL = 1e-3
"""Default accuracy target of the mean, relative to max |Y|."""
DEFAULT_KERNEL_ELEMENTS = 2**22
"""Default bound on n_times · n1 · n2 per ``ndk_fn`` call made by the solver (its memory per call)."""
DEFAULT_MAX_GRID_TIMES = 100_000
"""Default cap on the number of solver grid times of one mean solve (very late times are refused up front)."""
DEFAULT_MAX_KERNEL_PAIRS = 10**7
"""Default cap on the kernel time pairs of one pass over the mean solver's lattice (each an ``ndk_fn`` block of
(P + n*) × P values; ~10 min at P = 6 on one CPU core)."""


class TimeScales(NamedTuple):
  """The two time scales of Langevin learning (docs/theory.md §5).

  Attributes:
    gradient: 1/λ_max(Θ0), the fastest relaxation of the gradient-driven phase (Θ0 = R(0, 0, X, X)).
    diffusive: 1/min λ with λ = T/σ² over the parameter groups (∞ at T = 0), the time scale of weight diffusion.

  Examples:
    One raw Dense layer on x = I₃ has Θ0 = x xᵀ/3 = I/3, so 1/λ_max(Θ0) = 3; with σ_W = 2 and T = 0.5,
    σ²/T = 8:

    >>> import numpy as np
    >>> from ndk_flax import predict, stax
    >>> net = stax.Dense(1, W_std=1.0, W_prior_std=2.0)
    >>> x, y = np.eye(3), np.array([[1.0], [-1.0], [0.5]])
    >>> scales = predict.langevin_mse_ensemble(net, x, y, temperature=0.5).time_scales
    >>> round(scales.gradient, 4), round(scales.diffusive, 4)
    (3.0, 8.0)
    >>> predict.langevin_mse_ensemble(net, x, y, temperature=0.0).time_scales.diffusive
    inf
  """

  gradient: float
  diffusive: float


class PredictionStats(NamedTuple):
  """What one prediction computed.

  Attributes:
    mean: the mean solver's :class:`~ndk_flax.predict.mean.MeanStats` (solver grid times, kernel lattice, kernel
      time pairs evaluated, error estimate), or None when only closed forms were used (T = 0, t ∈ {0, ∞}).
    covariance_grid_times: nodes of the covariance grid (0 without a finite-time covariance at T > 0).

  Examples:
    >>> import numpy as np
    >>> from ndk_flax import predict, stax
    >>> net = stax.Dense(1, W_std=1.0, W_prior_std=2.0)
    >>> x, y = np.eye(3), np.array([[1.0], [-1.0], [0.5]])
    >>> predict.langevin_mse_ensemble(net, x, y, temperature=0.0).predict(np.array([0.0, 3.0])).stats
    PredictionStats(mean=None, covariance_grid_times=0)

    At T > 0 and finite t the mean comes from the Volterra solver, whose step-doubling error estimate meets rtol:

    >>> stats = predict.langevin_mse_ensemble(net, x, y, temperature=0.5).predict(2.0).stats
    >>> stats.mean.error_estimate <= predict.DEFAULT_RTOL, stats.mean.grid_times > 2, stats.covariance_grid_times
    (True, True, 0)
  """

  mean: Optional[MeanStats]
  covariance_grid_times: int


class Prediction(NamedTuple):
  """Mean (n_t, n, out), covariance (n_t, n, n) or None, and :class:`PredictionStats` of one request.

  Examples:
    At T = 0 a raw Dense layer on x = I₃ (Θ0 = C(0, 0) = I/3) follows NTK gradient flow exactly (docs/theory.md
    §5): f̄(t) = (1 − e^{−t/3}) Y, and the initial fluctuation decays as e^{−t/3}, covariance e^{−2t/3} I/3:

    >>> import numpy as np
    >>> from ndk_flax import predict, stax
    >>> x, y = np.eye(3), np.array([[1.0], [-1.0], [0.5]])
    >>> predictor = predict.langevin_mse_ensemble(stax.Dense(1), x, y, temperature=0.0)
    >>> out = predictor.predict(np.array([0.0, 3.0]), compute_cov=True)
    >>> out.mean.shape, out.covariance.shape
    ((2, 3, 1), (2, 3, 3))
    >>> bool(np.allclose(out.mean[1], (1 - np.exp(-1.0)) * y, atol=1e-6))
    True
    >>> bool(np.allclose(out.covariance[1], np.exp(-2.0) * np.eye(3) / 3, atol=1e-6))
    True
    >>> predictor.predict(3.0).covariance is None
    True
  """

  mean: jax.Array
  covariance: Optional[jax.Array]
  stats: PredictionStats


class LangevinPredictor:
  """Mean and covariance of the network output f(x, t) of the infinite ensemble (docs/theory.md §4).

  Built by :func:`langevin_mse_ensemble`; call as ``predictor(t, x_test=None, compute_cov=False)``, or
  ``predictor.predict(...)`` for a :class:`Prediction` with stats. Stateless: the object holds the problem, the
  settings, Θ0's eigendecomposition and compiled functions only.

  Examples:
    >>> import numpy as np
    >>> from ndk_flax import predict, stax
    >>> net = stax.serial(stax.Dense(8), stax.Erf(), stax.Dense(1))
    >>> x, y = np.eye(3), np.array([[1.0], [-1.0], [0.5]])
    >>> predictor = predict.langevin_mse_ensemble(net, x, y, temperature=0.0)
    >>> np.round(predictor(np.inf), 6).ravel().tolist()
    [1.0, -1.0, 0.5]
  """

  def __init__(
    self,
    access: KernelAccess,
    relaxation_rates: Optional[tuple[float, ...]],
    rtol: float,
    max_refinements: int,
    first_step: Optional[float],
    growth: float,
    cov_grid: Optional[np.ndarray],
    memory_limit: Optional[float],
    max_grid_times: int,
    max_kernel_pairs: int,
    progress: bool = False,
  ):
    self._access = access
    self.temperature = access.temperature
    self._rates = relaxation_rates
    self._cov_grid = cov_grid
    self._memory_limit = memory_limit
    x = access.x
    zero = access.times(0.0)
    k0, theta0 = (k[0, 0] for k in access(x, x, zero, zero))
    require_finite('`ndk_fn` (C and R)', k0 + theta0, 'at t = 0 on `x_train`')
    evals, evecs = jnp.linalg.eigh(theta0)
    self._frozen = closed_forms.FrozenKernels(k0, theta0, evals, evecs)
    lam_max = float(evals[-1])
    if not lam_max > 0:
      raise ValueError(f'Θ0 = R(0, 0, X, X) must have a positive eigenvalue, got λ_max = {lam_max}.')
    self._lam_max = lam_max
    max_step = access.drift_time(lam_max, growth) if self.temperature > 0 else math.inf
    if first_step is None:  # the fastest relaxation over the trajectory: R(t, t) can grow far beyond Θ0
      first_step = DEFAULT_FIRST_STEP / lam_max / (access.peak_diagonal_ratio(lam_max) if self.temperature > 0 else 1)
    self._mean = MeanSolver(
      access,
      theta0,
      (evals, evecs),
      first_step,
      growth,
      max_step,
      rtol,
      max_refinements,
      max_grid_times,
      max_kernel_pairs,
      memory_limit,
      progress,
    )
    self._cov = covariance.CovarianceSolver(access, memory_limit)

  # --- public API -------------------------------------------------------------------------------------------

  @property
  def mean_solver(self) -> MeanSolver:
    """The (stateless) :class:`~ndk_flax.predict.mean.MeanSolver` of this problem, e.g. for raw grid solutions."""
    return self._mean

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
    out = self.predict(t, x_test, compute_cov)
    return Gaussian(out.mean, out.covariance) if compute_cov else out.mean

  def predict(self, t, x_test=None, compute_cov: bool = False) -> Prediction:
    """As :meth:`__call__`, returning a :class:`Prediction` (mean, covariance or None, stats)."""
    times, scalar, x_test, lattice = self._planned(t, x_test, compute_cov)
    stats = PredictionStats(None, 0)
    if self.temperature == 0:
      mean, cov = closed_forms.frozen(self._access, self._frozen, times, x_test, compute_cov)
    else:
      mean, cov, stats = self._finite_temperature(times, x_test, compute_cov, lattice)
    if scalar:
      mean = mean[0]
      cov = None if cov is None else cov[0]
    return Prediction(mean, cov, stats)

  def check_request(self, t, x_test=None, compute_cov: bool = False) -> None:
    """Make every check :meth:`predict` makes before it computes, and nothing else: the arguments, the memory of
    closed forms, of the mean solver's kernel ring and of the covariance (on its smallest grid), and the work of the
    mean (solver grid times against ``max_grid_times``, lattice kernel pairs against ``max_kernel_pairs``). Raises
    what :meth:`predict` would raise up front: TypeError / ValueError for arguments and work, MemoryError for
    memory. Costs a few small ``ndk_fn`` calls (the lattice choice) at T > 0.

    Examples:
      >>> import numpy as np
      >>> from ndk_flax import predict, stax
      >>> net = stax.Dense(1, W_std=1.0, W_prior_std=2.0)
      >>> predictor = predict.langevin_mse_ensemble(net, np.eye(3), np.ones((3, 1)), temperature=0.5)
      >>> predictor.check_request(np.array([1.0, 2.0]), np.ones((2, 3)), compute_cov=True)  # fits: no error
      >>> try:
      ...   predictor.check_request(1.0, np.ones((30_000, 3)), compute_cov=True)
      ... except MemoryError as e:
      ...   print(str(e).split(' needs')[0])
      The covariance at 1 times of 30000 points on a grid of 2 times with P = 3 training points (two dense ...)
    """
    self._planned(t, x_test, compute_cov)

  def train_loss(self, t) -> jax.Array:
    """½ Σ_μ ‖y_μ − f̄(x_μ, t)‖² per time (the loss of the ensemble mean), shape (len(t),) or scalar."""
    mean = self(t)
    return 0.5 * jnp.sum((self._access.y - mean) ** 2, axis=(-2, -1))

  def test_mse(self, t, x_test, y_test) -> jax.Array:
    """Mean over points and outputs of (f̄(x*, t) − y*)², shape (len(t),) or scalar."""
    if x_test is None:
      raise ValueError('`x_test` must be given to compute the test MSE.')
    y_test = V.batched_array('y_test', y_test, 2)
    x_test = V.inputs_like('x_test', x_test, self._access.x)
    out = self._access.y.shape[1]
    if y_test.shape != (x_test.shape[0], out):
      raise ValueError(f'`y_test` must have shape (n_test, out) = ({x_test.shape[0]}, {out}), got {y_test.shape}.')
    mean = self(t, x_test)
    return jnp.mean((mean - y_test) ** 2, axis=(-2, -1))

  # --- T > 0 ------------------------------------------------------------------------------------------------

  def _planned(self, t, x_test, compute_cov):
    """(times, scalar, x_test, lattice) of a request after every up-front check (:meth:`check_request`); the
    lattice of the mean solver, or None without finite times > 0 at T > 0."""
    times, scalar = V.increasing_times('t', t)
    x_test = None if x_test is None else V.inputs_like('x_test', x_test, self._access.x)
    if not isinstance(compute_cov, bool):
      raise TypeError(f'`compute_cov` must be a bool, got {compute_cov!r}.')
    self._check_closed_form_memory(times, x_test, compute_cov)
    finite = times[np.isfinite(times) & (times > 0)]
    lattice = None
    if self.temperature > 0 and finite.size:
      if compute_cov:
        self._precheck_covariance_memory(finite, x_test)
      lattice = self._mean.plan(float(finite[-1]), 0 if x_test is None else x_test.shape[0])
    return times, scalar, x_test, lattice

  def _finite_temperature(self, times: np.ndarray, x_test, compute_cov: bool, lattice):
    """Closed forms at t = 0 and t = ∞, the solvers in between (memory and cost checked by :meth:`_planned`)."""
    initial = times[times == 0]
    finite = times[np.isfinite(times) & (times > 0)]
    parts = []
    if initial.size:
      parts.append(closed_forms.initial(self._access, self._frozen, initial.size, x_test, compute_cov))
    mean_stats, n_grid = None, 0
    if finite.size:
      mean, mean_stats, fine_grid = self._mean.mean(finite, x_test, lattice)
      cov = None
      if compute_cov:
        grid = self._covariance_grid(float(finite[-1]), fine_grid)
        n_grid = len(grid)
        cov = self._cov(grid, finite, x_test)
      parts.append((mean, cov))
    if np.isinf(times[-1]):
      parts.append(closed_forms.equilibrium(self._access, x_test, compute_cov))
    mean = jnp.concatenate([m for m, _ in parts])
    cov = jnp.concatenate([c for _, c in parts]) if compute_cov else None
    return mean, cov, PredictionStats(mean_stats, n_grid)

  def _covariance_grid(self, t_max: float, fine_grid: np.ndarray) -> np.ndarray:
    """Nodes of ``cov_grid`` (default: the mean solver's final fine grid) below t_max, starting at 0."""
    base = fine_grid if self._cov_grid is None else self._cov_grid
    if base[-1] < t_max:
      raise ValueError(f'`cov_grid` must reach the last requested time {t_max:g}, but it ends at {base[-1]:g}.')
    return np.union1d(base[base < t_max], [0.0])

  def _precheck_covariance_memory(self, finite: np.ndarray, x_test) -> None:
    """Fail before any solving when even the smallest possible covariance grid does not fit (the default grid
    has at least the nodes of the mean solver's first bisected grid)."""
    t_max = float(finite[-1])
    base = bisect(self._mean.base_grid(t_max)) if self._cov_grid is None else self._cov_grid
    self._cov.check_memory(len(np.union1d(base[base < t_max], [0.0])), x_test, finite.size, t_max)

  def _check_closed_form_memory(self, times: np.ndarray, x_test, compute_cov: bool) -> None:
    """Refuse closed-form requests (T = 0, t = 0, t = ∞) that cannot fit, before any kernel is evaluated."""
    closed = times.size if self.temperature == 0 else int(np.sum((times == 0) | np.isinf(times)))
    if not closed:
      return
    access = self._access
    n_test = None if x_test is None else x_test.shape[0]
    need = covariance.closed_form_bytes(access.p, n_test, closed, access.dtype.itemsize)
    if not compute_cov:
      need = access.dtype.itemsize * 2 * closed * (n_test or access.p) * access.p
    what = 'covariance' if compute_cov else 'mean'
    require_memory(
      f'The closed-form {what} at {closed} times of {n_test or access.p} points',
      need,
      remedy='request fewer test points or times at once, or raise `memory_limit`',
      limit=self._memory_limit,
    )


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
  max_grid_times: int = DEFAULT_MAX_GRID_TIMES,
  max_kernel_pairs: int = DEFAULT_MAX_KERNEL_PAIRS,
  progress: bool = True,
) -> LangevinPredictor:
  """Predictor of the output distribution of Langevin-trained wide networks on the summed ½-MSE loss.

  The Langevin analogue of ``neural_tangents.predict.gradient_descent_mse_ensemble`` (docs/theory.md §4): the mean
  f̄(x, t) and covariance of f(x, t) over initialisations and noise, for an infinite ensemble of infinitely wide
  networks, at any time t of both learning phases (docs/theory.md §5). Our loss is not normalised and our NTK is the
  raw one, so at T = 0 this equals Neural Tangents' at t_NT = t · y_train.size (times σ0⁻² for its W_std-scaled
  kernel of a bias-free network with one σ0).

  Accuracy. T = 0 and t = ∞ are closed forms. For T > 0 the mean at finite t solves the Volterra equation
  f̄(X, t) = ∫_0^t R(t, s, X, X)[Y − f̄(X, s)] ds with the product trapezoid rule (implicit, A-stable, second
  order) on a :func:`time_grid` (first step ``first_step``, default 0.5/max_t λ_max(R(t, t)), i.e. 0.5/λ_max(Θ0)
  unless R grows; growth ``growth``; steps capped at the kernels' drift time) and on its bisection; the grid is
  bisected again (at most ``max_refinements`` times, else a RuntimeWarning) until the step-doubling estimate of the
  fine solution's error, max|f_fine − f_coarse|/3 over the grid, is ≤ ``rtol`` · max|Y|. The result is the
  Richardson extrapolation f_fine + (f_fine − f_coarse)/3. R is interpolated (cubic in t − s and s) from a lattice
  whose spacing is halved until the interpolation error at probe pairs is ≤ ``rtol``/12 · max|R| (so that the
  interpolant's kinks at lattice nodes stay invisible on curves). Together: |f̄ − f̄_exact| ≤ rtol · max|Y| (checked
  against closed forms in the tests; the estimate is in ``predictor.predict(...).stats.mean.error_estimate``).
  Requested times off the grid are Nyström rows of the scheme, with a smoothed last interval
  (:func:`~ndk_flax.predict.grid.trapezoid_row`) so that curves between grid nodes do not zig-zag. The covariance at
  finite t > 0 is the exact covariance of the trapezoid discretisation on ``cov_grid`` (default: the mean solver's
  final fine grid) with the exact kernels, second order in its step (no extrapolation): with the default grid its
  error is ≲ 10 · rtol of the largest covariance entry (checked in the tests); pass a finer ``cov_grid`` for more, a
  coarser one for less memory and time.

  Cost. The mean holds O(n_t · P · out) state and a ring of 12 lattice rows, 12 · n_lattice · (P + n_test) · P values
  (5 more rows for a lattice that interpolates rows along t − s; one row if stationary; checked against the free
  memory up front): the train-train kernel is never stored whole. A solver row reads the
  history of earlier lattice windows from far-field sums updated once per window (docs/theory.md §4.2). Every call
  solves from scratch (no hidden cache). A request whose solver grid would exceed ``max_grid_times`` (very late times
  at small T) or whose kernel lattice would need more than ``max_kernel_pairs`` time pairs per pass is refused up
  front with its estimated size (:meth:`LangevinPredictor.check_request` makes these checks alone). Kernel work:
  at most n_lattice²/2 time pairs (fewer with a band and diagonal rows, see
  :class:`~ndk_flax.predict.lattice.Lattice`; n_lattice for a stationary kernel) instead of n_t²/2. Non-smooth
  activations (ReLU) make R(t, s) non-smooth at s = t (√(t − s) terms), which lowers the order of both the
  quadrature and the interpolation there; the step-doubling estimate then refines the grid more. The covariance
  needs two dense (n_c·P)² matrices (n_c covariance grid times) and O(n_c² P² (P + n_test)) work per requested time:
  its memory is checked up front and a request that does not fit raises MemoryError saying how much it needs.

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
    first_step: first step of the base grid (default 0.5/λ_max(Θ0), divided by the growth of ‖R(t, t)‖ over ‖Θ0‖
      when R grows, e.g. for σ0 < σ).
    growth: relative growth of consecutive steps of the base grid.
    cov_grid: 1-D increasing times ≥ 0 on which the covariance is discretised (requested times are added).
    memory_limit: bytes the covariance may use (default: free memory of the host / accelerator).
    max_kernel_elements: bound on len(t1)·len(t2)·n1·n2 per ``ndk_fn`` call in the solvers.
    max_grid_times: cap on the solver grid times of one mean solve (its cost is about linear in them).
    max_kernel_pairs: cap on the kernel time pairs of one pass over the mean solver's kernel lattice.
    progress: show a tqdm bar over each solver sweep (kernel pairs and solver rows; only when stderr is a terminal).

  Returns:
    :class:`LangevinPredictor`: ``predictor(t, x_test=None, compute_cov=False)`` returns the mean
    (len(t), n, out) or ``Gaussian(mean, covariance)`` with covariance (len(t), n, n); also ``time_scales``,
    ``train_loss(t)``, ``test_mse(t, x_test, y_test)`` and ``predict(...)`` (with stats).

  Examples:
    >>> import numpy as np
    >>> from ndk_flax import predict, stax
    >>> net = stax.serial(stax.Dense(8, W_std=1.0, W_prior_std=0.9), stax.Erf(), stax.Dense(1))
    >>> x, y = np.eye(3), np.array([[1.0], [-1.0], [0.5]])
    >>> predictor = predict.langevin_mse_ensemble(net, x, y, temperature=0.1)
    >>> out = predictor.predict(np.array([0.0, 2.0]), x[:1])
    >>> out.mean.shape, out.stats.mean.error_estimate <= predict.DEFAULT_RTOL
    ((2, 1, 1), True)
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
  max_kernel_elements = V.positive_int('max_kernel_elements', max_kernel_elements)
  max_grid_times = V.positive_int('max_grid_times', max_grid_times)
  if max_grid_times < 2:
    raise ValueError(f'`max_grid_times` must be an int >= 2, got {max_grid_times!r}.')
  max_kernel_pairs = V.positive_int('max_kernel_pairs', max_kernel_pairs)
  if not isinstance(progress, bool):
    raise TypeError(f'`progress` must be a bool, got {progress!r}.')
  return LangevinPredictor(
    KernelAccess(ndk_fn, shard_points(x_train), y_train, temperature, max_kernel_elements),
    relaxation_rates,
    rtol,
    max_refinements,
    first_step,
    growth,
    cov_grid,
    memory_limit,
    max_grid_times,
    max_kernel_pairs,
    progress,
  )
