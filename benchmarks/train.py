"""Training throughput of the library's engine: Langevin vs SGD, noise generators, vmapped ensembles vs a loop.

Every timing runs the library's own compiled loop (``ndk_flax.ensemble.build_program(...).advance``); the SGD
baseline goes through the same loop with ``optimizer=optax.sgd``. Tables (ratios measured in this run, default JAX
backend, float32, best of several repeats):

1. steps/s of one network (M = 1) under ``optax.sgd`` and ``ndk_flax.optax.langevin`` with Gaussian noise from each
   JAX PRNG implementation ('threefry2x32', 'rbg', 'unsafe_rbg') and with Rademacher noise; overhead = sgd steps/s ÷
   langevin steps/s, and the extra cost of the step in ns per parameter per step. Rows P ∈ {16, 256, 1024}, width
   ∈ {512, 2048}. Langevin adds one draw per parameter per step (O(params)), the gradient costs O(P · params).
   'gauss/old (partitionable)' is the Gaussian step as it was before the noise draws fixed the original Threefry
   mode (``ndk_flax.optax.NOISE_BITS_PARTITIONABLE``), compiled in the same run.
2. ns per parameter per step of exact N(0, 1) draws alone, inside one compiled loop of 400 steps with a split key
   chain, at the parameter counts of the rows above: ``jax.random.normal`` (√2 erfinv of 23 random bits) in the
   partitionable (JAX's default) and original Threefry modes, ndtri of a uniform, Box–Muller, two half draws from
   two keys (two fusions), the philox4x32 and threefry4x32 implementations, and the raw 32-bit words (a bound).
3. member-steps/s of an M-member ensemble: the vmapped program vs the M = 1 program run for each member in turn.

Usage: python benchmarks/train.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from ndk_flax import optax as ndk_optax
from ndk_flax import stax
from ndk_flax.ensemble import PRNG_IMPLS, build_program

D_IN, TEMPERATURE, ETA = 32, 0.01, 1e-3
WIDTHS, POINTS = (512, 2048), (16, 256, 1024)


def network(width: int):
  return stax.serial(stax.Dense(width, W_std=1.0, b_std=0.5), stax.Erf(), stax.Dense(1))


def data(n_points: int):
  x = jax.random.normal(jax.random.PRNGKey(0), (n_points, D_IN), jnp.float32)
  return x, jnp.sin(x[:, :1])


def best_time(fn, repeats: int) -> float:
  """Minimum wall time of fn() (which blocks) over repeats, after one warm-up (compilation) call."""
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def program(width: int, n_points: int, **kwargs):
  x, y = data(n_points)
  return build_program(
    network(width),
    x,
    y,
    temperature=TEMPERATURE,
    learning_rate=ETA,
    width=None,
    x_observe=x,
    record_hidden=False,
    dtype=jnp.float32,
    **kwargs,
  )


def _advance_call(prog, n_members: int, n_steps: int, seed: int = 0):
  """A blocking call of ``n_steps`` steps of ``prog`` on ``n_members`` members (compiled on its first call)."""
  keys = jax.vmap(lambda m: jax.random.fold_in(jax.random.PRNGKey(seed), m))(jnp.arange(n_members))
  params, state = jax.jit(prog.init)(keys)
  start, n = jnp.asarray(0), jnp.asarray(n_steps)
  return lambda: jax.block_until_ready(prog.advance(params, state, start, n))


def steps_per_second(prog, n_members: int, n_steps: int, repeats: int, seed: int = 0) -> float:
  return n_steps / best_time(_advance_call(prog, n_members, n_steps, seed), repeats)


def interleaved_best_times(calls: dict, repeats: int) -> dict:
  """Minimum wall time of every call over ``repeats`` rounds that time each call once in turn, after one warm-up
  call each: a burst of load from other processes then slows every option alike instead of one."""
  for call in calls.values():
    call()
  best = {name: math.inf for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      t0 = time.perf_counter()
      call()
      best[name] = min(best[name], time.perf_counter() - t0)
  return best


def n_parameters(prog) -> int:
  params, _ = jax.eval_shape(prog.init, jax.random.split(jax.random.PRNGKey(0), 1))
  return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


OPTIMIZERS = {'sgd': dict(optimizer=lambda key: optax.sgd(ETA))}
OPTIMIZERS['gauss/old (partitionable)'] = dict()  # compiled with ndk_flax.optax.NOISE_BITS_PARTITIONABLE = True
OPTIMIZERS.update({f'gauss/{impl}': dict(prng_impl=impl) for impl in PRNG_IMPLS})
OPTIMIZERS['rademacher'] = dict(noise='rademacher')


def optimizer_table(n_steps: int, repeats: int) -> None:
  print(f'\n1. One network: steps/s ({n_steps} steps per timing, best of {repeats}); overhead vs sgd; ns/param/step')
  names = list(OPTIMIZERS)
  print(f'{"width":>6} {"P":>5} {"params":>8} ' + ' '.join(f'{n:>24}' for n in names))
  for width in WIDTHS:
    for n_points in POINTS:
      progs = {name: program(width, n_points, **kw) for name, kw in OPTIMIZERS.items()}
      size = n_parameters(progs['sgd'])
      calls = {}
      for name, prog in progs.items():
        ndk_optax.NOISE_BITS_PARTITIONABLE = name == 'gauss/old (partitionable)'  # read when advance is traced
        calls[name] = _advance_call(prog, 1, n_steps)
        calls[name]()  # trace and compile now, in this mode
      ndk_optax.NOISE_BITS_PARTITIONABLE = False
      rates = {name: n_steps / t for name, t in interleaved_best_times(calls, repeats).items()}
      cells = []
      for name in names:
        extra_ns = (1 / rates[name] - 1 / rates['sgd']) / size * 1e9
        cells.append(f'{rates[name]:8.0f} {rates["sgd"] / rates[name]:5.2f}x {extra_ns:6.2f}ns')
      print(f'{width:>6} {n_points:>5} {size:>8} ' + ' '.join(f'{c:>24}' for c in cells))


LOOP_STEPS = 400


def _loop(draw: Callable) -> Callable:
  """LOOP_STEPS steps of x ← 0.999 x + draw(key_k, n) in one compiled loop, key_k from a split chain (as the state
  of ndk_flax.optax carries it): the cost of the draw alone, per step."""

  def run(key, x):
    def body(_, carry):
      k, x = carry
      k, s = jax.random.split(k)
      return k, 0.999 * x + draw(s, x.shape[0])

    return jax.lax.fori_loop(0, LOOP_STEPS, body, (key, x))[1]

  return jax.jit(run)


def _in_mode(partitionable: bool, fn: Callable) -> Callable:
  def draw(key, n):
    with jax.threefry_partitionable(partitionable):
      return fn(key, n)

  return draw


def _normal(key, n):
  return jax.random.normal(key, (n,), jnp.float32)


def _ndtri(key, n):
  u = jax.random.uniform(key, (n,), jnp.float32, minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
  return jax.scipy.special.ndtri(u)


def _box_muller(key, n):
  bits = jax.random.bits(key, (2, n // 2), jnp.uint32)
  u = jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32) - 1.0  # uniform [0, 1)
  radius = jnp.sqrt(-2 * jnp.log1p(-u[0]))
  angle = 2 * jnp.pi * u[1]
  return jnp.concatenate([radius * jnp.cos(angle), radius * jnp.sin(angle)])


def _two_halves(key, n):
  k1, k2 = jax.random.split(key)
  return jnp.concatenate([_normal(k1, n // 2), _normal(k2, n - n // 2)])


def _bits(key, n):
  return jax.lax.bitcast_convert_type(jax.random.bits(key, (n,), jnp.uint32), jnp.float32) * 0


def _impl(name: str) -> Callable:
  return lambda key, n: jax.random.normal(jax.random.key(key[0], impl=name), (n,), jnp.float32)


DRAWS = {
  'normal, partitionable threefry (old)': _in_mode(True, _normal),
  'normal, original threefry (new)': _in_mode(False, _normal),
  'ndtri(uniform), original': _in_mode(False, _ndtri),
  'Box-Muller, original': _in_mode(False, _box_muller),
  'two half draws, original': _in_mode(False, _two_halves),
  'normal, philox4x32': _impl('philox4x32'),
  'normal, threefry4x32': _impl('threefry4x32'),
  'raw words, original (bound)': _in_mode(False, _bits),
  'nothing (the loop alone)': lambda key, n: jnp.float32(1e-3),
}


def generator_table(repeats: int) -> None:
  print(
    f'\n2. Exact N(0, 1) draws alone: ns per parameter per step ({LOOP_STEPS} steps in one loop, best of {repeats})'
  )
  sizes = [n_parameters(program(width, 16)) for width in WIDTHS]
  print(f'{"draw":>38} ' + ' '.join(f'{f"n = {n}":>12}' for n in sizes))
  table: dict = {}
  for n in sizes:
    x = jnp.zeros((n,), jnp.float32)
    calls = {
      name: (lambda run: lambda: jax.block_until_ready(run(jax.random.PRNGKey(0), x)))(_loop(draw))
      for name, draw in DRAWS.items()
    }
    for name, seconds in interleaved_best_times(calls, repeats).items():
      table.setdefault(name, []).append(f'{seconds / LOOP_STEPS / n * 1e9:9.2f} ns')
  for name, cells in table.items():
    print(f'{name:>38} ' + ' '.join(f'{c:>12}' for c in cells))


def ensemble_table(n_members: int, n_steps: int, repeats: int) -> None:
  print(f'\n3. Ensemble: member-steps/s, M = {n_members}, P = 256 ({n_steps} steps, best of {repeats})')
  print(f'{"width":>6} {"vmapped":>10} {"loop":>10} {"speed-up":>9}')
  for width in WIDTHS:
    prog = program(width, 256)
    vmapped = n_members * steps_per_second(prog, n_members, n_steps, repeats)
    one = steps_per_second(prog, 1, n_steps, repeats)  # the loop: the M = 1 program for each member in turn
    print(f'{width:>6} {vmapped:>10.1f} {one:>10.1f} {vmapped / one:>8.2f}x')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='fewer steps and repeats (smoke run)')
  parser.add_argument('--steps', type=int, default=None, help='steps per timing (default 200, --quick 20)')
  parser.add_argument('--repeats', type=int, default=None, help='timings per cell, the best is kept (default 5)')
  args = parser.parse_args()
  n_steps, repeats, n_members = (20, 2, 4) if args.quick else (200, 5, 16)
  n_steps, repeats = args.steps or n_steps, args.repeats or repeats
  print(
    f'backend={jax.default_backend()} devices={jax.device_count()} float32, full batch, d={D_IN}, '
    f'one erf hidden layer, T={TEMPERATURE}, eta={ETA}'
  )
  optimizer_table(n_steps, repeats)
  generator_table(repeats + 2)
  ensemble_table(n_members, max(1, n_steps // 4), max(1, repeats - 1))


if __name__ == '__main__':
  main()
