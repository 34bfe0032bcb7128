"""The one two-time rule every parametric layer shares (docs/theory.md §3).

A parametric layer (Dense, Conv, ...) maps the joint covariance of its inputs through its linear map with unit
weights, Σ̃, and then, with c and r the OU statistics of :mod:`ndk_flax.ou`,

    nngp' = c_W(t,s) Σ̃_nngp + c_b(t,s) B          cov1' = c_W(t,t) Σ̃_cov1 + c_b(t,t) B
    R'    = r_W(t,s) Σ̃_nngp + r_b(t,s) B + c_W(t,s) Σ̃(R)                cov2' likewise at (s, s)

with B the bias covariance pattern (all ones for a shared bias). Σ̃ and B come from Neural Tangents' own
`kernel_fn` of the same layer, called with unit (respectively zero) weight std, so every layer NT supports with
the 'ntk' parameterisation gets the rule without re-deriving its geometry. An absent group
(:func:`ndk_flax.spec.param_group` returned None) contributes nothing.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ndk_flax import ou
from ndk_flax._nt import Kernel
from ndk_flax.spec import ParamGroup

KernelFn = Callable[..., Kernel]


def _c(group: ParamGroup, temperature: Any, t: Any, s: Any) -> Any:
  return ou.covariance(t, s, init_std=group.init_std, prior_std=group.prior_std, temperature=temperature)


def _r(group: ParamGroup, temperature: Any, t: Any, s: Any) -> Any:
  return ou.response(t, s, prior_std=group.prior_std, temperature=temperature)


def parametric_rule(
  unit_kernel_fn: KernelFn,
  weight: Optional[ParamGroup],
  bias: Optional[ParamGroup],
  bias_pattern_fn: Optional[KernelFn] = None,
) -> Callable:
  """The two-time rule of a parametric layer, as ``rule(k, t1, t2, temperature, **nt_kwargs) -> Kernel``.

  Args:
    unit_kernel_fn: Neural Tangents' `kernel_fn` of the layer with `W_std=1`, no bias, 'ntk' parameterisation:
      it maps (cov1, nngp, cov2, ntk) to (Σ̃ cov1, Σ̃ nngp, Σ̃ cov2, Σ̃ nngp + Σ̃ ntk).
    weight: the weight group (σ0_W, σ_W), or None when absent (frozen at zero).
    bias: the bias group, or None for a layer without bias (or an absent one).
    bias_pattern_fn: NT's `kernel_fn` with `W_std=0, b_std=1` for layers whose bias is not shared across
      positions (ConvLocal): it returns B. None means a shared bias, B = 1.
  """

  def rule(k: Kernel, t1, t2, temperature, **nt_kwargs) -> Kernel:
    unit = unit_kernel_fn(k, **nt_kwargs)
    nngp = cov1 = cov2 = ndk = 0.0
    if weight is not None:
      nngp = _c(weight, temperature, t1, t2) * unit.nngp
      cov1 = _c(weight, temperature, t1, t1) * unit.cov1
      cov2 = _c(weight, temperature, t2, t2) * unit.cov2
      ndk = _r(weight, temperature, t1, t2) * unit.nngp + _c(weight, temperature, t1, t2) * (unit.ntk - unit.nngp)
    if bias is not None:
      if bias_pattern_fn is None:
        pattern = pattern1 = pattern2 = 1.0
      else:
        b_k = bias_pattern_fn(k, **nt_kwargs)
        pattern, pattern1, pattern2 = b_k.nngp, b_k.cov1, b_k.cov2
      nngp = nngp + _c(bias, temperature, t1, t2) * pattern
      cov1 = cov1 + _c(bias, temperature, t1, t1) * pattern1
      cov2 = cov2 + _c(bias, temperature, t2, t2) * pattern2
      ndk = ndk + _r(bias, temperature, t1, t2) * pattern
    # `0 * Σ̃ + value` keeps NT's shapes when a group is absent (a scalar 0 is not a kernel).
    return unit.replace(
      nngp=0.0 * unit.nngp + nngp,
      cov1=0.0 * unit.cov1 + cov1,
      cov2=None if unit.cov2 is None else 0.0 * unit.cov2 + cov2,
      ntk=0.0 * unit.nngp + ndk,
    )

  return rule
