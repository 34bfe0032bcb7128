"""Langevin gradient descent with a Gaussian prior, as Optax gradient transformations.

docs/theory.md §1. One step of the discretised dynamics with step η_k (the learning rate at step k):

    θ ← θ − η_k (∇E(θ) + λ_θ θ) + √(2 η_k T) ξ,      λ_θ = T / σ_θ²,   ξ ~ N(0, I).

Its stationary law (as η → 0) is the Bayesian posterior ∝ exp(−E/T) N(θ; 0, σ²); T = 0 is plain gradient descent.

:func:`langevin` is ``optax.chain`` of three composable pieces (Optax adds the final update to the parameters):

* :func:`add_prior_decay`: g ↦ g + λ_θ θ  (prior-driven weight decay, λ = T/σ² per parameter);
* ``optax.scale_by_learning_rate``: u ↦ −η_k u  (a float or an Optax schedule);
* :func:`add_langevin_noise`: u ↦ u + √(2 η_k T) ξ, with ξ drawn from the PRNG key held in the state.

The noise uses the same schedule value η_k as the gradient step: both transformations count updates from 0.

Noise law (``noise=``): ``'gaussian'`` (default) draws ξ ~ N(0, I): the Euler–Maruyama discretisation of the
Langevin SDE. ``'rademacher'`` draws independent signs ξ = ±1: the simplified weak Euler scheme (Kloeden & Platen,
*Numerical Solution of SDEs*, §14.1), whose increments have the same mean, covariance and third moment as the
Gaussian ones. Both schemes converge weakly with order 1 to the same Langevin diffusion (ensemble averages of
smooth functions err by O(η)), so the theory (docs/theory.md) describes both ensembles to the same accuracy. For a
quadratic potential (dynamics linear in θ) the mean and covariance of the chain are identical under both laws at
every step: they depend on ξ only through E ξ = 0 and E ξξᵀ = I. Individual steps differ (E ξ⁴ = 1 instead of
3). A sign costs one random bit instead of a 32-bit word and an inverse-erf, about 10× less on CPU, where the
Gaussian draw can cost as much as the gradient itself (``benchmarks/train.py``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ndk_flax import _validation as V

__all__ = [
  'LangevinNoiseState',
  'NOISE_LAWS',
  'PriorStd',
  'add_langevin_noise',
  'add_prior_decay',
  'langevin',
  'resolve_prior_std',
]

# A float, a pytree of floats / arrays matching the parameters, or ``f(path, param) -> std``.
PriorStd = Union[float, Any, Callable[[tuple, jax.Array], Any]]

NOISE_LAWS = ('gaussian', 'rademacher')
"""Laws of ξ accepted by ``noise=``: standard normal, or independent signs ±1 (see the module docstring)."""


class LangevinNoiseState(NamedTuple):
  """State of :func:`add_langevin_noise`: ``count`` (int32 step k) and ``key`` (raw uint32 PRNG key data, so that the
  state is a plain array pytree for checkpoints; the implementation of a typed key is kept by the transformation).

  Examples:
    >>> import jax.numpy as jnp
    >>> state = add_langevin_noise(0.1, 1.0, key=0).init({'w': jnp.zeros(2)})
    >>> isinstance(state, LangevinNoiseState), int(state.count), state.key.shape
    (True, 0, (2,))
  """

  count: jax.Array
  key: jax.Array


def _is_concrete(x: Any) -> bool:
  return not V.is_traced(x)


def _check_temperature(temperature: Any) -> None:
  """T must be a real scalar >= 0 (checked when concrete; a traced T is accepted as is)."""
  V.temperature(temperature, hint=' (T = 0 is plain gradient descent)')


def _check_learning_rate(learning_rate: Any) -> None:
  """η must be a positive finite scalar or a schedule ``count -> η``."""
  if not callable(learning_rate) and _is_concrete(learning_rate):
    V.positive('learning_rate', learning_rate)


def _key_data(key: Any) -> tuple[jax.Array, Any]:
  """An int seed, a typed PRNG key or raw uint32 key data -> (raw uint32 key data, PRNG implementation or None).

  The key may be traced. A typed key keeps its implementation (e.g. ``jax.random.key(0, impl='rbg')``); raw data
  and int seeds use JAX's default implementation.
  """
  if isinstance(key, bool):
    raise TypeError(f'key must be an int seed or a single PRNG key, got {key!r}')
  if isinstance(key, numbers.Integral):
    return jax.random.PRNGKey(int(key)), None
  if not hasattr(key, 'dtype') or not hasattr(key, 'shape'):
    raise TypeError(f'key must be an int seed or a single PRNG key, got {type(key).__name__}')
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape != ():
      raise ValueError(
        f'key must be a single PRNG key (shape ()), got a batch of shape {key.shape}; '
        'use jax.vmap over the keys to build several members'
      )
    return jax.random.key_data(key), jax.random.key_impl(key)
  if key.dtype == jnp.uint32 and key.ndim == 1:
    return jnp.asarray(key), None
  if key.shape == () and jnp.issubdtype(key.dtype, jnp.integer):
    return jax.random.PRNGKey(key), None
  raise TypeError(
    f'key must be an int seed, a typed PRNG key (jax.random.key) or raw uint32 key data '
    f'(jax.random.PRNGKey); got dtype {key.dtype} and shape {key.shape}'
  )


def resolve_prior_std(prior_std: PriorStd, params: Any) -> Any:
  """The prior standard deviation σ_θ for every parameter leaf, as a pytree matching ``params``.

  Args:
    prior_std: a positive float (the same σ for every parameter), a pytree with the structure of ``params`` whose
      leaves are positive scalars or arrays broadcastable to the parameter, or a callable ``f(path, param) -> σ``
      called on every leaf with its ``jax.tree_util`` key path.
    params: the parameter pytree.

  Returns:
    A pytree with the structure of ``params`` of σ values.

  Raises:
    ValueError: if the tree structure differs from ``params``, a σ does not broadcast to its parameter, or a
      (concrete) σ is not finite and positive.

  Examples:
    >>> import jax.numpy as jnp
    >>> params = {'b': jnp.zeros(2), 'w': jnp.zeros((2, 2))}
    >>> resolve_prior_std(lambda path, p: 1.0 / p.shape[0], params)
    {'b': 0.5, 'w': 0.5}
    >>> resolve_prior_std(-1.0, params)
    Traceback (most recent call last):
    ...
    ValueError: prior_std at ['b'] must be finite and > 0, got -1.0
  """
  if callable(prior_std):
    tree = jax.tree_util.tree_map_with_path(prior_std, params)
  elif jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(prior_std)) and np.ndim(prior_std) == 0:
    tree = jax.tree.map(lambda _: prior_std, params)
  else:
    tree = prior_std
  try:  # a prefix of the parameter tree also matches (e.g. pure floats against nnx.Variable-wrapped parameters)
    tree = jax.tree.map(lambda std, sub: jax.tree.map(lambda _: std, sub), tree, params)
  except ValueError:
    p_def, s_def = jax.tree_util.tree_structure(params), jax.tree_util.tree_structure(tree)
    raise ValueError(
      'prior_std must be a float, a callable (path, param) -> std, or a pytree with the same structure as the '
      f'parameters; parameters have structure\n  {p_def}\nbut prior_std has structure\n  {s_def}'
    ) from None

  def check(path, std, param):
    where = jax.tree_util.keystr(path) or '<root>'
    if isinstance(std, bool) or std is None:
      raise TypeError(f'prior_std at {where} must be a positive number, got {std!r}')
    shape = np.shape(std)
    try:
      np.broadcast_shapes(shape, np.shape(param))
    except ValueError:
      raise ValueError(
        f'prior_std at {where} has shape {shape}, which does not broadcast to the parameter shape {np.shape(param)}'
      ) from None
    if np.broadcast_shapes(shape, np.shape(param)) != np.shape(param):
      raise ValueError(f'prior_std at {where} has shape {shape}, larger than the parameter shape {np.shape(param)}')
    if _is_concrete(std):
      s = np.asarray(std)
      if not np.issubdtype(s.dtype, np.number) or np.iscomplexobj(s):
        raise TypeError(f'prior_std at {where} must be real, got dtype {s.dtype}')
      if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f'prior_std at {where} must be finite and > 0, got {s if s.ndim else float(s)}')
    return std

  return jax.tree_util.tree_map_with_path(check, tree, params)


def add_prior_decay(temperature: float, prior_std: PriorStd) -> optax.GradientTransformation:
  """Gradient transformation g ↦ g + λ_θ θ with λ_θ = T / σ_θ² (gradient of −T log N(θ; 0, σ²)).

  Args:
    temperature: T ≥ 0 (T = 0: no decay).
    prior_std: σ_θ, see :func:`resolve_prior_std`.

  The parameters must be passed to ``update``. The prior tree is checked against the parameters in ``init``.

  Examples:
    >>> import jax.numpy as jnp
    >>> params = {'w': jnp.array([1.0, -2.0])}
    >>> tx = add_prior_decay(temperature=2.0, prior_std=2.0)  # λ = T/σ² = 0.5
    >>> g, _ = tx.update({'w': jnp.zeros(2)}, tx.init(params), params)
    >>> [round(float(v), 3) for v in g['w']]
    [0.5, -1.0]

  References:
    Welling & Teh, *Bayesian Learning via Stochastic Gradient Langevin Dynamics*, ICML 2011.
    Avidan, Li & Sompolinsky, *Connecting NTK and NNGP: A Unified Theoretical Framework for Neural Network
    Learning Dynamics in the Kernel Regime*, arXiv:2309.04522.
  """
  _check_temperature(temperature)
  if not callable(prior_std):  # catch a non-positive float before any parameters exist
    for leaf in jax.tree.leaves(prior_std):
      if _is_concrete(leaf) and (np.any(np.asarray(leaf) <= 0) or not np.all(np.isfinite(leaf))):
        raise ValueError(f'prior_std must be finite and > 0, got {leaf!r}')

  def init_fn(params):
    resolve_prior_std(prior_std, params)
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('add_prior_decay needs the parameters: call update(grads, state, params)')
    stds = resolve_prior_std(prior_std, params)
    updates = jax.tree.map(
      lambda g, p, s: g + (temperature / jnp.square(jnp.asarray(s, p.dtype))).astype(p.dtype) * p, updates, params, stds
    )
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def _check_noise(noise: Any) -> str:
  if noise not in NOISE_LAWS:
    raise ValueError(f'noise must be one of {NOISE_LAWS}, got {noise!r}')
  return noise


NOISE_BITS_PARTITIONABLE = False
"""Threefry mode of the noise draws (``jax.threefry_partitionable``), fixed here so that the noise stream does not
depend on the caller's global setting. JAX's default (partitionable, since JAX 0.5) computes one Threefry-2x32 block
per 32-bit word and XORs its two output words; the original mode uses both words of every block, half the hash
work. Both give independent uniform 32-bit words, so ξ = √2 erfinv(u) has the same law; the original mode cut the
draw from 10.1 to 8.0 ns per parameter per step at 17k parameters and from 7.8 to 5.8 ns at 70k, and the Gaussian
step at width 2048, P = 16 from 4.1× to 3.1× optax.sgd (2-core CPU, same run; ``benchmarks/train.py``). Noise draws
are per member (vmapped), so nothing needs a partitionable draw."""


def _tree_noise(key: jax.Array, tree: Any, noise: str) -> Any:
  """ξ for every leaf of ``tree`` (same shapes and dtypes), from one draw for the whole tree cut into the leaves
  in ``jax.tree.flatten`` order, in the Threefry mode :data:`NOISE_BITS_PARTITIONABLE`. Gaussian:
  ``jax.random.normal(key, (n,))`` in the leaves' common dtype, i.e. the ξ of ``jax.flatten_util.ravel_pytree`` (as
  BlackJAX draws it); one draw instead of one per leaf cut the step from 7.1× to 5.7× optax.sgd at width 512,
  P = 16, and from 1.60× to 1.47× at P = 256 (2-core CPU, same run). Rademacher: random 32-bit words, 32 signs ±1
  from each word."""
  leaves, treedef = jax.tree.flatten(tree)
  sizes = [math.prod(jnp.shape(x)) for x in leaves]
  offsets = np.cumsum([0] + sizes)
  if noise == 'gaussian':
    with jax.threefry_partitionable(NOISE_BITS_PARTITIONABLE):
      z = jax.random.normal(key, (int(offsets[-1]),), jnp.result_type(*leaves))
    return treedef.unflatten(
      [
        z[start:stop].reshape(jnp.shape(x)).astype(jnp.result_type(x))
        for start, stop, x in zip(offsets[:-1], offsets[1:], leaves)
      ]
    )
  with jax.threefry_partitionable(NOISE_BITS_PARTITIONABLE):
    words = jax.random.bits(key, (-(-sum(sizes) // 32),), jnp.uint32)
  bits = ((words[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1).reshape(-1)
  return treedef.unflatten(
    [
      (2 * bits[start:stop].astype(jnp.result_type(x)) - 1).reshape(jnp.shape(x))
      for start, stop, x in zip(offsets[:-1], offsets[1:], leaves)
    ]
  )


def _check_precision(params: Any) -> None:
  """Refuse bfloat16 / float16 parameters (``_validation.langevin_dtype``), naming the first such leaf."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if hasattr(leaf, 'dtype') and jnp.issubdtype(leaf.dtype, jnp.floating):
      V.langevin_dtype(f'params{jax.tree_util.keystr(path)} dtype', leaf.dtype)


