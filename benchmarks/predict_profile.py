"""Where the mean solver's time goes (issue 12): seconds spent in each jitted solver call of one
``predictor.predict`` on benchmarks/predict.py's problem, measured by wrapping the calls with a blocking timer.

Usage: python benchmarks/predict_profile.py P PRIOR_STD   (e.g. 1000 1.0; PRIOR_STD = σ/σ0)
"""

from __future__ import annotations

import collections
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import numpy as np
import predict as problem

from ndk_flax import predict
from ndk_flax.predict import mean

CALLS = (
  '_ring_row',
  '_evaluated_row',
  '_diagonal_row',
  '_copy_row',
  '_lattice_row',
  '_solve_block',
  '_request_block',
  '_far_update',
)


def main() -> None:
  p, prior = int(sys.argv[1]), float(sys.argv[2])
  x, y, x_test = problem._data('mlp', p)
  seconds = collections.defaultdict(list)
  post_init = mean.MeanSolver.__post_init__

  def timed_post_init(self):
    post_init(self)
    for name in CALLS:
      call = getattr(self, name)

      def wrapped(*args, _call=call, _name=name):
        start = time.perf_counter()
        result = jax.block_until_ready(_call(*args))
        seconds[_name].append(time.perf_counter() - start)
        return result

      object.__setattr__(self, name, wrapped)

  mean.MeanSolver.__post_init__ = timed_post_init
  start = time.perf_counter()
  predictor = predict.langevin_mse_ensemble(problem._network('mlp', prior), x, y, temperature=problem.TEMPERATURE)
  built = time.perf_counter()
  out = predictor.predict(problem._times(), x_test)
  np.asarray(out.mean)
  print(f'construct {built - start:.1f} s, predict {time.perf_counter() - built:.1f} s, {out.stats.mean}')
  for name in CALLS:
    if seconds[name]:
      calls = seconds[name]
      print(f'{name}: {len(calls)} calls, {sum(calls):.1f} s (first {calls[0]:.2f} s, median {np.median(calls):.3f} s)')


if __name__ == '__main__':
  main()
