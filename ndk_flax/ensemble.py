"""Ensembles of finite-width networks trained with full-batch Langevin dynamics (THEORY.md §1, §4).

:func:`train_ensemble` trains M independent members of the Flax model of an ``ndk_flax.stax`` network
(``ndk_flax.nn.from_stax``) with ``ndk_flax.optax.langevin`` on the summed loss E = ½ Σ_μ ‖f(x_μ) − y_μ‖², and records
their outputs at requested continuous times t = η · steps. Members are ``jax.vmap``-ed (one batched program, not a
Python loop) and sharded over all devices along the member axis with ``jax.sharding``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from ndk_flax import _validation as V
from ndk_flax import nn
from ndk_flax.optax import langevin

__all__ = ['EnsembleProgram', 'EnsembleRecord', 'build_program', 'record_steps', 'train_ensemble']


class EnsembleRecord(NamedTuple):
  """Outputs of an ensemble along training.

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
  """

  times: np.ndarray
  train: np.ndarray
  test: Optional[np.ndarray]
  hidden: Optional[tuple]
  params: Optional[Any] = None


def record_steps(record_times: Any, learning_rate: float, *, rtol: float = 1e-6) -> np.ndarray:
  """Step counts k = t/η of the record times; each t must be a multiple of η (relative tolerance ``rtol``).

  Raises:
    ValueError: if the times are not a non-empty, strictly increasing 1-D array of finite values ≥ 0, or a time is
      not a multiple of the learning rate (the record would fall between two steps).
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


