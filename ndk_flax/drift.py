"""Representational drift under Langevin learning (docs/theory.md §6).

A network is given as the list of its layers, ``layers``, so that ``stax.serial(*layers)`` is the whole network and
hidden layer l (1-based) is the sub-network ``stax.serial(*layers[:k])`` that ends just before the (l + 1)-th
parametric layer, i.e. after the activation of the l-th one (:func:`hidden_network`). Its two-time kernel is

    C^l(t, s, x, x') = lim_{N→∞} (1/N) Σ_i φ(h^l_i(x, t)) φ(h^l_i(x', s))     (:func:`hidden_kernel`)

(the same two-time recursion as the output, stopped at layer l; at infinite width the data do not change it). Its
normalised autocorrelation ρ^l(t, s, x) = C^l(t, s, x, x)/√(C^l(t, t, x, x) C^l(s, s, x, x)) decays on the time scale
σ²/T towards the floor ⟨φ(x)⟩²/C^l(∞, ∞, x, x), with ⟨φ(x)⟩ = E[φ(h)], h ~ N(0, q^l(x)), q^l the equilibrium
variance of the layer's pre-activation (:func:`mean_activation`; ReLU: √(q/2π), erf: 0).

Frozen readout: after equilibration the readout (a, b) is frozen at t0 and the hidden weights keep drifting under
noise and decay only (free Ornstein–Uhlenbeck processes). The mean predictor is then (:func:`frozen_readout_mean`)

    f̄(x, t0 + Δ) = [σ_a² A^L(t0 + Δ, t0, x, X) + σ_b²] [K + T I]⁻¹ Y,

A^L the stationary two-time kernel of the last hidden layer, K the equilibrium NNGP of the network, σ_a², σ_b² the
readout's prior variances. Δ = 0 is the NNGP posterior mean; Δ → ∞ leaves [σ_a² ⟨φ(x)⟩⟨φ(X)⟩ᵀ + σ_b²][K + T I]⁻¹ Y,
what the mean activation carries (an architectural bias: ReLU keeps ‖x‖, erf nothing).

Finite networks: :func:`empirical_autocorrelation` measures ρ^l on hidden activations recorded by
``ndk_flax.ensemble.train_ensemble(..., record_hidden=True)``; :func:`frozen_readout_ensemble` trains members with
Langevin dynamics up to t0, freezes their readout and lets the hidden weights drift (sampled exactly).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ndk_flax import _validation as V
from ndk_flax import ensemble, stax
from ndk_flax.spec import DenseSpec, FreeSpec

__all__ = [
  'AutocorrelationEstimate',
  'FrozenReadoutRecord',
  'empirical_autocorrelation',
  'frozen_readout_ensemble',
  'frozen_readout_mean',
  'hidden_kernel',
  'hidden_network',
  'linear_readout_accuracy',
  'mean_activation',
  'normalised_autocorrelation',
  'autocorrelation_floor',
  'gaussian_mean',
  'pre_activation_variance',
]

_STATIONARY_DECAYS = 40.0
"""t0 = 40/λ_min: the initialisation's weight e^{−λ(t+s)} ≤ e^{−80} is below float64 resolution (stationary kernels)."""
_QUADRATURE_NODES = 96
_QUADRATURE_CUTOFF = 12.0


# ----------------------------------------------------------------------------------------------------------
# Architecture helpers.


def _check_layers(layers) -> tuple:
  if isinstance(layers, stax.NDKLayer) or not isinstance(layers, (list, tuple)):
    raise TypeError(
      '`layers` must be the list of layers of the network (stax.serial(*layers) is the network), '
      f'got {type(layers).__name__}.'
    )
  if not layers:
    raise ValueError('`layers` must not be empty.')
  return tuple(stax.as_ndk_layer(l) for l in layers)


@functools.lru_cache(maxsize=128)
def _serial(layers: tuple) -> stax.NDKLayer:
  """``stax.serial(*layers)``, cached so that repeated calls reuse the network's compiled kernels."""
  return stax.serial(*layers)


