"""Empirical NNGP / NTK of finite networks, and their Monte Carlo averages over random initialisations.

Neural Tangents' own ``nt.empirical_kernel_fn`` and ``nt.monte_carlo_kernel_fn`` do not import on current JAX
(``ndk_flax._nt`` explains why). This module computes the same quantities with the same call signatures, built on
``jax.jacobian`` and ``jax.vmap``:

* NNGP sample: f(θ, x1) f(θ, x2)ᵀ;
* NTK sample: Θ(x1, x2) = Σ_θ ∂f(θ, x1)/∂θ ∂f(θ, x2)/∂θᵀ (summed over every parameter leaf);

each contracted over the output ``trace_axes`` (averaged, as Neural Tangents does) and diagonal over
``diagonal_axes``. The kernel layout is that of Neural Tangents: the axes of f(x1) and f(x2) zipped,
(N1, N2, X1, X2, ...), with traced axes removed and diagonal axes kept once. At infinite width the Monte Carlo
average tends to the NNGP and NTK of ``kernel_fn`` (docs/theory.md §3 at T = 0).

Examples:
  >>> import jax, jax.numpy as jnp
  >>> from ndk_flax import empirical, stax
  >>> init_fn, apply_fn, _ = stax.serial(stax.Dense(4), stax.Relu(), stax.Dense(1))
  >>> _, params = init_fn(jax.random.PRNGKey(0), (3, 2))
  >>> k = empirical.empirical_kernel_fn(apply_fn)(jnp.ones((3, 2)), None, ('nngp', 'ntk'), params)
  >>> k.nngp.shape, k.ntk.shape
  ((3, 3), (3, 3))
"""

from __future__ import annotations

import collections
import enum
import functools
import math
import operator
import string
from typing import Any, Callable, Iterable, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from ndk_flax._nt import nt_batching

__all__ = ['NtkImplementation', 'empirical_kernel_fn', 'monte_carlo_kernel_fn']

Axes = Union[int, Sequence[int]]
_GETS = ('nngp', 'ntk')


class NtkImplementation(enum.IntEnum):
  """Neural Tangents' NTK implementation choices; every one gives the same kernel here (Jacobian contraction).

  Examples:
    >>> int(NtkImplementation.JACOBIAN_CONTRACTION)
    1
  """

  AUTO = 0
  JACOBIAN_CONTRACTION = 1
  NTK_VECTOR_PRODUCTS = 2
  STRUCTURED_DERIVATIVES = 3


def _axes(axes: Axes, ndim: int) -> tuple[int, ...]:
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  return tuple(sorted(a % ndim for a in axes))


def _contract(a: jax.Array, b: jax.Array, n_out: int, trace_axes: Axes, diagonal_axes: Axes) -> jax.Array:
  """Σ over the trailing (parameter) axes of a ⊗ b, zipped over the first ``n_out`` (output) axes.

  ``a``: (*out1, *p), ``b``: (*out2, *p) with the same number of output axes; traced axes are averaged.
  """
  trace, diagonal = _axes(trace_axes, n_out), _axes(diagonal_axes, n_out)
  letters = iter(string.ascii_letters)
  params = [next(letters) for _ in range(a.ndim - n_out)]
  lhs, rhs, out = [], [], []
  for i in range(n_out):
    x = next(letters)
    if i in trace:
      lhs.append(x)
      rhs.append(x)
    elif i in diagonal:
      lhs.append(x)
      rhs.append(x)
      out.append(x)
    else:
      y = next(letters)
      lhs.append(x)
      rhs.append(y)
      out += [x, y]
  formula = f'{"".join(lhs + params)},{"".join(rhs + params)}->{"".join(out)}'
  size = math.prod(a.shape[i] for i in trace)
  return jnp.einsum(formula, a, b) / size


def _split_kwargs(kwargs: dict, x1: Any, x2: Any) -> tuple[dict, dict]:
  """Per-input ``apply_fn`` keywords as Neural Tangents splits them: pairs (tuples of two) go one to each input;
  an ``rng`` key is kept for x2 = x1 (or x2 None) and folded for other inputs; anything else goes to both."""
  kwargs1, kwargs2 = {}, {}
  for name, value in kwargs.items():
    if name == 'rng' and x2 is not None and value is not None and not isinstance(value, tuple):
      kwargs1[name] = value
      kwargs2[name] = jnp.where(_same_inputs(x1, x2), value, jax.random.fold_in(value, 1))
    elif isinstance(value, tuple) and len(value) == 2:
      kwargs1[name], kwargs2[name] = value
    else:
      kwargs1[name] = kwargs2[name] = value
  return kwargs1, kwargs2


