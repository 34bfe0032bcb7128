"""Kernel work sharded over the P axis (ndk_flax._sharding): on 4 forced host devices the predictor's mean and
covariance (a stationary and a non-stationary erf network) and `ndk_fn` time grids (the causal triangle of a square
grid and a general t1 x t2 grid, MLP and CNN with pooling) equal the 1-device results to 1e-12 (float64)."""

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


def _run(devices: int, path: str, script: str = _RUN) -> dict:
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', JAX_PLATFORMS='cpu')
  code = textwrap.dedent(script.format(devices=devices, path=path))
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


_NDK_GRID_RUN = """
import jax
jax.config.update('jax_enable_x64', True)
import numpy as np
from ndk_flax import stax
assert jax.device_count() == {devices}, jax.devices()
rng = np.random.default_rng(0)
x, x2, img = rng.normal(size=(8, 3)), rng.normal(size=(6, 3)), rng.normal(size=(4, 6, 6, 2))
mlp = stax.serial(stax.Dense(8, W_std=1.2, b_std=0.1, W_prior_std=0.9), stax.Erf(), stax.Dense(1, W_std=1.2))
cnn = stax.serial(
  stax.Conv(3, (3, 3), W_std=1.3, padding='SAME'), stax.Relu(), stax.AvgPool((2, 2)), stax.Flatten(), stax.Dense(1)
)
t, s = np.array([0.0, 3.0, 0.5, np.inf]), np.array([0.2, 3.0, 1.0])
grids = dict(
  mlp_square=mlp.ndk_fn(x, None, t, t, temperature=0.2),
  mlp_rectangle=mlp.ndk_fn(x, x2, t, s, temperature=0.2),
  mlp_x2_split=mlp.ndk_fn(x2[:3], x, t, s, temperature=0.2),
  cnn_square=cnn.ndk_fn(img, None, t, t, temperature=0.2),
)
out = {{}}
for name, k in grids.items():
  if {devices} > 1:
    assert len(k.nngp.sharding.device_set) == {devices} and not k.nngp.sharding.is_fully_replicated, name
  out.update({{f'{{name}}_{{field}}': np.asarray(value) for field, value in zip(k._fields, k)}})
np.savez({path!r}, **out)
"""


@pytest.mark.slow
def test_ndk_fn_time_grids_on_four_devices_equal_one(tmp_path):
  one = _run(1, str(tmp_path / 'one.npz'), _NDK_GRID_RUN)
  four = _run(4, str(tmp_path / 'four.npz'), _NDK_GRID_RUN)
  assert one.keys() == four.keys() and len(one) == 16
  for key in one:
    np.testing.assert_allclose(four[key], one[key], rtol=0, atol=1e-12, err_msg=key)
