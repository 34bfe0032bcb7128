"""Ensembles of finite-width networks trained with full-batch Langevin dynamics: the one training engine
(docs/theory.md §1, §4).

:func:`train_ensemble` trains M independent members of the Flax model of an ``ndk_flax.stax`` network
(``ndk_flax.nn.from_stax``) with ``ndk_flax.optax.langevin`` on the summed loss E = ½ Σ_μ ‖f(x_μ) − y_μ‖², and records
their outputs at requested continuous times t = η · steps. :func:`drift_ensemble` continues such a run with some
parameters frozen (e.g. the readout, :func:`readout_filter`) while the others drift as free Ornstein–Uhlenbeck
processes, sampled exactly (the frozen-readout study of ``ndk_flax.drift``).

Both run on the same engine: :func:`build_program` (the jitted, ``jax.vmap``-ed member programs, with an NNX filter
of the trainable parameters) and one record loop, which shards the members over all devices along the member axis
(``jax.sharding``), stops at the first non-finite loss and names the parameters and members that went bad, and
shows progress by steps. :func:`check_learning_rate` is the stability rule η·λ_max(Θ0) < bound shared with the CLI.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ndk_flax import _validation as V
from ndk_flax import nn, ou, resources
from ndk_flax._progress import progress_bar
from ndk_flax.optax import langevin

__all__ = [
  'STABLE_ETA_LAMBDA',
  'EnsembleProgram',
  'EnsembleRecord',
  'build_program',
  'check_learning_rate',
  'drift_ensemble',
  'ntk_lambda_max',
  'readout_filter',
  'record_steps',
  'train_ensemble',
]

STABLE_ETA_LAMBDA = 1.0
"""Largest η λ_max(Θ0) accepted: gradient descent diverges at 2; the discretisation error of the fastest mode is
O(η λ_max / 2), so beyond 1 the ensemble could not be compared with the continuous-time theory anyway."""

PRNG_IMPLS = ('threefry2x32', 'rbg', 'unsafe_rbg')
"""JAX PRNG implementations accepted for the members' noise streams."""

SEGMENT_STEPS = 1000
"""Most Langevin steps run by one compiled call: progress, the NaN stop and Ctrl-C act at least this often."""


class EnsembleRecord(NamedTuple):
  """Outputs of an ensemble along training, with the inputs they were recorded on.

  Attributes:
    times: (n_t,) the recorded continuous times t = η · steps.
    train: (M, n_t, P, out) member outputs f(x_train, t).
    test: (M, n_t, n_test, out) member outputs f(x_test, t), or None without ``x_test``.
    hidden: None, or (with ``record_hidden``) a tuple with one array per hidden representation (the inputs of the
      parametric layers after the first, see ``ndk_flax.nn.StaxModel``), each (M, n_t, P + n_test, ...) on the
      training inputs followed by the test inputs.
    params: None, or (with ``record_params``) the member parameters θ_m(t) as an ``nnx.State`` of NumPy arrays
      (M, n_t, *shape) with the structure of ``nnx.state(model, nnx.Param)`` (for
      ``ndk_flax.validate.empirical_ndk``).
    x_train: (P, ...) the training inputs (NumPy, in the training dtype), or None for a record built by hand.
    x_test: (n_test, ...) the test inputs, or None.

  Examples:
    >>> import numpy as np
    >>> rec = EnsembleRecord(np.array([0.0]), np.zeros((2, 1, 3, 1)), None, None)
    >>> rec.train.shape, rec.x_train is None
    ((2, 1, 3, 1), True)
  """

  times: np.ndarray
  train: np.ndarray
  test: Optional[np.ndarray]
  hidden: Optional[tuple]
  params: Optional[Any] = None
  x_train: Optional[np.ndarray] = None
  x_test: Optional[np.ndarray] = None


def record_steps(record_times: Any, learning_rate: float, *, rtol: float = 1e-6) -> np.ndarray:
  """Step counts k = t/η of the record times; each t must be a multiple of η (relative tolerance ``rtol``).

  Raises:
    ValueError: if the times are not a non-empty, strictly increasing 1-D array of finite values ≥ 0, or a time is
      not a multiple of the learning rate (the record would fall between two steps).

  Examples:
    >>> record_steps([0.0, 0.3, 1.0], 0.1)
    array([ 0,  3, 10])
  """
  t = np.asarray(record_times, dtype=np.float64)
  if t.ndim == 0:
    t = t[None]
  if t.ndim != 1 or t.size == 0:
    raise ValueError(f'record_times must be a non-empty 1-D array of times, got shape {t.shape}')
  if not np.all(np.isfinite(t)) or np.any(t < 0):
    raise ValueError(f'record_times must be finite and >= 0, got {t}')
  if np.any(np.diff(t) <= 0):
    raise ValueError(f'record_times must be strictly increasing, got {t}')
  steps = t / learning_rate
  rounded = np.round(steps)
  bad = np.abs(steps - rounded) > rtol * np.maximum(1.0, steps)
  if np.any(bad):
    raise ValueError(
      f'record_times must be multiples of the learning rate η = {learning_rate} (t = η · steps); '
      f'{t[bad]} are not. Use e.g. learning_rate * np.round(t / learning_rate)'
    )
  return rounded.astype(np.int64)