def _same_inputs(x1: Any, x2: Any) -> Any:
  leaves1, leaves2 = jax.tree.leaves(x1), jax.tree.leaves(x2)
  if len(leaves1) != len(leaves2) or any(jnp.shape(a) != jnp.shape(b) for a, b in zip(leaves1, leaves2)):
    return False
  return functools.reduce(jnp.logical_and, [jnp.all(a == b) for a, b in zip(leaves1, leaves2)], jnp.array(True))


def _canonical_get(get: Any) -> tuple[tuple[str, ...], bool]:
  if get is None:
    return _GETS, False
  single = isinstance(get, str)
  names = (get,) if single else tuple(get)
  for name in names:
    if name not in _GETS:
      raise ValueError(f'`get` must be "nngp", "ntk", a tuple of them or None, got {get!r}.')
  return names, single


def _named(names: tuple[str, ...], values: dict, single: bool, type_name: str) -> Any:
  if single:
    return values[names[0]]
  return collections.namedtuple(type_name, names)(*(values[n] for n in names))


def empirical_kernel_fn(
  f: Callable,
  trace_axes: Axes = (-1,),
  diagonal_axes: Axes = (),
  vmap_axes: Any = None,
  implementation: Union[int, NtkImplementation] = NtkImplementation.JACOBIAN_CONTRACTION,
) -> Callable:
  """``kernel_fn(x1, x2, get, params, **apply_fn_kwargs)``: the empirical NNGP f fᵀ and NTK J Jᵀ of ``f(params, x)``.

  Same signature and kernel layout as Neural Tangents' ``empirical_kernel_fn``. ``vmap_axes`` and
  ``implementation`` are accepted for compatibility; they choose how Neural Tangents computes the same kernel.

  Args:
    f: ``f(params, x, **kwargs)`` returning an array or a PyTree of arrays (each output gets its own kernel).
    trace_axes: output axes averaged over (the pair of axes traced, divided by their size).
    diagonal_axes: output axes on which only the diagonal is kept.
    vmap_axes, implementation: accepted, no effect on the result.

  Returns:
    ``kernel_fn(x1, x2=None, get=None, params=..., **apply_fn_kwargs)``: an array for a string ``get``, else a
    namedtuple with fields ``get`` (default: ('nngp', 'ntk')).

  Examples:
    >>> import jax.numpy as jnp
    >>> k = empirical_kernel_fn(lambda p, x: p * x)(jnp.ones((2, 3)), None, 'ntk', 2.0)
    >>> k.tolist()
    [[1.0, 1.0], [1.0, 1.0]]
  """
  if not callable(f):
    raise TypeError(f'`f` must be a callable f(params, x, **kwargs), got {type(f).__name__}.')
  NtkImplementation(int(implementation))  # same accepted values as Neural Tangents

  def kernel_fn(x1: Any, x2: Any = None, get: Any = None, params: Any = None, **apply_fn_kwargs) -> Any:
    names, single = _canonical_get(get)
    kwargs1, kwargs2 = _split_kwargs(apply_fn_kwargs, x1, x2)
    values = {}
    if 'nngp' in names:
      out1 = f(params, x1, **kwargs1)
      out2 = out1 if x2 is None else f(params, x2, **kwargs2)
      values['nngp'] = jax.tree.map(lambda a, b: _contract(a, b, a.ndim, trace_axes, diagonal_axes), out1, out2)
    if 'ntk' in names:
      values['ntk'] = _ntk(f, params, x1, x2, kwargs1, kwargs2, trace_axes, diagonal_axes)
    return _named(names, values, single, 'EmpiricalKernel')

  return kernel_fn


