"""Closed forms of the predictor (docs/theory.md §4): T = 0 (frozen kernels, gradient flow in the eigenbasis of Θ0,
as Neural Tangents), t = 0 (the free network) and t = ∞ at T > 0 (the NNGP posterior with noise T)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ndk_flax.predict.kernels import KernelAccess

__all__ = ['FrozenKernels', 'equilibrium', 'frozen', 'initial']


class FrozenKernels(NamedTuple):
  """K0 = C(0, 0, X, X), Θ0 = R(0, 0, X, X) and the eigendecomposition of Θ0.

  Examples:
    One raw Dense layer (σ0 = 1, no bias) on x = I₃: K0 = Θ0 = x xᵀ/3 = I/3.

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from ndk_flax import stax
    >>> from ndk_flax.predict.kernels import KernelAccess
    >>> x, y = jnp.eye(3), jnp.array([[1.0], [-1.0], [0.5]])
    >>> access = KernelAccess(stax.Dense(1).ndk_fn, x, y, 0.0, 2**20)
    >>> zero = access.times(0.0)
    >>> k0, theta0 = (k[0, 0] for k in access(x, x, zero, zero))
    >>> fk = FrozenKernels(k0, theta0, *jnp.linalg.eigh(theta0))
    >>> bool(jnp.allclose(fk.k0, jnp.eye(3) / 3)), [round(float(e), 4) for e in fk.evals]
    (True, [0.3333, 0.3333, 0.3333])
    >>> bool(jnp.allclose(fk.evecs @ jnp.diag(fk.evals) @ fk.evecs.T, fk.theta0, atol=1e-6))
    True
  """

  k0: jax.Array
  theta0: jax.Array
  evals: jax.Array
  evecs: jax.Array


def frozen(access: KernelAccess, fk: FrozenKernels, times: np.ndarray, x_test, compute_cov: bool):
  """T = 0: f̄(X, t) = (I − e^{−Θ0 t})Y, f̄(x*, t) = Θ0(x*, X) Θ0^{-1}(I − e^{−Θ0 t})Y (Neural Tangents'
  gradient flow, with its convention that modes with eigenvalue ≤ 0 are not learned) and the covariances
  of δf(X, t) = e^{−Θ0 t} f0(X), δf(x*, t) = f0(x*) − Θ0(x*, X) Θ0^{-1}(I − e^{−Θ0 t}) f0(X).

  Examples:
    With Θ0 = K0 = I/3 (one raw Dense layer on x = I₃) the mean is (1 − e^{−t/3}) Y and the covariance
    e^{−2t/3} I/3; a test point equal to a training input gets the same mean:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from ndk_flax import stax
    >>> from ndk_flax.predict.kernels import KernelAccess
    >>> x, y = jnp.eye(3), jnp.array([[1.0], [-1.0], [0.5]])
    >>> access = KernelAccess(stax.Dense(1).ndk_fn, x, y, 0.0, 2**20)
    >>> zero = access.times(0.0)
    >>> k0, theta0 = (k[0, 0] for k in access(x, x, zero, zero))
    >>> fk = FrozenKernels(k0, theta0, *jnp.linalg.eigh(theta0))
    >>> mean, cov = frozen(access, fk, np.array([0.0, 3.0]), None, True)
    >>> bool(jnp.allclose(mean[1], (1 - np.exp(-1.0)) * y, atol=1e-6))
    True
    >>> bool(jnp.allclose(cov[1], np.exp(-2.0) * jnp.eye(3) / 3, atol=1e-6))
    True
    >>> test_mean, _ = frozen(access, fk, np.array([3.0]), x[:1], False)
    >>> bool(jnp.allclose(test_mean[0], mean[1, :1], atol=1e-6))
    True
  """
  dtype = access.dtype
  y = access.y
  ev = jnp.maximum(fk.evals, 0)[None, :]
  v = fk.evecs
  t = jnp.asarray(times, dtype)[:, None]
  positive = ev > 0
  safe = jnp.where(positive, ev, 1)
  decay = jnp.where(positive, jnp.exp(-safe * t), 1)  # e^{−λ t}
  learnt = jnp.where(positive, -jnp.expm1(-safe * t) / safe, 0)  # (1 − e^{−λ t}) / λ
  vy = v.T @ y
  if x_test is None:
    mean = y[None] - jnp.einsum('pi,ti,io->tpo', v, decay, vy)
    if not compute_cov:
      return mean, None
    e_t = jnp.einsum('pi,ti,qi->tpq', v, decay, v)
    return mean, jnp.einsum('tpq,qr,tsr->tps', e_t, fk.k0, e_t)
  zero = access.times(0.0)
  k_tx, theta_tx = (k[0, 0] for k in access(x_test, access.x, zero, zero))
  m_t = jnp.einsum('mp,pi,ti,qi->tmq', theta_tx, v, learnt, v)  # Θ0(x*, X) Θ0^{-1}(I − e^{−Θ0 t})
  mean = m_t @ y
  if not compute_cov:
    return mean, None
  k_tt = access(x_test, x_test, zero, zero)[0][0, 0]
  cross = m_t @ k_tx.T
  cov = k_tt - cross - jnp.swapaxes(cross, 1, 2) + jnp.einsum('tmp,pq,tnq->tmn', m_t, fk.k0, m_t)
  return mean, cov


def initial(access: KernelAccess, fk: FrozenKernels, n_times: int, x_test, compute_cov: bool):
  """t = 0: the free network, f̄ = 0 and Cov = C(0, 0, x, x), for ``n_times`` copies.

  Examples:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from ndk_flax import stax
    >>> from ndk_flax.predict.kernels import KernelAccess
    >>> x, y = jnp.eye(3), jnp.array([[1.0], [-1.0], [0.5]])
    >>> access = KernelAccess(stax.Dense(1).ndk_fn, x, y, 0.0, 2**20)
    >>> zero = access.times(0.0)
    >>> k0, theta0 = (k[0, 0] for k in access(x, x, zero, zero))
    >>> fk = FrozenKernels(k0, theta0, *jnp.linalg.eigh(theta0))
    >>> mean, cov = initial(access, fk, 2, None, True)
    >>> mean.shape, cov.shape, float(jnp.abs(mean).max()), bool(jnp.allclose(cov[1], jnp.eye(3) / 3))
    ((2, 3, 1), (2, 3, 3), 0.0, True)
    >>> _, cov_test = initial(access, fk, 1, 2 * x[:1], True)  # C(0, 0, x*, x*) = |x*|²/3
    >>> round(float(cov_test[0, 0, 0]), 4)
    1.3333
  """
  n = access.p if x_test is None else x_test.shape[0]
  mean = jnp.zeros((n_times, n, access.y.shape[1]), access.dtype)
  if not compute_cov:
    return mean, None
  zero = access.times(0.0)
  k = fk.k0 if x_test is None else access(x_test, x_test, zero, zero)[0][0, 0]
  return mean, jnp.broadcast_to(k, (n_times, n, n))


def equilibrium(access: KernelAccess, x_test: Optional[jax.Array], compute_cov: bool):
  """t = ∞, T > 0: NNGP posterior with K = C(∞, ∞) (prior variances σ²) and noise variance T.

  Examples:
    One raw Dense layer with prior σ_W = 2 on x = I₃: K = σ² x xᵀ/3 = (4/3) I, so at T = 1/2 the posterior mean is
    K(K + T I)⁻¹ Y = (8/11) Y and its variance K T/(K + T) = 4/11:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from ndk_flax import stax
    >>> from ndk_flax.predict.kernels import KernelAccess
    >>> x, y = jnp.eye(3), jnp.array([[1.0], [-1.0], [0.5]])
    >>> access = KernelAccess(stax.Dense(1, W_prior_std=2.0).ndk_fn, x, y, 0.5, 2**20)
    >>> mean, cov = equilibrium(access, None, True)
    >>> mean.shape, bool(jnp.allclose(mean[0], 8 / 11 * y, atol=1e-6))
    ((1, 3, 1), True)
    >>> bool(jnp.allclose(cov[0], 4 / 11 * jnp.eye(3), atol=1e-6))
    True
  """
  inf = access.times(np.inf)
  x = access.x
  k_xx = access(x, x, inf, inf)[0][0, 0]
  factor = jax.scipy.linalg.cho_factor(k_xx + access.temperature * jnp.eye(access.p, dtype=access.dtype))
  k_tx = k_xx if x_test is None else access(x_test, x, inf, inf)[0][0, 0]
  mean = k_tx @ jax.scipy.linalg.cho_solve(factor, access.y)
  if not compute_cov:
    return mean[None], None
  k_tt = k_xx if x_test is None else access(x_test, x_test, inf, inf)[0][0, 0]
  cov = k_tt - k_tx @ jax.scipy.linalg.cho_solve(factor, k_tx.T)
  return mean[None], (0.5 * (cov + cov.T))[None]