def _member_mesh(n_members: int) -> tuple[NamedSharding, int]:
  """1-D mesh over all devices; returns the member-axis sharding and the padded member count."""
  devices = np.array(jax.devices())
  n_padded = -(-n_members // devices.size) * devices.size
  return NamedSharding(Mesh(devices, ('members',)), PartitionSpec('members')), n_padded


class EnsembleProgram(NamedTuple):
  """The jitted pieces of a vmapped Langevin ensemble (built by :func:`build_program`).

  Attributes:
    init: keys (M, key) -> (params, opt_state), member-stacked; member key k gives θ(0) from ``split(k)[0]`` and
      the noise stream from ``split(k)[1]``.
    advance: (params, opt_state, start, n_steps) -> (params, opt_state, bad): n_steps Langevin steps of every
      member, stopping early at a non-finite loss; ``bad`` is −1 or the step count (from ``start``) after which the
      loss of some member was NaN/inf.
    observe: params -> member outputs on ``x_observe`` (with ``record_hidden``: (outputs, hidden tuple)).
    step: (params, opt_state) -> (params, opt_state, loss) of one member (unbatched).
  """

  init: Callable
  advance: Callable
  observe: Callable
  step: Callable


def build_program(
  layer,
  x_train: jax.Array,
  y_train: jax.Array,
  *,
  temperature: float,
  learning_rate: float,
  width: Optional[int],
  x_observe: jax.Array,
  record_hidden: bool,
  dtype: Any,
  noise: str = 'gaussian',
) -> EnsembleProgram:
  """Jitted init / multi-step / observation functions of an ensemble (inputs validated by the caller)."""
  template = nn.from_stax(layer, width, input_shape=x_train.shape, rngs=nnx.Rngs(0), dtype=dtype)
  out_shape = tuple(template(x_train).shape)
  if out_shape != tuple(y_train.shape):
    raise ValueError(f"y_train must have the network's output shape {out_shape} for x_train, got {y_train.shape}")
  prior = nn.prior_std_tree(template)
  # Validates T, η and the noise law; update() does not depend on the key.
  tx = langevin(learning_rate, temperature, prior, key=0, noise=noise)
  graphdef, _ = nnx.split(template, nnx.Param)

  def init_member(key):
    init_key, noise_key = jax.random.split(key)
    model = nn.from_stax(layer, width, input_shape=x_train.shape, rngs=nnx.Rngs(init_key), dtype=dtype)
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    return params, langevin(learning_rate, temperature, prior, key=noise_key, noise=noise).init(params)

  def loss(params):
    residual = nnx.merge(graphdef, params)(x_train) - y_train
    return 0.5 * jnp.sum(residual**2)

  def member_step(params, opt_state):
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
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

  return EnsembleProgram(jax.vmap(init_member), advance, observe, member_step)


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
) -> EnsembleRecord:
  """Train M members with full-batch Langevin dynamics and record their outputs (THEORY.md §1).

  Each member m has θ_m(0) ~ N(0, σ0²) (raw parameterisation, ``ndk_flax.nn.from_stax(layer, width)``) and
  follows θ ← θ − η(∇E + (T/σ²)θ) + √(2ηT)ξ with E(θ) = ½ Σ_μ ‖f(x_μ; θ) − y_μ‖² and its own noise stream.

  Args:
    layer: an ``ndk_flax.stax`` network (its ``spec`` fixes the architecture and σ0, σ per layer).
    x_train: (P, ...) training inputs. y_train: (P, out) targets, ``out`` the network's output size.
    temperature: T ≥ 0. learning_rate: constant step η > 0 (continuous time t = η · steps).
    record_times: strictly increasing times ≥ 0, multiples of η (see :func:`record_steps`); 0 records θ(0).
    n_members: M ≥ 1. Member m's initialisation and noise come from ``fold_in(PRNGKey(seed), m)``, so results do not
      depend on the number of devices (M is padded to a multiple of it; padding members are dropped).
    width: hidden width (see ``ndk_flax.nn.from_stax``); None keeps the layer sizes of ``layer``.
    x_test: optional (n_test, ...) inputs at which outputs are also recorded.
    seed: int seed.
    record_hidden: also record the hidden representations (memory M · n_t · (P + n_test) · width per layer).
    record_params: also record every member's parameters at the record times (memory M · n_t · parameters), for
      the empirical NDK of ``ndk_flax.validate.empirical_ndk``.
    progress: show a tqdm progress bar over the record points.
    dtype: parameter and computation dtype (default: JAX's default float; ``jnp.float32`` is several times faster
      on CPU, mostly for drawing the noise).
    noise: law of ξ, ``'gaussian'`` (default) or ``'rademacher'`` (±1: same mean, covariance and third moment,
      weak order 1 like the Gaussian scheme, about 10× cheaper to draw on CPU; see :mod:`ndk_flax.optax`).

  Returns:
    :class:`EnsembleRecord` (NumPy arrays).

  Raises:
    FloatingPointError: if the loss or the outputs become NaN/inf; the message names the first bad step and
      suggests a smaller learning rate.
  """
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
  dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f'dtype must be a floating dtype, got {dtype}')
  x_train = V.batched_array('x_train', x_train, 2).astype(dtype)
  y_train = V.batched_array('y_train', y_train, 2).astype(dtype)
  if y_train.shape[0] != x_train.shape[0]:
    raise ValueError(f'y_train has {y_train.shape[0]} rows but x_train has {x_train.shape[0]} points')
  if x_test is not None:
    x_test = V.batched_array('x_test', x_test, 2).astype(dtype)
    if x_test.shape[1:] != x_train.shape[1:]:
      raise ValueError(f'x_test points have shape {x_test.shape[1:]}, x_train points {x_train.shape[1:]}')
  steps = record_steps(record_times, learning_rate)

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
  )
  sharding, n_padded = _member_mesh(n_members)
  root = jax.random.PRNGKey(seed)
  member_keys = jax.vmap(lambda m: jax.random.fold_in(root, m))(jnp.arange(n_padded))
  member_keys = jax.device_put(member_keys, sharding)
  params, opt_state = jax.jit(program.init, out_shardings=sharding)(member_keys)
  advance, observe = program.advance, program.observe
  outputs, hiddens, snapshots = [], [], []
  done = 0
  for target in tqdm(steps, desc='Langevin ensemble', unit='record', disable=not progress):
    params, opt_state, bad = advance(params, opt_state, jnp.asarray(done), jnp.asarray(int(target) - done))
    bad = int(bad)
    if bad >= 0:
      raise FloatingPointError(
        f'Langevin training diverged: the loss became NaN/inf after step {bad} (t = {bad * learning_rate:g}). '
        f'The gradient step is unstable when η exceeds ~2/λ_max of the loss Hessian (the largest NTK '
        f'eigenvalue on the training set); use a smaller learning_rate than {learning_rate:g}.'
      )
    done = int(target)
    observed = observe(params)
    out = np.asarray(observed[0] if record_hidden else observed)[:n_members]
    if not np.all(np.isfinite(out)):
      raise FloatingPointError(
        f'Langevin training diverged: the network outputs are NaN/inf after step {done} '
        f'(t = {done * learning_rate:g}); use a smaller learning_rate than {learning_rate:g}.'
      )
    outputs.append(out)
    if record_hidden:
      hiddens.append(tuple(np.asarray(h)[:n_members] for h in observed[1]))
    if record_params:
      snapshots.append(jax.tree.map(lambda p: np.asarray(p)[:n_members], params))
  train_out = np.stack(outputs, axis=1)
  return EnsembleRecord(
    times=steps * learning_rate,
    train=train_out[:, :, :n_train],
    test=None if x_test is None else train_out[:, :, n_train:],
    hidden=tuple(np.stack(h, axis=1) for h in zip(*hiddens)) if record_hidden else None,
    params=jax.tree.map(lambda *p: np.stack(p, axis=1), *snapshots) if record_params else None,
  )
