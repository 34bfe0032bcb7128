"""Tour 4: validate the theory against an ensemble of Langevin-trained Flax networks, from Python.

What `ndk-flax validate` does, in a few lines: `ndk_flax.ensemble.train_ensemble` trains M networks (vmapped) with
the Langevin rule and records their outputs; `ndk_flax.validate.compare` puts the ensemble mean and variance next to
the theory in units of their standard error. Run: python examples/04_validate_ensemble.py [--quick]
"""

import sys

import jax

jax.config.update('jax_enable_x64', True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ndk_flax import data, ensemble, predict, stax, validate  # noqa: E402

quick = '--quick' in sys.argv
width, members = (256, 32) if quick else (1024, 128)
sigma0, sigma, T, eta = 2.0, 1.0, 0.05, 0.02
net = stax.serial(
  stax.Dense(width, W_std=sigma0, W_prior_std=sigma), stax.Erf(), stax.Dense(1, W_std=sigma0, W_prior_std=sigma)
)
ds = data.synthetic()
times = eta * np.array([0, 20, 100, 500] if quick else [0, 20, 100, 500, 2000])  # t = η × steps

predictor = predict.langevin_mse_ensemble(net, ds.x_train, ds.y_train, temperature=T)
record = ensemble.train_ensemble(
  net,
  ds.x_train,
  ds.y_train,
  temperature=T,
  learning_rate=eta,
  record_times=times,
  n_members=members,
  x_test=ds.x_test,
  seed=0,
  dtype=jnp.float32,
)
for points in ('train', 'test'):  # the record keeps its inputs: compare checks them and passes x_test
  r = validate.compare(record, predictor, points=points)
  print(f'\n{r.points} points, M = {r.n_members}: theory mean / ensemble mean ± s.e. (first point), max |z|')
  for i, t in enumerate(r.times):
    print(
      f'  t = {t:6g}:  {r.theory_mean[i, 0, 0]:+.3f} / {r.ensemble_mean[i, 0, 0]:+.3f} ± '
      f'{r.mean_se[i, 0, 0]:.3f}   max |z| mean {np.abs(r.mean_z[i]).max():.2f}, '
      f'variance {np.abs(r.var_z[i]).max():.2f}'
    )
  print(f'  agrees within 4.5 standard errors: {r.passed(4.5)}')