# ----------------------------------------------------------------------------------------------------------
# Stability of the gradient step.


def ntk_lambda_max(layer, x_train: Any, temperature: float) -> float:
  """λ_max(Θ0): the largest eigenvalue of the infinite-width NTK Θ0 = R(0, 0, X, X) on the training inputs
  (docs/theory.md §5), the fastest relaxation rate of the gradient step on E = ½ Σ ‖f − y‖².

  Examples:
    >>> import numpy as np
    >>> from ndk_flax import stax
    >>> x = np.eye(2)
    >>> round(ntk_lambda_max(stax.Dense(1, W_std=1.0), x, 0.0), 6)  # Θ0 = x xᵀ / d for a linear layer
    0.5
  """
  x = V.batched_array('x_train', x_train)
  theta0 = np.asarray(layer.ndk_fn(x, x, 0.0, 0.0, temperature=temperature).ndk, dtype=np.float64)
  if not np.all(np.isfinite(theta0)):
    raise FloatingPointError('the NTK Θ0 = R(0, 0, X, X) on x_train is not finite: cannot bound the learning rate')
  return float(np.linalg.eigvalsh(theta0)[-1])


def check_learning_rate(
  learning_rate: Union[float, Callable], lam_max: float, *, n_steps: int = 1, bound: float = STABLE_ETA_LAMBDA
) -> None:
  """Refuse an unstable or negative step: η_k ≥ 0 and η_k · λ_max(Θ0) < ``bound`` for every step k < ``n_steps``.

  The gradient step on the quadratic modes of the loss multiplies mode λ by (1 − ηλ): it diverges for ηλ ≥ 2, and
  the discrete chain follows the continuous dynamics only for ηλ ≪ 1 (default bound :data:`STABLE_ETA_LAMBDA`).

  Args:
    learning_rate: a constant η > 0 or an Optax schedule k ↦ η_k (evaluated at k = 0, …, n_steps − 1).
    lam_max: λ_max(Θ0) (:func:`ntk_lambda_max`).
    n_steps: number of steps a schedule is checked over.
    bound: the largest η λ_max accepted (``math.inf`` checks only the sign).

  Raises:
    ValueError: naming η (and the step k for a schedule), λ_max(Θ0), η λ_max and the bound.

  Examples:
    >>> check_learning_rate(0.1, 5.0)
    >>> check_learning_rate(0.3, 5.0)
    Traceback (most recent call last):
    ...
    ValueError: learning_rate η = 0.3 is unstable: η λ_max(Θ0) = 1.5 >= 1 (λ_max(Θ0) = 5); use learning_rate < 0.2
  """
  lam_max = V.positive('lam_max', lam_max)
  if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
    raise ValueError(f'n_steps must be a positive int, got {n_steps!r}')
  if callable(learning_rate):
    etas = np.asarray(jax.vmap(learning_rate)(jnp.arange(int(n_steps))), dtype=np.float64).reshape(-1)
    where = ' at step {k}'
  else:
    etas = np.array([V.positive('learning_rate', learning_rate)])
    where = ''
  bad = np.flatnonzero(~np.isfinite(etas) | (etas < 0))
  if bad.size:
    k = int(bad[0])
    raise ValueError(f'learning_rate schedule returns η = {etas[k]:g} at step {k}: η must be finite and >= 0')
  k = int(np.argmax(etas))
  if etas[k] * lam_max >= bound:
    raise ValueError(
      f'learning_rate η = {etas[k]:g}{where.format(k=k)} is unstable: η λ_max(Θ0) = {etas[k] * lam_max:.3g} >= '
      f'{bound:g} (λ_max(Θ0) = {lam_max:.4g}); use learning_rate < {bound / lam_max:.3g}'
    )


# ----------------------------------------------------------------------------------------------------------
# The engine: member programs, member keys and sharding, the record loop.


def _member_mesh(n_members: int) -> tuple[NamedSharding, int]:
  """1-D mesh over all devices; returns the member-axis sharding and the padded member count."""
  devices = np.array(jax.devices())
  n_padded = -(-n_members // devices.size) * devices.size
  return NamedSharding(Mesh(devices, ('members',)), PartitionSpec('members')), n_padded


def _path_names(path) -> tuple:
  """A ``jax.tree_util`` key path as the tuple of names NNX uses for the same parameter."""
  return tuple(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k))) for k in path)


