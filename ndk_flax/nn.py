"""Flax NNX modules in the raw parameterisation of docs/theory.md §1; the Flax model of a stax network.

Parametric layers compute h = W a/√N + b with N the fan-in (Dense: input features; Conv, ConvTranspose, ConvLocal:
input channels × filter size) and train W and b themselves: W ~ N(0, σ0_W²), b ~ N(0, σ0_b²) at initialisation.
Every ``nnx.Param`` carries its initialisation std (metadata ``init_std`` = σ0) and its prior std (metadata
``prior_std`` = σ, the Gaussian prior N(0, σ²) of Langevin learning); :func:`prior_std_tree` collects the latter
for ``ndk_flax.optax.langevin``.

:func:`from_stax` builds the Flax model of an ``ndk_flax.stax`` architecture from its ``layer.spec``, with the same
variances, so that theory (``layer.ndk_fn``) and simulation describe the same network. Supported parametric kinds:
Dense, Conv, ConvTranspose, ConvLocal (GlobalSelfAttention is not).
"""

from __future__ import annotations

import math
import string
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ndk_flax import _validation as V
from ndk_flax import spec as S
from ndk_flax.spec import ParamGroup, param_group

__all__ = [
  'Conv',
  'ConvLocal',
  'ConvTranspose',
  'Dense',
  'Free',
  'Parallel',
  'Serial',
  'StaxModel',
  'from_stax',
  'prior_std_tree',
]

Hidden = Optional[list]


def _check_size(name: str, value: Any) -> int:
  return V.positive_int(name, value)


def _raw_param(rngs: nnx.Rngs, shape: tuple, group: ParamGroup, dtype) -> nnx.Param:
  """θ ~ N(0, σ0²) of the given shape, tagged with σ0 (``init_std``) and σ (``prior_std``)."""
  value = group.init_std * jax.random.normal(rngs.params(), shape, dtype or jnp.result_type(float))
  return nnx.Param(value, init_std=group.init_std, prior_std=group.prior_std)


def _parametric_stds(W_std, b_std, W_prior_std, b_prior_std) -> tuple[ParamGroup, Optional[ParamGroup]]:
  """The weight and bias groups by the std rule of :func:`ndk_flax.spec.param_group` (shared with ``stax``)."""
  weight = param_group('W', W_std, W_prior_std)
  if weight is None:
    raise ValueError(
      '`W_std` is 0 and no `W_prior_std` is given, so the weights are absent (frozen at zero) and the layer is a '
      'constant; ndk_flax.nn has no module for that. Give `W_prior_std` to train weights started at zero.'
    )
  return weight, param_group('b', b_std, b_prior_std)


class Dense(nnx.Module):
  """Dense layer h = W a/√N + b along ``channel_axis`` (N = in_features), W: (in, out), b: (out,).

  W ~ N(0, W_std²), b ~ N(0, b_std²) (no bias if ``b_std`` is None); prior stds default to the init stds.
  Same forward map as ``neural_tangents.stax.Dense(out, W_std, b_std, parameterization='ntk')`` with its
  unit-variance parameters scaled by W_std, b_std.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from ndk_flax import nn
    >>> layer = nn.Dense(4, 2, W_std=1.5, b_std=0.1, W_prior_std=1.0, rngs=nnx.Rngs(0))
    >>> x = jnp.ones((3, 4))
    >>> h = layer(x)
    >>> h.shape, bool(jnp.allclose(h, x @ layer.W[...] / 2 + layer.b[...]))  # h = W a/√N + b with N = 4
    ((3, 2), True)
    >>> layer.W.init_std, layer.W.prior_std, layer.b.prior_std  # σ0_W, σ_W, σ_b (the bias prior defaults to σ0_b)
    (1.5, 1.0, 0.1)
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    W_std: float = 1.0,
    b_std: Optional[float] = None,
    W_prior_std: Optional[float] = None,
    b_prior_std: Optional[float] = None,
    channel_axis: int = -1,
    record_input: bool = False,
    dtype=None,
    rngs: nnx.Rngs,
  ):
    self.in_features = _check_size('in_features', in_features)
    self.out_features = _check_size('out_features', out_features)
    weight, bias = _parametric_stds(W_std, b_std, W_prior_std, b_prior_std)
    self.channel_axis = channel_axis
    self.record_input = record_input
    self.W = _raw_param(rngs, (in_features, out_features), weight, dtype)
    self.b = None if bias is None else _raw_param(rngs, (out_features,), bias, dtype)

  def __call__(self, x: jax.Array, hidden: Hidden = None) -> jax.Array:
    if hidden is not None and self.record_input:
      hidden.append(x)
    axis = self.channel_axis % x.ndim
    if x.shape[axis] != self.in_features:
      raise ValueError(
        f'Dense expects {self.in_features} features on axis {self.channel_axis}, got input shape {x.shape}'
      )
    h = jnp.moveaxis(jnp.tensordot(x, self.W[...], (axis, 0)), -1, axis) / math.sqrt(self.in_features)
    if self.b is not None:
      h = h + self.b[...].reshape([-1 if i == axis else 1 for i in range(x.ndim)])
    return h


def _default_dimension_numbers(n_spatial: int) -> tuple[str, str, str]:
  """Neural Tangents' default: channels last, spatial axes named by letters other than N, C, I, O."""
  spatial = ''.join(c for c in string.ascii_uppercase if c not in 'NCIO')[:n_spatial]
  return 'N' + spatial + 'C', spatial + 'IO', 'N' + spatial + 'C'


