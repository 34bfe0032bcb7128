"""`ndk_flax.stax`: a drop-in superset of `neural_tangents.stax` with two-time kernels under Langevin learning.

Every name of `neural_tangents.stax` is importable from here with the same signature. Helpers (``Slice``, the
enums, the decorators) are Neural Tangents' own objects; layers and combinators return an :class:`NDKLayer`, which
unpacks as ``init_fn, apply_fn, kernel_fn = layer`` (Neural Tangents' own triple, same parameter trees and results)
and additionally has

* ``layer.ndk_fn(x1, x2, t1, t2, *, temperature, **kwargs)`` -> :class:`TwoTimeKernel` with the two-time NNGP
  ``nngp`` = C(t1, t2, x1, x2) and the Neural Dynamical Kernel ``ndk`` = R(t1, t2, x1, x2) (docs/theory.md §3);
  ``kwargs`` (``pattern``, ``mask_constant``, ``channel_axis``, ``diagonal_spatial``, ...) mean what they mean in
  ``kernel_fn``;
* ``layer.spec``: the frozen :mod:`ndk_flax.spec` tree of the architecture (read by ``ndk_flax.nn.from_stax``);
* ``layer.relaxation_rates(temperature)``: λ = T/σ² of every parameter group.

Parametric layers (`Dense`, `Conv`, `ConvTranspose`, `ConvLocal`) take the initialisation stds as Neural Tangents
does (``W_std`` = σ0_W, ``b_std`` = σ0_b) plus the prior stds ``W_prior_std`` = σ_W, ``b_prior_std`` = σ_b
(default: equal to the initialisation ones). Zero stds: a group with init std 0 and no explicit prior std is
absent (frozen at zero), which matches Neural Tangents at T = 0 and adds nothing at any time; init std 0 with an
explicit prior std is a group that starts at zero and grows under the Langevin noise
(:func:`ndk_flax.spec.param_group`).
``ndk_fn`` needs ``parameterization='ntk'``: the raw parameterisation of docs/theory.md §1 (h = W a/√fan_in + b with
W itself trained), whose kernels at T = 0 are Neural Tangents' NNGP and the raw NTK (for bias-free networks with one
σ0: NT's ntk / σ0²). The NT triple works with ``'standard'`` too.

Examples:
  >>> import jax.numpy as jnp
  >>> from ndk_flax import stax
  >>> net = stax.serial(stax.Dense(16, W_std=1.5, b_std=0.1), stax.Erf(), stax.Dense(1, W_std=1.5))
  >>> k = net.ndk_fn(jnp.ones((2, 3)), None, 1.0, 0.5, temperature=0.1)
  >>> k.nngp.shape, k.ndk.shape, k.cov1.shape
  ((2, 2), (2, 2), (2,))
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ndk_flax import _sharding, _two_time, attention, resources
from ndk_flax import _validation as V
from ndk_flax import spec as S
from ndk_flax._nt import Kernel, nt_stax
from ndk_flax.spec import ParamGroup

# Neural Tangents' own helpers, enums and decorators (the same objects).
AggregateImplementation = nt_stax.AggregateImplementation
AttentionMechanism = nt_stax.AttentionMechanism
Bool = nt_stax.Bool
Diagonal = nt_stax.Diagonal
MaskedArray = nt_stax.MaskedArray
Padding = nt_stax.Padding
PositionalEmbedding = nt_stax.PositionalEmbedding
Slice = nt_stax.Slice
layer = nt_stax.layer
requires = nt_stax.requires
supports_masking = nt_stax.supports_masking
unmask_fn = nt_stax.unmask_fn

Rule = Callable[..., Any]
"""A two-time rule: (kernel tree, t1, t2, temperature, **nt_kwargs) -> kernel tree."""


class TwoTimeKernel(NamedTuple):
  """Two-time kernels of a network output (docs/theory.md §3).

  Attributes:
    nngp: C(t1, t2, x1, x2), the two-time NNGP (covariance of the free network output at times t1 and t2).
    ndk: R(t1, t2, x1, x2), the Neural Dynamical Kernel in response form (zero for t1 < t2).
    cov1: C(t1, t1, x1, x1) (diagonal over the batch, as Neural Tangents' ``cov1``).
    cov2: C(t2, t2, x2, x2).

  Examples:
    >>> TwoTimeKernel(1.0, 2.0, 3.0, 4.0).ndk
    2.0
  """

  nngp: jax.Array
  ndk: jax.Array
  cov1: jax.Array
  cov2: jax.Array


def _is_kernel(z: Any) -> bool:
  return isinstance(z, Kernel)


def _input_kernel_fn(req: dict) -> Callable:
  """NT's ``kernel_fn`` of an identity layer carrying ``req``: maps inputs to the input `Kernel` of the network."""

  @nt_stax.layer
  def InputKernel():
    init_fn, apply_fn, _ = nt_stax.Identity()

    @nt_stax.requires(**req)
    def kernel_fn(k, **kwargs):
      return k

    return init_fn, apply_fn, kernel_fn

  return InputKernel()[2]


def two_time_grid(
  rule: Rule,
  input_kernel_fn: Callable,
  x1,
  x2,
  t1v,
  t2v,
  temperature,
  array_kwargs,
  static_kwargs,
  symmetric: bool = False,
  n_shards: int = 1,
):
  """(nngp, ndk, cov1, cov2) = (C, R, C(t1, t1), C(t2, t2)) of ``rule`` on the time grid t1v × t2v (docs/theory.md §3).

  The one place where the time grid is laid out. Leading axes: (n_t1, n_t2) on nngp and ndk, (n_t1,) on cov1,
  (n_t2,) on cov2. The pair is treated as identical inputs (NT's ``x1_is_x2``, used by ``Dropout``) only where
  t1 = t2 and NT finds x1 = x2.

  The evaluated time pairs are vectorised in memory-bounded batches (``lax.map``, at least one pair at a time):

  * Full grid (``symmetric=False``): every pair.
  * Causal triangle (``symmetric=True``; the caller guarantees t2v = t1v, x2 = x1 and no input-specific array
    kwargs): only the n_t(n_t + 1)/2 pairs t ≥ s of the sorted times are evaluated; the others follow from
    C(s, t, x', x) = C(t, s, x, x') (the transpose over inputs and spatial positions) and R(s, t) = 0 for s < t
    (docs/theory.md §2–§3; at equal times R is symmetric as C is). The result equals the full grid to rounding.

  Before any work the bytes of the request (:func:`ndk_flax.resources.ndk_grid_bytes`, per device when the points
  are split over ``n_shards`` devices) are checked against the memory available: MemoryError if they do not fit.

  Args:
    rule: the two-time rule of the network (``NDKLayer.rule``).
    input_kernel_fn: maps ``(x1, x2, None, **nt_kwargs)`` to the input `Kernel` (an NT identity ``kernel_fn``).
    x1, x2: inputs (x2 not None).
    t1v, t2v: 1-D arrays of times.
    temperature: T ≥ 0.
    array_kwargs: NT keyword arguments holding arrays (e.g. ``pattern``); static_kwargs: the others, as a tuple
      of (name, value) pairs.
    symmetric: evaluate the causal triangle only (conditions above).
    n_shards: number of devices the point axis is split over (divides the bytes per device).

  Examples:
    >>> import jax.numpy as jnp
    >>> from ndk_flax._nt import nt_stax
    >>> net = serial(Dense(4, W_std=1.2), Erf(), Dense(1, W_std=1.2))
    >>> x, t = jnp.ones((3, 2)), jnp.array([1.0, 0.0])
    >>> full = two_time_grid(net.rule, nt_stax.Identity()[2], x, x, t, t, 0.1, {}, ())
    >>> [a.shape for a in full]
    [(2, 2, 3, 3), (2, 2, 3, 3), (2, 3), (2, 3)]
    >>> float(full[1][1, 0, 0, 0])  # R(0, 1) = 0: causal
    0.0
    >>> half = two_time_grid(net.rule, nt_stax.Identity()[2], x, x, t, t, 0.1, {}, (), symmetric=True)
    >>> all(bool(jnp.allclose(a, b, rtol=1e-6)) for a, b in zip(full, half))
    True
  """
  nt_kwargs = dict(static_kwargs, **array_kwargs)
  k0 = input_kernel_fn(x1, x2, None, **nt_kwargs)
  input_elements = sum(kk.nngp.size for kk in jax.tree.leaves(k0, is_leaf=_is_kernel))

  def pair(t1, t2):
    same = t1 == t2
    k = jax.tree.map(lambda kk: kk.replace(x1_is_x2=jnp.logical_and(kk.x1_is_x2, same)), k0, is_leaf=_is_kernel)
    out = rule(k, t1, t2, temperature, **nt_kwargs)
    # Only the four kernels travel through the grid (x1_is_x2 and the masks are not results).
    return jax.tree.map(lambda kk: kk.replace(x1_is_x2=None, mask1=None, mask2=None), out, is_leaf=_is_kernel)

  n_t1, n_t2 = t1v.shape[0], t2v.shape[0]
  # The evaluated pairs, as indices into the times: the causal triangle of the sorted times (high >= low, row-major:
  # pair high(high + 1)/2 + low), or every pair of the grid (row-major: pair i·n_t2 + j).
  first, second = np.tril_indices(n_t1) if symmetric else np.indices((n_t1, n_t2)).reshape(2, -1)
  pairs_per_batch, batch_elements = resources.ndk_grid_batch(first.size, input_elements)
  one_pair = jax.eval_shape(pair, t1v[0], t2v[0])
  _require_grid_memory(one_pair, n_t1, n_t2, n_shards, batch_elements)
  if symmetric:
    return _causal_triangle(pair, t1v, first, second, pairs_per_batch, one_pair)
  out = jax.lax.map(lambda ts: pair(*ts), (t1v[first], t2v[second]), batch_size=pairs_per_batch)

  def grid(a):
    return a.reshape((n_t1, n_t2) + a.shape[1:])

  return (
    jax.tree.map(grid, _field(out, 'nngp')),
    jax.tree.map(grid, _field(out, 'ntk')),
    jax.tree.map(lambda a: grid(a)[:, 0], _field(out, 'cov1')),
    jax.tree.map(lambda a: grid(a)[0], _field(out, 'cov2')),
  )


def _field(kernels, name: str):
  return jax.tree.map(lambda kk: getattr(kk, name), kernels, is_leaf=_is_kernel)


def _require_grid_memory(one_pair, n_t1: int, n_t2: int, n_shards: int, batch_elements: int):
  """MemoryError before any work when the grid (shapes of ``one_pair``, the kernels of one time pair) cannot fit."""
  kernels = jax.tree.leaves(one_pair, is_leaf=_is_kernel)
  n1, n2 = kernels[0].nngp.shape[:2]
  spatial_size = sum(kk.nngp.size for kk in kernels) / (n1 * n2)
  needed = resources.ndk_grid_bytes(
    n1,
    n2,
    n_t1,
    n_t2,
    itemsize=kernels[0].nngp.dtype.itemsize,
    spatial_size=spatial_size,
    batch_elements=batch_elements,
  )
  resources.require_memory(
    f'ndk_fn on a {n_t1} x {n_t2} time grid of {n1} x {n2} inputs',
    needed / n_shards,
    remedy='use fewer times or fewer points, or evaluate the grid in blocks (several ndk_fn calls on parts of t1, x1)',
  )


def _swap_inputs(kernel: Kernel, a: jax.Array) -> jax.Array:
  """C(s, t, x', x) from C(t, s, x, x') for an nngp-shaped array ``a`` of ``kernel``: the two input axes and, for
  non-diagonal spatial kernels, the two positions of every spatial pair, exchanged."""
  axes = [1, 0]
  spatial = list(range(2, a.ndim))
  if kernel.diagonal_spatial:
    axes += spatial
  else:
    for first, second in zip(spatial[::2], spatial[1::2]):
      axes += [second, first]
  return jnp.transpose(a, axes)


def _causal_triangle(pair: Callable, tv: jax.Array, high: np.ndarray, low: np.ndarray, pairs_per_batch: int, one_pair):
  """(nngp, ndk, cov1, cov2) on tv × tv from the pairs (high, low) of ranks of the sorted times (high >= low) only,
  evaluated in batches and written straight into the grid with their mirrors (see `two_time_grid`): no gather and no
  second copy of the grid. ``one_pair`` gives the shapes of one pair's kernels. Works on traced times."""
  n = tv.shape[0]
  order = jnp.argsort(tv)
  n_batches = -(-high.size // pairs_per_batch)
  pairs_per_batch = -(-high.size // n_batches)  # batches of equal size, at most n_batches - 1 pairs of padding
  padding = n_batches * pairs_per_batch - high.size  # the last pair again: rewritten with the same values

  def batched(ranks):
    ranks = np.concatenate([ranks, np.full(padding, ranks[-1])]).reshape(n_batches, pairs_per_batch)
    return order[ranks]  # positions in tv: t_i >= t_j for (i, j) = (batched(high), batched(low))

  def zeros(kernel, name, lead):
    a = getattr(kernel, name)
    return jnp.zeros(lead + a.shape, a.dtype)

  def empty_grid(kernel):
    return kernel.replace(
      nngp=zeros(kernel, 'nngp', (n, n)),
      ntk=zeros(kernel, 'ntk', (n, n)),
      cov1=zeros(kernel, 'cov1', (n,)),
      cov2=zeros(kernel, 'cov2', (n,)),
    )

  def put(a, block, *index):
    return jax.lax.dynamic_update_slice(a, block[(None,) * len(index)], index + (0,) * block.ndim)

  def write(grid: Kernel, kernels: Kernel, b, i, j) -> Kernel:
    nngp, ndk = kernels.nngp[b], kernels.ntk[b]
    # R(t_j, t_i) = 0 for t_j < t_i (the zeros are there already); at equal times, the mirror of R(t_i, t_j).
    ndk_grid = jax.lax.cond(tv[i] == tv[j], lambda g: put(g, _swap_inputs(grid, ndk), j, i), lambda g: g, grid.ntk)
    return grid.replace(
      nngp=put(put(grid.nngp, _swap_inputs(grid, nngp), j, i), nngp, i, j),  # mirror first: (i, i) as evaluated
      ntk=put(ndk_grid, ndk, i, j),
      cov1=put(grid.cov1, kernels.cov1[b], i),
      cov2=put(grid.cov2, kernels.cov2[b], j),
    )

  def batch(grids, ij):
    i, j = ij
    kernels = jax.vmap(pair)(tv[i], tv[j])

    def one(b, grids):
      return jax.tree.map(lambda g, k: write(g, k, b, i[b], j[b]), grids, kernels, is_leaf=_is_kernel)

    return jax.lax.fori_loop(0, pairs_per_batch, one, grids), None

  grids, _ = jax.lax.scan(batch, jax.tree.map(empty_grid, one_pair, is_leaf=_is_kernel), (batched(high), batched(low)))
  return tuple(_field(grids, name) for name in ('nngp', 'ntk', 'cov1', 'cov2'))


class NDKLayer(tuple):
  """A Neural Tangents ``(init_fn, apply_fn, kernel_fn)`` triple that also computes two-time kernels.

  Attributes:
    rule: the two-time rule ``rule(k, t1, t2, temperature, **nt_kwargs)`` on NT `Kernel` trees.
    spec: the frozen :mod:`ndk_flax.spec` description of the architecture.
    groups: the :class:`ndk_flax.spec.ParamGroup` of every present parameter group, in network order.

  Examples:
    >>> net = serial(Dense(4), Relu(), Dense(1))
    >>> init_fn, apply_fn, kernel_fn = net
    >>> type(net.spec).__name__, len(net.groups)
    ('SerialSpec', 2)
  """

  rule: Rule
  spec: S.NetworkSpec
  groups: tuple[ParamGroup, ...]

  def __new__(
    cls, triple: Sequence[Callable], rule: Rule, spec: S.NetworkSpec, groups: tuple[ParamGroup, ...]
  ) -> 'NDKLayer':
    init_fn, apply_fn, kernel_fn = triple[:3]
    self = super().__new__(cls, (init_fn, apply_fn, kernel_fn))
    self.rule = rule
    self.spec = spec
    self.groups = tuple(groups)
    input_fn = _input_kernel_fn(dict(getattr(kernel_fn, 'input_req', {})))
    self._jitted_grid = jax.jit(
      functools.partial(two_time_grid, rule, input_fn), static_argnames=('static_kwargs', 'symmetric', 'n_shards')
    )
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
    """λ = T/σ² of every parameter group, in network order (weights, then bias, per layer).

    Examples:
      >>> Dense(3, W_std=1.0, W_prior_std=2.0).relaxation_rates(1.0)
      (0.25,)
    """
    temperature = V.temperature(temperature)
    return tuple(g.decay_rate(temperature) for g in self.groups)

  def ndk_fn(self, x1, x2=None, t1=0.0, t2=0.0, *, temperature, **kwargs) -> TwoTimeKernel:
    """Two-time kernels C(t1, t2, x1, x2) and R(t1, t2, x1, x2) of the network under Langevin learning (§3).

    Args:
      x1: inputs, shaped as for Neural Tangents' ``kernel_fn`` (batch first).
      x2: second batch of inputs, or None for ``x2 = x1``. The pair is treated as identical inputs (NT's
        ``x1_is_x2``, which only ``Dropout`` uses) only where ``t1 == t2``: the correlation of h(x, t) and h(x, s)
        is below one.
      t1, t2: times ≥ 0 (``jnp.inf`` allowed), scalars or 1-D arrays. 1-D arrays give leading axes
        ``(len(t1), len(t2))`` on ``nngp``/``ndk``, ``(len(t1),)`` on ``cov1`` and ``(len(t2),)`` on ``cov2``,
        computed in one jitted, vectorised call.
      temperature: T ≥ 0 (keyword only). T = 0 gives the NNGP and the raw NTK at the initialisation variances.
      **kwargs: Neural Tangents' keyword arguments of ``kernel_fn`` (``pattern``, ``mask_constant``,
        ``channel_axis``, ``diagonal_batch``, ``diagonal_spatial``, ...), with the same meaning.

    Returns:
      :class:`TwoTimeKernel` (float64 when ``jax_enable_x64`` is on).

    Raises:
      FloatingPointError: the kernels hold NaN or inf (named by field).

    Examples:
      >>> import jax.numpy as jnp
      >>> k = serial(Dense(8), Relu(), Dense(1)).ndk_fn(jnp.ones((3, 2)), None, [0.0, 1.0], 0.0, temperature=0.2)
      >>> k.nngp.shape, k.cov1.shape, k.cov2.shape
      ((2, 3, 3), (2, 3), (3,))
    """
    temperature = V.temperature(temperature)
    mask_constant = kwargs.get('mask_constant')
    x2_is_x1 = x2 is None
    x1 = _check_inputs('x1', x1, mask_constant)
    x2 = x1 if x2_is_x1 else _check_inputs('x2', x2, mask_constant)
    batch_axis = kwargs.get('batch_axis', getattr(self.kernel_fn, 'input_req', {}).get('batch_axis', 0))
    _check_same_shapes(x1, x2, batch_axis)
    t1v, scalar1 = _check_times('t1', t1)
    t2v, scalar2 = _check_times('t2', t2)
    array_kwargs = {k: v for k, v in kwargs.items() if _holds_arrays(v)}
    static_kwargs = tuple(sorted((k, v) for k, v in kwargs.items() if k not in array_kwargs))
    symmetric = x2_is_x1 and not array_kwargs and _same_times(t1, t2, t1v, t2v)
    x1, x2, n_shards = _split_points(x1, x2, batch_axis)
    nngp, ndk, cov1, cov2 = self._jitted_grid(
      x1, x2, t1v, t2v, temperature, array_kwargs, static_kwargs=static_kwargs, symmetric=symmetric, n_shards=n_shards
    )
    if scalar2:
      nngp, ndk, cov2 = _take_first(nngp, 1), _take_first(ndk, 1), _take_first(cov2, 0)
    if scalar1:
      nngp, ndk, cov1 = _take_first(nngp, 0), _take_first(ndk, 0), _take_first(cov1, 0)
    out = TwoTimeKernel(nngp, ndk, cov1, cov2)
    _check_finite(out)
    return out


def _same_times(t1, t2, t1v: jax.Array, t2v: jax.Array) -> bool:
  """Whether t1 and t2 are the same times, known statically (the same object) or from concrete values; traced
  distinct arrays count as different (the full grid is then evaluated). A single time has nothing to mirror."""
  if t1v.shape != t2v.shape or t1v.shape[0] < 2:
    return False
  if t1 is t2:
    return True
  if V.is_traced(t1v) or V.is_traced(t2v):
    return False
  return bool(np.array_equal(np.asarray(t1v), np.asarray(t2v)))


def _split_points(x1, x2, batch_axis: int):
  """(x1, x2, n_shards): the point axis of x1 (else x2, whichever is a multiple of the device count) split over
  every visible device and the other side replicated (:mod:`ndk_flax._sharding`). Inputs the caller already split
  (e.g. the predictor's training points), traced inputs and a single device are left as they are."""
  leaves = jax.tree.leaves((x1, x2))
  n_devices = jax.device_count()
  if n_devices == 1 or any(V.is_traced(a) for a in leaves):
    return x1, x2, 1
  if any(isinstance(a, jax.Array) and not a.sharding.is_fully_replicated for a in leaves):
    return x1, x2, n_devices

  def divisible(x) -> bool:
    return all(a.shape[batch_axis] % n_devices == 0 for a in jax.tree.leaves(x))

  def place(x, axis):
    return jax.tree.map(lambda a: _sharding.shard_axis(a, axis), x)

  if divisible(x1):
    return place(x1, batch_axis), place(x2, None), n_devices
  if divisible(x2):
    return place(x1, None), place(x2, batch_axis), n_devices
  return x1, x2, 1


def _holds_arrays(value: Any) -> bool:
  return any(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in jax.tree.leaves(value))


def _take_first(tree, axis: int):
  return jax.tree.map(lambda a: jnp.take(a, 0, axis=axis), tree)


def _check_finite(k: TwoTimeKernel) -> None:
  for name, value in zip(k._fields, k):
    for leaf in jax.tree.leaves(value):
      if not V.is_traced(leaf) and not V.all_finite(leaf):
        raise FloatingPointError(
          f'ndk_fn produced NaN or inf in `{name}`: the network or its stds overflow at these times or '
          'temperature (check W_std, the prior stds and T).'
        )


def _drop(shape, axis):
  axis = axis % len(shape)
  return shape[:axis] + shape[axis + 1 :]


def _check_same_shapes(x1, x2, batch_axis: int) -> None:
  for a, b in zip(jax.tree.leaves(x1), jax.tree.leaves(x2)):
    if a.ndim != b.ndim or _drop(a.shape, batch_axis) != _drop(b.shape, batch_axis):
      raise ValueError(
        f'`x1` and `x2` must have the same shape apart from the batch axis {batch_axis}; got {a.shape} and {b.shape}.'
      )


def _check_times(name: str, t):
  if V.is_traced(t):
    t = jnp.asarray(t)
  else:
    t = np.asarray(t, dtype=np.float64)
    if t.ndim > 1:
      raise ValueError(f'`{name}` must be a scalar or a 1-D array of times, got shape {t.shape}.')
    if t.size == 0:
      raise ValueError(f'`{name}` must hold at least one time, got an empty array.')
    if np.any(np.isnan(t)) or np.any(t < 0):
      raise ValueError(f'`{name}` must hold times >= 0 (inf allowed, no NaN), got {t}.')
    t = jnp.asarray(t, dtype=jnp.result_type(float))
  if t.ndim > 1:
    raise ValueError(f'`{name}` must be a scalar or a 1-D array of times, got shape {t.shape}.')
  return jnp.atleast_1d(t), t.ndim == 0


def _check_inputs(name: str, x, mask_constant):
  if isinstance(x, (list, tuple)):
    return type(x)(_check_inputs(f'{name}[{i}]', xi, mask_constant) for i, xi in enumerate(x))
  return x if V.is_traced(x) else V.network_inputs(name, x, mask_constant)


# ----------------------------------------------------------------------------------------------------------
# Parameter-free layers: Neural Tangents' own kernel rule on the joint covariance.


def _free_rule(nt_kernel_fn: Callable) -> Rule:
  def rule(k, t1, t2, temperature, **nt_kwargs):
    return nt_kernel_fn(k, **nt_kwargs)

  return rule


def _foreign_rule(triple: Sequence[Callable], name: str) -> Rule:
  """Rule for a plain Neural Tangents triple: allowed only if it has no parameters (checked on its input)."""
  init_fn, _, kernel_fn = triple[:3]

  def rule(k, t1, t2, temperature, **nt_kwargs):
    shapes = [kk.shape1 for kk in jax.tree.leaves(k, is_leaf=_is_kernel)]
    shape = shapes[0] if isinstance(k, Kernel) else shapes
    params = jax.eval_shape(lambda: init_fn(jax.random.PRNGKey(0), shape)[1])
    if jax.tree.leaves(params):
      raise TypeError(
        f'The Neural Tangents layer {name!r} has trainable parameters, so it needs the '
        f'two-time rule of Langevin learning: build it from `ndk_flax.stax` '
        f'(e.g. `ndk_flax.stax.{name}`) instead of `neural_tangents.stax`.'
      )
    return kernel_fn(k, **nt_kwargs)

  return rule


_PARAMETRIC_NT_LAYERS = frozenset(k.value for k in S.PARAMETRIC_KINDS) | {'GlobalSelfAttention'}


def as_ndk_layer(layer_: Sequence[Callable]) -> NDKLayer:
  """Wraps a plain Neural Tangents triple for use in our combinators (parameter-free layers only).

  Examples:
    >>> type(as_ndk_layer(nt_stax.Relu())).__name__
    'NDKLayer'
  """
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
  triple = tuple(layer_[:3])
  return NDKLayer(triple, _foreign_rule(triple, name), S.FreeSpec(name, triple), ())


def _free_layer(nt_layer_fn: Callable) -> Callable[..., NDKLayer]:
  """The ``ndk_flax.stax`` version of a parameter-free NT layer: same signature, NT's rule on the joint covariance."""

  @functools.wraps(nt_layer_fn)
  def new_layer(*args, **kwargs) -> NDKLayer:
    triple = tuple(nt_layer_fn(*args, **kwargs)[:3])
    return NDKLayer(triple, _free_rule(triple[2]), S.FreeSpec(nt_layer_fn.__name__, triple), ())

  return new_layer


ABRelu = _free_layer(nt_stax.ABRelu)
Abs = _free_layer(nt_stax.Abs)
Aggregate = _free_layer(nt_stax.Aggregate)
AvgPool = _free_layer(nt_stax.AvgPool)
Cos = _free_layer(nt_stax.Cos)
DotGeneral = _free_layer(nt_stax.DotGeneral)
Dropout = _free_layer(nt_stax.Dropout)
Elementwise = _free_layer(nt_stax.Elementwise)
ElementwiseNumerical = _free_layer(nt_stax.ElementwiseNumerical)
Erf = _free_layer(nt_stax.Erf)
Exp = _free_layer(nt_stax.Exp)
ExpNormalized = _free_layer(nt_stax.ExpNormalized)
FanInConcat = _free_layer(nt_stax.FanInConcat)
FanInProd = _free_layer(nt_stax.FanInProd)
FanInSum = _free_layer(nt_stax.FanInSum)
FanOut = _free_layer(nt_stax.FanOut)
Flatten = _free_layer(nt_stax.Flatten)
Gabor = _free_layer(nt_stax.Gabor)
Gaussian = _free_layer(nt_stax.Gaussian)
Gelu = _free_layer(nt_stax.Gelu)
GlobalAvgPool = _free_layer(nt_stax.GlobalAvgPool)
GlobalSumPool = _free_layer(nt_stax.GlobalSumPool)
Hermite = _free_layer(nt_stax.Hermite)
Identity = _free_layer(nt_stax.Identity)
ImageResize = _free_layer(nt_stax.ImageResize)
Index = _free_layer(nt_stax.Index)
LayerNorm = _free_layer(nt_stax.LayerNorm)
LeakyRelu = _free_layer(nt_stax.LeakyRelu)
Monomial = _free_layer(nt_stax.Monomial)
Polynomial = _free_layer(nt_stax.Polynomial)
Rbf = _free_layer(nt_stax.Rbf)
RectifiedMonomial = _free_layer(nt_stax.RectifiedMonomial)
Relu = _free_layer(nt_stax.Relu)
Sigmoid_like = _free_layer(nt_stax.Sigmoid_like)
Sign = _free_layer(nt_stax.Sign)
Sin = _free_layer(nt_stax.Sin)
SumPool = _free_layer(nt_stax.SumPool)


# ----------------------------------------------------------------------------------------------------------
# Parametric layers: the shared two-time rule of `_two_time.parametric_rule`.


def _refuse_standard(kind: str) -> Rule:
  def rule(k, t1, t2, temperature, **nt_kwargs):
    raise ValueError(
      f"ndk_fn needs parameterization='ntk' in {kind}: the two-time rule is that of the raw parameterisation "
      '(h = W a/√fan_in + b with W itself trained, docs/theory.md §1), and Langevin learning in the standard '
      "one has other gradient scales. init_fn, apply_fn and kernel_fn work with 'standard'; build the layer "
      "with parameterization='ntk' for ndk_fn."
    )

  return rule


def _check_parameterization(parameterization: Any) -> str:
  if parameterization not in ('ntk', 'standard'):
    raise ValueError(f"`parameterization` must be 'ntk' or 'standard', got {parameterization!r}.")
  return parameterization


def _parametric_layer(
  layer_spec: S.DenseSpec | S.ConvSpec, nt_layer_fn: Callable, args: tuple, kwargs: dict, W_std, b_std, s
) -> NDKLayer:
  """The NDKLayer of a parametric NT layer: NT's triple with the given stds, and the rule of its spec."""
  parameterization = layer_spec.parameterization
  triple = nt_layer_fn(*args, W_std=W_std, b_std=b_std, parameterization=parameterization, s=s, **kwargs)
  kind = layer_spec.kind.value
  weight, bias = layer_spec.weight, layer_spec.bias
  if parameterization == 'standard':
    rule = _refuse_standard(kind)
  else:
    unit_kernel_fn = nt_layer_fn(*args, W_std=1.0, b_std=None, parameterization='ntk', s=s, **kwargs)[2]
    bias_pattern_fn = None
    if bias is not None and layer_spec.kind is S.LayerKind.CONV_LOCAL:
      bias_pattern_fn = nt_layer_fn(*args, W_std=0.0, b_std=1.0, parameterization='ntk', s=s, **kwargs)[2]
    rule = _two_time.parametric_rule(unit_kernel_fn, weight, bias, bias_pattern_fn)
  return NDKLayer(triple, rule, layer_spec, tuple(g for g in (weight, bias) if g is not None))


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
  """Dense layer h = W a/√N + b (raw parameterisation), W(0) ~ N(0, W_std²), prior N(0, W_prior_std²).

  Same signature as `neural_tangents.stax.Dense` plus the prior stds (default: the initialisation stds; see the
  module docstring for zero stds). docs/theory.md §3.

  Examples:
    >>> Dense(3, 1.0, 0.0).spec.bias is None  # b_std = 0 and no prior: no bias, as in Neural Tangents
    True
    >>> Dense(3, W_std=0.0, W_prior_std=1.0).groups
    (ParamGroup(init_std=0.0, prior_std=1.0),)
  """
  layer_spec = S.DenseSpec(
    out_dim=V.positive_int('out_dim', out_dim),
    weight=S.param_group('W', W_std, W_prior_std),
    bias=S.param_group('b', b_std, b_prior_std),
    batch_axis=batch_axis,
    channel_axis=channel_axis,
    parameterization=_check_parameterization(parameterization),
  )
  kwargs = dict(batch_axis=batch_axis, channel_axis=channel_axis)
  return _parametric_layer(layer_spec, nt_stax.Dense, (layer_spec.out_dim,), kwargs, W_std, b_std, s)


def _conv_factory(kind: S.LayerKind, nt_layer_fn: Callable) -> Callable[..., NDKLayer]:

  @functools.wraps(nt_layer_fn, assigned=('__module__',))
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
    layer_spec = S.ConvSpec(
      kind=kind,
      out_chan=V.positive_int('out_chan', out_chan),
      filter_shape=tuple(filter_shape),
      strides=None if strides is None else tuple(strides),
      padding=padding,
      dimension_numbers=None if dimension_numbers is None else tuple(dimension_numbers),
      weight=S.param_group('W', W_std, W_prior_std),
      bias=S.param_group('b', b_std, b_prior_std),
      parameterization=_check_parameterization(parameterization),
    )
    args = (layer_spec.out_chan, filter_shape)
    kwargs = dict(strides=strides, padding=padding, dimension_numbers=dimension_numbers)
    return _parametric_layer(layer_spec, nt_layer_fn, args, kwargs, W_std, b_std, s)

  conv.__name__ = conv.__qualname__ = kind.value
  conv.__doc__ = (
    f'{kind.value} layer in the raw parameterisation (fan-in = in_channels × filter size), with the '
    f'signature of `neural_tangents.stax.{kind.value}` plus `W_prior_std`, `b_prior_std` (docs/theory.md §3).\n\n'
    '  Examples:\n'
    f'    >>> {kind.value}(4, (3, 3), padding="SAME").spec.filter_shape\n'
    '    (3, 3)\n'
  )
  return conv


Conv = _conv_factory(S.LayerKind.CONV, nt_stax.Conv)
ConvTranspose = _conv_factory(S.LayerKind.CONV_TRANSPOSE, nt_stax.ConvTranspose)
ConvLocal = _conv_factory(S.LayerKind.CONV_LOCAL, nt_stax.ConvLocal)


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
  return NDKLayer(tuple(triple[:3]), rule, S.FreeSpec('GlobalSelfAttention', tuple(triple[:3])), groups.present())


# ----------------------------------------------------------------------------------------------------------
# Combinators.


def serial(*layers: Sequence[Callable]) -> NDKLayer:
  """Composition `layers[-1] ∘ ... ∘ layers[0]` (as `neural_tangents.stax.serial`).

  Examples:
    >>> len(serial(Dense(3), Relu()).spec.children)
    2
  """
  if not layers:
    raise ValueError(
      '`serial` needs at least one layer (Neural Tangents cannot build an empty serial); use `Identity()`.'
    )
  layers = tuple(as_ndk_layer(l) for l in layers)
  triple = nt_stax.serial(*layers)
  rules = tuple(l.rule for l in layers)

  def rule(k, t1, t2, temperature, **nt_kwargs):
    for r in rules:
      k = r(k, t1, t2, temperature, **nt_kwargs)
    return k

  return NDKLayer(triple, rule, S.SerialSpec(tuple(l.spec for l in layers)), sum((l.groups for l in layers), ()))


def parallel(*layers: Sequence[Callable]) -> NDKLayer:
  """Applies `layers[i]` to the i-th input of a list (as `neural_tangents.stax.parallel`).

  Examples:
    >>> len(parallel(Relu(), Erf()).spec.children)
    2
  """
  if not layers:
    raise ValueError(
      '`parallel` needs at least one layer (Neural Tangents cannot build an empty parallel); use `Identity()`.'
    )
  layers = tuple(as_ndk_layer(l) for l in layers)
  triple = nt_stax.parallel(*layers)
  rules = tuple(l.rule for l in layers)

  def rule(ks, t1, t2, temperature, **nt_kwargs):
    if len(ks) != len(rules):
      raise ValueError(f'parallel of {len(rules)} layers got {len(ks)} inputs.')
    return [r(k, t1, t2, temperature, **nt_kwargs) for r, k in zip(rules, ks)]

  return NDKLayer(triple, rule, S.ParallelSpec(tuple(l.spec for l in layers)), sum((l.groups for l in layers), ()))


def repeat(layer: Sequence[Callable], n: int) -> NDKLayer:
  """`layer` composed `n` times with independent weights (`neural_tangents.stax.repeat`: its stacked parameter
  tree and compiled loop; ``n = 0`` is the identity).

  Examples:
    >>> net = repeat(serial(Dense(4), Relu()), 3)
    >>> len(net.groups), net.spec.n
    (3, 3)
  """
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
    raise ValueError(f'`n` must be an integer >= 0, got {n!r}.')
  n = int(n)
  block = as_ndk_layer(layer)
  triple = nt_stax.repeat(block, n)

  def rule(k, t1, t2, temperature, **nt_kwargs):
    for _ in range(n):
      k = block.rule(k, t1, t2, temperature, **nt_kwargs)
    return k

  return NDKLayer(triple, rule, S.RepeatSpec(block.spec, n), block.groups * n)


__all__ = sorted(
  [
    'NDKLayer',
    'TwoTimeKernel',
    'as_ndk_layer',
    'two_time_grid',
    'ABRelu',
    'Abs',
    'Aggregate',
    'AvgPool',
    'Conv',
    'ConvLocal',
    'ConvTranspose',
    'Cos',
    'Dense',
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
    'GlobalSelfAttention',
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
    'parallel',
    'repeat',
    'serial',
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