def readout_filter(model: nnx.Module) -> Callable[[tuple, Any], bool]:
  """The NNX filter (path, value) -> bool of the readout's parameters: those of the last parametric module of
  ``model`` in NNX's module order (for a ``stax.serial`` network, its last Dense or Conv layer).

  Examples:
    >>> from flax import nnx
    >>> from ndk_flax import nn, stax
    >>> model = nn.from_stax(stax.serial(stax.Dense(4), stax.Relu(), stax.Dense(1)), input_shape=(2, 3),
    ...                      rngs=nnx.Rngs(0))
    >>> is_readout = readout_filter(model)
    >>> [p[-2:] for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)) if is_readout(p, None)]
    [(2, 'W')]
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f'model must be an nnx.Module, got {type(model).__name__}')
  owners = [
    path for path, module in nnx.iter_modules(model) if any(isinstance(v, nnx.Param) for v in vars(module).values())
  ]
  if not owners:
    raise ValueError('model has no parametric module: it has no readout')
  prefix = owners[-1]
  return lambda path, _: tuple(path[: len(prefix)]) == tuple(prefix)


class EnsembleProgram(NamedTuple):
  """The jitted pieces of a vmapped Langevin ensemble (built by :func:`build_program`).

  Attributes:
    init: keys (M, key) -> (params, opt_state), member-stacked; member key k gives θ(0) from ``split(k)[0]`` and
      the noise stream from ``split(k)[1]``.
    advance: (params, opt_state, start, n_steps) -> (params, opt_state, bad): n_steps Langevin steps of every
      member, stopping early at a non-finite loss; ``bad`` is −1 or the step count (from ``start``) after which the
      loss of some member was NaN/inf. Parameters outside the trainable filter are not updated.
    observe: params -> member outputs on ``x_observe`` (with ``record_hidden``: (outputs, hidden tuple)).
    step: (params, opt_state) -> (params, opt_state, loss) of one member (unbatched).
    drift: (params, keys (M, key), Δ) -> params: every trainable parameter moved by the free Ornstein–Uhlenbeck
      process dθ = −(T/σ²) θ dt + √(2T) dB over time Δ, sampled exactly (no gradient, no step error), the others
      kept: θ ← e^{−λΔ} θ + σ √(1 − e^{−2λΔ}) ξ, λ = T/σ².
    trainable: the parameter mask (a pytree of bools with the structure of the parameters).

  Examples:
    >>> import math
    >>> import jax, jax.numpy as jnp
    >>> from ndk_flax import stax
    >>> x = jnp.ones((2, 3)); y = jnp.zeros((2, 1))
    >>> prog = build_program(stax.Dense(1, W_std=1.0, W_prior_std=2.0), x, y, temperature=0.4, learning_rate=0.01,
    ...                      width=None, x_observe=x, record_hidden=False, dtype=jnp.float32)
    >>> params, state = prog.init(jax.random.split(jax.random.PRNGKey(0), 4))  # M = 4 members
    >>> jax.tree.leaves(prog.trainable), prog.observe(params).shape
    ([True], (4, 2, 1))

    ``step`` of one member returns the summed loss E = ½ Σ_μ (f(x_μ) − y_μ)² at its input:

    >>> first = lambda tree: jax.tree.map(lambda leaf: leaf[0], tree)
    >>> _, _, loss = jax.jit(prog.step)(first(params), first(state))
    >>> bool(jnp.isclose(loss, 0.5 * jnp.sum(prog.observe(params)[0] ** 2)))
    True

    ``drift`` is the exact OU transition θ ← e^{−λΔ} θ + σ √(1 − e^{−2λΔ}) ξ, linear in θ for fixed noise, so
    started from ±θ with the same keys it moves θ by e^{−λΔ} (here λ = T/σ² = 0.4/2² = 0.1, Δ = 2):

    >>> keys = jax.random.split(jax.random.PRNGKey(1), 4)
    >>> up = prog.drift(params, keys, 2.0)
    >>> down = prog.drift(jax.tree.map(jnp.negative, params), keys, 2.0)
    >>> half = jax.tree.map(lambda a, b: (a - b) / 2, up, down)
    >>> all(jax.tree.leaves(jax.tree.map(lambda h, p: jnp.allclose(h, math.exp(-0.2) * p, atol=1e-6), half, params)))
    True
  """

  init: Callable
  advance: Callable
  observe: Callable
  step: Callable
  drift: Callable
  trainable: Any


def build_program(
  layer,
  x_train: jax.Array,
  y_train: jax.Array,
  *,
  temperature: float,
  learning_rate: Union[float, Callable],
  width: Optional[int],
  x_observe: jax.Array,
  record_hidden: bool,
  dtype: Any,
  noise: str = 'gaussian',
  trainable: Any = nnx.Param,
  prng_impl: str = 'threefry2x32',
  optimizer: Optional[Callable[[jax.Array], optax.GradientTransformation]] = None,
) -> EnsembleProgram:
  """Jitted init / multi-step / observation / exact-drift functions of an ensemble (docs/theory.md §1).

  Inputs are validated by the caller (:func:`train_ensemble`); ``trainable`` is an NNX filter of the parameters
  that the Langevin steps and the drift move (default: all). ``prng_impl`` is the JAX PRNG implementation of the
  members' noise streams (``'threefry2x32'``, ``'rbg'`` or ``'unsafe_rbg'``; see ``benchmarks/train.py``).
  ``optimizer`` (key -> Optax transformation) replaces ``ndk_flax.optax.langevin`` with T, η, the prior and the
  noise law given here (e.g. ``optax.sgd`` for a baseline through the same loop).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from ndk_flax import stax
    >>> x = jnp.ones((2, 3)); y = jnp.zeros((2, 1))
    >>> prog = build_program(stax.serial(stax.Dense(4), stax.Erf(), stax.Dense(1)), x, y, temperature=0.1,
    ...                      learning_rate=0.01, width=None, x_observe=x, record_hidden=False, dtype=jnp.float32)
    >>> params, state = prog.init(jax.random.split(jax.random.PRNGKey(0), 3))
    >>> params, state, bad = prog.advance(params, state, jnp.asarray(0), jnp.asarray(5))
    >>> prog.observe(params).shape, int(bad)
    ((3, 2, 1), -1)
  """
  template = nn.from_stax(layer, width, input_shape=x_train.shape, rngs=nnx.Rngs(0), dtype=dtype)
  out_shape = tuple(template(x_train).shape)
  if out_shape != tuple(y_train.shape):
    raise ValueError(f"y_train must have the network's output shape {out_shape} for x_train, got {y_train.shape}")
  prior = nn.prior_std_tree(template)
  if prng_impl not in PRNG_IMPLS:
    raise ValueError(f'prng_impl must be one of {PRNG_IMPLS}, got {prng_impl!r}')

  def member_optimizer(key):
    if optimizer is not None:
      return optimizer(key)
    return langevin(learning_rate, temperature, prior, key=key, noise=noise)

  def noise_stream(key):
    """A typed key of ``prng_impl`` seeded by the bits of a threefry key."""
    if prng_impl == 'threefry2x32':
      return key
    shape = jax.random.key_data(jax.random.key(0, impl=prng_impl)).shape
    return jax.random.wrap_key_data(jax.random.bits(key, shape, jnp.uint32), impl=prng_impl)

  # Validates T, η and the noise law; update() depends on the key only through the state.
  tx = member_optimizer(noise_stream(jax.random.PRNGKey(0)))
  graphdef, template_params = nnx.split(template, nnx.Param)
  is_trainable = nnx.filterlib.to_predicate(trainable)
  kept = {path for path, v in nnx.to_flat_state(template_params) if is_trainable(path, v)}
  mask = jax.tree_util.tree_map_with_path(lambda p, _: _path_names(p) in kept, nnx.as_pure(template_params))
  if not any(jax.tree.leaves(mask)):
    raise ValueError('the trainable filter selects no parameter of the model')

  def init_member(key):
    init_key, noise_key = jax.random.split(key)
    model = nn.from_stax(layer, width, input_shape=x_train.shape, rngs=nnx.Rngs(init_key), dtype=dtype)
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    return params, member_optimizer(noise_stream(noise_key)).init(params)

  def loss(params):
    residual = nnx.merge(graphdef, params)(x_train) - y_train
    return 0.5 * jnp.sum(residual**2)

  def member_step(params, opt_state):
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u, keep: u if keep else jnp.zeros_like(u), updates, mask)
    return optax.apply_updates(params, updates), opt_state, value

  batched_step = jax.vmap(member_step)

  @jax.jit
  def advance(params, opt_state, start, n_steps):
    def cond(carry):
      i, _, _, bad = carry
      return (i < n_steps) & (bad < 0)

    def body(carry):
      i, p, s, _ = carry
      new_p, new_s, value = batched_step(p, s)
      return i + 1, new_p, new_s, jnp.where(jnp.all(jnp.isfinite(value)), -1, start + i)

    init = (jnp.zeros_like(n_steps), params, opt_state, jnp.full_like(start, -1))
    _, params, opt_state, bad = jax.lax.while_loop(cond, body, init)
    return params, opt_state, bad

  @jax.jit
  def observe(params):
    return jax.vmap(lambda p: nnx.merge(graphdef, p)(x_observe, return_hidden=record_hidden))(params)

  def member_drift(params, key, delta):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    moved = []
    for p, k, sigma, keep in zip(leaves, keys, jax.tree.leaves(prior), jax.tree.leaves(mask)):
      if keep:
        xi = jax.random.normal(k, p.shape, p.dtype)
        sigma = jnp.asarray(sigma, p.dtype)
        p = ou.transition(p, jnp.asarray(delta, p.dtype), xi, prior_std=sigma, temperature=temperature).astype(p.dtype)
      moved.append(p)
    return treedef.unflatten(moved)

  drift = jax.jit(jax.vmap(member_drift, in_axes=(0, 0, None)))
  return EnsembleProgram(jax.vmap(init_member), advance, observe, member_step, drift, mask)


def _nonfinite_where(params: Any, n_members: int) -> str:
  """The parameter leaves (NNX paths) and members with NaN/inf values, or '' if all are finite."""
  found = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    bad = ~np.all(np.isfinite(np.asarray(leaf)[:n_members]).reshape(n_members, -1), axis=1)
    if bad.any():
      name = '/'.join(str(k) for k in _path_names(path))
      found.append(f'{name} (members {np.flatnonzero(bad)[:8].tolist()})')
  return '; '.join(found)


def _diverged(what: str, step: int, learning_rate: float, params: Any, n_members: int) -> FloatingPointError:
  where = _nonfinite_where(params, n_members)
  where = f' Non-finite parameters: {where}.' if where else ' The parameters are still finite (the loss overflowed).'
  return FloatingPointError(
    f'Langevin training diverged: {what} after step {step} (t = {step * learning_rate:g}).{where} '
    f'The gradient step is unstable when η exceeds ~2/λ_max of the loss Hessian (the largest NTK eigenvalue on the '
    f'training set); use a smaller learning_rate than {learning_rate:g}.'
  )


class _Members(NamedTuple):
  """Member keys (padded to a multiple of the device count, sharded over the devices)."""

  keys: jax.Array
  sharding: NamedSharding
  n_members: int


def _members(seed: int, n_members: int, salt: Optional[int] = None) -> _Members:
  """Member m's key is ``fold_in(PRNGKey(seed), m)`` (``salt``: folded in once more, for a further stream)."""
  sharding, n_padded = _member_mesh(n_members)
  root = jax.random.PRNGKey(seed)
  keys = jax.vmap(lambda m: jax.random.fold_in(root, m))(jnp.arange(n_padded))
  if salt is not None:
    keys = jax.vmap(lambda k: jax.random.fold_in(k, salt))(keys)
  return _Members(jax.device_put(keys, sharding), sharding, n_members)


