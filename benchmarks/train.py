"""Training throughput: Langevin vs SGD on one Flax model, and vmapped ensembles vs a Python loop over members.

Prints two tables (all ratios measured in this run, on the default JAX backend, float32):

1. steps/s of ``ndk_flax.optax.langevin`` vs ``optax.sgd`` on the same ``ndk_flax.nn.from_stax`` model, full batch
   of P points; overhead = sgd steps/s ÷ langevin steps/s (target ≤ 1.15), for both noise laws: Gaussian
   (Euler–Maruyama, default) and Rademacher (ξ = ±1, the weak Euler scheme: one random bit per parameter).
   Langevin adds one draw per parameter per step (O(params)), the gradient costs O(P · params): the overhead falls
   as P grows.
2. member-steps/s of an M-member ensemble: the vmapped program of ``ndk_flax.ensemble`` vs a Python loop that
   trains the members one after the other with the single-network Langevin step.

Usage: python benchmarks/train.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ndk_flax import nn, stax
from ndk_flax.ensemble import build_program
from ndk_flax.optax import langevin

P, D_IN, TEMPERATURE, ETA = 256, 32, 0.01, 1e-3
OPTIMIZER_P = (256, 1024)  # the noise costs O(params) per step, the gradient O(P · params): the ratio falls with P


def network(width: int):
  return stax.serial(stax.Dense(width, W_std=1.0, b_std=0.5), stax.Erf(), stax.Dense(1))


def data(n_points: int = P):
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


def single_network_loop(model, tx, x, y):
  """Jitted n-step full-batch loop of one network with optimizer tx: (params, opt_state, n) -> (params, opt_state)."""
  graphdef, params = nnx.split(model, nnx.Param)

  def loss(p):
    return 0.5 * jnp.sum((nnx.merge(graphdef, p)(x) - y) ** 2)

  @jax.jit
  def run(p, s, n):
    def body(_, carry):
      p, s = carry
      updates, s = tx.update(jax.grad(loss)(p), s, p)
      return optax.apply_updates(p, updates), s

    return jax.lax.fori_loop(0, n, body, (p, s))

  return params, run


def optimizer_rates(width: int, n_points: int, n_steps: int, repeats: int) -> tuple[float, float, float]:
  """steps/s of optax.sgd, langevin (Gaussian noise) and langevin (Rademacher noise) on one model."""
  x, y = data(n_points)
  model = nn.from_stax(network(width), input_shape=x.shape, rngs=nnx.Rngs(0), dtype=jnp.float32)
  prior = nn.prior_std_tree(model)
  rates = []
  for tx in (
    optax.sgd(ETA),
    langevin(ETA, TEMPERATURE, prior, key=0),
    langevin(ETA, TEMPERATURE, prior, key=0, noise='rademacher'),
  ):
    params, run = single_network_loop(model, tx, x, y)
    state = tx.init(params)
    seconds = best_time(lambda: jax.block_until_ready(run(params, state, n_steps)), repeats)
    rates.append(n_steps / seconds)
  return tuple(rates)


def ensemble_throughput(width: int, n_members: int, n_steps: int, repeats: int) -> tuple[float, float]:
  x, y = data()
  layer = network(width)
  program = build_program(
    layer,
    x,
    y,
    temperature=TEMPERATURE,
    learning_rate=ETA,
    width=None,
    x_observe=x,
    record_hidden=False,
    dtype=jnp.float32,
  )
  keys = jax.vmap(lambda m: jax.random.fold_in(jax.random.PRNGKey(0), m))(jnp.arange(n_members))
  params, opt_state = jax.jit(program.init)(keys)
  start, n = jnp.asarray(0), jnp.asarray(n_steps)
  vmapped = best_time(lambda: jax.block_until_ready(program.advance(params, opt_state, start, n)), repeats)

  model = nn.from_stax(layer, input_shape=x.shape, rngs=nnx.Rngs(0), dtype=jnp.float32)
  tx = langevin(ETA, TEMPERATURE, nn.prior_std_tree(model), key=0)
  member_params, run = single_network_loop(model, tx, x, y)
  member_states = [
    langevin(ETA, TEMPERATURE, nn.prior_std_tree(model), key=m).init(member_params) for m in range(n_members)
  ]

  def loop():
    for state in member_states:
      jax.block_until_ready(run(member_params, state, n_steps))

  looped = best_time(loop, repeats)
  return n_members * n_steps / vmapped, n_members * n_steps / looped


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='fewer steps and repeats (smoke run)')
  args = parser.parse_args()
  n_steps, repeats, n_members = (20, 1, 4) if args.quick else (200, 5, 16)
  print(
    f'backend={jax.default_backend()} devices={jax.device_count()} float32, full batch, d={D_IN}, '
    f'one erf hidden layer, T={TEMPERATURE}, eta={ETA}'
  )
  print(f'\nOptimizer: steps/s on one network ({n_steps} steps per timing, best of {repeats})')
  print(f'{"width":>6} {"P":>5} {"sgd":>10} {"gaussian":>10} {"overhead":>9} {"rademacher":>11} {"overhead":>9}')
  for width in (512, 2048):
    for n_points in OPTIMIZER_P:
      sgd, gauss, signs = optimizer_rates(width, n_points, n_steps, repeats)
      print(
        f'{width:>6} {n_points:>5} {sgd:>10.1f} {gauss:>10.1f} {sgd / gauss:>8.2f}x {signs:>11.1f} {sgd / signs:>8.2f}x'
      )
  n_steps, repeats = max(1, n_steps // 4), max(1, repeats - 1)
  print(f'\nEnsemble: member-steps/s, M = {n_members} Langevin members, P={P} ({n_steps} steps, best of {repeats})')
  print(f'{"width":>6} {"vmapped":>10} {"loop":>10} {"speed-up":>9}')
  for width in (512, 2048):
    vmapped, looped = ensemble_throughput(width, n_members, n_steps, repeats)
    print(f'{width:>6} {vmapped:>10.1f} {looped:>10.1f} {vmapped / looped:>8.2f}x')


if __name__ == '__main__':
  main()
