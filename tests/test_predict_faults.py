"""Degenerate and huge requests to the Langevin predictor (issue 15): t = 0, kernels that turn NaN, memory and cost
refused up front."""

import json
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from ndk_flax import predict
from tests.test_predict import MODEL, N_TEST, D, P, T


@pytest.fixture(scope='module')
def data():
  rng = np.random.default_rng(0)
  return rng.normal(size=(P, D)), rng.normal(size=(P, 2)), rng.normal(size=(N_TEST, D))


def test_time_zero_is_the_free_network(data):
  """t = 0 at T > 0: f̄ = 0, Cov = C(0, 0) and the loss ½‖Y‖² (a ZeroDivisionError before)."""
  x, y, x_test = data
  predictor = predict.langevin_mse_ensemble(MODEL.ndk_fn, x, y, temperature=T)
  np.testing.assert_array_equal(predictor(0.0), np.zeros_like(y))
  np.testing.assert_array_equal(predictor(np.array([0.0])), np.zeros((1,) + y.shape))
  assert float(predictor.train_loss(0.0)) == pytest.approx(0.5 * np.sum(y**2), rel=1e-12)
  _, exact_cov = MODEL.exact(x, y, T, [0.0], x_test)
  np.testing.assert_allclose(predictor(0.0, x_test, compute_cov=True).covariance, exact_cov[0], atol=1e-12)
  both = predictor(np.array([0.0, 2.0]), x_test)
  np.testing.assert_allclose(both[1], predictor(2.0, x_test), atol=1e-12)


def test_kernel_that_turns_nan_later_is_refused_naming_the_time(data):
  """A kernel that is NaN beyond t = 50 raises an error naming where, instead of NaN predictions."""
  x, y, _ = data

  def broken(x1, x2, t1, t2, *, temperature):
    out = MODEL.ndk_fn(x1, x2, t1, t2, temperature=temperature)
    late = (jnp.atleast_1d(t1)[:, None] > 50.0)[..., None, None]
    return type(out)(jnp.where(late, jnp.nan, out.nngp), jnp.where(late, jnp.nan, out.ndk))

  predictor = predict.langevin_mse_ensemble(broken, x, y, temperature=T)
  assert np.all(np.isfinite(predictor(4.0)))
  with pytest.raises(FloatingPointError, match=r't = \d'):
    predictor(100.0)


def test_late_times_are_refused_with_a_cost_estimate(data):
  """t = 1e6 at T = 0.1 would need millions of solver times: refused up front, naming the cap that allows it."""
  x, y, _ = data
  predictor = predict.langevin_mse_ensemble(MODEL.ndk_fn, x, y, temperature=T)
  with pytest.raises(ValueError, match=r'needs about .* solver grid times.*`max_grid_times`'):
    predictor(1e6)
  capped = predict.langevin_mse_ensemble(MODEL.ndk_fn, x, y, temperature=T, max_grid_times=1000)
  with pytest.raises(ValueError, match='max_grid_times'):
    capped(np.array([1.0, 1e4]))
  with pytest.raises(ValueError, match='max_grid_times'):
    predict.langevin_mse_ensemble(MODEL.ndk_fn, x, y, temperature=T, max_grid_times=1)


def test_a_lattice_over_the_kernel_pair_cap_is_refused_before_solving(data):
  """The kernel work of a general lattice (n(n + 1)/2 pairs per pass, fewer with a band) is checked against
  ``max_kernel_pairs`` before any solving, by predict and by check_request alone; NumPy integers are valid caps."""
  x, y, _ = data
  calls = []

  def counted(x1, x2, t1, t2, *, temperature):
    calls.append(len(t1) * len(t2))
    return MODEL.ndk_fn(x1, x2, t1, t2, temperature=temperature)

  general = predict.langevin_mse_ensemble(counted, x, y, temperature=T, max_kernel_pairs=np.int64(50))
  choose = predict.lattice.choose_lattice
  try:
    predict.lattice.choose_lattice = lambda *args: choose(*args)._replace(stationary=False)
    start = len(calls)
    with pytest.raises(ValueError, match=r'kernel time pairs per pass \(\d+ general lattice rows\).*max_kernel_pairs'):
      general.check_request(np.array([1.0, 30.0]))
    checking = len(calls) - start
    with pytest.raises(ValueError, match='max_kernel_pairs'):
      general(np.array([1.0, 30.0]))
    refusing = len(calls) - start - checking
  finally:
    predict.lattice.choose_lattice = choose
  assert refusing == checking  # predict refuses where check_request does: the lattice probes, no solving
  for bad in (0, True, 2.5):
    with pytest.raises((TypeError, ValueError), match='max_kernel_pairs'):
      predict.langevin_mse_ensemble(MODEL.ndk_fn, x, y, temperature=T, max_kernel_pairs=bad)


_REFUSAL = """
import json, sys
import numpy as np
inf = float('inf')
from ndk_flax import predict
from tests.test_predict import MODEL, D, P
rng = np.random.default_rng(0)
x, y = rng.normal(size=(P, D)), rng.normal(size=(P, 1))
temperature, n_test, times = {temperature!r}, {n_test!r}, np.array({times!r})
calls = []
def counting(*args, **kwargs):
  calls.append(1)
  return MODEL.ndk_fn(*args, **kwargs)
predictor = predict.langevin_mse_ensemble(counting, x, y, temperature=temperature, memory_limit=2**30)
calls.clear()
try:
  predictor(times, np.ones((n_test, D)), compute_cov=True)
  message = None
except MemoryError as e:
  message = str(e)
# VmHWM: the peak of this process's own memory map (ru_maxrss is inherited from a large forking parent, e.g. an
# xdist worker, across fork + exec on Linux).
rss = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM:'))
print(json.dumps(dict(message=message, rss=rss, kernel_calls=len(calls))))
"""


@pytest.mark.parametrize(
  'temperature, n_test, times',
  [(T, 15_000, [1.0, 2.0]), (0.0, 30_000, [1.0]), (T, 30_000, [float('inf')])],
  ids=['T>0 finite t', 'T=0', 't=inf'],
)
def test_huge_covariance_is_refused_before_any_allocation(temperature, n_test, times):
  """15 000 test points (T > 0) and 30 000 (T = 0, t = ∞): MemoryError with needed / available bytes and what to
  change, before any kernel evaluation, with the process staying far below the request (RSS < 1.5 GiB)."""
  code = _REFUSAL.format(temperature=temperature, n_test=n_test, times=times)
  out = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result['message'] is not None, 'the request was not refused'
  assert (
    'needs about' in result['message'] and 'available' in result['message'] and 'fewer test points' in result['message']
  )
  assert result['kernel_calls'] == 0
  assert result['rss'] < 1.5 * 2**30