def _ntk(f, params, x1, x2, kwargs1, kwargs2, trace_axes, diagonal_axes) -> Any:
  """Θ = Σ_leaves J1 J2ᵀ per output, J = ∂f/∂θ from ``jax.jacobian`` (leaves: output shape + parameter shape)."""
  out_struct = jax.eval_shape(lambda p: f(p, x1, **kwargs1), params)
  jac1 = jax.jacobian(lambda p: f(p, x1, **kwargs1))(params)
  jac2 = jac1 if x2 is None else jax.jacobian(lambda p: f(p, x2, **kwargs2))(params)
  out_leaves, out_def = jax.tree.flatten(out_struct)
  p_def = jax.tree.structure(params)
  per_output1 = out_def.flatten_up_to(jac1)
  per_output2 = out_def.flatten_up_to(jac2)
  kernels = []
  for leaf, j1, j2 in zip(out_leaves, per_output1, per_output2):
    n_out = len(leaf.shape)
    terms = [
      _contract(a, b, n_out, trace_axes, diagonal_axes)
      for a, b in zip(p_def.flatten_up_to(j1), p_def.flatten_up_to(j2))
      if a.size
    ]
    kernels.append(functools.reduce(operator.add, terms))
  return jax.tree.unflatten(out_def, kernels)


def monte_carlo_kernel_fn(
  init_fn: Callable,
  apply_fn: Callable,
  key: jax.Array,
  n_samples: Union[int, Iterable[int]],
  batch_size: int = 0,
  device_count: int = -1,
  store_on_device: bool = True,
  trace_axes: Axes = (-1,),
  diagonal_axes: Axes = (),
  vmap_axes: Any = None,
  implementation: Union[int, NtkImplementation] = NtkImplementation.JACOBIAN_CONTRACTION,
) -> Callable:
  """Monte Carlo NNGP / NTK: the empirical kernels averaged over ``n_samples`` random initialisations.

  Same signature and sampling as Neural Tangents' ``monte_carlo_kernel_fn``: sample n uses the n-th key split off
  ``key``, itself split into an init key and a dropout ``rng`` passed to ``apply_fn``; ``batch_size``,
  ``device_count`` and ``store_on_device`` go to Neural Tangents' ``batch``.

  Args:
    init_fn, apply_fn: a stax layer's functions.
    key: PRNG key.
    n_samples: an int (returns the estimate) or an iterable of ints (returns a generator yielding the estimate at
      each of those sample counts).

  Returns:
    ``kernel_fn(x1, x2=None, get=None, **apply_fn_kwargs)``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from ndk_flax import stax
    >>> init_fn, apply_fn, _ = stax.Dense(512, W_std=1.0)
    >>> mc = monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(0), 4, device_count=0)
    >>> round(float(mc(jnp.ones((1, 2)), None, 'nngp')[0, 0]), 1)  # |x|²/N = 1
    1.0
  """
  if isinstance(n_samples, (int, np.integer)) and not isinstance(n_samples, bool):
    counts, generator = {int(n_samples)}, False
  else:
    counts, generator = set(int(n) for n in n_samples), True
  if not counts or min(counts) < 1:
    raise ValueError(f'`n_samples` must be a positive int or an iterable of them, got {n_samples!r}.')
  empirical = empirical_kernel_fn(apply_fn, trace_axes, diagonal_axes, vmap_axes, implementation)

  @functools.partial(
    nt_batching.batch, batch_size=batch_size, device_count=device_count, store_on_device=store_on_device
  )
  def sample_once(x1, x2, key, get, **apply_fn_kwargs):
    init_key, dropout_key = jax.random.split(key, 2)
    _, params = init_fn(init_key, jax.tree.map(lambda x: x.shape, x1))
    return empirical(x1, x2, get, params, rng=dropout_key, **apply_fn_kwargs)

  def running_sums(x1, x2, get, **apply_fn_kwargs):
    split, total = key, None
    for n in range(1, max(counts) + 1):
      split, sample_key = jax.random.split(split)
      one = sample_once(x1, x2, sample_key, get, **apply_fn_kwargs)
      total = one if total is None else jax.tree.map(operator.add, total, one)
      if n in counts:
        yield jax.tree.map(lambda s, n=n: s / n, total)

  def kernel_fn(x1, x2=None, get=None, **apply_fn_kwargs):
    names, single = _canonical_get(get)
    request = names[0] if single else names
    estimates = running_sums(x1, x2, request, **apply_fn_kwargs)
    if generator:
      return estimates
    *_, last = estimates
    return last

  return kernel_fn