def _initial_state(program: EnsembleProgram, members: _Members):
  return jax.jit(program.init, out_shardings=members.sharding)(members.keys)


def _train(
  program: EnsembleProgram,
  members: _Members,
  steps: np.ndarray,
  learning_rate: float,
  progress: bool,
  on_record,
  *,
  state=None,
  first: int = 0,
):
  """The record loop: Langevin steps up to every record step (segments of ≤ SEGMENT_STEPS), then
  ``on_record(done, params, opt_state)``. ``state``/``first``: resume from (params, opt_state) taken at record point
  ``first − 1``. Raises FloatingPointError naming the step, parameters and members at a NaN/inf loss.
  Returns the final (params, opt_state)."""
  params, opt_state = _initial_state(program, members) if state is None else state
  done = int(steps[first - 1]) if first > 0 else 0
  with progress_bar(int(steps[-1]), 'Langevin ensemble', 'step', progress) as bar:
    bar.update(done)
    for target in steps[first:]:
      while done < target:
        n = min(int(target) - done, SEGMENT_STEPS)
        params, opt_state, bad = program.advance(params, opt_state, jnp.asarray(done), jnp.asarray(n))
        bad = int(bad)
        if bad >= 0:
          raise _diverged('the loss became NaN/inf', bad, learning_rate, params, members.n_members)
        done += n
        bar.update(n)
      on_record(done, params, opt_state)
  return params, opt_state


