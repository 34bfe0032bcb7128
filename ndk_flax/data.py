"""Built-in toy data: a small synthetic regression / classification set from a fixed seed (no downloads).

The inputs are points of a circle on the sphere of radius √3 in R³,

    x(θ) = √(3/2) (cos θ, sin θ, 1),      so ‖x‖² = 3 and x(θ)·x(θ')/3 = (1 + cos(θ − θ'))/2,

so every kernel of the raw parameterisation (h = W x/√3 + b) is a function of the angle θ − θ' only, the first
pre-activation has variance σ0_W² + σ0_b² at every input, and no two inputs are antipodal (odd networks such as
bias-free erf ones can fit any targets). The P training angles are evenly spaced with a seeded jitter, the test angles
are uniform. Targets: the smooth function g(θ) = sin θ + ½ cos 2θ (regression) or its sign (classification with
labels ±1, fitted by the same summed ½-MSE loss).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

KINDS = ('regression', 'classification')
INPUT_DIM = 3


class Dataset(NamedTuple):
  """Training set (X, Y) and test set (x*, y*), with their angles; targets have shape (n, 1).

  Examples:
    >>> from ndk_flax.data import synthetic
    >>> data = synthetic(n_train=6, n_test=4)
    >>> [a.shape for a in data]
    [(6, 3), (6, 1), (4, 3), (4, 1), (6,), (4,)]
    >>> data._fields[:2]
    ('x_train', 'y_train')
  """

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  theta_train: np.ndarray
  theta_test: np.ndarray


def _check_int(name: str, value: int, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}')
  return int(value)


def embed(theta: np.ndarray) -> np.ndarray:
  """x(θ) = √(3/2) (cos θ, sin θ, 1): angles (n,) -> inputs (n, 3) with ‖x‖² = 3.

  Examples:
    >>> import numpy as np
    >>> from ndk_flax.data import embed
    >>> theta = np.array([0.0, np.pi / 2, 2.0])
    >>> x = embed(theta)
    >>> x.shape, np.round((x**2).sum(axis=1), 6).tolist()  # ‖x‖² = 3
    ((3, 3), [3.0, 3.0, 3.0])
    >>> np.allclose(x @ x.T / 3, (1 + np.cos(theta[:, None] - theta[None, :])) / 2)
    True
  """
  theta = np.asarray(theta, dtype=np.float64)
  if theta.ndim != 1:
    raise ValueError(f'theta must be a 1-D array of angles, got shape {theta.shape}')
  return np.sqrt(1.5) * np.stack([np.cos(theta), np.sin(theta), np.ones_like(theta)], axis=1)


def target(theta: np.ndarray, kind: str = 'regression') -> np.ndarray:
  """y(θ) of shape (n, 1): g(θ) = sin θ + ½ cos 2θ (regression) or sign g(θ) ∈ {−1, +1} (classification).

  Examples:
    >>> import numpy as np
    >>> from ndk_flax.data import target
    >>> theta = np.array([0.0, np.pi / 2, 3 * np.pi / 2])
    >>> np.round(target(theta), 4).ravel().tolist()  # g = 1/2, 1/2, −3/2
    [0.5, 0.5, -1.5]
    >>> target(theta, 'classification').ravel().tolist()
    [1.0, 1.0, -1.0]
  """
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
  theta = np.asarray(theta, dtype=np.float64)
  g = np.sin(theta) + 0.5 * np.cos(2 * theta)
  if kind == 'classification':
    g = np.where(g >= 0, 1.0, -1.0)
  return g[:, None]


def synthetic(kind: str = 'regression', n_train: int = 6, n_test: int = 4, seed: int = 0) -> Dataset:
  """The default toy problem: P = ``n_train`` training and ``n_test`` test points on the circle (see module doc).

  Training angles θ_μ = 2π(μ + u_μ)/P with u_μ ~ U(−0.3, 0.3); test angles uniform on [0, 2π). Deterministic:
  the same arguments always give the same float64 arrays.

  Examples:
    >>> import numpy as np
    >>> from ndk_flax.data import embed, synthetic, target
    >>> data = synthetic('regression', n_train=6, n_test=4, seed=0)
    >>> data.x_train.shape, data.y_test.shape
    ((6, 3), (4, 1))
    >>> bool(np.allclose(data.x_train, embed(data.theta_train)))
    True
    >>> bool(np.allclose(data.y_train, target(data.theta_train)))
    True
    >>> bool(np.array_equal(synthetic(seed=0).x_test, data.x_test))  # deterministic
    True
  """
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
  n_train = _check_int('n_train', n_train, 1)
  n_test = _check_int('n_test', n_test, 1)
  seed = _check_int('seed', seed, 0)
  rng = np.random.default_rng(seed)
  theta_train = 2 * np.pi * (np.arange(n_train) + rng.uniform(-0.3, 0.3, n_train)) / n_train
  theta_test = np.sort(rng.uniform(0, 2 * np.pi, n_test))
  return Dataset(
    embed(theta_train), target(theta_train, kind), embed(theta_test), target(theta_test, kind), theta_train, theta_test
  )
