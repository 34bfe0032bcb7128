"""Benchmark of ndk_flax.predict (issue 12): cost of the Langevin predictor in kernel-evaluation equivalents.

Problem: 3-hidden-layer erf MLP (width 512, σ0 = 1, no bias), d = 16, float32, T = 0.01 (diffusive time 1/λ = σ²/T),
100 test points, n_t = 200 requested times from 0 to 3σ0²/T (both learning phases). Each row runs in its own
subprocess and reports, measured in that subprocess:
  * wall s: the request (first call, compilation included);
  * kernel evals: wall s / the time of one Neural Tangents ``kernel_fn(x_train, None, ('nngp', 'ntk'))`` of the same
    network on the same inputs (compiled, second call);
  * × NT T=0: wall s / the time of NT's ``gradient_descent_mse_ensemble`` T = 0 prediction of the same request
    (mean, or mean and covariance), compilation included as for ours;
  * the predictor's stats (solver grid times, lattice, kernel time pairs, error estimate; covariance grid).
Rows: mean for P ∈ --sizes with σ/σ0 ∈ --priors; covariance (σ = 0.8σ0) for P ∈ --cov-sizes; a CNN (Conv 3×3, erf,
average pooling, flatten, dense) on 8×8×1 images at P = --cnn-size; then the exponent of wall time vs P fitted per
σ. ``--old PATH`` runs the same rows with the ndk_flax found at PATH (e.g. main's checkout) next to ours, in the same
run. ``--device`` runs the accelerator rows (P = 10⁴ MLP mean, P = 1000 CNN mean).

Usage: python benchmarks/predict.py [--sizes 300 1000 3000] [--priors 1.0 0.8] [--cov-sizes 300 1000]
                                    [--cnn-size 100] [--old /work/main] [--device]
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


def _network(kind, prior_std):
  from ndk_flax import stax

  if kind == 'cnn':
    return stax.serial(
      stax.Conv(64, (3, 3), padding='SAME', W_std=1.0, W_prior_std=prior_std),
      stax.Erf(),
      stax.AvgPool((2, 2), (2, 2)),
      stax.Flatten(),
      stax.Dense(1, W_std=1.0, W_prior_std=prior_std),
    )
  dense = lambda n: stax.Dense(n, W_std=1.0, W_prior_std=prior_std)
  return stax.serial(dense(512), stax.Erf(), dense(512), stax.Erf(), dense(512), stax.Erf(), dense(1))


def _data(kind, p):
  import numpy as np

  rng = np.random.default_rng(0)
  shape = (8, 8, 1) if kind == 'cnn' else (D,)
  x = rng.normal(size=(p + N_TEST,) + shape).astype(np.float32)
  flat = x.reshape(len(x), -1)
  x /= (np.linalg.norm(flat, axis=1) / np.sqrt(flat.shape[1])).reshape((-1,) + (1,) * len(shape))
  y = np.sign(flat[:, :1]).astype(np.float32)
  return x[:p], y[:p], x[p:]


def _times():
  import numpy as np

  return np.concatenate([[0.0], np.geomspace(1e-2, 3 / TEMPERATURE, N_T - 1)])


def _seconds(fn):
  import jax

  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def run_one(what: str, net: str, p: int, prior_std: float) -> dict:
  import numpy as np

  from ndk_flax import predict
  from ndk_flax._nt import nt_predict

  x, y, x_test = _data(net, p)
  layer = _network(net, prior_std)
  times = _times()
  cov = what == 'cov'
  import jax

  kernel_fn = _network(net, prior_std).kernel_fn
  both = jax.jit(lambda a: kernel_fn(a, None, ('nngp', 'ntk')))
  _seconds(lambda: both(x))
  t_kernel = _seconds(lambda: both(x))
  t_nt = _seconds(
    lambda: nt_predict.gradient_descent_mse_ensemble(kernel_fn, x, y)(times * y.size, x_test, 'ntk', compute_cov=cov)
  )
  start = time.perf_counter()
  predictor = predict.langevin_mse_ensemble(layer, x, y, temperature=TEMPERATURE)
  info = {}
  if hasattr(predictor, 'predict'):
    out = predictor.predict(times, x_test, compute_cov=cov)
    np.asarray(out.mean)
    s = out.stats.mean
    info = dict(
      grid=int(s.grid_times),
      lattice=s.lattice_times,
      stationary=bool(s.stationary),
      kernel_pairs=int(s.kernel_time_pairs),
      error=float(s.error_estimate),
    )
    if cov:
      info['cov_grid'] = int(out.stats.covariance_grid_times)
  else:  # an older ndk_flax without stats
    np.asarray(predictor(times, x_test, compute_cov=cov).mean if cov else predictor(times, x_test))
  seconds = time.perf_counter() - start
  return dict(seconds=seconds, kernel_evals=seconds / t_kernel, vs_nt=seconds / t_nt, kernel_s=t_kernel, **info)


def _row(args, code_path, what, net, p, prior):
  env = dict(os.environ, PYTHONPATH=code_path)
  cmd = [sys.executable, os.path.abspath(__file__), '--one', what, net, str(p), str(prior)]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
  if proc.returncode:
    return None, (proc.stderr.strip().splitlines() or ['?'])[-1]
  return json.loads(proc.stdout.strip().splitlines()[-1]), None


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--sizes', type=int, nargs='*', default=[300, 1000, 3000])
  parser.add_argument('--priors', type=float, nargs='*', default=[1.0, 0.8], help='σ/σ0 of the mean rows')
  parser.add_argument('--cov-sizes', type=int, nargs='*', default=[300, 1000])
  parser.add_argument('--cnn-size', type=int, nargs='*', default=[100])
  parser.add_argument('--old', help='path of another checkout whose ndk_flax runs the same rows (e.g. main)')
  parser.add_argument('--device', action='store_true', help='accelerator rows: P = 10^4 MLP mean, P = 1000 CNN mean')
  parser.add_argument('--one', nargs=4, metavar=('WHAT', 'NET', 'P', 'PRIOR_STD'), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    what, net, p, prior = args.one[0], args.one[1], int(args.one[2]), float(args.one[3])
    result = run_one(what, net, p, prior)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result['peak_rss_gib'] = usage.ru_maxrss / 2**20
    print(json.dumps(result))
    return
  if args.device:
    rows = [('mean', 'mlp', 10_000, prior) for prior in args.priors] + [('mean', 'cnn', 1000, 1.0)]
  else:
    rows = [('mean', 'mlp', p, prior) for prior in args.priors for p in args.sizes]
    rows += [('cov', 'mlp', p, 0.8) for p in args.cov_sizes] + [('mean', 'cnn', p, 1.0) for p in args.cnn_size]
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  codes = [('new', here)] + ([('old', os.path.abspath(args.old))] if args.old else [])
  print(
    f'{"code":4} {"what":5} {"net":4} {"P":>6} {"σ/σ0":>5} {"wall s":>8} {"kernel evals":>12} {"× NT T=0":>9} '
    f'{"peak GiB":>8}  details'
  )
  fits = {}
  for what, net, p, prior in rows:
    for name, path in codes:
      result, error = _row(args, path, what, net, p, prior)
      if error:
        print(f'{name:4} {what:5} {net:4} {p:>6} {prior:>5} failed: {error}', flush=True)
        continue
      seconds, evals, vs_nt, peak = (result.pop(k) for k in ('seconds', 'kernel_evals', 'vs_nt', 'peak_rss_gib'))
      details = ', '.join(f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}' for k, v in result.items())
      print(
        f'{name:4} {what:5} {net:4} {p:>6} {prior:>5} {seconds:>8.1f} {evals:>12.0f} {vs_nt:>9.1f} {peak:>8.2f}  '
        f'{details}',
        flush=True,
      )
      fits.setdefault((name, what, net, prior), []).append((p, seconds))
  import numpy as np

  for (name, what, net, prior), points in fits.items():
    if len(points) > 1:
      ps, secs = np.array(points, dtype=float).T
      exponent = np.polyfit(np.log(ps), np.log(secs), 1)[0]
      print(f'{name} {what} {net} σ/σ0={prior}: wall time ∝ P^{exponent:.2f} over P = {ps.astype(int).tolist()}')


if __name__ == '__main__':
  main()