class _Checkpoints:
  """Orbax checkpoints of one ``train_ensemble`` run at its record points: the member state (params, opt_state)
  and the outputs recorded so far. ``run.json`` holds the run's fingerprint; a directory of another run is refused.
  """

  def __init__(self, directory: str, fingerprint: dict):
    import orbax.checkpoint as ocp

    self._ocp = ocp
    path = os.path.abspath(os.fspath(directory))
    os.makedirs(path, exist_ok=True)
    meta = os.path.join(path, 'run.json')
    if os.path.exists(meta):
      with open(meta) as fh:
        stored = json.load(fh)
      if stored != fingerprint:
        changed = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
        raise ValueError(
          f'checkpoint_dir {directory!r} holds checkpoints of another run (different {", ".join(changed)}); '
          'use a new directory or the same arguments'
        )
    else:
      tmp = meta + '.tmp'
      with open(tmp, 'w') as fh:
        json.dump(fingerprint, fh)
      os.replace(tmp, meta)
    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(os.path.join(path, 'records'), options=options)

  def restore(self, state, output_shape: tuple, dtype):
    """(records done, state, outputs (k, *output_shape)) of the latest checkpoint, or None."""
    k = self._manager.latest_step()
    if k is None:
      return None
    leaves, treedef = jax.tree.flatten(state)
    target = {
      'state': {str(i): jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) for i, x in enumerate(leaves)},
      'outputs': np.zeros((k,) + tuple(output_shape), dtype),
    }
    restored = self._manager.restore(k, args=self._ocp.args.StandardRestore(target))
    state = treedef.unflatten([restored['state'][str(i)] for i in range(len(leaves))])
    return k, state, np.asarray(restored['outputs'])

  def save(self, k: int, state, outputs: np.ndarray) -> None:
    leaves = jax.tree.leaves(state)
    item = {'state': {str(i): x for i, x in enumerate(leaves)}, 'outputs': outputs}
    self._manager.save(k, args=self._ocp.args.StandardSave(item))
    self._manager.wait_until_finished()


def _fingerprint(**values) -> dict:
  """JSON-able description of a run: scalars as given, arrays by shape, dtype and SHA-256 of their bytes."""

  def describe(v):
    if v is None or isinstance(v, (bool, int, float, str)):
      return v
    a = np.ascontiguousarray(np.asarray(v))
    return f'{a.dtype}{list(a.shape)}:{hashlib.sha256(a.tobytes()).hexdigest()[:16]}'

  return {k: describe(v) for k, v in values.items()}


def _check_common(n_members, seed, learning_rate, dtype):
  if isinstance(n_members, bool) or not isinstance(n_members, (int, np.integer)) or n_members < 1:
    raise ValueError(f'n_members must be a positive integer, got {n_members!r}')
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise TypeError(f'seed must be an int, got {seed!r}')
  if (
    callable(learning_rate)
    or isinstance(learning_rate, bool)
    or not isinstance(learning_rate, (int, float, np.floating, np.integer))
  ):
    raise TypeError(
      f'learning_rate must be a constant positive float here (record times are t = η · steps), got {learning_rate!r}'
    )
  learning_rate = float(learning_rate)
  if not math.isfinite(learning_rate) or learning_rate <= 0:
    raise ValueError(f'learning_rate must be finite and > 0, got {learning_rate}')
  dtype = V.langevin_dtype('dtype', jnp.result_type(float) if dtype is None else dtype)
  return learning_rate, dtype


