"""Tests for ndk_flax.resources, the one resource estimator: the bytes it promises against arrays actually built, the
CPU and accelerator paths of the free-memory probe, and the refusals' wording (bytes needed, available, remedy)."""

import math
import os

import jax
import numpy as np
import pytest
from flax import nnx

from ndk_flax import nn, resources, stax


class _FakeDevice:
  def __init__(self, platform, stats):
    self.platform = platform
    self._stats = stats

  def memory_stats(self):
    return self._stats


def test_available_bytes_reads_the_accelerator_when_there_is_one(monkeypatch):
  monkeypatch.setattr(jax, 'devices', lambda: [_FakeDevice('gpu', {'bytes_limit': 10 * 2**30, 'bytes_in_use': 2**30})])
  assert resources.available_bytes() == 9 * 2**30
  # An accelerator without memory statistics, and a CPU, fall back to the host's MemAvailable.
  monkeypatch.setattr(jax, 'devices', lambda: [_FakeDevice('tpu', None)])
  assert resources.available_bytes() == resources.host_available_bytes()
  monkeypatch.setattr(jax, 'devices', lambda: [_FakeDevice('cpu', {'bytes_limit': 1})])
  assert resources.available_bytes() == resources.host_available_bytes()


def test_host_available_bytes_is_memavailable_or_half_the_physical_memory(monkeypatch):
  with open('/proc/meminfo') as f:
    line = next(line for line in f if line.startswith('MemAvailable:'))
  # MemAvailable moves while the test runs: compare within 5 % of the physical memory.
  physical = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  assert abs(resources.host_available_bytes() - int(line.split()[1]) * 1024) < 0.05 * physical

  def unreadable(*args, **kwargs):
    raise OSError('no /proc here')

  monkeypatch.setattr('builtins.open', unreadable)
  assert resources.host_available_bytes() == int(0.5 * physical)


def test_require_memory_refuses_above_the_limit_with_needed_available_and_remedy():
  resources.require_memory('x', 2**30, remedy='r', limit=2**30)  # exactly at the limit: accepted
  with pytest.raises(MemoryError) as info:
    resources.require_memory('the thing', 2**30 + 1, remedy='ask for less', limit=2**30)
  message = str(info.value)
  assert message.startswith('the thing needs about 1 GiB') and 'only 1 GiB are available' in message
  assert message.endswith('ask for less.')


def test_require_work_names_the_cap_to_raise():
  resources.require_work('w', 10, unit='u', cap=10, cap_name='max_u')
  with pytest.raises(ValueError, match=r'w needs about 11 u, more than `max_u` = 10: raise `max_u`'):
    resources.require_work('w', 11, unit='u', cap=10, cap_name='max_u')


def test_ensemble_bytes_bounds_the_arrays_of_a_real_ensemble():
  """The training part counts 6 copies of the member-stacked parameters and 4 of the activations; the parameter
  count it is given by train_ensemble comes from nnx.eval_shape of the real model. Here: that count equals the
  real model's, and the estimate is linear in M and in the record times."""
  layer = stax.serial(stax.Dense(32), stax.Erf(), stax.Dense(32), stax.Erf(), stax.Dense(1))
  model = nn.from_stax(layer, 32, input_shape=(5, 3), rngs=nnx.Rngs(0))
  real = sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert real == 3 * 32 + 32 * 32 + 32  # raw Dense weights, no biases
  one = resources.ensemble_bytes(1, real, 5, 64, 10)
  many = resources.ensemble_bytes(8, real, 5, 64, 10)
  assert many.training == pytest.approx(8 * one.training) and many.records == pytest.approx(8 * one.records)
  assert one.training == 4 * (resources.ENSEMBLE_STATE_COPIES * real + resources.ENSEMBLE_ACTIVATION_COPIES * 5 * 64)
  with_params = resources.ensemble_bytes(1, real, 5, 64, 20, record_params=True)
  # records: outputs (5 values) and the parameters per time, doubled (per-time list and stacked copy)
  assert with_params.records == 2 * 4 * 20 * (5 + real)
  assert with_params.records > 2 * one.records  # twice the times, plus the parameters


@pytest.mark.parametrize('n1, n_t', [(6, 8), (10, 5)])
def test_ndk_grid_bytes_bounds_the_result_of_a_real_grid(n1, n_t):
  """ndk_grid_bytes must be at least the bytes of the kernels ndk_fn returns on that grid."""
  layer = stax.serial(stax.Dense(16, W_prior_std=0.8), stax.Erf(), stax.Dense(1, W_prior_std=0.8))
  x = np.random.default_rng(0).normal(size=(n1, 3)).astype(np.float32)
  times = np.linspace(0.0, 2.0, n_t, dtype=np.float32)
  out = layer.ndk_fn(x, None, times, times, temperature=0.1)
  real = out.nngp.nbytes + out.ndk.nbytes
  assert resources.ndk_grid_bytes(n1, n1, n_t, n_t, itemsize=out.ndk.dtype.itemsize, batch_elements=0) >= real


def test_ndk_grid_batch_fills_the_batch_budget_and_keeps_one_pair():
  pairs, elements = resources.ndk_grid_batch(10**6, 100)
  assert pairs * 100 == elements <= resources.GRID_BATCH_ELEMENTS < (pairs + 1) * 100
  assert resources.ndk_grid_batch(3, 100) == (3, 300)  # fewer pairs than the budget allows: all of them
  assert resources.ndk_grid_batch(5, 2 * resources.GRID_BATCH_ELEMENTS) == (1, 2 * resources.GRID_BATCH_ELEMENTS)
