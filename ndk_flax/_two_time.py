"""Free weight (Ornstein–Uhlenbeck) statistics and the one two-time rule every parametric layer shares.

THEORY.md §2–3. A parameter group with initialisation variance σ0², prior variance σ² and decay rate
λ = T/σ² follows, without data, an OU process with

    c(t, s) = σ0² e^{−λ(t+s)} + σ² (e^{−λ|t−s|} − e^{−λ(t+s)})      (two-time covariance)
    r(t, s) = e^{−λ(t−s)} · 1[t ≥ s]                                 (linear response)

A parametric layer (Dense, Conv, ...) maps the joint covariance of its inputs through its linear map with unit
weights, Σ̃, and then

    nngp' = c_W(t,s) Σ̃_nngp + c_b(t,s) B          cov1' = c_W(t,t) Σ̃_cov1 + c_b(t,t) B
    R'    = r_W(t,s) Σ̃_nngp + r_b(t,s) B + c_W(t,s) Σ̃(R)                cov2' likewise at (s, s)

with B the bias covariance pattern (all ones for a shared bias). Σ̃ and B come from Neural Tangents' own
`kernel_fn` of the same layer, called with unit (respectively zero) weight std, so every layer NT supports with
the 'ntk' parameterisation gets the rule without re-deriving its geometry.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import jax.numpy as jnp

from ndk_flax._nt import Kernel

KernelFn = Callable[[Kernel], Kernel]


class ParamGroup(NamedTuple):
  """Initialisation std σ0 and prior std σ of one parameter group (weights or biases of a layer)."""

  init_std: float
  prior_std: float

  def decay_rate(self, temperature):
    """λ = T / σ²."""
    return temperature / self.prior_std**2


def check_std(name: str, value, *, allow_zero: bool) -> float:
  """Returns `value` as a float after checking it is a finite std (> 0, or ≥ 0 when `allow_zero`)."""
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise TypeError(f'`{name}` must be a real number, got {value!r}.') from None
  if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
    bound = '>= 0' if allow_zero else '> 0'
    raise ValueError(f'`{name}` must be finite and {bound}, got {value!r}.')
  return v


def make_group(kind: str, init_std, prior_std) -> ParamGroup:
  """Validated `ParamGroup` for `kind` in {'W', 'b'}; the prior std defaults to the initialisation std."""
  init = check_std(f'{kind}_std', init_std, allow_zero=True)
  if prior_std is None:
    if init == 0:
      raise ValueError(
        f'`{kind}_std` is 0, so `{kind}_prior_std` must be given explicitly '
        f'(the prior variance σ² must be > 0; λ = T/σ²).'
      )
    prior_std = init
  prior = check_std(f'{kind}_prior_std', prior_std, allow_zero=False)
  return ParamGroup(init, prior)


def _decay_times(rate, t):
  """λ·t with the convention 0·∞ = 0 (T = 0: frozen weights at every time, including t = ∞)."""
  frozen = rate == 0
  return jnp.where(frozen, 0.0, rate * jnp.where(frozen, 0.0, t))


def _abs_gap(t, s):
  """|t − s| with ∞ − ∞ := 0 (equal times)."""
  same = t == s
  return jnp.where(same, 0.0, jnp.abs(jnp.where(same, 0.0, t - s)))


def ou_covariance(group: ParamGroup, temperature, t, s):
  """c(t, s) = σ0² e^{−λ(t+s)} + σ² (e^{−λ|t−s|} − e^{−λ(t+s)})."""
  rate = group.decay_rate(temperature)
  total = jnp.exp(-(_decay_times(rate, t) + _decay_times(rate, s)))
  gap = jnp.exp(-_decay_times(rate, _abs_gap(t, s)))
  return group.init_std**2 * total + group.prior_std**2 * (gap - total)


def ou_response(group: ParamGroup, temperature, t, s):
  """r(t, s) = e^{−λ(t−s)} for t ≥ s, 0 for t < s."""
  rate = group.decay_rate(temperature)
  causal = t >= s
  return jnp.where(causal, jnp.exp(-_decay_times(rate, jnp.where(causal, _abs_gap(t, s), 0.0))), 0.0)


def parametric_rule(
  unit_kernel_fn: KernelFn, weight: ParamGroup, bias: Optional[ParamGroup], bias_pattern_fn: Optional[KernelFn] = None
) -> Callable:
  """The two-time rule of a parametric layer (THEORY.md §3), as `rule(k, t1, t2, temperature) -> Kernel`.

  Args:
    unit_kernel_fn: Neural Tangents' `kernel_fn` of the layer with `W_std=1`, no bias, 'ntk' parameterisation:
      it maps (cov1, nngp, cov2, ntk) to (Σ̃ cov1, Σ̃ nngp, Σ̃ cov2, Σ̃ nngp + Σ̃ ntk).
    weight: the weight group (σ0_W, σ_W).
    bias: the bias group, or None for a layer without bias.
    bias_pattern_fn: NT's `kernel_fn` with `W_std=0, b_std=1` for layers whose bias is not shared across
      positions (ConvLocal): it returns B. None means a shared bias, B = 1.
  """

  def rule(k: Kernel, t1, t2, temperature) -> Kernel:
    unit = unit_kernel_fn(k)
    mapped_response = unit.ntk - unit.nngp

    def c_w(a, b):
      return ou_covariance(weight, temperature, a, b)

    nngp = c_w(t1, t2) * unit.nngp
    cov1 = c_w(t1, t1) * unit.cov1
    cov2 = c_w(t2, t2) * unit.cov2
    ndk = ou_response(weight, temperature, t1, t2) * unit.nngp + c_w(t1, t2) * mapped_response
    if bias is not None:
      if bias_pattern_fn is None:
        pattern = pattern1 = pattern2 = 1.0
      else:
        b_k = bias_pattern_fn(k)
        pattern, pattern1, pattern2 = b_k.nngp, b_k.cov1, b_k.cov2

      def c_b(a, b):
        return ou_covariance(bias, temperature, a, b)

      nngp = nngp + c_b(t1, t2) * pattern
      cov1 = cov1 + c_b(t1, t1) * pattern1
      cov2 = cov2 + c_b(t2, t2) * pattern2
      ndk = ndk + ou_response(bias, temperature, t1, t2) * pattern
    return unit.replace(nngp=nngp, cov1=cov1, cov2=cov2, ntk=ndk)

  return rule