def _conv_geometry(filter_shape, strides, padding, dimension_numbers):
  """Validated (filter_shape, strides, padding, dimension_numbers) of a convolution (filter order: rhs spec)."""
  filter_shape = tuple(_check_size('filter_shape entries', int(f)) for f in filter_shape)
  n = len(filter_shape)
  if n == 0:
    raise ValueError('filter_shape must have at least one entry')
  strides = (1,) * n if strides is None else tuple(_check_size('strides entries', int(s)) for s in strides)
  if len(strides) != n:
    raise ValueError(f'strides must have {n} entries (one per filter dimension), got {strides!r}')
  padding = str(getattr(padding, 'name', padding)).upper()
  if padding not in ('VALID', 'SAME', 'CIRCULAR'):
    raise ValueError(f"padding must be 'VALID', 'SAME' or 'CIRCULAR', got {padding!r}")
  dimension_numbers = tuple(dimension_numbers or _default_dimension_numbers(n))
  if len(dimension_numbers) != 3 or any(len(spec) != n + 2 for spec in dimension_numbers):
    raise ValueError(f'dimension_numbers must be three specs with {n} spatial letters each, got {dimension_numbers!r}')
  return filter_shape, strides, padding, dimension_numbers


def _spatial_axes(spec: str, rhs: str) -> list[int]:
  """Axes of ``spec`` holding the spatial dimensions, in the order of the filter (rhs spec)."""
  return [spec.index(c) for c in rhs if c not in 'IO']


