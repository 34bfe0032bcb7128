"""The predictor's kernel work sharded over the P axis (ndk_flax._sharding): on 4 forced host devices the mean and
covariance equal the 1-device results to 1e-12 (float64), for a stationary and a non-stationary erf network."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

_RUN = """
import jax
jax.config.update('jax_enable_x64', True)
import numpy as np
from ndk_flax import predict, stax
assert jax.device_count() == {devices}, jax.devices()
rng = np.random.default_rng(0)
x, x_test, y = rng.normal(size=(8, 3)), rng.normal(size=(3, 3)), rng.normal(size=(8, 1))
out = {{}}
for prior in (1.0, 0.8):
  dense = lambda n: stax.Dense(n, W_std=1.2, W_prior_std=prior)
  layer = stax.serial(dense(8), stax.Erf(), dense(1))
  predictor = predict.langevin_mse_ensemble(layer, x, y, temperature=0.2)
  if {devices} > 1:
    assert len(predictor.mean_solver.access.x.sharding.device_set) == {devices}
  times = np.array([0.0, 0.5, 3.0, 10.0, np.inf])
  both = predictor(times, x_test, compute_cov=True)
  out[f'mean_{{prior}}'] = np.asarray(both.mean)
  out[f'cov_{{prior}}'] = np.asarray(both.covariance)
  out[f'train_{{prior}}'] = np.asarray(predictor(times))
np.savez({path!r}, **out)
"""


def _run(devices: int, path: str) -> dict:
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', JAX_PLATFORMS='cpu')
  code = textwrap.dedent(_RUN.format(devices=devices, path=path))
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=900, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  with np.load(path) as data:
    return dict(data)


@pytest.mark.slow
def test_four_devices_equal_one(tmp_path):
  one = _run(1, str(tmp_path / 'one.npz'))
  four = _run(4, str(tmp_path / 'four.npz'))
  assert one.keys() == four.keys()
  for key in one:
    np.testing.assert_allclose(four[key], one[key], rtol=0, atol=1e-12, err_msg=key)
