"""Cost of `ndk_fn` relative to Neural Tangents' `kernel_fn`, and throughput on a 64×64 time grid.

Run: `python benchmarks/kernels.py [--p 256] [--grid 64] [--repeats 5]`. Prints a table. float32, CPU.

* "one pair": one (t1, t2) evaluation of `ndk_fn` (nngp + ndk) vs NT's jitted `kernel_fn(x1, x2, ('nngp','ntk'))`
  on the same network and inputs; ratio = ours / NT (target ≤ 2×).
* "grid": `ndk_fn` on a G×G time grid (t1 = t2) in one call; its time per pair in NT kernel evaluations
  ("evaluations per pair", measured against NT in the same run), for the full grid (`x2 = x` given: every pair
  evaluated, the layout before issue 12) and for the causal triangle (`x2 = None`: only pairs t ≥ s evaluated, the
  others from C(s,t,x',x) = C(t,s,x,x') and R(s,t) = 0; target ≤ 0.6 on the 64×64 MLP grid).
"""

import argparse
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax
import jax.numpy as jnp

from ndk_flax import stax


def best_time(fn, repeats):
  jax.block_until_ready(fn())  # compile / warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def architectures():
  mlp = stax.serial(
    stax.Dense(512, W_std=1.5, b_std=0.1),
    stax.Erf(),
    stax.Dense(512, W_std=1.5, b_std=0.1),
    stax.Erf(),
    stax.Dense(512, W_std=1.5, b_std=0.1),
    stax.Erf(),
    stax.Dense(1, W_std=1.5),
  )
  # Flatten readout keeps only location-diagonal covariances (pooling would need the full spatial ones).
  cnn = stax.serial(
    stax.Conv(32, (3, 3), W_std=1.4, padding='SAME'),
    stax.Relu(),
    stax.Conv(32, (3, 3), W_std=1.4, padding='SAME'),
    stax.Relu(),
    stax.Flatten(),
    stax.Dense(1, W_std=1.4),
  )
  return {'3-layer Erf MLP': (mlp, (16,)), 'CNN 6x6x1 (2 conv)': (cnn, (6, 6, 1))}


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--p', type=int, default=256, help='number of inputs P')
  parser.add_argument('--grid', type=int, default=64, help='time grid size G (G×G pairs)')
  parser.add_argument(
    '--cnn-grid',
    type=int,
    default=16,
    help='time grid size for the CNN (a 64x64 CNN grid at P=256 takes ~10 min on 2 cores)',
  )
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  rows = []
  for name, (net, feature_shape) in architectures().items():
    grid = args.cnn_grid if name.startswith('CNN') else args.grid
    x = jax.random.normal(jax.random.PRNGKey(0), (args.p, *feature_shape), jnp.float32)
    nt_kernel = jax.jit(net.kernel_fn, static_argnames='get')
    t_nt = best_time(lambda: nt_kernel(x, x, get=('nngp', 'ntk')), args.repeats)
    t_pair = best_time(lambda: net.ndk_fn(x, x, 1.0, 0.5, temperature=0.1).ndk, args.repeats)
    times = jnp.geomspace(1e-2, 1e2, grid).astype(jnp.float32)
    grid_repeats = max(1, args.repeats // 2)
    t_full = best_time(lambda: net.ndk_fn(x, x, times, times, temperature=0.1).ndk, grid_repeats)
    t_half = best_time(lambda: net.ndk_fn(x, None, times, times, temperature=0.1).ndk, grid_repeats)
    pairs = grid**2
    rows.append(
      (
        f'{name} G={grid}',
        t_nt * 1e3,
        t_pair * 1e3,
        t_pair / t_nt,
        t_full / pairs / t_nt,
        t_half / pairs / t_nt,
        t_half,
      )
    )
  header = (
    f'{"network (P=%d)" % args.p:<30} {"NT kernel_fn ms":>16} {"ndk_fn pair ms":>15} {"ratio":>7} '
    f'{"evals/pair full":>16} {"evals/pair t>=s":>16} {"GxG grid s":>11}'
  )
  print(f'jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPU cores, float32')
  print(header)
  print('-' * len(header))
  for name, t_nt, t_pair, ratio, full, half, t_half in rows:
    print(f'{name:<30} {t_nt:16.2f} {t_pair:15.2f} {ratio:7.2f} {full:16.2f} {half:16.2f} {t_half:11.2f}')


if __name__ == '__main__':
  main()
