"""`ndk_flax.stax`: a drop-in superset of `neural_tangents.stax` with two-time kernels under Langevin learning.

Every layer and combinator of `neural_tangents.stax` is importable from here with the same signature and still
unpacks as ``init_fn, apply_fn, kernel_fn = layer`` (Neural Tangents' own triple). The result is an
:class:`NDKLayer`, which additionally has

* ``layer.ndk_fn(x1, x2, t1, t2, *, temperature)`` -> :class:`TwoTimeKernel` with the two-time NNGP
  ``nngp`` = C(t1, t2, x1, x2) and the Neural Dynamical Kernel ``ndk`` = R(t1, t2, x1, x2) (THEORY.md §3);
* ``layer.spec``: a :class:`LayerSpec` tree describing the architecture (used by ``ndk_flax.nn.from_stax``);
* ``layer.relaxation_rates(temperature)``: λ = T/σ² of every parameter group.

Parametric layers (`Dense`, `Conv`, `ConvTranspose`, `ConvLocal`) take the initialisation stds as Neural Tangents
does (``W_std`` = σ0_W, ``b_std`` = σ0_b) plus the prior stds ``W_prior_std`` = σ_W, ``b_prior_std`` = σ_b
(default: equal to the initialisation ones). The network is in the raw parameterisation of THEORY.md §1
(h = W a/√fan_in + b with W itself trained), whose kernels at T = 0 are Neural Tangents' NNGP and the raw NTK
(for bias-free networks with one σ0: NT's ntk / σ0²).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ndk_flax import _two_time, attention
from ndk_flax import _validation as V
from ndk_flax._nt import Kernel, nt_stax
from ndk_flax._two_time import ParamGroup

# Re-exported unchanged: enums, helpers and decorators that are not layers.
AggregateImplementation = nt_stax.AggregateImplementation
AttentionMechanism = nt_stax.AttentionMechanism
Bool = nt_stax.Bool
Diagonal = nt_stax.Diagonal
MaskedArray = nt_stax.MaskedArray
Padding = nt_stax.Padding
PositionalEmbedding = nt_stax.PositionalEmbedding
requires = nt_stax.requires
supports_masking = nt_stax.supports_masking
unmask_fn = nt_stax.unmask_fn
layer = nt_stax.layer  # NT's layer decorator

Rule = Callable[[Any, Any, Any, Any], Any]
"""A two-time rule: (kernel tree, t1, t2, temperature) -> kernel tree."""


class TwoTimeKernel(NamedTuple):
  """Two-time kernels of a network output.

  Attributes:
    nngp: C(t1, t2, x1, x2), the two-time NNGP (covariance of the free network output at times t1 and t2).
    ndk: R(t1, t2, x1, x2), the Neural Dynamical Kernel in response form (zero for t1 < t2).
    cov1: C(t1, t1, x1, x1) (diagonal over the batch, as Neural Tangents' ``cov1``).
    cov2: C(t2, t2, x2, x2).
  """

  nngp: jax.Array
  ndk: jax.Array
  cov1: jax.Array
  cov2: jax.Array


class LayerSpec(NamedTuple):
  """Architecture description: ``kind`` in {'Dense', 'Conv', 'ConvTranspose', 'ConvLocal', 'serial',
  'parallel', 'free'}; ``params`` the constructor arguments (for 'free': ``name`` and the NT ``layer`` triple
  whose ``apply_fn`` is the forward pass); ``children`` the sub-specs of combinators."""

  kind: str
  params: dict
  children: tuple = ()


class NDKLayer(tuple):
  """A Neural Tangents ``(init_fn, apply_fn, kernel_fn)`` triple that also computes two-time kernels."""

  def __new__(
    cls, triple: Sequence[Callable], rule: Rule, spec: LayerSpec, groups: tuple[ParamGroup, ...]
  ) -> 'NDKLayer':
    init_fn, apply_fn, kernel_fn = triple[:3]
    self = super().__new__(cls, (init_fn, apply_fn, kernel_fn))
    self.rule = rule
    self.spec = spec
    self.groups = groups
    self._jitted_grid = jax.jit(self._grid)
    return self

  @property
  def init_fn(self) -> Callable:
    return self[0]

  @property
  def apply_fn(self) -> Callable:
    return self[1]

  @property
  def kernel_fn(self) -> Callable:
    return self[2]

  def relaxation_rates(self, temperature: float) -> tuple[float, ...]:
    """λ = T/σ² of every parameter group, in network order (weights, then bias, per layer)."""
    temperature = V.temperature(temperature)
    return tuple(g.decay_rate(temperature) for g in self.groups)

  def ndk_fn(self, x1, x2=None, t1=0.0, t2=0.0, *, temperature) -> TwoTimeKernel:
    """Two-time kernels C(t1, t2, x1, x2) and R(t1, t2, x1, x2) of the network under Langevin learning.

    Args:
      x1: inputs, shaped as for Neural Tangents' ``kernel_fn`` (batch first).
      x2: second batch of inputs, or None for ``x2 = x1`` (the pair is still never treated as identical
        inputs when ``t1 != t2``: the correlation of h(x, t) and h(x, s) is below one).
      t1, t2: times ≥ 0 (``jnp.inf`` allowed), scalars or 1-D arrays. 1-D arrays give leading axes
        ``(len(t1), len(t2))`` on ``nngp``/``ndk``, ``(len(t1),)`` on ``cov1`` and ``(len(t2),)`` on ``cov2``,
        computed in one jitted, vectorised call.
      temperature: T ≥ 0 (keyword only). T = 0 gives the NNGP and the raw NTK at the initialisation variances.

    Returns:
      :class:`TwoTimeKernel` (float64 when ``jax_enable_x64`` is on).
    """
    temperature = V.temperature(temperature)
    x1 = _check_inputs('x1', x1)
    x2 = x1 if x2 is None else _check_inputs('x2', x2)
    batch_axis = self.kernel_fn.input_req.get('batch_axis', 0) if hasattr(self.kernel_fn, 'input_req') else 0
    if x1.ndim != x2.ndim or _drop(x1.shape, batch_axis) != _drop(x2.shape, batch_axis):
      raise ValueError(
        f'`x1` and `x2` must have the same shape apart from the batch axis {batch_axis}; got {x1.shape} and {x2.shape}.'
      )
    t1v, scalar1 = _check_times('t1', t1)
    t2v, scalar2 = _check_times('t2', t2)
    out = self._jitted_grid(x1, x2, t1v, t2v, temperature)
    nngp, ndk, cov1, cov2 = out
    if scalar2:
      nngp, ndk, cov2 = _take_first(nngp, 1), _take_first(ndk, 1), _take_first(cov2, 0)
    if scalar1:
      nngp, ndk, cov1 = _take_first(nngp, 0), _take_first(ndk, 0), _take_first(cov1, 0)
    return TwoTimeKernel(nngp, ndk, cov1, cov2)

  def _input_kernel(self, x1, x2) -> Kernel:
    """Neural Tangents' input `Kernel` of (x1, x2) under this network's requirements, with x1_is_x2 = False."""
    req = getattr(self.kernel_fn, 'input_req', {})
    k = _input_layer(dict(req))[2](x1, x2, get=None)
    return jax.tree.map(lambda kk: kk.replace(x1_is_x2=jnp.array(False)), k, is_leaf=lambda z: isinstance(z, Kernel))

  def _grid(self, x1, x2, t1v, t2v, temperature):
    k0 = self._input_kernel(x1, x2)

    def pair(t1, t2):
      k = self.rule(k0, t1, t2, temperature)
      return _fields(k)

    row = jax.vmap(pair, in_axes=(None, 0))
    per_pair = _kernel_size(k0) * max(1, len(self.groups))
    batch_size = int(max(1, min(t1v.shape[0], _GRID_BUDGET // max(1, per_pair * t2v.shape[0]))))
    nngp, ndk, cov1, cov2 = jax.lax.map(lambda t: row(t, t2v), t1v, batch_size=batch_size)
    take_cov1 = jax.tree.map(lambda a: a[:, 0], cov1)
    take_cov2 = jax.tree.map(lambda a: a[0], cov2)
    return nngp, ndk, take_cov1, take_cov2


# Elements (per time pair) that one lax.map batch of the time grid may hold per kernel copy.
_GRID_BUDGET = 2**26


def _take_first(tree, axis: int):
  return jax.tree.map(lambda a: jnp.take(a, 0, axis=axis), tree)


def _fields(k):
  is_kernel = lambda z: isinstance(z, Kernel)
  return tuple(jax.tree.map(lambda kk: getattr(kk, f), k, is_leaf=is_kernel) for f in ('nngp', 'ntk', 'cov1', 'cov2'))


def _kernel_size(k) -> int:
  sizes = [kk.nngp.size for kk in jax.tree.leaves(k, is_leaf=lambda z: isinstance(z, Kernel))]
  return int(sum(sizes))


def _drop(shape, axis):
  axis = axis % len(shape)
  return shape[:axis] + shape[axis + 1 :]


@functools.lru_cache(maxsize=None)
def _input_layer_cached(req_items):
  req = dict(req_items)

  @nt_stax.layer
  def InputKernel():
    init_fn, apply_fn, _ = nt_stax.Identity()

    @nt_stax.requires(**req)
    def kernel_fn(k, **kwargs):
      return k

    return init_fn, apply_fn, kernel_fn

  return InputKernel()


def _input_layer(req: dict):
  return _input_layer_cached(tuple(sorted(req.items())))


# ----------------------------------------------------------------------------------------------------------
# Input validation.


def _check_times(name: str, t):
  if V.is_traced(t):
    t = jnp.asarray(t)
  else:
    t = np.asarray(t, dtype=np.float64)
    if t.ndim > 1:
      raise ValueError(f'`{name}` must be a scalar or a 1-D array of times, got shape {t.shape}.')
    if np.any(np.isnan(t)) or np.any(t < 0):
      raise ValueError(f'`{name}` must hold times >= 0 (inf allowed, no NaN), got {t}.')
    t = jnp.asarray(t, dtype=jnp.result_type(float))
  if t.ndim > 1:
    raise ValueError(f'`{name}` must be a scalar or a 1-D array of times, got shape {t.shape}.')
  scalar = t.ndim == 0
  return jnp.atleast_1d(t), scalar


def _check_inputs(name: str, x):
  return x if V.is_traced(x) else V.batched_array(name, x, 2)


# ----------------------------------------------------------------------------------------------------------
# Parameter-free layers: Neural Tangents' own kernel rule on the joint covariance.

_PARAMETRIC_NT_LAYERS = ('Dense', 'Conv', 'ConvTranspose', 'ConvLocal', 'GlobalSelfAttention')


def _free_rule(nt_kernel_fn: Callable) -> Rule:
  def rule(k, t1, t2, temperature):
    return nt_kernel_fn(k)

  return rule


def _foreign_rule(triple: Sequence[Callable], name: str) -> Rule:
  """Rule for a plain Neural Tangents triple: allowed only if it has no parameters (checked on its input)."""
  init_fn, _, kernel_fn = triple[:3]

  def rule(k, t1, t2, temperature):
    shapes = [kk.shape1 for kk in jax.tree.leaves(k, is_leaf=lambda z: isinstance(z, Kernel))]
    shape = shapes[0] if isinstance(k, Kernel) else shapes
    params = jax.eval_shape(lambda: init_fn(jax.random.PRNGKey(0), shape)[1])
    if jax.tree.leaves(params):
      raise TypeError(
        f'The Neural Tangents layer {name!r} has trainable parameters, so it needs the '
        f'two-time rule of Langevin learning: build it from `ndk_flax.stax` '
        f'(e.g. `ndk_flax.stax.{name}`) instead of `neural_tangents.stax`.'
      )
    return kernel_fn(k)

  return rule


def as_ndk_layer(layer_: Sequence[Callable]) -> NDKLayer:
  """Wraps a plain Neural Tangents triple for use in our combinators (parameter-free layers only)."""
  if isinstance(layer_, NDKLayer):
    return layer_
  if not (isinstance(layer_, (tuple, list)) and len(layer_) >= 3 and all(callable(f) for f in layer_[:3])):
    raise TypeError(f'Expected a stax layer `(init_fn, apply_fn, kernel_fn)`, got {type(layer_).__name__}.')
  name = getattr(layer_[2], '__name__', type(layer_).__name__)
  if name in _PARAMETRIC_NT_LAYERS:
    raise TypeError(
      f'`neural_tangents.stax.{name}` has trainable parameters and no two-time rule; use '
      f'`ndk_flax.stax.{name}` (same signature, plus `W_prior_std`/`b_prior_std`).'
    )
  return NDKLayer(
    layer_, _foreign_rule(layer_, name), LayerSpec('free', {'name': name, 'layer': tuple(layer_[:3])}), ()
  )


def _wrap_free(nt_layer_fn: Callable) -> Callable[..., NDKLayer]:
  @functools.wraps(nt_layer_fn)
  def new_layer(*args, **kwargs) -> NDKLayer:
    triple = nt_layer_fn(*args, **kwargs)
    spec = LayerSpec('free', {'name': nt_layer_fn.__name__, 'layer': tuple(triple[:3]), 'args': args, 'kwargs': kwargs})
    return NDKLayer(triple, _free_rule(triple[2]), spec, ())

  return new_layer


_FREE_LAYERS = (
  'ABRelu',
  'Abs',
  'Aggregate',
  'AvgPool',
  'Cos',
  'DotGeneral',
  'Dropout',
  'Elementwise',
  'ElementwiseNumerical',
  'Erf',
  'Exp',
  'ExpNormalized',
  'FanInConcat',
  'FanInProd',
  'FanInSum',
  'FanOut',
  'Flatten',
  'Gabor',
  'Gaussian',
  'Gelu',
  'GlobalAvgPool',
  'GlobalSumPool',
  'Hermite',
  'Identity',
  'ImageResize',
  'Index',
  'LayerNorm',
  'LeakyRelu',
  'Monomial',
  'Polynomial',
  'Rbf',
  'RectifiedMonomial',
  'Relu',
  'Sigmoid_like',
  'Sign',
  'Sin',
  'Slice',
  'SumPool',
)

for _name in _FREE_LAYERS:
  globals()[_name] = _wrap_free(getattr(nt_stax, _name))
del _name


# ----------------------------------------------------------------------------------------------------------
# Parametric layers: the shared two-time rule of `_two_time.parametric_rule`.


def _parametric(
  kind: str,
  nt_layer_fn: Callable,
  args: tuple,
  kwargs: dict,
  *,
  W_std,
  b_std,
  W_prior_std,
  b_prior_std,
  parameterization: str,
  shared_bias: bool,
) -> NDKLayer:
  if parameterization != 'ntk':
    raise ValueError(
      f'`parameterization` must be "ntk" (the raw parameterisation of Langevin learning, '
      f'h = W a/√fan_in + b), got {parameterization!r}.'
    )
  weight = _two_time.make_group('W', W_std, W_prior_std)
  if b_std is None:
    if b_prior_std is not None:
      raise ValueError(
        '`b_prior_std` is given but `b_std` is None (the layer has no bias); pass `b_std` to add a bias.'
      )
    bias = None
  else:
    bias = _two_time.make_group('b', b_std, b_prior_std)
  triple = nt_layer_fn(*args, W_std=W_std, b_std=b_std, parameterization='ntk', **kwargs)
  unit_kernel_fn = nt_layer_fn(*args, W_std=1.0, b_std=None, parameterization='ntk', **kwargs)[2]
  bias_pattern_fn = None
  if bias is not None and not shared_bias:
    bias_pattern_fn = nt_layer_fn(*args, W_std=0.0, b_std=1.0, parameterization='ntk', **kwargs)[2]
  rule = _two_time.parametric_rule(unit_kernel_fn, weight, bias, bias_pattern_fn)
  spec = LayerSpec(
    kind,
    dict(
      args=args,
      **kwargs,
      W_std=weight.init_std,
      b_std=b_std,
      W_prior_std=weight.prior_std,
      b_prior_std=None if bias is None else bias.prior_std,
    ),
  )
  groups = (weight,) if bias is None else (weight, bias)
  return NDKLayer(triple, rule, spec, groups)


def Dense(
  out_dim: int,
  W_std: float = 1.0,
  b_std: Optional[float] = None,
  batch_axis: int = 0,
  channel_axis: int = -1,
  parameterization: str = 'ntk',
  s: tuple[int, int] = (1, 1),
  *,
  W_prior_std: Optional[float] = None,
  b_prior_std: Optional[float] = None,
) -> NDKLayer:
  """Dense layer h = W a/√N + b (raw parameterisation), W ~ N(0, W_std²), prior N(0, W_prior_std²).

  Same signature as `neural_tangents.stax.Dense` plus the prior stds (default: the initialisation stds).
  """
  out = _parametric(
    'Dense',
    nt_stax.Dense,
    (out_dim,),
    dict(batch_axis=batch_axis, channel_axis=channel_axis, s=s),
    W_std=W_std,
    b_std=b_std,
    W_prior_std=W_prior_std,
    b_prior_std=b_prior_std,
    parameterization=parameterization,
    shared_bias=True,
  )
  out.spec.params['out_dim'] = out_dim
  return out


def _conv_factory(kind: str, nt_layer_fn: Callable, shared_bias: bool):

  def conv(
    out_chan: int,
    filter_shape: Sequence[int],
    strides: Optional[Sequence[int]] = None,
    padding: str = 'VALID',
    W_std: float = 1.0,
    b_std: Optional[float] = None,
    dimension_numbers: Optional[tuple[str, str, str]] = None,
    parameterization: str = 'ntk',
    s: tuple[int, int] = (1, 1),
    *,
    W_prior_std: Optional[float] = None,
    b_prior_std: Optional[float] = None,
  ) -> NDKLayer:
    out = _parametric(
      kind,
      nt_layer_fn,
      (out_chan, filter_shape),
      dict(strides=strides, padding=padding, dimension_numbers=dimension_numbers, s=s),
      W_std=W_std,
      b_std=b_std,
      W_prior_std=W_prior_std,
      b_prior_std=b_prior_std,
      parameterization=parameterization,
      shared_bias=shared_bias,
    )
    out.spec.params.update(out_chan=out_chan, filter_shape=tuple(filter_shape))
    return out

  conv.__name__ = conv.__qualname__ = kind
  conv.__doc__ = (
    f'{kind} layer in the raw parameterisation (fan-in = in_channels × filter size), with the '
    f'signature of `neural_tangents.stax.{kind}` plus `W_prior_std`, `b_prior_std`.'
  )
  return conv


Conv = _conv_factory('Conv', nt_stax.Conv, shared_bias=True)
ConvTranspose = _conv_factory('ConvTranspose', nt_stax.ConvTranspose, shared_bias=True)
ConvLocal = _conv_factory('ConvLocal', nt_stax.ConvLocal, shared_bias=False)


def GlobalSelfAttention(
  n_chan_out: int,
  n_chan_key: int,
  n_chan_val: int,
  n_heads: int,
  linear_scaling: bool = True,
  W_key_std: float = 1.0,
  W_value_std: float = 1.0,
  W_query_std: float = 1.0,
  W_out_std: float = 1.0,
  b_std: Optional[float] = None,
  attention_mechanism: str = AttentionMechanism.SOFTMAX.name,
  pos_emb_type: str = PositionalEmbedding.NONE.name,
  pos_emb_p_norm: float = 2,
  pos_emb_decay_fn: Optional[Callable[[float], float]] = None,
  n_chan_pos_emb: Optional[int] = None,
  W_pos_emb_std: float = 1.0,
  val_pos_emb: bool = False,
  batch_axis: int = 0,
  channel_axis: int = -1,
  *,
  W_key_prior_std: Optional[float] = None,
  W_value_prior_std: Optional[float] = None,
  W_query_prior_std: Optional[float] = None,
  W_out_prior_std: Optional[float] = None,
  b_prior_std: Optional[float] = None,
) -> NDKLayer:
  """Global self-attention with the signature of `neural_tangents.stax.GlobalSelfAttention`, plus prior stds.

  The NT triple is Neural Tangents' own for every option. `ndk_fn` has the two-time rule of
  `ndk_flax.attention` (docs/attention.md) for `linear_scaling=True` and `pos_emb_type='NONE'` (any
  `attention_mechanism`), and refuses the other options with the reason. Groups: the tied query-key matrix
  (σ0² = W_query_std·W_key_std, σ² = W_query_prior_std·W_key_prior_std), W_value, W_out and the bias.

  Examples:
    >>> import jax.numpy as jnp
    >>> layer = GlobalSelfAttention(2, 2, 2, 1)
    >>> round(float(layer.ndk_fn(jnp.ones((1, 3, 2)), None, 1.0, 0.5, temperature=0.1).nngp.sum()), 4)
    8.1435
  """
  nt_args = dict(
    n_chan_out=n_chan_out,
    n_chan_key=n_chan_key,
    n_chan_val=n_chan_val,
    n_heads=n_heads,
    attention_mechanism=attention_mechanism,
    batch_axis=batch_axis,
    channel_axis=channel_axis,
  )
  triple = nt_stax.GlobalSelfAttention(
    **nt_args,
    linear_scaling=linear_scaling,
    W_key_std=W_key_std,
    W_value_std=W_value_std,
    W_query_std=W_query_std,
    W_out_std=W_out_std,
    b_std=b_std,
    pos_emb_type=pos_emb_type,
    pos_emb_p_norm=pos_emb_p_norm,
    pos_emb_decay_fn=pos_emb_decay_fn,
    n_chan_pos_emb=n_chan_pos_emb,
    W_pos_emb_std=W_pos_emb_std,
    val_pos_emb=val_pos_emb,
  )
  groups = attention.attention_groups(
    W_query_std,
    W_key_std,
    W_value_std,
    W_out_std,
    b_std,
    W_query_prior_std=W_query_prior_std,
    W_key_prior_std=W_key_prior_std,
    W_value_prior_std=W_value_prior_std,
    W_out_prior_std=W_out_prior_std,
    b_prior_std=b_prior_std,
  )

  def unit_kernel_fn_at(logit_scale):
    return nt_stax.GlobalSelfAttention(**nt_args, W_key_std=logit_scale, W_query_std=1.0)[2]

  refusal = attention.unsupported_reason(linear_scaling, pos_emb_type)
  rule = attention.self_attention_rule(unit_kernel_fn_at, groups, refusal)
  spec = LayerSpec('free', {'name': 'GlobalSelfAttention', 'layer': tuple(triple[:3])})
  return NDKLayer(triple, rule, spec, groups.present())


# ----------------------------------------------------------------------------------------------------------
# Combinators.


def serial(*layers: Sequence[Callable]) -> NDKLayer:
  """Composition `layers[-1] ∘ ... ∘ layers[0]` (as `neural_tangents.stax.serial`)."""
  layers = tuple(as_ndk_layer(l) for l in layers)
  triple = nt_stax.serial(*layers)
  rules = tuple(l.rule for l in layers)

  def rule(k, t1, t2, temperature):
    for r in rules:
      k = r(k, t1, t2, temperature)
    return k

  return NDKLayer(
    triple, rule, LayerSpec('serial', {}, tuple(l.spec for l in layers)), sum((l.groups for l in layers), ())
  )


def parallel(*layers: Sequence[Callable]) -> NDKLayer:
  """Applies `layers[i]` to the i-th input of a list (as `neural_tangents.stax.parallel`)."""
  layers = tuple(as_ndk_layer(l) for l in layers)
  triple = nt_stax.parallel(*layers)
  rules = tuple(l.rule for l in layers)

  def rule(ks, t1, t2, temperature):
    if len(ks) != len(rules):
      raise ValueError(f'parallel of {len(rules)} layers got {len(ks)} inputs.')
    return [r(k, t1, t2, temperature) for r, k in zip(rules, ks)]

  return NDKLayer(
    triple, rule, LayerSpec('parallel', {}, tuple(l.spec for l in layers)), sum((l.groups for l in layers), ())
  )


def repeat(layer: Sequence[Callable], n: int) -> NDKLayer:
  """`layer` composed `n` times with independent weights (as `neural_tangents.stax.repeat`)."""
  if not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f'`n` must be a positive integer, got {n!r}.')
  return serial(*([as_ndk_layer(layer)] * int(n)))


__all__ = sorted(
  [
    'NDKLayer',
    'TwoTimeKernel',
    'LayerSpec',
    'as_ndk_layer',
    'Dense',
    'Conv',
    'ConvTranspose',
    'ConvLocal',
    'GlobalSelfAttention',
    'serial',
    'parallel',
    'repeat',
    *_FREE_LAYERS,
    'AggregateImplementation',
    'AttentionMechanism',
    'Bool',
    'Diagonal',
    'MaskedArray',
    'Padding',
    'PositionalEmbedding',
    'layer',
    'requires',
    'supports_masking',
    'unmask_fn',
  ]
)