def _parametric_positions(layers: tuple) -> list[int]:
  return [i for i, l in enumerate(layers) if l.groups]


def _hidden_slice(layers: tuple, layer_index: int) -> tuple[int, int]:
  """(position of the l-th parametric layer, position of the (l + 1)-th) in ``layers``."""
  positions = _parametric_positions(layers)
  n_hidden = len(positions) - 1
  if (
    isinstance(layer_index, bool)
    or not isinstance(layer_index, (int, np.integer))
    or not (1 <= layer_index <= n_hidden)
  ):
    raise ValueError(
      f'`layer_index` must be an int in [1, {n_hidden}] (the network has {len(positions)} parametric '
      f'layers, so {n_hidden} hidden layers), got {layer_index!r}.'
    )
  return positions[layer_index - 1], positions[layer_index]


def hidden_network(layers: Sequence, layer_index: int) -> stax.NDKLayer:
  """The sub-network up to and including the activation of hidden layer l: ``stax.serial(*layers[:k])`` with k the
  position of the (l + 1)-th parametric layer (l is 1-based; the readout is not a hidden layer).

  Examples:
    >>> from ndk_flax import stax
    >>> from ndk_flax.drift import hidden_network
    >>> layers = [stax.Dense(8, b_std=0.1), stax.Relu(), stax.Dense(8), stax.Erf(), stax.Dense(1)]
    >>> [len(hidden_network(layers, l).groups) for l in (1, 2)]  # serial(*layers[:2]), serial(*layers[:4])
    [2, 3]
  """
  layers = _check_layers(layers)
  _, end = _hidden_slice(layers, layer_index)
  return _serial(layers[:end])


def hidden_kernel(
  layers: Sequence, layer_index: int, x1, x2=None, t1=0.0, t2=0.0, *, temperature: float
) -> stax.TwoTimeKernel:
  """Two-time kernels of hidden layer l: ``nngp`` = C^l(t1, t2, x1, x2) = lim (1/N) Σ_i φ_i(x1, t1) φ_i(x2, t2),
  ``cov1`` = C^l(t1, t1, x1, x1), ``cov2`` = C^l(t2, t2, x2, x2) (shapes as ``NDKLayer.ndk_fn``).

  Examples:
    >>> import numpy as np
    >>> from ndk_flax import stax
    >>> layers = [stax.Dense(8, W_std=1.0, b_std=0.5, W_prior_std=2.0, b_prior_std=1.0), stax.Relu(), stax.Dense(1)]
    >>> x = np.array([[1.0, 0.0], [0.0, 2.0]])  # q¹(x) = σ_W² ‖x‖²/d + σ_b² = 3 and 9
    >>> from ndk_flax.drift import hidden_kernel
    >>> k = hidden_kernel(layers, 1, x, None, np.inf, np.inf, temperature=0.1)
    >>> k.nngp.shape, np.asarray(k.cov1, float).round(4).tolist()  # ReLU at equilibrium: C¹(∞, ∞, x, x) = q¹(x)/2
    ((2, 2), [1.5, 4.5])
  """
  return hidden_network(layers, layer_index).ndk_fn(x1, x2, t1, t2, temperature=temperature)


