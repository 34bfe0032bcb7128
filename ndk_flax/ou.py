"""Statistics of the free weight process: the Ornstein–Uhlenbeck law of one parameter group (docs/theory.md §2).

Without data, every parameter of a group with initialisation std σ0, prior std σ and λ = T/σ² follows
dθ = −λ θ dt + √(2T) dB, θ(0) ~ N(0, σ0²). This module is the one home of

* :func:`covariance`: c(t, s) = σ0² e^{−λ(t+s)} + σ² (e^{−λ|t−s|} − e^{−λ(t+s)});
* :func:`response`: r(t, s) = e^{−λ(t−s)} for t ≥ s and 0 for t < s;
* :func:`transition`: the exact step θ(s + Δ) = e^{−λΔ} θ(s) + σ √(1 − e^{−2λΔ}) ξ;
* :func:`sample_pair`: an exact draw of the pair (θ(t), θ(s)).

T = 0 gives c ≡ σ0², r ≡ 1 (frozen weights, 0·∞ := 0); t = ∞ is allowed.

Examples:
  >>> from ndk_flax import ou
  >>> float(ou.covariance(1.0, 1.0, init_std=1.0, prior_std=1.0, temperature=0.5))
  1.0
  >>> round(float(ou.response(2.0, 1.0, prior_std=1.0, temperature=1.0)), 6)
  0.367879
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ['covariance', 'response', 'sample_pair', 'transition']


def _decay(rate: Any, t: Any) -> jax.Array:
  """λ·t with the convention 0·∞ = 0 (T = 0: frozen weights at every time, including t = ∞)."""
  frozen = rate == 0
  return jnp.where(frozen, 0.0, rate * jnp.where(frozen, 0.0, t))


def _abs_gap(t: Any, s: Any) -> jax.Array:
  """|t − s| with ∞ − ∞ := 0 (equal times)."""
  same = t == s
  return jnp.where(same, 0.0, jnp.abs(jnp.where(same, 0.0, t - s)))


def covariance(t: Any, s: Any, *, init_std: Any, prior_std: Any, temperature: Any) -> jax.Array:
  """c(t, s) = ⟨θ(t) θ(s)⟩ = σ0² e^{−λ(t+s)} + σ² (e^{−λ|t−s|} − e^{−λ(t+s)}), λ = T/σ² (docs/theory.md §2).

  Examples:
    >>> round(float(covariance(jnp.inf, jnp.inf, init_std=1.0, prior_std=2.0, temperature=1.0)), 6)
    4.0
  """
  rate = temperature / jnp.square(prior_std)
  total = jnp.exp(-(_decay(rate, t) + _decay(rate, s)))
  gap = jnp.exp(-_decay(rate, _abs_gap(t, s)))
  return jnp.square(init_std) * total + jnp.square(prior_std) * (gap - total)


def response(t: Any, s: Any, *, prior_std: Any, temperature: Any) -> jax.Array:
  """r(t, s) = e^{−λ(t−s)} for t ≥ s, 0 for t < s (the linear response of θ; docs/theory.md §2).

  Examples:
    >>> float(response(1.0, 2.0, prior_std=1.0, temperature=1.0))
    0.0
  """
  rate = temperature / jnp.square(prior_std)
  causal = t >= s
  return jnp.where(causal, jnp.exp(-_decay(rate, jnp.where(causal, _abs_gap(t, s), 0.0))), 0.0)


def transition(theta_s: Any, delta: Any, noise: Any, *, prior_std: Any, temperature: Any) -> jax.Array:
  """θ(s + Δ) = e^{−λΔ} θ(s) + σ √(1 − e^{−2λΔ}) ξ given θ(s) and a standard normal ``noise`` ξ (exact, Δ ≥ 0).

  Examples:
    >>> float(transition(2.0, 0.0, 1.0, prior_std=1.0, temperature=1.0))
    2.0
  """
  rate = temperature / jnp.square(prior_std)
  return jnp.exp(-_decay(rate, delta)) * theta_s + prior_std * jnp.sqrt(-jnp.expm1(-2 * _decay(rate, delta))) * noise


def sample_pair(
  key: jax.Array, shape: tuple, t: Any, s: Any, *, init_std: Any, prior_std: Any, temperature: Any, dtype: Any = None
) -> tuple[jax.Array, jax.Array]:
  """An exact draw of (θ(t), θ(s)) of the free OU process, each of ``shape`` (t, s finite and ≥ 0, any order).

  θ(s) ~ N(0, c(s, s)) and θ(t) | θ(s) ~ N(c(t, s)/c(s, s) θ(s), c(t, t) − c(t, s)²/c(s, s)).

  Examples:
    >>> a, b = sample_pair(jax.random.PRNGKey(0), (3,), 1.0, 1.0, init_std=1.0, prior_std=1.0, temperature=0.2)
    >>> bool(jnp.allclose(a, b))
    True
  """
  dtype = dtype or jnp.result_type(float)
  stats = dict(init_std=init_std, prior_std=prior_std, temperature=temperature)
  c_tt, c_ss, c_ts = covariance(t, t, **stats), covariance(s, s, **stats), covariance(t, s, **stats)
  k1, k2 = jax.random.split(key)
  z1 = jax.random.normal(k1, shape, dtype)
  z2 = jax.random.normal(k2, shape, dtype)
  scale = jnp.sqrt(c_ss)
  slope = jnp.where(c_ss > 0, c_ts / jnp.where(c_ss > 0, scale, 1.0), 0.0)
  theta_s = scale * z1
  theta_t = slope * z1 + jnp.sqrt(jnp.maximum(c_tt - slope**2, 0.0)) * z2
  return theta_t.astype(dtype), theta_s.astype(dtype)