def _circular_pad(x: jax.Array, lhs: str, rhs: str, filter_shape, strides) -> jax.Array:
  """Periodic padding such that a 'VALID' convolution gives the 'SAME' output size (Neural Tangents' CIRCULAR)."""
  pads = [(0, 0)] * x.ndim
  for ax, f, s in zip(_spatial_axes(lhs, rhs), filter_shape, strides):
    total = max((-(-x.shape[ax] // s) - 1) * s + f - x.shape[ax], 0)
    pads[ax] = (total // 2, total - total // 2)
  return jnp.pad(x, pads, mode='wrap')


def _check_channels(layer: str, x: jax.Array, lhs: str, in_channels: int) -> None:
  if x.ndim != len(lhs) or x.shape[lhs.index('C')] != in_channels:
    raise ValueError(
      f'{layer} expects {len(lhs)}-D inputs ({lhs}) with {in_channels} channels on axis '
      f'{lhs.index("C")}, got input shape {x.shape}'
    )


def _kernel_shape(rhs: str, in_size: int, out_size: int, spatial: Sequence[int]) -> tuple:
  spatial = iter(spatial)
  return tuple(out_size if c == 'O' else in_size if c == 'I' else next(spatial) for c in rhs)


class _SharedFilterConv(nnx.Module):
  """Parameters shared by :class:`Conv` and :class:`ConvTranspose`: one filter W (kernel-spec shape,
  ``I`` = in_channels, ``O`` = out_channels) ~ N(0, W_std²) and an optional bias b: (out_channels,) ~ N(0, b_std²),
  normalised by the fan-in N = in_channels × ∏ filter_shape."""

  def __init__(
    self,
    in_channels: int,
    out_channels: int,
    filter_shape: Sequence[int],
    strides: Optional[Sequence[int]] = None,
    padding: str = 'VALID',
    *,
    W_std: float = 1.0,
    b_std: Optional[float] = None,
    W_prior_std: Optional[float] = None,
    b_prior_std: Optional[float] = None,
    dimension_numbers: Optional[tuple[str, str, str]] = None,
    record_input: bool = False,
    dtype=None,
    rngs: nnx.Rngs,
  ):
    self.in_channels = _check_size('in_channels', in_channels)
    self.out_channels = _check_size('out_channels', out_channels)
    self.filter_shape, self.strides, self.padding, self.dimension_numbers = _conv_geometry(
      filter_shape, strides, padding, dimension_numbers
    )
    weight, bias = _parametric_stds(W_std, b_std, W_prior_std, b_prior_std)
    self.record_input = record_input
    w_shape = _kernel_shape(self.dimension_numbers[1], in_channels, out_channels, self.filter_shape)
    self.W = _raw_param(rngs, w_shape, weight, dtype)
    self.b = None if bias is None else _raw_param(rngs, (out_channels,), bias, dtype)

  def _fan_in_input(self, x: jax.Array, hidden: Hidden, layer: str) -> tuple[jax.Array, int]:
    """Records the input when asked, checks its channels; returns it in the computation dtype, and N."""
    if hidden is not None and self.record_input:
      hidden.append(x)
    _check_channels(layer, x, self.dimension_numbers[0], self.in_channels)
    return x.astype(jnp.result_type(x, self.W[...])), self.in_channels * math.prod(self.filter_shape)

  def _add_bias(self, h: jax.Array) -> jax.Array:
    out = self.dimension_numbers[2]
    return h if self.b is None else h + self.b[...].reshape([-1 if c == 'C' else 1 for c in out])


class Conv(_SharedFilterConv):
  """Convolution h = W ⋆ a/√N + b with N = in_channels × ∏ filter_shape (raw parameterisation).

  Padding 'VALID', 'SAME' or 'CIRCULAR' (periodic, SAME-sized), ``dimension_numbers`` as in ``jax.lax``
  (default: channels last, as Neural Tangents). W ~ N(0, W_std²) with the shape given by the kernel spec,
  b: (out_channels,) ~ N(0, b_std²). Same forward map as ``neural_tangents.stax.Conv(..., parameterization='ntk')``.

  Examples:
    On a constant input every output position sees the whole filter: h = Σ W/√N with N = 1 × 2.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from ndk_flax import nn
    >>> conv = nn.Conv(1, 3, (2,), rngs=nnx.Rngs(0))  # 1 → 3 channels, filter width 2, 'VALID'
    >>> h = conv(jnp.ones((1, 5, 1)))  # (batch, width, channels)
    >>> conv.W.shape, h.shape, bool(jnp.allclose(h[0], conv.W[...].sum((0, 1)) / jnp.sqrt(2.0)))
    ((2, 1, 3), (1, 4, 3), True)
    >>> nn.Conv(1, 3, (2,), padding='SAME', rngs=nnx.Rngs(0))(jnp.ones((1, 5, 1))).shape
    (1, 5, 3)
  """

  def __call__(self, x: jax.Array, hidden: Hidden = None) -> jax.Array:
    x, fan_in = self._fan_in_input(x, hidden, 'Conv')
    lhs, rhs, _ = self.dimension_numbers
    padding = self.padding
    if padding == 'CIRCULAR':
      x, padding = _circular_pad(x, lhs, rhs, self.filter_shape, self.strides), 'VALID'
    h = jax.lax.conv_general_dilated(
      x, self.W[...].astype(x.dtype), self.strides, padding, dimension_numbers=self.dimension_numbers
    ) / math.sqrt(fan_in)
    return self._add_bias(h)


def _circular_fold(h: jax.Array, axes: Sequence[int], sizes: Sequence[int]) -> jax.Array:
  """Wraps each axis of ``h`` (length M ≥ L) periodically onto length L:

  out[i] = Σ_{j ≡ i + (M − L)//2 mod L} h[j]
  """
  for ax, size in zip(axes, sizes):
    length = h.shape[ax]
    target = (jnp.arange(length) - (length - size) // 2) % size
    moved = jnp.moveaxis(h, ax, 0)
    h = jnp.moveaxis(jnp.zeros((size,) + moved.shape[1:], h.dtype).at[target].add(moved), 0, ax)
  return h


class ConvTranspose(_SharedFilterConv):
  """Transposed convolution h = W ⋆ᵀ a/√N + b with N = in_channels × ∏ filter_shape (raw parameterisation).

  h = ``jax.lax.conv_transpose(a, W, strides, padding)``/√N + b: each input position scatters W·a into a
  filter-sized window of the (stride-dilated) output. The normalisation is Neural Tangents' 'ntk' one, the
  nominal fan-in N = in_channels × ∏ filter_shape (with strides > 1 an output position sums fewer terms).
  'VALID' and 'SAME' are ``jax.lax.conv_transpose``'s paddings (output size (n−1)s + max(f, s), resp. n·s);
  'CIRCULAR' wraps the 'VALID' output periodically onto the 'SAME' size n·s (as Neural Tangents).
  W ~ N(0, W_std²) with the kernel-spec shape (``I`` = in_channels, ``O`` = out_channels), b: (out_channels,)
  ~ N(0, b_std²). Same forward map as ``neural_tangents.stax.ConvTranspose(..., parameterization='ntk')``.

  Examples:
    n = 3 inputs, filter f = 3, stride s = 2: 'VALID' gives (n − 1)s + f = 7 outputs, 'SAME' and 'CIRCULAR' n·s = 6;
    'CIRCULAR' only folds the 'VALID' output, so it keeps its sum.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from ndk_flax import nn
    >>> x = jnp.ones((1, 3, 1))
    >>> layers = [nn.ConvTranspose(1, 1, (3,), (2,), padding=p, rngs=nnx.Rngs(0)) for p in ('VALID', 'CIRCULAR')]
    >>> valid, circular = (layer(x) for layer in layers)
    >>> valid.shape, circular.shape, bool(jnp.allclose(valid.sum(), circular.sum(), atol=1e-5))
    ((1, 7, 1), (1, 6, 1), True)
    >>> nn.ConvTranspose(1, 1, (3,), (2,), padding='SAME', rngs=nnx.Rngs(0))(x).shape
    (1, 6, 1)
  """

  def __call__(self, x: jax.Array, hidden: Hidden = None) -> jax.Array:
    in_shape = x.shape
    x, fan_in = self._fan_in_input(x, hidden, 'ConvTranspose')
    lhs, rhs, out = self.dimension_numbers
    padding = 'VALID' if self.padding == 'CIRCULAR' else self.padding
    h = jax.lax.conv_transpose(
      x, self.W[...].astype(x.dtype), self.strides, padding, dimension_numbers=self.dimension_numbers
    ) / math.sqrt(fan_in)
    if self.padding == 'CIRCULAR':
      sizes = [in_shape[ax] * s for ax, s in zip(_spatial_axes(lhs, rhs), self.strides)]
      h = _circular_fold(h, _spatial_axes(out, rhs), sizes)
    return self._add_bias(h)


class ConvLocal(nnx.Module):
  """Locally connected (unshared) convolution, raw parameterisation, N = in_channels × ∏ filter_shape:

      h_p = Σ_{q ∈ window(p)} W_p[q] a_q/√N + b_p

  with a separate filter W_p and bias b_p at every output position p (``jax.lax.conv_general_dilated_local``).
  The output positions depend on the input's spatial size, so it is fixed at construction:
  ``input_spatial_shape`` lists the sizes of the input's spatial axes in the order they appear in the input
  (the lhs spec). W ~ N(0, W_std²) with the kernel-spec shape (``O`` = out_channels, ``I`` = in_channels ×
  ∏ filter_shape, the patch flattened channel-major; spatial letters = output sizes), b ~ N(0, b_std²) with the
  output shape less the batch axis.
  Padding as :class:`Conv`. Same forward map as ``neural_tangents.stax.ConvLocal(..., parameterization='ntk')``.

  Examples:
    One filter per output position p (3 of them for width 4, filter 2, 'VALID'); on a constant input h_p = Σ W_p/√N.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from ndk_flax import nn
    >>> local = nn.ConvLocal(1, 2, (2,), input_spatial_shape=(4,), rngs=nnx.Rngs(0))
    >>> h = local(jnp.ones((1, 4, 1)))
    >>> local.W.shape, h.shape, bool(jnp.allclose(h[0], local.W[...].sum(1) / jnp.sqrt(2.0)))
    ((3, 2, 2), (1, 3, 2), True)
  """

  def __init__(
    self,
    in_channels: int,
    out_channels: int,
    filter_shape: Sequence[int],
    strides: Optional[Sequence[int]] = None,
    padding: str = 'VALID',
    *,
    input_spatial_shape: Sequence[int],
    W_std: float = 1.0,
    b_std: Optional[float] = None,
    W_prior_std: Optional[float] = None,
    b_prior_std: Optional[float] = None,
    dimension_numbers: Optional[tuple[str, str, str]] = None,
    record_input: bool = False,
    dtype=None,
    rngs: nnx.Rngs,
  ):
    self.in_channels = _check_size('in_channels', in_channels)
    self.out_channels = _check_size('out_channels', out_channels)
    self.filter_shape, self.strides, self.padding, self.dimension_numbers = _conv_geometry(
      filter_shape, strides, padding, dimension_numbers
    )
    lhs, rhs, out = self.dimension_numbers
    n = len(self.filter_shape)
    input_spatial_shape = tuple(input_spatial_shape)
    if len(input_spatial_shape) != n:
      raise ValueError(
        f'input_spatial_shape must have {n} entries (the spatial sizes of the input), got {input_spatial_shape!r}'
      )
    self.input_spatial_shape = tuple(_check_size('input_spatial_shape entries', s) for s in input_spatial_shape)
    weight, bias = _parametric_stds(W_std, b_std, W_prior_std, b_prior_std)
    self.record_input = record_input
    in_sizes = dict(zip((c for c in lhs if c not in 'NC'), self.input_spatial_shape))
    out_sizes = {}
    for c, f, s in zip((c for c in rhs if c not in 'IO'), self.filter_shape, self.strides):
      size = in_sizes[c] if self.padding != 'VALID' else in_sizes[c] - f + 1
      if size < 1:
        raise ValueError(
          f'ConvLocal: the filter size {f} exceeds the input size {in_sizes[c]} '
          f"of spatial axis {c!r} with 'VALID' padding"
        )
      out_sizes[c] = -(-size // s)
    fan_in = in_channels * math.prod(self.filter_shape)
    w_shape = _kernel_shape(rhs, fan_in, out_channels, [out_sizes[c] for c in rhs if c not in 'IO'])
    b_shape = tuple(out_channels if c == 'C' else out_sizes[c] for c in out if c != 'N')
    self.W = _raw_param(rngs, w_shape, weight, dtype)
    self.b = None if bias is None else _raw_param(rngs, b_shape, bias, dtype)

  def __call__(self, x: jax.Array, hidden: Hidden = None) -> jax.Array:
    if hidden is not None and self.record_input:
      hidden.append(x)
    lhs, rhs, out = self.dimension_numbers
    _check_channels('ConvLocal', x, lhs, self.in_channels)
    spatial = tuple(s for s, c in zip(x.shape, lhs) if c not in 'NC')
    if spatial != self.input_spatial_shape:
      raise ValueError(
        f'ConvLocal was built for inputs of spatial shape {self.input_spatial_shape}, got input shape {x.shape}'
      )
    padding = self.padding
    if padding == 'CIRCULAR':
      x, padding = _circular_pad(x, lhs, rhs, self.filter_shape, self.strides), 'VALID'
    fan_in = self.in_channels * math.prod(self.filter_shape)
    dtype = jnp.result_type(x, self.W[...])
    h = jax.lax.conv_general_dilated_local(
      x.astype(dtype),
      self.W[...].astype(dtype),
      self.strides,
      padding,
      self.filter_shape,
      dimension_numbers=self.dimension_numbers,
    )
    h = h / math.sqrt(fan_in)
    if self.b is not None:
      h = h + jnp.expand_dims(self.b[...], out.index('N'))
    return h


class Free(nnx.Module):
  """A parameter-free Neural Tangents layer (nonlinearity, pooling, Flatten, FanOut, ...): its own apply_fn.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ndk_flax import nn, stax
    >>> _, apply_fn, _ = stax.Relu()
    >>> nn.Free('Relu', apply_fn)(jnp.array([-1.0, 2.0])).tolist()  # φ(h) = max(h, 0)
    [0.0, 2.0]
  """

  def __init__(self, name: str, apply_fn: Callable, nt_params: Any = ()):
    self.name = name
    self.apply_fn = apply_fn
    self.nt_params = nt_params

  def __call__(self, x, hidden: Hidden = None):
    return self.apply_fn(self.nt_params, x)


class Serial(nnx.Module):
  """Composition layers[-1] ∘ … ∘ layers[0].

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from ndk_flax import nn
    >>> first, second = nn.Dense(3, 4, rngs=nnx.Rngs(0)), nn.Dense(4, 1, rngs=nnx.Rngs(1))
    >>> x = jnp.ones((2, 3))
    >>> bool(jnp.allclose(nn.Serial([first, second])(x), second(first(x))))
    True
  """

  def __init__(self, layers: Sequence[nnx.Module]):
    self.layers = nnx.List(layers)

  def __call__(self, x, hidden: Hidden = None):
    for layer in self.layers:
      x = layer(x, hidden)
    return x


class Parallel(nnx.Module):
  """Applies layers[i] to the i-th entry of a list of inputs (as ``stax.parallel``).

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from ndk_flax import nn
    >>> both = nn.Parallel([nn.Dense(3, 4, rngs=nnx.Rngs(0)), nn.Dense(2, 4, rngs=nnx.Rngs(1))])
    >>> [h.shape for h in both([jnp.ones((5, 3)), jnp.ones((5, 2))])]
    [(5, 4), (5, 4)]
  """

  def __init__(self, layers: Sequence[nnx.Module]):
    self.layers = nnx.List(layers)

  def __call__(self, xs, hidden: Hidden = None):
    if not isinstance(xs, (list, tuple)) or len(xs) != len(self.layers):
      raise ValueError(f'Parallel of {len(self.layers)} layers needs a list of {len(self.layers)} inputs')
    return [layer(x, hidden) for layer, x in zip(self.layers, xs)]


class StaxModel(nnx.Module):
  """The Flax model built by :func:`from_stax`.

  ``model(x)`` is the network output; ``model(x, return_hidden=True)`` returns ``(output, hidden)`` with
  ``hidden`` the tuple of inputs of every parametric layer that lies downstream of another parametric layer (the
  hidden representations a^l = φ(h^l) of docs/theory.md §6, in forward order; the input of the first layer is data).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from ndk_flax import nn, stax
    >>> net = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
    >>> model = nn.from_stax(net, input_shape=(-1, 3), rngs=nnx.Rngs(0))
    >>> x = jnp.ones((5, 3))
    >>> out, hidden = model(x, return_hidden=True)
    >>> out.shape, len(hidden), hidden[0].shape
    ((5, 1), 1, (5, 8))
    >>> bool(jnp.allclose(hidden[0], jax.nn.relu(model.root.layers[0](x))))  # a¹ = φ(h¹)
    True
  """

  def __init__(self, root: nnx.Module, input_shape: tuple, output_shape: Any):
    self.root = root
    self.input_shape = tuple(input_shape)
    self.output_shape = output_shape

  def __call__(self, x: jax.Array, *, return_hidden: bool = False):
    if not return_hidden:
      return self.root(x)
    hidden: list = []
    out = self.root(x, hidden)
    return out, tuple(hidden)


def _is_shape_list(shape) -> bool:
  """Whether ``shape`` is a list of input shapes (after FanOut), as opposed to one shape."""
  return isinstance(shape, list) or (
    isinstance(shape, tuple) and len(shape) > 0 and isinstance(shape[0], (tuple, list))
  )


class _Builder:
  """Walks an :mod:`ndk_flax.spec` tree, propagating shapes with each layer's own init rule."""

  def __init__(self, width: Optional[int], readout, rngs: nnx.Rngs, dtype):
    self.width, self.readout, self.rngs, self.dtype = width, readout, rngs, dtype

  def build(self, spec: S.NetworkSpec, shape, downstream):
    """Returns (module, output shape, whether the output lies downstream of a parametric layer)."""
    if isinstance(spec, S.SerialSpec):
      return self._serial(spec.children, shape, downstream)
    if isinstance(spec, S.RepeatSpec):
      return self._serial((spec.child,) * spec.n, shape, downstream)
    if isinstance(spec, S.ParallelSpec):
      if not _is_shape_list(shape) or len(shape) != len(spec.children):
        raise ValueError(f'parallel of {len(spec.children)} layers needs as many inputs, got shape {shape}')
      built = [self.build(child, s, downstream) for child, s in zip(spec.children, shape)]
      return (Parallel([b[0] for b in built]), [b[1] for b in built], downstream or any(b[2] for b in built))
    if isinstance(spec, S.FreeSpec):
      init_fn, apply_fn, _ = spec.layer
      out_shape, nt_params = init_fn(jax.random.PRNGKey(0), shape)
      if jax.tree.leaves(nt_params):
        raise TypeError(
          f'layer {spec.name!r} has parameters; only parameter-free layers may be '
          "'free' (build parametric layers with ndk_flax.stax)"
        )
      return Free(spec.name, apply_fn, nt_params), out_shape, downstream
    if spec.parameterization != 'ntk':
      raise ValueError(
        f"from_stax needs parameterization='ntk' (the raw parameterisation h = W a/√N + b), got "
        f'{spec.parameterization!r} in a {spec.kind.value} layer.'
      )
    if isinstance(spec, S.DenseSpec):
      return self._dense(spec, shape, downstream)
    return self._conv(spec, shape, downstream)

  def _serial(self, children, shape, downstream):
    layers = []
    for child in children:
      module, shape, downstream = self.build(child, shape, downstream)
      layers.append(module)
    return Serial(layers), shape, downstream

  def _out(self, spec, size: int) -> int:
    return size if self.width is None or spec is self.readout else self.width

  @staticmethod
  def _stds(spec) -> dict:
    w, b = spec.weight, spec.bias
    if w is None:
      raise ValueError(
        f'a {spec.kind.value} layer has absent weights (W_std = 0 and no W_prior_std); ndk_flax.nn has no module '
        'for a constant layer. Give W_prior_std to train weights started at zero.'
      )
    return dict(
      W_std=w.init_std,
      W_prior_std=w.prior_std,
      b_std=None if b is None else b.init_std,
      b_prior_std=None if b is None else b.prior_std,
    )

  def _dense(self, spec: S.DenseSpec, shape, downstream):
    axis = spec.channel_axis
    out = self._out(spec, spec.out_dim)
    module = Dense(
      shape[axis], out, channel_axis=axis, record_input=downstream, dtype=self.dtype, rngs=self.rngs, **self._stds(spec)
    )
    out_shape = list(shape)
    out_shape[axis] = out
    return module, tuple(out_shape), True

  def _conv(self, spec: S.ConvSpec, shape, downstream):
    dimension_numbers = spec.dimension_numbers or _default_dimension_numbers(len(spec.filter_shape))
    lhs = dimension_numbers[0]
    if len(shape) != len(lhs):
      raise ValueError(
        f'{spec.kind.value} with dimension numbers {dimension_numbers} needs {len(lhs)}-D inputs, got shape {shape}'
      )
    kwargs = dict(
      dimension_numbers=dimension_numbers, record_input=downstream, dtype=self.dtype, rngs=self.rngs, **self._stds(spec)
    )
    if spec.kind is S.LayerKind.CONV_LOCAL:
      spatial = tuple(s for s, c in zip(shape, lhs) if c not in 'NC')
      if any(s in (-1, None) for s in spatial):
        raise ValueError(
          f"ConvLocal needs the input's spatial sizes (its weights differ per position), got input shape {shape}"
        )
      kwargs['input_spatial_shape'] = spatial
    module_cls = {S.LayerKind.CONV: Conv, S.LayerKind.CONV_TRANSPOSE: ConvTranspose, S.LayerKind.CONV_LOCAL: ConvLocal}
    module = module_cls[spec.kind](
      shape[lhs.index('C')], self._out(spec, spec.out_chan), spec.filter_shape, spec.strides, spec.padding, **kwargs
    )
    dummy = jax.ShapeDtypeStruct(tuple(1 if s in (-1, None) else s for s in shape), module.W[...].dtype)
    out_shape = jax.eval_shape(lambda z: module(z), dummy).shape
    out_shape = tuple(shape[0] if i == dimension_numbers[2].index('N') else s for i, s in enumerate(out_shape))
    return module, out_shape, True


def from_stax(
  layer, width: Optional[int] = None, *, input_shape: Sequence[int], rngs: nnx.Rngs, dtype=None
) -> StaxModel:
  """The Flax NNX model of an ``ndk_flax.stax`` network (raw parameterisation, same σ0 and σ per layer).

  Args:
    layer: an ``ndk_flax.stax`` layer (its ``spec`` is an :mod:`ndk_flax.spec` tree).
    width: if given, the output size (``out_dim`` / ``out_chan``) of every parametric layer except the readout,
      i.e. the last parametric layer in forward order, which keeps its own; None keeps every layer's own size.
      (All hidden layers get the same width, so residual branches stay compatible.)
    input_shape: shape of an input batch, batch axis first as in Neural Tangents (e.g. ``x_train.shape`` or
      ``(-1, d)``); parameter shapes follow from it.
    rngs: ``nnx.Rngs`` for the initial parameters θ(0) ~ N(0, σ0²).
    dtype: parameter dtype (default: JAX's default float).

  Returns:
    :class:`StaxModel`. Parameter-free layers run their Neural Tangents ``apply_fn``; Dense, Conv, ConvTranspose
    and ConvLocal are the modules of this file (ConvLocal's weights and biases, one per output position, are
    sized from ``input_shape``). Supported parametric kinds: Dense, Conv, ConvTranspose, ConvLocal;
    GlobalSelfAttention is not supported (TypeError: a layer with parameters but no Flax module here).

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from ndk_flax import nn, stax
    >>> net = stax.serial(stax.Dense(16, W_std=1.5, b_std=0.1, W_prior_std=1.0), stax.Relu(), stax.Dense(1))
    >>> model = nn.from_stax(net, width=8, input_shape=(-1, 3), rngs=nnx.Rngs(0))  # hidden width 16 → 8
    >>> first, readout = model.root.layers[0], model.root.layers[2]
    >>> first.W.shape, readout.W.shape, model(jnp.ones((5, 3))).shape
    ((3, 8), (8, 1), (5, 1))
    >>> first.W.init_std, first.W.prior_std, first.b.prior_std  # σ0 and σ from the stax layer
    (1.5, 1.0, 0.1)
  """
  spec = getattr(layer, 'spec', None)
  if not isinstance(spec, (S.DenseSpec, S.ConvSpec, S.FreeSpec, S.SerialSpec, S.ParallelSpec, S.RepeatSpec)):
    raise TypeError(f'layer must be an ndk_flax.stax layer (with a .spec), got {type(layer).__name__}')
  if width is not None:
    width = _check_size('width', width)
  if not isinstance(rngs, nnx.Rngs):
    raise TypeError(f'rngs must be an nnx.Rngs, got {type(rngs).__name__}')
  try:
    input_shape = tuple(int(s) for s in input_shape)
  except TypeError:
    raise TypeError(f'input_shape must be a sequence of ints (batch axis first), got {input_shape!r}') from None
  if len(input_shape) < 2:
    raise ValueError(f'input_shape must include the batch axis and features, got {input_shape}')
  parametric = S.parametric_specs(spec)
  if not parametric:
    raise ValueError('the network has no parametric layer (Dense, Conv, ConvTranspose or ConvLocal): nothing to train')
  builder = _Builder(width, parametric[-1], rngs, dtype)
  root, out_shape, _ = builder.build(spec, input_shape, False)
  return StaxModel(root, input_shape, out_shape)


def prior_std_tree(model: nnx.Module) -> nnx.State:
  """The prior std σ of every parameter, as a pure ``nnx.State`` (floats, no ``Variable`` wrappers).

  Its structure is that of ``nnx.as_pure(nnx.state(model, nnx.Param))``, the parameter arrays that
  ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` passes to ``tx.update``. Pass it as ``prior_std`` to
  ``ndk_flax.optax.langevin``.

  Examples:
    >>> import jax
    >>> from flax import nnx
    >>> from ndk_flax import nn, stax
    >>> net = stax.serial(stax.Dense(8, W_std=1.5, b_std=0.1, W_prior_std=1.0), stax.Relu(), stax.Dense(1))
    >>> model = nn.from_stax(net, input_shape=(-1, 3), rngs=nnx.Rngs(0))
    >>> jax.tree.leaves(nn.prior_std_tree(model))  # σ_W, σ_b of the first layer, σ_W of the readout
    [1.0, 0.1, 1.0]
    >>> jax.tree.structure(nn.prior_std_tree(model)) == jax.tree.structure(nnx.as_pure(nnx.state(model, nnx.Param)))
    True
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f'model must be an nnx.Module, got {type(model).__name__}')
  state = nnx.state(model, nnx.Param)
  is_var = lambda x: isinstance(x, nnx.Variable)

  def std(v):
    sigma = getattr(v, 'prior_std', None)
    if sigma is None:
      raise ValueError(
        f'parameter of type {type(v).__name__} has no prior_std metadata; build the model with '
        'ndk_flax.nn layers or pass prior_std to the optimizer directly'
      )
    return sigma

  return jax.tree.map(std, state, is_leaf=is_var)