def normalised_autocorrelation(layers: Sequence, layer_index: int, x, t, s, *, temperature: float) -> jax.Array:
  """ρ^l(t, s, x) = C^l(t, s, x, x)/√(C^l(t, t, x, x) C^l(s, s, x, x)) of shape (len(t), len(s), n) (scalar times
  drop their axis).

  Examples:
    ρ(s, s) = 1, and at large lag ρ tends to its floor ⟨φ⟩²/C¹ = (q/2π)/(q/2) = 1/π ≈ 0.3183 for ReLU.

    >>> import numpy as np
    >>> from ndk_flax import stax
    >>> layers = [stax.Dense(8, W_std=1.0, b_std=0.5, W_prior_std=2.0, b_prior_std=1.0), stax.Relu(), stax.Dense(1)]
    >>> x = np.array([[1.0, 0.0], [0.0, 2.0]])  # q¹(x) = σ_W² ‖x‖²/d + σ_b² = 3 and 9
    >>> from ndk_flax.drift import normalised_autocorrelation
    >>> rho = normalised_autocorrelation(layers, 1, x, np.array([0.0, 20.0, 1000.0]), 0.0, temperature=0.1)
    >>> rho.shape
    (3, 2)
    >>> np.asarray(rho[0], float).round(4).tolist(), np.asarray(rho[-1], float).round(4).tolist()
    ([1.0, 1.0], [0.3183, 0.3183])
    >>> bool(np.all(rho[1] < 1) and np.all(rho[1] > rho[-1]))  # decaying in between
    True
  """
  t, s = jnp.asarray(t), jnp.asarray(s)  # lists of times as ndk_fn accepts them
  k = hidden_kernel(layers, layer_index, x, x, jnp.atleast_1d(t), jnp.atleast_1d(s), temperature=temperature)
  rho = jnp.diagonal(k.nngp, axis1=-2, axis2=-1) / jnp.sqrt(k.cov1[:, None, :] * k.cov2[None, :, :])
  return rho[tuple(0 if jnp.ndim(v) == 0 else slice(None) for v in (t, s))]


_ELEMENTWISE = frozenset(
  (
    'ABRelu',
    'Abs',
    'Cos',
    'Elementwise',
    'ElementwiseNumerical',
    'Erf',
    'Exp',
    'Gabor',
    'Gaussian',
    'Gelu',
    'Hermite',
    'Identity',
    'LeakyRelu',
    'Monomial',
    'Polynomial',
    'RectifiedMonomial',
    'Relu',
    'Sigmoid_like',
    'Sign',
    'Sin',
  )
)
"""Parameter-free ``stax`` layers acting unit by unit (their mean activation is a one-dimensional Gaussian mean)."""


def _activation(layers: tuple, layer_index: int) -> stax.NDKLayer:
  start, end = _hidden_slice(layers, layer_index)
  free = layers[start + 1 : end]
  for layer in free:
    name = layer.spec.name if isinstance(layer.spec, FreeSpec) else type(layer.spec).__name__
    if name not in _ELEMENTWISE:
      raise ValueError(
        f'The layers between hidden layer {layer_index} and the next parametric layer must be '
        f'elementwise activations (one of {sorted(_ELEMENTWISE)}) for the mean activation; got '
        f'{name!r}.'
      )
  return _serial(free) if free else stax.Identity()


def pre_activation_variance(layers: Sequence, layer_index: int, x) -> jax.Array:
  """q^l(x) = C(∞, ∞, x, x) of the pre-activation of hidden layer l at equilibrium (prior variances σ²), (n,).

  Examples:
    >>> import numpy as np
    >>> from ndk_flax import stax
    >>> layers = [stax.Dense(8, W_std=1.0, b_std=0.5, W_prior_std=2.0, b_prior_std=1.0), stax.Relu(), stax.Dense(1)]
    >>> x = np.array([[1.0, 0.0], [0.0, 2.0]])  # q¹(x) = σ_W² ‖x‖²/d + σ_b² = 3 and 9
    >>> from ndk_flax.drift import pre_activation_variance
    >>> np.asarray(pre_activation_variance(layers, 1, x), float).round(4).tolist()
    [3.0, 9.0]
  """
  layers = _check_layers(layers)
  start, _ = _hidden_slice(layers, layer_index)
  return _serial(layers[: start + 1]).ndk_fn(x, x, jnp.inf, jnp.inf, temperature=1.0).cov1


