"""Two-time (NDK) rule of global self-attention with tied queries and keys (docs/attention.md).

Setting: Neural Tangents' `GlobalSelfAttention` with ``linear_scaling=True`` (query-key logits scaled by
1/(N·n_chan_key), query and key matrices tied), any ``attention_mechanism`` φ, no positional embedding. In the
raw parameterisation (docs/theory.md §1) its parameter groups are the tied query-key matrix U (initialisation
variance σ0_Q·σ0_K, prior variance σ_Q·σ_K), the value matrix V, the output matrix O and the bias b; each is a
free Ornstein–Uhlenbeck process with two-time covariance c_g(t, s) and response r_g(t, s) (docs/theory.md §2).

With the input kernels of the layer (cov1 = C(t,t,x,x), cov2 = C(s,s,x',x'), nngp = C(t,s,x,x'), R in the ntk
slot), the logits converge to deterministic matrices and the layer maps (docs/attention.md §3)

    A1 = φ(c_U(t,t) cov1),   A2 = φ(c_U(s,s) cov2),   M(X) = A1 X A2ᵀ   (over positions, per input pair)
    nngp' = c_O(t,s) c_V(t,s) M(nngp) + c_b(t,s)
    cov1' = c_O(t,t) c_V(t,t) A1 cov1 A1ᵀ + c_b(t,t)        cov2' likewise at (s, s)
    R'    = c_O(t,s) c_V(t,s) M(R) + [r_O(t,s) c_V(t,s) + c_O(t,s) r_V(t,s)] M(nngp) + r_b(t,s)

The query-key matrix has no response term: its gradient vanishes in the limit n_chan_key → ∞ (as in Neural
Tangents' NTK of this layer). The matrices A and M are computed by Neural Tangents' own `kernel_fn` of the
layer with unit value/output stds and no bias, called with the query-key std set to the logit scale.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import jax.numpy as jnp

from ndk_flax import ou
from ndk_flax._nt import Kernel
from ndk_flax.spec import ParamGroup, param_group

KernelFn = Callable[[Kernel], Kernel]
UnitKernelFnAt = Callable[[object], KernelFn]
"""Maps a logit scale g to NT's attention `kernel_fn` with query-key std product g, unit value and output stds,
and no bias."""


class AttentionGroups(NamedTuple):
  """Parameter groups of one attention layer; None marks a group that is absent (init std 0, no prior std).

  Attributes:
    query_key: the tied query-key matrix U, with σ0_U² = σ0_Q σ0_K and σ_U² = σ_Q σ_K.
    value: the value matrix V.
    out: the output matrix O.
    bias: the output bias b (None also when the layer has no bias).

  Examples:
    >>> groups = AttentionGroups(query_key=None, value=None, out=None, bias=None)  # every group absent
    >>> [name for name, g in groups._asdict().items() if g is None]
    ['query_key', 'value', 'out', 'bias']
  """

  query_key: Optional[ParamGroup]
  value: Optional[ParamGroup]
  out: Optional[ParamGroup]
  bias: Optional[ParamGroup]

  def present(self) -> tuple[ParamGroup, ...]:
    """The groups that exist, in the order (query_key, value, out, bias).

    Examples:
      >>> groups = attention_groups(1.0, 1.0, 1.0, 1.0, None)
      >>> len(groups.present())
      3
    """
    return tuple(g for g in self if g is not None)


def attention_groups(
  W_query_std,
  W_key_std,
  W_value_std,
  W_out_std,
  b_std,
  *,
  W_query_prior_std=None,
  W_key_prior_std=None,
  W_value_prior_std=None,
  W_out_prior_std=None,
  b_prior_std=None,
) -> AttentionGroups:
  """Parameter groups of a tied-query-key attention layer from Neural Tangents' stds and the prior stds.

  Each prior std defaults to its initialisation std. A group with init std 0 and no prior std is absent. The tied
  query-key group has σ0_U = √(σ0_Q σ0_K) and σ_U = √(σ_Q σ_K): only these products enter the logits
  (docs/attention.md §2).

  Examples:
    >>> g = attention_groups(2.0, 0.5, 1.0, 1.5, 0.1, W_key_prior_std=2.0)
    >>> round(g.query_key.init_std, 6), round(g.query_key.prior_std, 6), g.bias.prior_std
    (1.0, 2.0, 0.1)
  """
  query = param_group('W_query', W_query_std, W_query_prior_std)
  key = param_group('W_key', W_key_std, W_key_prior_std)
  if query is None or key is None:
    query_key = None
  else:
    query_key = ParamGroup(math.sqrt(query.init_std * key.init_std), math.sqrt(query.prior_std * key.prior_std))
  return AttentionGroups(
    query_key=query_key,
    value=param_group('W_value', W_value_std, W_value_prior_std),
    out=param_group('W_out', W_out_std, W_out_prior_std),
    bias=param_group('b', b_std, b_prior_std),
  )


def unsupported_reason(linear_scaling: bool, pos_emb_type: str) -> Optional[str]:
  """Why the two-time rule is not available for these options, or None when it is.

  Examples:
    >>> unsupported_reason(True, 'NONE') is None
    True
    >>> 'linear_scaling' in unsupported_reason(False, 'NONE')
    True
  """
  if not linear_scaling:
    return (
      'GlobalSelfAttention(linear_scaling=False) has no two-time (NDK) rule: with 1/√n_chan_key scaling the '
      'logits stay Gaussian with O(1) fluctuations, and the query and key matrices are independent OU processes '
      'whose two-time moments enter through φ; no closed form is derived (Neural Tangents itself has one only '
      'for IDENTITY at T = 0). Use linear_scaling=True (tied queries and keys), for which the rule is exact '
      '(docs/attention.md).'
    )
  if str(pos_emb_type).upper() not in ('NONE', 'POSITIONALEMBEDDING.NONE'):
    return (
      f'GlobalSelfAttention(pos_emb_type={pos_emb_type!r}) has no two-time (NDK) rule: the positional '
      'embeddings are trainable parameters shared by all inputs, whose OU statistics would enter the logits and '
      'values; this case is not derived. Use pos_emb_type="NONE" (docs/attention.md §5).'
    )
  return None


def _covariance(group: Optional[ParamGroup], temperature, t, s):
  if group is None:
    return 0.0
  return ou.covariance(t, s, init_std=group.init_std, prior_std=group.prior_std, temperature=temperature)


def _response(group: Optional[ParamGroup], temperature, t, s):
  return 0.0 if group is None else ou.response(t, s, prior_std=group.prior_std, temperature=temperature)


def _weigh_own(unit_kernel_fn_at: UnitKernelFnAt, cov, k: Kernel, logit_scale, which: str):
  """A cov Aᵀ with A = φ(logit_scale · cov) for one side (`which` in {'cov1', 'cov2'}) of the kernel `k`."""
  scalar = jnp.zeros((), cov.dtype)
  side = k.replace(
    cov1=cov, cov2=None, nngp=scalar, ntk=None, mask1=getattr(k, 'mask1' if which == 'cov1' else 'mask2'), mask2=None
  )
  return unit_kernel_fn_at(logit_scale)(side).cov1


def self_attention_rule(
  unit_kernel_fn_at: UnitKernelFnAt, groups: AttentionGroups, refusal: Optional[str] = None
) -> Callable:
  """The two-time rule of tied-query-key global self-attention, as `rule(k, t1, t2, temperature) -> Kernel`.

  Computes (nngp', cov1', cov2', R') of docs/attention.md §3 from the input kernel `k` (R in the ntk slot).

  Args:
    unit_kernel_fn_at: g ↦ Neural Tangents' `kernel_fn` of the same layer with `W_query_std * W_key_std = g`,
      `W_value_std = W_out_std = 1` and no bias.
    groups: the layer's parameter groups.
    refusal: if not None, the rule raises `NotImplementedError(refusal)` (options without a derived rule).

  Examples:
    >>> import jax.numpy as jnp
    >>> from ndk_flax._nt import nt_stax
    >>> at = lambda g: nt_stax.GlobalSelfAttention(2, 2, 2, 1, W_key_std=g, W_query_std=1.0)[2]
    >>> rule = self_attention_rule(at, attention_groups(1.0, 1.0, 1.0, 1.0, None))
    >>> k = nt_stax.Identity()[2](jnp.ones((1, 3, 2)), None, diagonal_spatial=False)
    >>> float(rule(k, 0.0, 0.0, 0.0).nngp.sum())
    9.0
  """

  def rule(k: Kernel, t1, t2, temperature, **nt_kwargs) -> Kernel:
    del nt_kwargs  # NT's attention kernel_fn takes none either
    if refusal is not None:
      raise NotImplementedError(refusal)
    qk, v, o, b = groups

    def c(group, a, b_):
      return _covariance(group, temperature, a, b_)

    logit1, logit2 = c(qk, t1, t1), c(qk, t2, t2)
    mixed = unit_kernel_fn_at(1.0)(k.replace(cov1=logit1 * k.cov1, cov2=None if k.cov2 is None else logit2 * k.cov2))
    mixed_nngp = mixed.nngp
    mixed_response = mixed.ntk - 2 * mixed.nngp
    c_ov = c(o, t1, t2) * c(v, t1, t2)
    resp_ov = _response(o, temperature, t1, t2) * c(v, t1, t2) + c(o, t1, t2) * _response(v, temperature, t1, t2)
    nngp = c_ov * mixed_nngp + c(b, t1, t2)
    ndk = c_ov * mixed_response + resp_ov * mixed_nngp + _response(b, temperature, t1, t2)
    cov1 = c(o, t1, t1) * c(v, t1, t1) * _weigh_own(unit_kernel_fn_at, k.cov1, k, logit1, 'cov1') + c(b, t1, t1)
    cov2 = None
    if k.cov2 is not None:
      cov2 = c(o, t2, t2) * c(v, t2, t2) * _weigh_own(unit_kernel_fn_at, k.cov2, k, logit2, 'cov2') + c(b, t2, t2)
    # As Neural Tangents does after its own rule: entries involving a masked position are zero.
    return mixed.replace(nngp=nngp, cov1=cov1, cov2=cov2, ntk=ndk).mask(mixed.mask1, mixed.mask2)

  return rule
