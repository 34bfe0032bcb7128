"""Training throughput of the library's engine: Langevin vs SGD, noise generators, vmapped ensembles vs a loop.

Every timing runs the library's own compiled loop (``ndk_flax.ensemble.build_program(...).advance``); the SGD
baseline goes through the same loop with ``optimizer=optax.sgd``. Tables (ratios measured in this run, default JAX
backend, float32, best of several repeats):

1. steps/s of one network (M = 1) under ``optax.sgd`` and ``ndk_flax.optax.langevin`` with Gaussian noise from each
   JAX PRNG implementation ('threefry2x32', 'rbg', 'unsafe_rbg') and with Rademacher noise; overhead = sgd steps/s ÷
   langevin steps/s, and the extra cost of the step in ns per parameter per step. Rows P ∈ {16, 256, 1024}, width
   ∈ {512, 2048}. Langevin adds one draw per parameter per step (O(params)), the gradient costs O(P · params).
2. ns per standard normal of the exact generators alone (1M draws): ``jax.random.normal`` (inverse erf of 23 random
   bits) per PRNG implementation, the same drawing 8 steps' noise in one call, and Box–Muller from the raw bits.
3. member-steps/s of an M-member ensemble: the vmapped program vs the M = 1 program run for each member in turn.

Usage: python benchmarks/train.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import optax

from ndk_flax import stax
from ndk_flax.ensemble import PRNG_IMPLS, build_program

D_IN, TEMPERATURE, ETA = 32, 0.01, 1e-3
WIDTHS, POINTS = (512, 2048), (16, 256, 1024)
N_DRAWS = 1 << 20


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


def steps_per_second(prog, n_members: int, n_steps: int, repeats: int, seed: int = 0) -> float:
  keys = jax.vmap(lambda m: jax.random.fold_in(jax.random.PRNGKey(seed), m))(jnp.arange(n_members))
  params, state = jax.jit(prog.init)(keys)
  start, n = jnp.asarray(0), jnp.asarray(n_steps)
  return n_steps / best_time(lambda: jax.block_until_ready(prog.advance(params, state, start, n)), repeats)


def n_parameters(prog) -> int:
  params, _ = jax.eval_shape(prog.init, jax.random.split(jax.random.PRNGKey(0), 1))
  return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


OPTIMIZERS = {'sgd': dict(optimizer=lambda key: optax.sgd(ETA))}
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
      rates = {name: steps_per_second(p, 1, n_steps, repeats) for name, p in progs.items()}
      cells = []
      for name in names:
        extra_ns = (1 / rates[name] - 1 / rates['sgd']) / size * 1e9
        cells.append(f'{rates[name]:8.0f} {rates["sgd"] / rates[name]:5.2f}x {extra_ns:6.2f}ns')
      print(f'{width:>6} {n_points:>5} {size:>8} ' + ' '.join(f'{c:>24}' for c in cells))


def _box_muller(key):
  bits = jax.random.bits(key, (2, N_DRAWS // 2), jnp.uint32)
  u = jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32) - 1.0  # uniform [0, 1)
  radius = jnp.sqrt(-2 * jnp.log1p(-u[0]))
  angle = 2 * jnp.pi * u[1]
  return jnp.concatenate([radius * jnp.cos(angle), radius * jnp.sin(angle)])


def generator_table(repeats: int) -> None:
  print(f'\n2. Exact N(0, 1) generators: ns per draw ({N_DRAWS} draws, best of {repeats})')
  rows = []
  for impl in PRNG_IMPLS:
    key = jax.random.key(0, impl=impl)
    fns = {
      'normal (inverse erf)': lambda k: jax.random.normal(k, (N_DRAWS,), jnp.float32),
      'normal, 8 steps per call': lambda k: jax.random.normal(k, (8, N_DRAWS // 8), jnp.float32),
      'Box-Muller from bits': _box_muller,
      'raw 32-bit words (bound)': lambda k: jax.random.bits(k, (N_DRAWS,), jnp.uint32),
    }
    for name, fn in fns.items():
      jitted = jax.jit(fn)
      seconds = best_time(lambda: jax.block_until_ready(jitted(key)), repeats)
      rows.append((impl, name, seconds / N_DRAWS * 1e9))
  for impl, name, ns in rows:
    print(f'{impl:>13} {name:>26} {ns:8.2f} ns')


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