def gaussian_mean(activation, variance) -> jax.Array:
  """E[φ(h)] for h ~ N(0, q), elementwise over ``variance`` (q ≥ 0), φ = ``activation``'s forward pass (a
  parameter-free elementwise stax layer). Gauss–Legendre quadrature on [−12, 0] and [0, 12] standard deviations
  (exact enough for activations that are smooth on each half-line, e.g. ReLU, erf, sign).

  Examples:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from ndk_flax import stax
    >>> from ndk_flax.drift import gaussian_mean
    >>> q = jnp.array([1.0, 4.0])
    >>> bool(np.allclose(gaussian_mean(stax.Relu(), q), np.sqrt(q / (2 * np.pi)), atol=1e-6))  # E[relu] = √(q/2π)
    True
    >>> bool(np.allclose(gaussian_mean(stax.Abs(), q), np.sqrt(2 * q / np.pi), atol=1e-6))  # E|h| = √(2q/π)
    True
    >>> bool(np.all(np.abs(gaussian_mean(stax.Erf(), q)) < 1e-6))  # odd activation: 0
    True
  """
  layer = stax.as_ndk_layer(activation)
  q = jnp.asarray(variance)
  if bool(jnp.any(q < 0)) or not bool(jnp.all(jnp.isfinite(q))):
    raise ValueError(f'`variance` must be finite and >= 0, got {variance!r}.')
  z, w = np.polynomial.legendre.leggauss(_QUADRATURE_NODES)
  z = np.concatenate([(z - 1) / 2, (z + 1) / 2]) * _QUADRATURE_CUTOFF
  w = np.concatenate([w, w]) * _QUADRATURE_CUTOFF / 2 * np.exp(-(z**2) / 2) / math.sqrt(2 * math.pi)
  z, w = jnp.asarray(z, q.dtype), jnp.asarray(w, q.dtype)
  points = jnp.sqrt(q).reshape(-1, 1) * z[None, :]
  _, params = layer.init_fn(jax.random.PRNGKey(0), points.shape)
  values = layer.apply_fn(params, points)
  if values.shape != points.shape:
    raise ValueError(f'`activation` must act elementwise, but it maps shape {points.shape} to {values.shape}.')
  return (values @ w).reshape(q.shape)


def mean_activation(layers: Sequence, layer_index: int, x) -> jax.Array:
  """⟨φ(x)⟩ = E[φ(h)], h ~ N(0, q^l(x)) with q^l(x) the equilibrium variance of the pre-activation of hidden layer l
  (prior variances σ²); shape (n,). ReLU: √(q/2π); odd activations (erf): 0. MLPs (elementwise activations).

  Examples:
    >>> import numpy as np
    >>> from ndk_flax import stax
    >>> layers = [stax.Dense(8, W_std=1.0, b_std=0.5, W_prior_std=2.0, b_prior_std=1.0), stax.Relu(), stax.Dense(1)]
    >>> x = np.array([[1.0, 0.0], [0.0, 2.0]])  # q¹(x) = σ_W² ‖x‖²/d + σ_b² = 3 and 9
    >>> from ndk_flax.drift import mean_activation
    >>> m = mean_activation(layers, 1, x)
    >>> np.asarray(m, float).round(4).tolist(), bool(np.allclose(m, np.sqrt(np.array([3.0, 9.0]) / (2 * np.pi))))
    ([0.691, 1.1968], True)
  """
  layers = _check_layers(layers)
  return gaussian_mean(_activation(layers, layer_index), pre_activation_variance(layers, layer_index, x))


def autocorrelation_floor(layers: Sequence, layer_index: int, x) -> jax.Array:
  """lim_{t−s→∞} ρ^l(t, s, x) at equilibrium = ⟨φ(x)⟩²/C^l(∞, ∞, x, x), shape (n,).

  Examples:
    >>> import numpy as np
    >>> from ndk_flax import stax
    >>> layers = [stax.Dense(8, W_std=1.0, b_std=0.5, W_prior_std=2.0, b_prior_std=1.0), stax.Relu(), stax.Dense(1)]
    >>> x = np.array([[1.0, 0.0], [0.0, 2.0]])  # q¹(x) = σ_W² ‖x‖²/d + σ_b² = 3 and 9
    >>> from ndk_flax.drift import autocorrelation_floor
    >>> bool(np.allclose(autocorrelation_floor(layers, 1, x), 1 / np.pi))  # ReLU: (q/2π)/(q/2) = 1/π
    True
  """
  second = hidden_kernel(layers, layer_index, x, x, jnp.inf, jnp.inf, temperature=1.0).cov1
  return mean_activation(layers, layer_index, x) ** 2 / second