def add_langevin_noise(
  learning_rate: optax.ScalarOrSchedule, temperature: float, key: Any, *, noise: str = 'gaussian'
) -> optax.GradientTransformation:
  """Gradient transformation u ↦ u + √(2 η_k T) ξ_k, ξ_k ~ N(0, I) or ±1 (Optax update space: added to θ).

  Args:
    learning_rate: η (float) or an Optax schedule k ↦ η_k; evaluated at the same step count k as
      ``optax.scale_by_learning_rate`` so that the noise matches the gradient step.
    temperature: T ≥ 0.
    key: an int seed, a typed PRNG key or raw key data; it may be a tracer (e.g. ``jax.vmap`` over keys of a
      function that builds the transformation and calls ``init``), so that every member gets its own stream.
    noise: law of ξ: ``'gaussian'`` (N(0, 1), default) or ``'rademacher'`` (±1 with probability ½ each; same
      mean, covariance and third moment, about 10× cheaper on CPU; see the module docstring).

  The state is :class:`LangevinNoiseState`; ``update`` draws ξ_k only from its key and returns the split key.
  ``init`` refuses bfloat16 and float16 parameters (TypeError): the increment √(2ηT)ξ is rounded away relative to
  θ and the stationary law is wrong (a free OU chain in bfloat16 ends 75 standard errors off).

  Examples:
    >>> import jax.numpy as jnp
    >>> tx = add_langevin_noise(0.5, 1.0, key=0)  # √(2ηT) = 1: the update is ξ
    >>> u, state = tx.update({'w': jnp.zeros(3)}, tx.init({'w': jnp.zeros(3)}))
    >>> u['w'].shape, int(state.count)
    ((3,), 1)
    >>> tx.init({'w': jnp.zeros(3, jnp.bfloat16)})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: `params['w'] dtype` is bfloat16: Langevin dynamics need float32 or float64 parameters. ...

  References:
    Welling & Teh, *Bayesian Learning via Stochastic Gradient Langevin Dynamics*, ICML 2011.
    Avidan, Li & Sompolinsky, *Connecting NTK and NNGP: A Unified Theoretical Framework for Neural Network
    Learning Dynamics in the Kernel Regime*, arXiv:2309.04522.
  """
  _check_learning_rate(learning_rate)
  _check_temperature(temperature)
  _check_noise(noise)
  key, impl = _key_data(key)

  def init_fn(params):
    _check_precision(params)
    return LangevinNoiseState(count=jnp.zeros([], jnp.int32), key=key)

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_int32_increment(state.count)
    if _is_concrete(temperature) and temperature == 0:  # plain gradient descent: nothing to draw
      return updates, LangevinNoiseState(count=count, key=state.key)
    eta = learning_rate(state.count) if callable(learning_rate) else learning_rate
    next_key, noise_key = jax.random.split(jax.random.wrap_key_data(state.key, impl=impl))
    xi = _tree_noise(noise_key, updates, noise)
    updates = jax.tree.map(
      lambda u, x: u + jnp.sqrt(2 * jnp.asarray(eta, u.dtype) * jnp.asarray(temperature, u.dtype)) * x, updates, xi
    )
    return updates, LangevinNoiseState(count=count, key=jax.random.key_data(next_key))

  return optax.GradientTransformation(init_fn, update_fn)