def _check_data(x_train, y_train, x_test, dtype):
  x_train = V.batched_array('x_train', x_train, 2).astype(dtype)
  y_train = V.batched_array('y_train', y_train, 2).astype(dtype)
  if y_train.shape[0] != x_train.shape[0]:
    raise ValueError(f'y_train has {y_train.shape[0]} rows but x_train has {x_train.shape[0]} points')
  if x_test is not None:
    x_test = V.batched_array('x_test', x_test, 2).astype(dtype)
    if x_test.shape[1:] != x_train.shape[1:]:
      raise ValueError(f'x_test points have shape {x_test.shape[1:]}, x_train points {x_train.shape[1:]}')
  return x_train, y_train, x_test


def _require_memory(
  layer, width, x_train, x_test, n_members: int, n_record: int, record_hidden: bool, record_params: bool, dtype
) -> None:
  """MemoryError, before anything is allocated, when the ensemble cannot fit (``ndk_flax.resources.ensemble_bytes``
  of the model's abstract shapes: ``nnx.eval_shape`` allocates nothing)."""
  model = nnx.eval_shape(lambda: nn.from_stax(layer, width, input_shape=x_train.shape, rngs=nnx.Rngs(0), dtype=dtype))
  graphdef, params = nnx.split(model, nnx.Param)
  n_params = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
  n_observed = x_train.shape[0] + (0 if x_test is None else x_test.shape[0])
  x = jax.ShapeDtypeStruct((n_observed,) + x_train.shape[1:], dtype)
  out, hidden = jax.eval_shape(lambda p, x: nnx.merge(graphdef, p)(x, return_hidden=True), params, x)
  hidden_per_point = sum(math.prod(h.shape[1:]) for h in hidden)
  need = resources.ensemble_bytes(
    n_members,
    n_params,
    n_observed,
    hidden_per_point,
    n_record,
    n_out=math.prod(out.shape[1:]),
    record_hidden=record_hidden,
    record_params=record_params,
    itemsize=dtype.itemsize,
  )
  extras = ', '.join(n for n, on in (('record_params', record_params), ('record_hidden', record_hidden)) if on)
  resources.require_ensemble_memory(
    f'train_ensemble with {n_members} members of {n_params} parameters, {n_observed} points and {n_record} record '
    f'times ({extras or "outputs only"})',
    need,
    remedy='lower n_members, the width or the number of record_times'
    + (f', or drop {extras} (or record fewer times with it)' if extras else ''),
  )