# ----------------------------------------------------------------------------------------------------------
# Frozen readout (theory).


def _check_data(x_train, y_train, x_test):
  """Flat inputs (points, features), targets with one row per point, test inputs like the training ones."""
  x = V.batched_array('x_train', x_train)
  y = V.batched_array('y_train', y_train).astype(x.dtype)
  if x.ndim != 2:
    raise ValueError(f'`x_train` must be a 2-D array (points, features), got shape {x.shape}.')
  if y.ndim != 2 or y.shape[0] != x.shape[0]:
    raise ValueError(f'`y_train` must have shape ({x.shape[0]}, out), one row per training point, got {y.shape}.')
  return x, y, x if x_test is None else V.inputs_like('x_test', x_test, x)


def _readout_variances(layers: tuple) -> tuple[float, float]:
  spec = layers[-1].spec
  if not isinstance(spec, DenseSpec) or spec.weight is None:
    raise ValueError(f'The last layer must be the Dense readout (with weights) for a frozen readout, got {spec!r}.')
  return spec.weight.prior_std**2, 0.0 if spec.bias is None else spec.bias.prior_std**2


def _check_drift_times(drift_times) -> np.ndarray:
  d = np.atleast_1d(np.asarray(drift_times, dtype=np.float64))
  if d.ndim != 1 or d.size == 0 or np.any(np.isnan(d)) or np.any(d < 0):
    raise ValueError(f'`drift_times` must be a non-empty 1-D array of times >= 0 (inf allowed), got {drift_times!r}.')
  return d


def frozen_readout_mean(
  layers: Sequence, x_train, y_train, *, temperature: float, drift_times, x_test=None
) -> jax.Array:
  """f̄(x, t0 + Δ) = [σ_a² A^L(t0 + Δ, t0, x, X) + σ_b²] [K + T I]⁻¹ Y for every drift time Δ (``inf``: the
  mean-activation limit [σ_a² ⟨φ(x)⟩⟨φ(X)⟩ᵀ + σ_b²][K + T I]⁻¹ Y), shape (len(Δ), n, out).

  The readout is frozen at t0 after equilibration; the hidden weights drift as free Ornstein–Uhlenbeck processes
  (stationary two-time kernel A^L of the last hidden layer L). K is the equilibrium NNGP of ``stax.serial(*layers)``.
  ``x_test=None`` evaluates on the training inputs.

  Examples:
    Δ = 0 is the NNGP posterior mean K [K + T I]⁻¹ Y; Δ = ∞ keeps σ_a² ⟨φ(x)⟩⟨φ(X)⟩ᵀ [K + T I]⁻¹ Y (no readout bias).

    >>> import numpy as np
    >>> from ndk_flax import stax
    >>> layers = [stax.Dense(8, W_std=1.0, b_std=0.5, W_prior_std=2.0, b_prior_std=1.0), stax.Relu(), stax.Dense(1)]
    >>> x = np.array([[1.0, 0.0], [0.0, 2.0]])  # q¹(x) = σ_W² ‖x‖²/d + σ_b² = 3 and 9
    >>> from ndk_flax.drift import frozen_readout_mean, mean_activation
    >>> y = np.array([[1.0], [-1.0]])
    >>> f = frozen_readout_mean(layers, x, y, temperature=0.1, drift_times=[0.0, 10.0, np.inf])
    >>> f.shape
    (3, 2, 1)
    >>> k = np.asarray(stax.serial(*layers).ndk_fn(x, x, np.inf, np.inf, temperature=0.1).nngp)
    >>> alpha = np.linalg.solve(k + 0.1 * np.eye(2), y)
    >>> bool(np.allclose(f[0], k @ alpha, atol=1e-5))
    True
    >>> m = np.asarray(mean_activation(layers, 1, x))
    >>> bool(np.allclose(f[-1], np.outer(m, m) @ alpha, atol=1e-5))  # σ_a = 1
    True
  """
  layers = _check_layers(layers)
  temperature = V.positive('temperature', temperature)
  drift = _check_drift_times(drift_times)
  x, y, xt = _check_data(x_train, y_train, x_test)
  var_a, var_b = _readout_variances(layers)
  n_hidden = len(_parametric_positions(layers)) - 1
  if n_hidden < 1:
    raise ValueError('The network needs at least one hidden layer (two parametric layers) for a frozen readout.')
  k_xx = _serial(layers).ndk_fn(x, x, jnp.inf, jnp.inf, temperature=temperature).nngp
  alpha = jnp.linalg.solve(k_xx + temperature * jnp.eye(x.shape[0], dtype=x.dtype), y)
  hidden = hidden_network(layers, n_hidden)
  out = []
  finite = drift[np.isfinite(drift)]
  if finite.size:
    t0 = _STATIONARY_DECAYS / min(hidden.relaxation_rates(temperature))
    overlap = hidden.ndk_fn(xt, x, t0 + finite, t0, temperature=temperature).nngp  # (n_Δ, n, P)
    out.append((var_a * overlap + var_b) @ alpha)
  if finite.size < drift.size:
    m_x = mean_activation(layers, n_hidden, x)
    m_t = m_x if x_test is None else mean_activation(layers, n_hidden, xt)
    out.append(((var_a * m_t[:, None] * m_x[None, :] + var_b) @ alpha)[None])
  return jnp.concatenate(out)