def langevin(
  learning_rate: optax.ScalarOrSchedule, temperature: float, prior_std: PriorStd, *, key: Any, noise: str = 'gaussian'
) -> optax.GradientTransformation:
  """Langevin gradient descent: θ ← θ − η_k (∇E + (T/σ²) θ) + √(2 η_k T) ξ (docs/theory.md §1).

  Args:
    learning_rate: η > 0 or an Optax schedule k ↦ η_k (continuous time t = Σ_k η_k).
    temperature: T ≥ 0; T = 0 is plain gradient descent (no decay, no noise).
    prior_std: σ_θ: a float, a pytree matching the parameters, or ``f(path, param) -> σ``
      (``ndk_flax.nn.prior_std_tree(model)`` gives the tree for a model built by ``ndk_flax.nn``).
    key: int seed or PRNG key (may be traced: ``jax.vmap`` of the construction + ``init`` over keys builds
      independent ensemble members).
    noise: law of ξ, ``'gaussian'`` (default) or ``'rademacher'`` (see the module docstring).

  Returns:
    ``optax.chain(add_prior_decay, optax.scale_by_learning_rate, add_langevin_noise)``. Pass the parameters to
    ``update``: ``updates, state = tx.update(grads, state, params)``; then ``optax.apply_updates(params, updates)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> params = {'w': jnp.array([1.0, -2.0])}
    >>> tx = langevin(0.1, 0.0, 1.0, key=0)  # T = 0: plain gradient descent θ ← θ − η∇E
    >>> updates, state = tx.update({'w': jnp.array([1.0, 1.0])}, tx.init(params), params)
    >>> [round(float(v), 3) for v in optax.apply_updates(params, updates)['w']]
    [0.9, -2.1]
    >>> tx = langevin(1.0, 1.0, 0.5, key=0)  # ηT/σ² = 4 ≥ 2: the prior decay diverges
    >>> tx.init(params)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: learning_rate 1 is unstable for the prior decay: ...

  References:
    Welling & Teh, *Bayesian Learning via Stochastic Gradient Langevin Dynamics*, ICML 2011.
    Avidan, Li & Sompolinsky, *Connecting NTK and NNGP: A Unified Theoretical Framework for Neural Network
    Learning Dynamics in the Kernel Regime*, arXiv:2309.04522.
  """
  _check_learning_rate(learning_rate)
  chain = optax.chain(
    add_prior_decay(temperature, prior_std),
    optax.scale_by_learning_rate(learning_rate),
    add_langevin_noise(learning_rate, temperature, key, noise=noise),
  )

  def init_fn(params):
    state = chain.init(params)
    if not callable(learning_rate) and _is_concrete(learning_rate) and _is_concrete(temperature):
      _check_decay_stability(float(learning_rate), float(temperature), resolve_prior_std(prior_std, params))
    return state

  return optax.GradientTransformation(init_fn, chain.update)


def _check_decay_stability(learning_rate: float, temperature: float, stds: Any) -> None:
  """The prior decay alone maps θ ↦ (1 − ηλ)θ: it diverges for ηλ ≥ 2 (λ = T/σ²)."""
  concrete = [np.asarray(s) for s in jax.tree.leaves(stds) if _is_concrete(s)]
  if not concrete:
    return
  sigma_min = min(float(np.min(s)) for s in concrete)
  rate = learning_rate * temperature / sigma_min**2
  if rate >= 2:
    raise ValueError(
      f'learning_rate {learning_rate:g} is unstable for the prior decay: η T/σ² = {rate:.3g} >= 2 for the '
      f'smallest prior std σ = {sigma_min:g} at T = {temperature:g} (θ ↦ (1 − ηT/σ²)θ diverges). Use '
      f'learning_rate < {2 * sigma_min**2 / temperature:.3g}, ideally much smaller so that the discrete chain '
      'follows the continuous dynamics.'
    )
