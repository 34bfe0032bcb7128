"""Access to the two-time kernels C and R through the ``ndk_fn(x1, x2, t1, t2, *, temperature)`` contract of
:mod:`ndk_flax.stax` (docs/theory.md §3), with shape and finiteness checks and chunking over time."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ndk_flax import _validation as V

__all__ = ['KernelAccess', 'NDKFn', 'not_finite', 'require_finite']

NDKFn = Callable[..., Any]
"""``ndk_fn(x1, x2, t1, t2, *, temperature)`` returning an object with ``nngp`` and ``ndk`` fields."""


def require_finite(name: str, value: jax.Array, where: str) -> None:
  """Raise FloatingPointError naming ``where`` when ``value`` holds NaN or inf (a non-finite kernel or prediction).

  Examples:
    >>> import jax.numpy as jnp
    >>> from ndk_flax.predict.kernels import require_finite
    >>> require_finite('R', jnp.ones(2), 'at t = 1')
    >>> try:
    ...   require_finite('R', jnp.array([1.0, jnp.nan]), 'at t = 2')
    ... except FloatingPointError as e:
    ...   print(e)
    R is not finite at t = 2 (NaN or inf): check the kernel function and its parameters there.
  """
  if not V.all_finite(value):
    raise not_finite(name, where)


def not_finite(name: str, where: str) -> FloatingPointError:
  """The error :func:`require_finite` raises, for a finiteness already checked on the device (a flag).

  Examples:
    >>> from ndk_flax.predict.kernels import not_finite
    >>> str(not_finite('R', 'at t = 2')).split(':')[0]
    'R is not finite at t = 2 (NaN or inf)'
  """
  return FloatingPointError(
    f'{name} is not finite {where} (NaN or inf): check the kernel function and its parameters there.'
  )


@dataclasses.dataclass(frozen=True, eq=False)
class KernelAccess:
  """C(t1, t2, x1, x2) and R(t1, t2, x1, x2) of one training problem, in the dtype of ``y``.

  Attributes:
    ndk_fn: the kernel function (contract above).
    x: training inputs X, (P, ...).
    y: training targets Y, (P, out).
    temperature: T ≥ 0.
    max_elements: bound on len(t1) · len(t2) · n1 · n2 per ``ndk_fn`` call.

  Examples:
    >>> import numpy as np
    >>> from ndk_flax import stax
    >>> from ndk_flax.predict.kernels import KernelAccess
    >>> net = stax.serial(stax.Dense(4), stax.Erf(), stax.Dense(1))
    >>> access = KernelAccess(net.ndk_fn, np.eye(3), np.ones((3, 1)), 0.1, 2**20)
    >>> c, r = access(access.x, access.x, np.zeros(2), np.zeros(1))
    >>> c.shape, r.shape
    ((2, 1, 3, 3), (2, 1, 3, 3))
  """

  ndk_fn: NDKFn
  x: jax.Array
  y: jax.Array
  temperature: float
  max_elements: int

  @property
  def p(self) -> int:
    """P, the number of training points."""
    return self.x.shape[0]

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(self.y.dtype)

  def __call__(self, x1, x2, t1, t2) -> tuple[jax.Array, jax.Array]:
    """(C, R), each of shape (len(t1), len(t2), n1, n2)."""
    out = self.ndk_fn(x1, x2, t1, t2, temperature=self.temperature)
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
    return nngp.astype(self.y.dtype), ndk.astype(self.y.dtype)

  def with_inputs(self, x: jax.Array) -> KernelAccess:
    """The same problem with ``x`` as training inputs: inside ``jax.jit`` pass X as an argument (a traced value the
    kernel function's checks skip) rather than closing over it."""
    return dataclasses.replace(self, x=x)

  def times(self, t) -> jax.Array:
    """Times as a 1-D array in the problem's dtype."""
    return jnp.asarray(np.atleast_1d(t), self.y.dtype)

  @property
  def pair_elements(self) -> int:
    """Kernel entries one (x1, x2) pair may hold inside ``ndk_fn``: (Π spatial dims)² for inputs (P, *spatial,
    channels), as Neural Tangents keeps the full spatial covariance of convolutional layers (1 for (P, d))."""
    return math.prod(self.x.shape[1:-1]) ** 2

  def chunk(self, n1: int, n_times: int) -> int:
    """Times per ``ndk_fn`` call for kernel rows against x_train, within ``max_elements`` kernel entries
    (counting the spatial covariance of each pair, :attr:`pair_elements`)."""
    return int(min(n_times, max(1, self.max_elements // (n1 * self.p * self.pair_elements))))

  def row(self, x1, x2, t, grid, chunk):
    """C(t, s_j, x1, x2) and R(t, s_j, x1, x2) for every s_j of ``grid`` (whole chunks), ``chunk`` times a call."""

    def one(ts):
      nngp, ndk = self(x1, x2, t[None], ts)
      return nngp[0], ndk[0]

    nngp, ndk = lax.map(one, grid.reshape(-1, chunk))
    shape = (grid.shape[0], x1.shape[0], x2.shape[0])
    return nngp.reshape(shape), ndk.reshape(shape)

  def peak_diagonal_ratio(self, lam_max: float) -> float:
    """max_t ‖R(t, t, x, x)‖ / ‖R(0, 0, x, x)‖ (≥ 1) on (up to 16 of) the training points over t = 10^k/λ_max,
    k = −2 … 12: how much faster than Θ0 = R(0, 0) the dynamics can get later (R grows when σ0 < σ).

    Examples:
      One raw Dense layer: R(t, t) = r_W(t, t) x xᵀ/d = Θ0 at every t, so the ratio is 1:

      >>> import numpy as np
      >>> from ndk_flax import stax
      >>> x, y = np.eye(3, dtype=np.float32), np.ones((3, 1), np.float32)
      >>> access = KernelAccess(stax.Dense(1, W_std=0.1, W_prior_std=1.0).ndk_fn, x, y, 0.1, 2**20)
      >>> access.peak_diagonal_ratio(1 / 3)
      1.0

      Two layers initialised at σ0 = 0.1 below their prior σ = 1: the second layer's weights grow 10×, so R(t, t)
      ends about 10² times above Θ0:

      >>> dense = lambda n: stax.Dense(n, W_std=0.1, W_prior_std=1.0)
      >>> net = stax.serial(dense(8), stax.Relu(), dense(1))
      >>> access = KernelAccess(net.ndk_fn, x, y, 0.1, 2**20)
      >>> 50 < access.peak_diagonal_ratio(1 / 3) < 200
      True
    """
    xs = self.x[:16]
    times = self.times(np.logspace(-2, 12, 15) / lam_max)
    r = np.asarray(self(xs, xs, times, times)[1], np.float64)
    norms = np.linalg.norm(r[np.arange(len(times)), np.arange(len(times))], axis=(1, 2))
    zero = self.times(0.0)
    base = float(np.linalg.norm(np.asarray(self(xs, xs, zero, zero)[1][0, 0], np.float64)))
    finite = norms[np.isfinite(norms)]
    return max(1.0, float(finite.max()) / base) if finite.size and base > 0 else 1.0

  def drift_time(self, lam_max: float, growth: float) -> float:
    """Largest lag τ (on a log scale, 4 per decade) with ‖K(τ, 0) − K(0, 0)‖ ≤ growth · ‖K(0, 0)‖ for K = C and R
    on (up to 16 of) the training points: the grid's step cap, since the kernels drift on that scale in t − s
    at every t (≈ growth/λ for a single parameter group)."""
    xs = self.x[:16]
    lags = np.logspace(-2, 12, 57) / lam_max
    times = self.times(np.concatenate([[0.0], lags]))
    drift = []
    for k in self(xs, xs, times, times[:1]):
      k = np.asarray(k[:, 0], np.float64)
      drift.append(np.linalg.norm(k[1:] - k[0], axis=(1, 2)) / np.linalg.norm(k[0]))
    within = np.maximum(*drift) <= growth  # NaN (a kernel blowing up at late lags) counts as drifted
    if within.all():
      return math.inf
    first_out = int(np.argmin(within))
    return float(lags[max(first_out - 1, 0)])