def linear_readout_accuracy(f_train, y_train, f_test, y_test) -> np.ndarray:
  """Accuracy on the test set of a separately fitted affine readout sign(α f + β) of a scalar predictor.

  (α, β) are the least-squares fit of the ±1 labels ``y_train`` on the training predictions (minimum norm when
  the predictions are constant: then the readout predicts the majority sign). Shapes: f_train (..., P) or
  (..., P, 1), f_test (..., n) or (..., n, 1), labels (P,)/(P, 1) and (n,)/(n, 1) with signs as classes; leading
  axes (e.g. time) give one accuracy each.

  Examples:
    >>> import numpy as np
    >>> from ndk_flax.drift import linear_readout_accuracy
    >>> f_train = np.array([0.9, 0.2, -0.4, -1.0])
    >>> y_train, y_test = np.array([1, 1, -1, -1]), np.array([1, -1])
    >>> f_test = np.array([[0.5, -0.5], [-0.5, 0.5]])  # two times: the second has the signs swapped
    >>> linear_readout_accuracy(np.stack([f_train, f_train]), y_train, f_test, y_test).tolist()
    [1.0, 0.0]
  """

  def squeeze(name, a, n):
    a = np.asarray(a, dtype=np.float64)
    if a.shape[-1:] == (1,) and a.ndim >= 2 and a.shape[-2] == n:
      a = a[..., 0]
    if a.shape[-1:] != (n,) or not np.all(np.isfinite(a)):
      raise ValueError(
        f'`{name}` must be finite with a trailing axis of {n} points (optionally then 1), got shape {a.shape}.'
      )
    return a

  y_tr = np.sign(np.asarray(y_train, dtype=np.float64).reshape(-1))
  y_te = np.sign(np.asarray(y_test, dtype=np.float64).reshape(-1))
  f_tr = squeeze('f_train', f_train, y_tr.size)
  f_te = squeeze('f_test', f_test, y_te.size)
  if f_tr.shape[:-1] != f_te.shape[:-1]:
    raise ValueError(f'`f_train` and `f_test` must share their leading axes, got {f_tr.shape} and {f_te.shape}.')
  lead = f_tr.shape[:-1]
  f_tr, f_te = f_tr.reshape(-1, y_tr.size), f_te.reshape(-1, y_te.size)
  acc = np.empty(f_tr.shape[0])
  for i, (a, b) in enumerate(zip(f_tr, f_te)):
    centred = a - a.mean()
    scale = np.sqrt(np.mean(centred**2))
    # Least squares of y on (1, f): β = ȳ − α f̄, α = cov(f, y)/var(f) (α = 0 for constant predictions).
    alpha = 0.0 if scale <= 1e-12 * max(1.0, abs(a.mean())) else np.mean(centred * y_tr) / scale**2
    beta = y_tr.mean() - alpha * a.mean()
    acc[i] = np.mean(np.where(alpha * b + beta >= 0, 1.0, -1.0) == y_te)
  return acc.reshape(lead)


