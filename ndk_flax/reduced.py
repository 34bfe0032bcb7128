"""Reduced small-temperature equations of Langevin learning in slow time τ = λt (THEORY.md §5).

For T → 0 the two learning phases separate. In the gradient-driven phase (t = O(1)) the mean follows NTK gradient
flow and ends on the NTK interpolant; in the diffusive phase (t = O(1/λ), λ = T/σ²) the training error stays O(T)
and the test prediction moves from the NTK(σ0²) interpolant to the noise-free NNGP(σ²) interpolant. Writing
Y − f̄(X, t) = λ ε(τ) with τ = λt, the leading order in T of the Volterra equation of THEORY.md §4 is

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

import functools
import math
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DEFAULT_MAX_STEP = 0.05
"""Default step of the fine τ grid (the kernels move on the scale Δτ ~ 1)."""


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


def _check_taus(taus, name: str = 'taus') -> np.ndarray:
  try:
    arr = np.atleast_1d(np.asarray(taus, dtype=np.float64))
  except (TypeError, ValueError):
    raise TypeError(f'`{name}` must be a 1-D array of times ≥ 0, got {taus!r}.') from None
  if arr.ndim != 1 or arr.size == 0:
    raise ValueError(f'`{name}` must be a non-empty 1-D array of times, got shape {arr.shape}.')
  if np.any(np.isnan(arr)) or np.any(arr < 0):
    raise ValueError(f'`{name}` must hold times ≥ 0 (inf allowed, no NaN), got {arr}.')
  if np.any(np.diff(arr) <= 0):
    raise ValueError(f'`{name}` must be strictly increasing, got {arr}.')
  return arr


def _positive(name: str, value) -> float:
  try:
    out = float(value)
  except (TypeError, ValueError):
    raise TypeError(f'`{name}` must be a real number, got {value!r}.') from None
  if not math.isfinite(out) or out <= 0:
    raise ValueError(f'`{name}` must be finite and > 0, got {value!r}.')
  return out


def _array(name: str, x, ndim_min: int) -> jax.Array:
  try:
    x = jnp.asarray(x)
  except TypeError:
    raise TypeError(f'`{name}` must be an array, got {type(x).__name__}.') from None
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.result_type(float))
  if x.ndim < ndim_min:
    raise ValueError(f'`{name}` must have at least {ndim_min} dimensions (batch first), got shape {x.shape}.')
  if not bool(jnp.all(jnp.isfinite(x))):
    raise ValueError(f'`{name}` contains NaN or inf.')
  return x


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
    raise TypeError('`layer_or_ndk_fn` must be an NDKLayer (with an `ndk_fn` method) or a callable '
                    f'ndk_fn(x1, x2, t1, t2, *, temperature), got {type(layer_or_ndk_fn).__name__}.')
  return ndk_fn, _positive('relaxation_rate', relaxation_rate)


class _Problem(NamedTuple):
  """A reduced problem: ``ndk_fn`` (static under ``jax.jit``), T and λ (traced, so that T does not recompile)."""
  ndk_fn: NDKFn
  temperature: Any
  rate: Any


def _response(problem: _Problem, x1, x2, taus1, taus2):
  """R(τ1/λ, τ2/λ, x1, x2) of shape (len(τ1), len(τ2), n1, n2)."""
  return problem.ndk_fn(x1, x2, taus1 / problem.rate, taus2 / problem.rate, temperature=problem.temperature).ndk


@functools.partial(jax.jit, static_argnums=(0, 1))
def _solve_eps(ndk_fn: NDKFn, n_steps: int, temperature, rate, h, x, y, theta_inv_y) -> jax.Array:
  """Midpoint rule: ε_j ≈ ε((j + ½)h), j < n_steps, from Σ_{j<n} h R(τ_n, m_j) ε_j = Y − R(τ_n, 0) Θ0⁻¹Y."""
  problem = _Problem(ndk_fn, temperature, rate)
  dtype = y.dtype
  nodes = h * jnp.arange(1, n_steps + 1, dtype=dtype)
  mids = h * (jnp.arange(n_steps, dtype=dtype) + 0.5)
  start = _response(problem, x, x, nodes, jnp.zeros((1,), dtype))[:, 0]
  rhs = y[None] - jnp.einsum('nab,bo->nao', start, theta_inv_y)

  def step(eps, n):
    row = _response(problem, x, x, nodes[n][None], mids)[0]   # (N, P, P); zero where m_j > τ_n (causality)
    history = h * jnp.einsum('jab,jbo->ao', row, eps)          # ε_j = 0 for j ≥ n (not solved yet)
    return eps.at[n].set(jnp.linalg.solve(h * row[n], rhs[n] - history)), None

  eps, _ = lax.scan(step, jnp.zeros((n_steps,) + y.shape, dtype), jnp.arange(n_steps))
  return eps


@functools.partial(jax.jit, static_argnums=0)
def _evaluate(ndk_fn: NDKFn, temperature, rate, h, eps, theta_inv_y, x, y, x_test, taus):
  """(f̄(x*, τ), ε(τ)) at finite τ ≤ n_steps·h, Nyström-style on the solved grid.

  With k the last node ≤ τ − h/2 (k = 0 near the start), the whole intervals below τ_k keep their midpoint values
  ε_j and the last, partial interval [τ_k, τ] gets its own midpoint value ε*, solved from the equation collocated
  at τ itself: (τ − τ_k) R(τ, m*) ε* = Y − R(τ, 0)Θ0⁻¹Y − Σ_{j<k} h R(τ, m_j) ε_j (so the training equation holds
  exactly at every requested τ); then f̄(x*, τ) = R(τ, 0, x*, X)Θ0⁻¹Y + Σ_{j<k} h R(τ, m_j, x*, X) ε_j
  + (τ − τ_k) R(τ, m*, x*, X) ε*. ε(τ) is ε* moved from m* to τ with the slope of the grid values.
  """
  problem = _Problem(ndk_fn, temperature, rate)
  dtype = eps.dtype
  n_steps = eps.shape[0]
  p = x.shape[0]
  mids = h * (jnp.arange(n_steps, dtype=dtype) + 0.5)
  x1 = jnp.concatenate([x, x_test])

  def one(tau):
    k = jnp.floor(tau / h)
    k = jnp.clip(jnp.where(tau - k * h < 0.5 * h, k - 1, k), 0, n_steps - 1)
    length = tau - k * h
    m_star = k * h + 0.5 * length
    row = _response(problem, x1, x, tau[None], jnp.concatenate([jnp.zeros((1,), dtype), mids, m_star[None]]))[0]
    start = row[0] @ theta_inv_y
    whole = jnp.einsum('j,jab,jbo->ao', jnp.where(jnp.arange(n_steps) < k, h, 0.), row[1:-1], eps)
    residual = y - start[:p] - whole[:p]
    safe = jnp.where(length > 0, length, 1.)
    eps_star = jnp.where(length > 0, jnp.linalg.solve(safe * row[-1, :p], residual), eps[0])
    i = jnp.clip(jnp.floor(tau / h - 0.5), 0, n_steps - 2).astype(jnp.int32)
    slope = (eps[i + 1] - eps[i]) / h
    mean = start[p:] + whole[p:] + length * row[-1, p:] @ eps_star
    return mean, eps_star + (tau - jnp.where(length > 0, m_star, 0.5 * h)) * slope

  return lax.map(one, taus)


class _Prepared(NamedTuple):
  ndk_fn: NDKFn
  temperature: float
  rate: float
  x: jax.Array
  y: jax.Array
  x_test: Optional[jax.Array]
  theta_inv_y: jax.Array


def _prepare(layer_or_ndk_fn, x_train, y_train, x_test, temperature, relaxation_rate) -> _Prepared:
  """Validated inputs, λ and Θ0⁻¹Y (raises if Θ0 = R(0, 0, X, X) is singular)."""
  try:
    temperature = float(temperature)
  except (TypeError, ValueError):
    raise TypeError(f'`temperature` must be a real number, got {temperature!r}.') from None
  if not math.isfinite(temperature) or temperature <= 0:
    raise ValueError(f'`temperature` must be finite and > 0 (τ = λt with λ = T/σ²), got {temperature!r}.')
  ndk_fn, rate = _ndk_and_rate(layer_or_ndk_fn, temperature, relaxation_rate)
  x = _array('x_train', x_train, 2)
  y = _array('y_train', y_train, 2).astype(x.dtype)
  if y.ndim != 2 or y.shape[0] != x.shape[0]:
    raise ValueError(f'`y_train` must have shape (P, out) with P = {x.shape[0]} (the rows of `x_train`), '
                     f'got {y.shape}.')
  if x_test is not None:
    x_test = _array('x_test', x_test, 2).astype(x.dtype)
    if x_test.shape[1:] != x.shape[1:]:
      raise ValueError(f'`x_test` must have shape (n, {", ".join(map(str, x.shape[1:]))}) like `x_train`, '
                       f'got {x_test.shape}.')
  zero = jnp.zeros((1,), x.dtype)
  theta0 = _response(_Problem(ndk_fn, temperature, rate), x, x, zero, zero)[0, 0]
  evals = jnp.linalg.eigvalsh(theta0)
  if not float(evals[0]) > _SINGULAR * float(evals[-1]):
    raise ValueError(f'Θ0 = R(0, 0, X, X) is singular on `x_train` (eigenvalues {float(evals[0]):.3g} … '
                     f'{float(evals[-1]):.3g}): the NTK interpolant is not defined (duplicate inputs?).')
  return _Prepared(ndk_fn, temperature, rate, x, y, x_test, jnp.linalg.solve(theta0, y))


def reduced_small_temperature_mean(layer_or_ndk_fn: Union[Any, NDKFn], x_train, y_train, *, temperature: float,
                                   taus, x_test=None, relaxation_rate: Optional[float] = None,
                                   max_step: float = DEFAULT_MAX_STEP) -> ReducedSolution:
  """Mean predictor of Langevin learning to leading order in T, in slow time τ = λt (THEORY.md §5).

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

  Returns:
    :class:`ReducedSolution`.
  """
  prep = _prepare(layer_or_ndk_fn, x_train, y_train, x_test, temperature, relaxation_rate)
  return _reduced(prep, _check_taus(taus), _positive('max_step', max_step))


def _reduced(prep: _Prepared, taus: np.ndarray, max_step: float) -> ReducedSolution:
  ndk_fn, temperature, rate, x, y, x_test, theta_inv_y = prep
  x1 = x if x_test is None else x_test
  dtype = y.dtype
  finite = taus[np.isfinite(taus)]
  means, residuals = [], []
  error = 0.
  if finite.size:
    top = max(float(finite[-1]), 2 * max_step)
    n_fine = 2 * max(2, math.ceil(top / max_step / 2))
    h = top / n_fine
    taus_j = jnp.asarray(finite, dtype)
    fine, coarse = (_evaluate(ndk_fn, temperature, rate, step,
                              _solve_eps(ndk_fn, n_fine, temperature, rate, step, x, y, theta_inv_y), theta_inv_y, x, y,
                              x1, taus_j) for step in (h, 2 * h))
    mean, eps = fine
    error = max(float(jnp.max(jnp.abs(f - c)) / jnp.max(jnp.abs(f))) for f, c in zip(fine, coarse)) / 3
    means.append(y[None] - rate * eps if x_test is None else mean)
    residuals.append(rate * eps)
  if finite.size < taus.size:
    inf = jnp.full((1,), jnp.inf, dtype)
    k_xx = ndk_fn(x, x, inf, inf, temperature=temperature).nngp[0, 0]
    k_inv_y = jnp.linalg.solve(k_xx, y)
    if x_test is None:
      means.append((y - temperature * k_inv_y)[None])
    else:
      means.append((ndk_fn(x_test, x, inf, inf, temperature=temperature).nngp[0, 0] @ k_inv_y)[None])
    residuals.append((temperature * k_inv_y)[None])
  return ReducedSolution(taus, taus / rate, rate, jnp.concatenate(means), jnp.concatenate(residuals), error)


def composite_small_temperature_mean(layer_or_ndk_fn: Union[Any, NDKFn], x_train, y_train, *, temperature: float,
                                     times, x_test=None, relaxation_rate: Optional[float] = None,
                                     max_step: float = DEFAULT_MAX_STEP) -> jax.Array:
  """Small-T mean predictor over both learning phases at once (matched asymptotics of THEORY.md §5).

  The gradient-driven phase (NTK gradient flow with Θ0, times t = O(1)) and the diffusive phase (the reduced
  equations in τ = λt) overlap on the NTK interpolant, so

      f̄(x*, t) ≈ Θ0(x*, X) Θ0⁻¹ (I − e^{−Θ0 t}) Y + [f̄_red(x*, λt) − f̄_red(x*, 0)]
      Y − f̄(X, t) ≈ e^{−Θ0 t} Y + λ ε(λt)

  with an O(T) error uniformly in t (the training residual: O(T) relative to its size in the diffusive phase, where
  it is O(T) itself). One reduced solve serves every T (rescale the times). Checked against the full solver in the
  tests.

  Args:
    times: strictly increasing real times t ≥ 0 (``inf`` allowed last: the noise-free NNGP interpolant, and
      T K⁻¹Y for the residual).
    Others: as :func:`reduced_small_temperature_mean`.

  Returns:
    (len(times), n, out): f̄(x*, t), or f̄(X, t) without ``x_test``.
  """
  prep = _prepare(layer_or_ndk_fn, x_train, y_train, x_test, temperature, relaxation_rate)
  times = _check_taus(times, 'times')
  red = _reduced(prep, np.concatenate([[0.], prep.rate * times]) if times[0] > 0 else prep.rate * times,
                 _positive('max_step', max_step))
  offset = red.taus.size - times.size
  x, y = prep.x, prep.y
  zero = jnp.zeros((1,), y.dtype)
  problem = _Problem(prep.ndk_fn, prep.temperature, prep.rate)
  evals, evecs = jnp.linalg.eigh(_response(problem, x, x, zero, zero)[0, 0])
  t = jnp.asarray(times, y.dtype)[:, None]
  decay = jnp.where(jnp.isinf(t), 0., jnp.exp(-evals[None] * jnp.where(jnp.isinf(t), 0., t)))   # (n_t, P)
  left = jnp.einsum('pi,ti,qi,qo->tpo', evecs, decay, evecs, y)                                 # e^{−Θ0 t} Y
  if prep.x_test is None:
    return y[None] - left - red.residual[offset:]
  theta_tx = _response(problem, prep.x_test, x, zero, zero)[0, 0]
  learnt = jnp.einsum('mp,pi,ti,qi,qo->tmo', theta_tx, evecs, (1 - decay) / evals[None], evecs, y)
  return learnt + red.mean[offset:] - red.mean[0]