def train_ensemble(
  layer,
  x_train: Any,
  y_train: Any,
  *,
  temperature: float,
  learning_rate: float,
  record_times: Sequence[float],
  n_members: int,
  width: Optional[int] = None,
  x_test: Any = None,
  seed: int = 0,
  record_hidden: bool = False,
  record_params: bool = False,
  progress: bool = True,
  dtype: Any = None,
  noise: str = 'gaussian',
  trainable: Any = nnx.Param,
  stability_bound: float = STABLE_ETA_LAMBDA,
  checkpoint_dir: Optional[str] = None,
) -> EnsembleRecord:
  """Train M members with full-batch Langevin dynamics and record their outputs f_m(x, t) (docs/theory.md §1).

  Each member m has θ_m(0) ~ N(0, σ0²) (raw parameterisation, ``ndk_flax.nn.from_stax(layer, width)``) and
  follows θ ← θ − η(∇E + (T/σ²)θ) + √(2ηT)ξ with E(θ) = ½ Σ_μ ‖f(x_μ; θ) − y_μ‖² and its own noise stream.

  Args:
    layer: an ``ndk_flax.stax`` network (its ``spec`` fixes the architecture and σ0, σ per layer).
    x_train: (P, ...) training inputs. y_train: (P, out) targets, ``out`` the network's output size.
    temperature: T ≥ 0. learning_rate: constant step η > 0 (continuous time t = η · steps) with
      η λ_max(Θ0) < ``stability_bound`` (:func:`check_learning_rate`).
    record_times: strictly increasing times ≥ 0, multiples of η (see :func:`record_steps`); 0 records θ(0).
    n_members: M ≥ 1. Member m's initialisation and noise come from ``fold_in(PRNGKey(seed), m)``, so results do not
      depend on the number of devices (M is padded to a multiple of it; padding members are dropped).
    width: hidden width (see ``ndk_flax.nn.from_stax``); None keeps the layer sizes of ``layer``.
    x_test: optional (n_test, ...) inputs at which outputs are also recorded.
    seed: int seed.
    record_hidden: also record the hidden representations (memory M · n_t · (P + n_test) · width per layer).
    record_params: also record every member's parameters at the record times (memory M · n_t · parameters), for
      the empirical NDK of ``ndk_flax.validate.empirical_ndk``.
    progress: show a tqdm progress bar over the steps (only when stderr is a terminal).
    dtype: parameter and computation dtype, float32 or float64 (default: JAX's default float; ``jnp.float32`` is
      several times faster on CPU). bfloat16 and float16 are refused: their Langevin chains have the wrong
      stationary law.
    noise: law of ξ, ``'gaussian'`` (default) or ``'rademacher'`` (±1: same mean, covariance and third moment,
      weak order 1 like the Gaussian scheme, about 10× cheaper to draw on CPU; see :mod:`ndk_flax.optax`).
    trainable: NNX filter of the parameters that are trained (default all); the others keep their initial values.
    stability_bound: the largest η λ_max(Θ0) accepted (default :data:`STABLE_ETA_LAMBDA`; ``math.inf`` allows any
      η, e.g. to study the divergence of the discrete chain).
    checkpoint_dir: a directory for Orbax checkpoints, written at every record point (the member state and the
      outputs so far; the last two are kept). Calling again with the same arguments and directory, e.g. after the
      process was killed, resumes from the latest checkpoint and gives bit-identical records. A directory written
      by a run with other arguments (or another device count) is refused. Not with ``record_hidden`` or
      ``record_params``.

  Returns:
    :class:`EnsembleRecord` (NumPy arrays) with the inputs ``x_train`` and ``x_test``.

  Raises:
    ValueError: for an unstable learning rate (with η, λ_max(Θ0) and the bound) and other bad input.
    MemoryError: before anything is allocated, when the parameters, their step copies, the activations and the
      records (``ndk_flax.resources.ensemble_bytes``) cannot fit; it names the bytes needed, those available and
      what to lower.
    FloatingPointError: if the loss or the outputs become NaN/inf; the message names the first bad step, the
      non-finite parameters and members, and suggests a smaller learning rate.

  Examples:
    >>> import numpy as np
    >>> from ndk_flax import stax
    >>> x = np.linspace(-1, 1, 6).reshape(3, 2); y = x[:, :1]
    >>> rec = train_ensemble(stax.serial(stax.Dense(8), stax.Erf(), stax.Dense(1)), x, y, temperature=0.01,
    ...                      learning_rate=0.05, record_times=[0.0, 1.0], n_members=2, progress=False)
    >>> rec.train.shape, rec.times.tolist()
    ((2, 2, 3, 1), [0.0, 1.0])
  """
  learning_rate, dtype = _check_common(n_members, seed, learning_rate, dtype)
  x_given = V.batched_array('x_train', x_train, 2)  # λ_max(Θ0) in the inputs' own precision, as the CLI computes it
  x_train, y_train, x_test = _check_data(x_train, y_train, x_test, dtype)
  steps = record_steps(record_times, learning_rate)
  _require_memory(layer, width, x_train, x_test, n_members, steps.size, record_hidden, record_params, dtype)
  check_learning_rate(
    learning_rate, ntk_lambda_max(layer, x_given, temperature), n_steps=max(1, int(steps[-1])), bound=stability_bound
  )
  x_all = x_train if x_test is None else jnp.concatenate([x_train, x_test])
  n_train = x_train.shape[0]
  program = build_program(
    layer,
    x_train,
    y_train,
    temperature=temperature,
    learning_rate=learning_rate,
    width=width,
    x_observe=x_all,
    record_hidden=record_hidden,
    dtype=dtype,
    noise=noise,
    trainable=trainable,
  )
  outputs, hiddens, snapshots = [], [], []
  members = _members(seed, n_members)
  state, first, checkpoints = None, 0, None
  if checkpoint_dir is not None:
    if record_hidden or record_params:
      raise ValueError(
        'checkpoint_dir keeps the outputs only: it cannot be combined with record_hidden or record_params'
      )
    checkpoints = _Checkpoints(
      checkpoint_dir,
      _fingerprint(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        temperature=float(temperature),
        learning_rate=learning_rate,
        steps=steps,
        n_members=int(n_members),
        width=None if width is None else int(width),
        seed=int(seed),
        dtype=dtype.name,
        noise=noise,
        devices=jax.device_count(),
      ),
    )
    state = _initial_state(program, members)
    out_shape = jax.eval_shape(program.observe, state[0]).shape
    resumed = checkpoints.restore(state, (n_members,) + tuple(out_shape[1:]), dtype)
    if resumed is not None:
      first, state, done_outputs = resumed
      outputs = list(done_outputs)

  def on_record(done, params, opt_state):
    observed = program.observe(params)
    out = np.asarray(observed[0] if record_hidden else observed)[:n_members]
    if not np.all(np.isfinite(out)):
      raise _diverged('the network outputs are NaN/inf', done, learning_rate, params, n_members)
    outputs.append(out)
    if record_hidden:
      hiddens.append(tuple(np.asarray(h)[:n_members] for h in observed[1]))
    if record_params:
      snapshots.append(jax.tree.map(lambda p: np.asarray(p)[:n_members], params))
    if checkpoints is not None:
      checkpoints.save(len(outputs), (params, opt_state), np.stack(outputs))

  _train(program, members, steps, learning_rate, progress, on_record, state=state, first=first)
  train_out = np.stack(outputs, axis=1)
  return EnsembleRecord(
    times=steps * learning_rate,
    train=train_out[:, :, :n_train],
    test=None if x_test is None else train_out[:, :, n_train:],
    hidden=tuple(np.stack(h, axis=1) for h in zip(*hiddens)) if record_hidden else None,
    params=jax.tree.map(lambda *p: np.stack(p, axis=1), *snapshots) if record_params else None,
    x_train=np.asarray(x_train),
    x_test=None if x_test is None else np.asarray(x_test),
  )


