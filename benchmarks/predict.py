"""Benchmark of ndk_flax.predict (issue 3): wall time and peak memory of the Langevin predictor.

3-layer Erf MLP (σ0 = 1, no bias), float32, T = 0.01 (diffusive time 1/λ = 100), 100 test points and
n_t = 200 requested times from 0 to 3/λ (both learning phases). Rows:
  * mean (test points) for P ∈ {100, 300, 1000}, with the prior σ = σ0 (stationary kernel: the default network)
    and σ = 0.8 σ0 (non-stationary, a full kernel lattice) for P ≤ 300;
  * covariance (test points, σ = 0.8 σ0) for P ∈ {100, 300} at --cov-requested of the n_t times (default all
    n_t = 200), on a covariance grid of about --cov-times times (its cost is O((n_c·P)² (P + n_test)) per
    requested time, see ndk_flax.predict);
  * T = 0 (closed form) against neural_tangents.predict.gradient_descent_mse_ensemble on the same problem, both
    timed in the same process (kernel, eigendecomposition and prediction; compilation included for both).
Each configuration runs in its own subprocess, so the peak resident memory (ru_maxrss) is its own; "wall s" is the
time of the request (first call, compilation included), "CPU s" the subprocess's CPU time (import and data
included), which is the fairer number on a shared machine.

Usage: python benchmarks/predict.py [--sizes 100 300 1000] [--cov-sizes 100 300] [--cov-times 40] [--cov-requested 200]
                                    [--kinds mean cov zero_t] [--priors 1.0 0.8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

D, N_TEST, N_T, TEMPERATURE = 16, 100, 200, 0.01


def _network(prior_std):
  from ndk_flax import stax

  dense = lambda n: stax.Dense(n, W_std=1.0, W_prior_std=prior_std)
  return stax.serial(dense(512), stax.Erf(), dense(512), stax.Erf(), dense(512), stax.Erf(), dense(1))


def _data(p):
  import numpy as np

  rng = np.random.default_rng(0)
  x = rng.normal(size=(p + N_TEST, D)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True) / np.sqrt(D)
  y = np.sign(x[:, :1]).astype(np.float32)
  return x[:p], y[:p], x[p:]


def _times():
  import numpy as np

  return np.concatenate([[0.0], np.geomspace(1e-2, 3 / TEMPERATURE, N_T - 1)])


def run_one(kind: str, p: int, prior_std: float, cov_times: int, cov_requested: int) -> dict:
  import jax
  import numpy as np

  from ndk_flax import predict

  x, y, x_test = _data(p)
  layer = _network(prior_std)
  times = _times()
  start = time.perf_counter()
  if kind == 'zero_t':
    from ndk_flax._nt import nt_predict

    ours = predict.langevin_mse_ensemble(layer, x, y, temperature=0.0)
    out = ours(times, x_test, compute_cov=True)
    jax.block_until_ready(out)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    theirs = nt_predict.gradient_descent_mse_ensemble(_network(prior_std).kernel_fn, x, y)
    ref = theirs(times * y.size, x_test, 'ntk', compute_cov=True)
    jax.block_until_ready(ref)
    t_nt = time.perf_counter() - start
    diff = float(np.abs(np.asarray(out.mean) - np.asarray(ref.mean)).max())
    return dict(seconds=t_ours, nt_seconds=t_nt, ratio=t_ours / t_nt, max_mean_diff=diff)
  predictor = predict.langevin_mse_ensemble(layer, x, y, temperature=TEMPERATURE)
  if kind == 'mean':
    jax.block_until_ready(predictor(times, x_test))
    lattice, _, fine = predictor._mean
    info = dict(
      grid=len(fine['grid']),
      lattice=lattice.size,
      stationary=bool(lattice.stationary),
      error_estimate=predictor.error_estimate,
    )
  else:
    grid = predict.time_grid(
      float(times[-1]), first_step=predictor._first_step, growth=0.5, max_step=float(times[-1]) / cov_times
    )
    predictor = predict.langevin_mse_ensemble(layer, x, y, temperature=TEMPERATURE, cov_grid=grid)
    requested = times[np.unique(np.linspace(0, N_T - 1, cov_requested).astype(int))]
    jax.block_until_ready(predictor(requested, x_test, compute_cov=True))
    info = dict(cov_grid=len(grid), requested=len(requested))
  return dict(seconds=time.perf_counter() - start, **info)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--sizes', type=int, nargs='*', default=[100, 300, 1000])
  parser.add_argument('--cov-sizes', type=int, nargs='*', default=[100, 300])
  parser.add_argument('--cov-times', type=int, default=40)
  parser.add_argument('--cov-requested', type=int, default=N_T, help='covariance rows: this many of the n_t times')
  parser.add_argument('--kinds', nargs='*', default=['mean', 'cov', 'zero_t'], choices=['mean', 'cov', 'zero_t'])
  parser.add_argument('--priors', type=float, nargs='*', default=[1.0, 0.8], help='σ/σ0 of the mean rows')
  parser.add_argument('--one', nargs=3, metavar=('KIND', 'P', 'PRIOR_STD'), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    kind, p, prior_std = args.one[0], int(args.one[1]), float(args.one[2])
    result = run_one(kind, p, prior_std, args.cov_times, args.cov_requested)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result['peak_rss_gib'] = usage.ru_maxrss / 2**20
    result['cpu_seconds'] = usage.ru_utime + usage.ru_stime
    print(json.dumps(result))
    return
  configs = [('mean', p, prior) for prior in args.priors for p in args.sizes if prior == 1.0 or p <= 300]
  configs += [('cov', p, 0.8) for p in args.cov_sizes] + [('zero_t', p, 1.0) for p in args.sizes]
  configs = [c for c in configs if c[0] in args.kinds]
  print(f'{"what":8} {"P":>5} {"σ/σ0":>5} {"wall s":>8} {"CPU s":>8} {"peak GiB":>9}  details')
  for kind, p, prior_std in configs:
    proc = subprocess.run(
      [
        sys.executable,
        __file__,
        '--one',
        kind,
        str(p),
        str(prior_std),
        '--cov-times',
        str(args.cov_times),
        '--cov-requested',
        str(args.cov_requested),
      ],
      capture_output=True,
      text=True,
    )
    if proc.returncode:
      print(f'{kind:8} {p:>5} {prior_std:>5} failed: {proc.stderr.strip().splitlines()[-1]}')
      continue
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    seconds, peak, cpu = result.pop('seconds'), result.pop('peak_rss_gib'), result.pop('cpu_seconds')
    details = ', '.join(f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}' for k, v in result.items())
    print(f'{kind:8} {p:>5} {prior_std:>5} {seconds:>8.1f} {cpu:>8.1f} {peak:>9.2f}  {details}', flush=True)


if __name__ == '__main__':
  main()