# ----------------------------------------------------------------------------------------------------------
# Finite networks.


class AutocorrelationEstimate(NamedTuple):
  """Member average of the normalised autocorrelation ρ(t_k, t_ref, x), shape (n_t, n), and its standard error.

  Examples:
    >>> import numpy as np
    >>> from ndk_flax.drift import AutocorrelationEstimate, empirical_autocorrelation
    >>> a0 = np.random.default_rng(0).normal(size=(4, 3, 16))  # (members, points, units)
    >>> est = empirical_autocorrelation(np.stack([a0, -a0], axis=1), average_points=True)
    >>> isinstance(est, AutocorrelationEstimate), np.round(est.mean, 6).tolist(), est.se.shape
    (True, [1.0, -1.0], (2,))
  """

  mean: np.ndarray
  se: np.ndarray


def empirical_autocorrelation(hidden, reference: int = 0, *, average_points: bool = False) -> AutocorrelationEstimate:
  """ρ_m(t_k, t_ref, x) = o(t_k, t_ref, x)/√(o(t_k, t_k, x) o(t_ref, t_ref, x)),
  o(t, s, x) = (1/N) Σ_i a_i(x, t) a_i(x, s), per member, averaged over the M members (standard error across members).

  Args:
    hidden: (M, n_t, n, ...) hidden activations of one layer (e.g. ``record.hidden[l - 1]``); N = trailing size.
    reference: index of the reference time t_ref in the recorded times.
    average_points: average each member's ρ over the n inputs first (shapes (n_t,) instead of (n_t, n); the
      standard error then accounts for the correlation between inputs of one member).

  Examples:
    ρ is invariant to rescaling the activations and flips sign with them:

    >>> import numpy as np
    >>> from ndk_flax.drift import empirical_autocorrelation
    >>> a0 = np.random.default_rng(0).normal(size=(3, 2, 16))  # (members, points, units) at t_ref
    >>> hidden = np.stack([a0, 2 * a0, -a0], axis=1)  # (M, n_t, n, N)
    >>> est = empirical_autocorrelation(hidden, reference=0)
    >>> est.mean.shape, np.round(est.mean[:, 0], 6).tolist(), float(est.se.max()) < 1e-12
    ((3, 2), [1.0, 1.0, -1.0], True)
  """
  a = np.asarray(hidden, dtype=np.float64)
  if a.ndim < 4:
    raise ValueError(f'`hidden` must be (members, times, points, units...), got shape {a.shape}.')
  m, n_t = a.shape[:2]
  if m < 2:
    raise ValueError(f'need at least 2 members for a standard error, got {m}.')
  if isinstance(reference, bool) or not isinstance(reference, (int, np.integer)) or not -n_t <= reference < n_t:
    raise ValueError(f'`reference` must be an index into the {n_t} recorded times, got {reference!r}.')
  a = a.reshape(a.shape[:3] + (-1,))
  ref = a[:, reference]
  cross = np.einsum('mtxi,mxi->mtx', a, ref)
  norm = np.sqrt(np.einsum('mtxi,mtxi->mtx', a, a) * np.einsum('mxi,mxi->mx', ref, ref)[:, None])
  rho = cross / norm
  if average_points:
    rho = rho.mean(-1)
  return AutocorrelationEstimate(rho.mean(0), rho.std(0, ddof=1) / math.sqrt(m))


