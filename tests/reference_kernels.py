"""Independent NumPy reference for the two-time kernels of MLPs (docs/theory.md §2–3), used only by the tests.

Written from the formulas, not from ndk_flax or Neural Tangents: OU weight statistics, Dense layers with
Σ̃ = x·x'/N, and Gaussian expectations E[φ(u)φ(v)], E[φ'(u)φ'(v)] either in closed form (ReLU, ABReLU, erf) or
by 2-D Gauss–Hermite quadrature (any smooth φ).
"""

from __future__ import annotations

import numpy as np
from scipy import special


def ou_c(t, s, init_var, prior_var, lam):
  return init_var * np.exp(-lam * (t + s)) + prior_var * (np.exp(-lam * abs(t - s)) - np.exp(-lam * (t + s)))


def ou_r(t, s, lam):
  return np.exp(-lam * (t - s)) if t >= s else 0.0


def _relu_pair(q1, q2, c):
  norm = np.sqrt(q1 * q2)
  rho = np.clip(c / norm, -1, 1)
  theta = np.arccos(rho)
  ee = norm / (2 * np.pi) * (np.sin(theta) + (np.pi - theta) * np.cos(theta))
  dd = (np.pi - theta) / (2 * np.pi)
  return ee, dd


def relu_expectations(q1, q2, c):
  return _relu_pair(q1, q2, c)


def abrelu_expectations(q1, q2, c, a, b):
  """φ(x) = a min(x, 0) + b max(x, 0) = b relu(x) − a relu(−x)."""
  same_ee, same_dd = _relu_pair(q1, q2, c)
  cross_ee, cross_dd = _relu_pair(q1, q2, -c)
  ee = (a * a + b * b) * same_ee - 2 * a * b * cross_ee
  dd = (a * a + b * b) * same_dd + 2 * a * b * cross_dd
  return ee, dd


def erf_expectations(q1, q2, c):
  d = (1 + 2 * q1) * (1 + 2 * q2)
  ee = 2 / np.pi * np.arcsin(2 * c / np.sqrt(d))
  dd = 4 / np.pi / np.sqrt(d - 4 * c**2)
  return ee, dd


_Z, _W = np.polynomial.hermite_e.hermegauss(120)
_W = _W / _W.sum()


def quadrature_expectations(phi, dphi):
  """E[φ(u)φ(v)], E[φ'(u)φ'(v)] for (u, v) ~ N(0, [[q1, c], [c, q2]]) by 120×120 Gauss–Hermite quadrature."""

  def expectations(q1, q2, c):
    rho = c / np.sqrt(q1 * q2)
    z1 = _Z[:, None]
    z2 = _Z[None, :]
    u = np.sqrt(q1)[..., None, None] * z1
    v = np.sqrt(q2)[..., None, None] * (rho[..., None, None] * z1 + np.sqrt(1 - rho[..., None, None] ** 2) * z2)
    w = _W[:, None] * _W[None, :]
    return (phi(u) * phi(v) * w).sum((-1, -2)), (dphi(u) * dphi(v) * w).sum((-1, -2))

  return expectations


def gelu(x):
  return 0.5 * x * (1 + special.erf(x / np.sqrt(2)))


def dgelu(x):
  return 0.5 * (1 + special.erf(x / np.sqrt(2))) + x * np.exp(-(x**2) / 2) / np.sqrt(2 * np.pi)


def mlp_two_time(x1, x2, t1, t2, temperature, layers, expectations):
  """C(t1,t2,x1,x2), R(t1,t2,x1,x2) of an MLP: Dense, φ, Dense, φ, ..., Dense.

  `layers`: list of (σ0_W, σ_W, σ0_b or None, σ_b) per Dense layer. `expectations(q1, q2, c)` returns
  (E[φφ], E[φ'φ']) for the nonlinearity between Dense layers.
  """
  n = x1.shape[1]
  s11 = np.sum(x1 * x1, 1) / n
  s22 = np.sum(x2 * x2, 1) / n
  s12 = x1 @ x2.T / n
  resp = np.zeros_like(s12)
  cov1 = cov2 = nngp = None  # the previous layer's output covariances, set at i = 0
  for i, (w0, w, b0, b) in enumerate(layers):
    if i > 0:
      q1 = np.broadcast_to(cov1[:, None], nngp.shape)
      q2 = np.broadcast_to(cov2[None, :], nngp.shape)
      s12, dd = expectations(q1, q2, nngp)
      s11, _ = expectations(cov1, cov1, cov1)
      s22, _ = expectations(cov2, cov2, cov2)
      resp = resp * dd
    lw = temperature / w**2
    cw = lambda a, c: ou_c(a, c, w0**2, w**2, lw)
    cov1 = cw(t1, t1) * s11
    cov2 = cw(t2, t2) * s22
    nngp = cw(t1, t2) * s12
    resp = ou_r(t1, t2, lw) * s12 + cw(t1, t2) * resp
    if b0 is not None:
      lb = temperature / b**2
      cov1 = cov1 + ou_c(t1, t1, b0**2, b**2, lb)
      cov2 = cov2 + ou_c(t2, t2, b0**2, b**2, lb)
      nngp = nngp + ou_c(t1, t2, b0**2, b**2, lb)
      resp = resp + ou_r(t1, t2, lb)
  return nngp, resp