def drift_ensemble(
  layer,
  x_train: Any,
  y_train: Any,
  *,
  temperature: float,
  learning_rate: float,
  equilibration_time: float,
  drift_times: Any,
  frozen: Callable[[nnx.Module], Any],
  n_members: int,
  width: Optional[int] = None,
  x_test: Any = None,
  seed: int = 0,
  progress: bool = True,
  dtype: Any = None,
  stability_bound: float = STABLE_ETA_LAMBDA,
) -> EnsembleRecord:
  """Langevin training up to t0, then a drift with some parameters frozen: f_m(x, t0 + Δ) at the drift times Δ.

  Members are trained as by :func:`train_ensemble` for t0 = ``equilibration_time`` (rounded to whole steps of
  η = ``learning_rate``). Then the parameters selected by the NNX filter ``frozen(model)`` keep their values and
  every other parameter drifts under noise and decay only, the free Ornstein–Uhlenbeck process
  dθ = −(T/σ²) θ dt + √(2T) dB, sampled exactly at the drift times (``EnsembleProgram.drift``). Member m's drift
  noise comes from ``fold_in(fold_in(PRNGKey(seed), m), 1)``; results do not depend on the number of devices.

  Args:
    layer, x_train, y_train, temperature, learning_rate, n_members, width, x_test, seed, progress, dtype,
      stability_bound: as for :func:`train_ensemble` (T > 0 here).
    equilibration_time: t0 > 0.
    drift_times: finite, strictly increasing Δ ≥ 0.
    frozen: model -> NNX filter of the parameters kept fixed during the drift, e.g. :func:`readout_filter`.

  Returns:
    :class:`EnsembleRecord` with ``times`` = t0 + Δ and outputs (M, n_Δ, n, out).

  Examples:
    >>> import numpy as np
    >>> from ndk_flax import stax
    >>> x = np.linspace(-1, 1, 6).reshape(3, 2); y = x[:, :1]
    >>> rec = drift_ensemble(stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1)), x, y, temperature=0.1,
    ...                      learning_rate=0.05, equilibration_time=0.5, drift_times=[0.0, 1.0], frozen=readout_filter,
    ...                      n_members=2, progress=False)
    >>> rec.train.shape, rec.times.tolist()
    ((2, 2, 3, 1), [0.5, 1.5])
  """
  learning_rate, dtype = _check_common(n_members, seed, learning_rate, dtype)
  temperature = V.temperature(temperature, allow_zero=False)
  equilibration_time = V.positive('equilibration_time', equilibration_time)
  drift = np.atleast_1d(np.asarray(drift_times, dtype=np.float64))
  if drift.ndim != 1 or drift.size == 0 or not np.all(np.isfinite(drift)) or np.any(drift < 0):
    raise ValueError(f'drift_times must be a non-empty 1-D array of finite times >= 0, got {drift_times!r}')
  if np.any(np.diff(drift) <= 0):
    raise ValueError(f'drift_times must be strictly increasing, got {drift}')
  if not callable(frozen):
    raise TypeError(f'frozen must be a callable model -> NNX filter (e.g. readout_filter), got {frozen!r}')
  x_given = V.batched_array('x_train', x_train, 2)
  x_train, y_train, x_test = _check_data(x_train, y_train, x_test, dtype)
  n_steps = max(1, int(round(equilibration_time / learning_rate)))
  check_learning_rate(learning_rate, ntk_lambda_max(layer, x_given, temperature), bound=stability_bound)
  x_all = x_train if x_test is None else jnp.concatenate([x_train, x_test])
  template = nn.from_stax(layer, width, input_shape=x_train.shape, rngs=nnx.Rngs(0), dtype=dtype)
  kwargs = dict(
    temperature=temperature,
    learning_rate=learning_rate,
    width=width,
    x_observe=x_all,
    record_hidden=False,
    dtype=dtype,
  )
  program = build_program(layer, x_train, y_train, **kwargs)
  drifting = build_program(layer, x_train, y_train, trainable=nnx.Not(frozen(template)), **kwargs)
  params, _ = _train(program, _members(seed, n_members), np.array([n_steps]), learning_rate, progress, lambda *_: None)
  keys = _members(seed, n_members, salt=1).keys
  outputs, previous = [], 0.0
  for i, delta in enumerate(drift):
    step_keys = jax.vmap(lambda k, i=i: jax.random.fold_in(k, i))(keys)
    params = drifting.drift(params, step_keys, jnp.asarray(delta - previous, dtype))
    previous = delta
    out = np.asarray(drifting.observe(params))[:n_members]
    if not np.all(np.isfinite(out)):
      raise _diverged(f'the outputs are NaN/inf at drift time Δ = {delta:g}', n_steps, learning_rate, params, n_members)
    outputs.append(out)
  out = np.stack(outputs, axis=1)
  n = x_train.shape[0]
  return EnsembleRecord(
    times=n_steps * learning_rate + drift,
    train=out[:, :, :n],
    test=None if x_test is None else out[:, :, n:],
    hidden=None,
    x_train=np.asarray(x_train),
    x_test=None if x_test is None else np.asarray(x_test),
  )