class FrozenReadoutRecord(NamedTuple):
  """Member outputs with the readout frozen at t0: ``drift_times`` (n_Δ,), ``train`` (M, n_Δ, P, out), ``test``
  (M, n_Δ, n_test, out) or None.

  Examples:
    >>> import numpy as np
    >>> from ndk_flax.drift import FrozenReadoutRecord
    >>> rec = FrozenReadoutRecord(np.array([0.0, 2.0]), np.zeros((4, 2, 3, 1)), None)
    >>> rec.train.mean(axis=0).shape  # member mean f̄(X, t0 + Δ), to compare with frozen_readout_mean
    (2, 3, 1)
  """

  drift_times: np.ndarray
  train: np.ndarray
  test: Optional[np.ndarray]


def frozen_readout_ensemble(
  layers: Sequence,
  x_train,
  y_train,
  *,
  temperature: float,
  learning_rate: float,
  equilibration_time: float,
  drift_times,
  n_members: int,
  width: int,
  x_test=None,
  seed: int = 0,
  progress: bool = False,
) -> FrozenReadoutRecord:
  """Finite-width check of :func:`frozen_readout_mean`: member outputs f_m(x, t0 + Δ) with the readout frozen at t0.

  Each member (Flax model of ``stax.serial(*layers)``, ``ndk_flax.nn.from_stax`` with hidden ``width``) is trained
  with ``ndk_flax.optax.langevin`` on ½ Σ ‖f − y‖² for t0 = ``equilibration_time`` (step η = ``learning_rate``,
  refused if η λ_max(Θ0) is unstable). Then its readout (the last layer) is frozen and every hidden parameter drifts
  under noise and decay only, the Ornstein–Uhlenbeck process dθ = −(T/σ²) θ dt + √(2T) dB, sampled exactly at the
  drift times (no step error). Outputs are recorded at t0 + Δ. The simulation is
  ``ndk_flax.ensemble.drift_ensemble`` with ``frozen=ensemble.readout_filter`` (docs/theory.md §6).

  Examples:
    >>> import numpy as np
    >>> from ndk_flax import stax
    >>> x = np.linspace(-1, 1, 6).reshape(3, 2); y = np.sign(x[:, :1])
    >>> rec = frozen_readout_ensemble([stax.Dense(8), stax.Relu(), stax.Dense(1)], x, y, temperature=0.1,
    ...                               learning_rate=0.05, equilibration_time=0.5, drift_times=[0.0, 2.0],
    ...                               n_members=2, width=8)
    >>> rec.train.shape, rec.drift_times.tolist()
    ((2, 2, 3, 1), [0.0, 2.0])
  """
  layers = _check_layers(layers)
  x, y, _ = _check_data(x_train, y_train, None)
  xt = None if x_test is None else _check_data(x_train, y_train, x_test)[2]
  drift = _check_drift_times(drift_times)
  if not np.all(np.isfinite(drift)) or np.any(np.diff(drift) <= 0):
    raise ValueError(f'`drift_times` must be finite and strictly increasing here, got {drift}.')
  for name, v in (('n_members', n_members), ('width', width)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f'`{name}` must be a positive int, got {v!r}.')
  _readout_variances(layers)
  rec = ensemble.drift_ensemble(
    stax.serial(*layers),
    x,
    y,
    temperature=V.positive('temperature', temperature),
    learning_rate=V.positive('learning_rate', learning_rate),
    equilibration_time=V.positive('equilibration_time', equilibration_time),
    drift_times=drift,
    frozen=ensemble.readout_filter,
    n_members=n_members,
    width=width,
    x_test=xt,
    seed=seed,
    progress=progress,
    dtype=x.dtype,
  )
  return FrozenReadoutRecord(drift, rec.train, rec.test)
