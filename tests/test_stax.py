"""Two-time kernels of `ndk_flax.stax` vs Neural Tangents, an independent recursion, docs/theory.md identities."""

import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ndk_flax import stax
from ndk_flax._nt import nt_predict, nt_stax
from tests import reference_kernels as ref

KEY = jax.random.PRNGKey(0)
X1 = jax.random.normal(KEY, (4, 5))
X2 = jax.random.normal(jax.random.PRNGKey(1), (3, 5))
IMG = jax.random.normal(jax.random.PRNGKey(2), (3, 6, 6, 2))
IMG2 = jax.random.normal(jax.random.PRNGKey(3), (2, 6, 6, 2))

ACTIVATIONS = {
  'erf': (stax.Erf, nt_stax.Erf, {}),
  'relu': (stax.Relu, nt_stax.Relu, {}),
  'gelu': (stax.Gelu, nt_stax.Gelu, {'approximate': False}),
  'sin': (stax.Sin, nt_stax.Sin, {}),
  'abrelu': (stax.ABRelu, nt_stax.ABRelu, {'a': -0.4, 'b': 1.3}),
}


def mlp(lib, act, w_std, b_std=None, depth=2, **prior):
  layers = []
  for _ in range(depth):
    layers += [lib.Dense(16, W_std=w_std, b_std=b_std, **prior), act()]
  return lib.serial(*layers, lib.Dense(1, W_std=w_std, b_std=b_std, **prior))


def assert_close(a, b, rtol=1e-10, atol=1e-12):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------------------
# T = 0: Neural Tangents' NNGP, and its NTK / σ0² (raw parameterisation, equal σ0, no bias), for any (t1, t2).


def _architectures(lib):
  return {
    'cnn': (
      lambda: lib.serial(
        lib.Conv(8, (3, 3), W_std=1.4, padding='SAME'),
        lib.Relu(),
        lib.AvgPool((2, 2)),
        lib.Conv(8, (2, 2), W_std=1.4),
        lib.Relu(),
        lib.Flatten(),
        lib.Dense(1, W_std=1.4),
      ),
      IMG,
      IMG2,
      1.4,
    ),
    'cnn_global_pool': (
      lambda: lib.serial(lib.Conv(8, (3, 3), W_std=1.2), lib.Erf(), lib.GlobalAvgPool(), lib.Dense(1, W_std=1.2)),
      IMG,
      IMG2,
      1.2,
    ),
    'residual': (
      lambda: lib.serial(
        lib.Dense(16, W_std=1.3),
        lib.FanOut(2),
        lib.parallel(lib.serial(lib.Relu(), lib.Dense(16, W_std=1.3)), lib.Identity()),
        lib.FanInSum(),
        lib.Relu(),
        lib.Dense(1, W_std=1.3),
      ),
      X1,
      X2,
      1.3,
    ),
    'layernorm': (
      lambda: lib.serial(lib.Dense(16, W_std=1.1), lib.LayerNorm(), lib.Gelu(), lib.Dense(1, W_std=1.1)),
      X1,
      X2,
      1.1,
    ),
  }


@pytest.mark.parametrize('name', list(ACTIVATIONS))
@pytest.mark.parametrize('times', [(0.0, 0.0), (2.0, 0.7)])  # t1 >= t2 (R is causal)
def test_zero_temperature_mlp_matches_neural_tangents(name, times):
  ours, theirs, kw = ACTIVATIONS[name]
  w_std = 1.3
  net = mlp(stax, lambda: ours(**kw), w_std)
  nt_net = mlp(nt_stax, lambda: theirs(**kw), w_std)
  expected = nt_net[2](X1, X2, ('nngp', 'ntk'))
  k = net.ndk_fn(X1, X2, *times, temperature=0.0)
  assert_close(k.nngp, expected.nngp)
  assert_close(k.ndk, expected.ntk / w_std**2)


@pytest.mark.parametrize('arch', ['cnn', 'cnn_global_pool', 'residual', 'layernorm'])
def test_zero_temperature_architectures_match_neural_tangents(arch):
  build, x1, x2, w_std = _architectures(stax)[arch]
  nt_build = _architectures(nt_stax)[arch][0]
  expected = nt_build()[2](x1, x2, ('nngp', 'ntk'))
  for times in [(0.0, 0.0), (1.5, 0.3)]:
    k = build().ndk_fn(x1, x2, *times, temperature=0.0)
    assert_close(k.nngp, expected.nngp)
    assert_close(k.ndk, expected.ntk / w_std**2)


@pytest.mark.parametrize('conv', ['ConvTranspose', 'ConvLocal'])
def test_other_conv_layers_with_bias_match_nngp_and_fluctuation_dissipation(conv):
  """ConvLocal's bias is not shared across positions: with GlobalAvgPool (full spatial covariances) its bias
  pattern is not all-ones, which exercises the NT-derived pattern B of the shared rule."""

  def build(lib, **prior):
    return lib.serial(
      getattr(lib, conv)(4, (2, 2), W_std=1.3, b_std=0.4, **prior),
      lib.Relu(),
      lib.GlobalAvgPool(),
      lib.Dense(1, W_std=1.2, b_std=0.2, **prior),
    )

  expected = build(nt_stax)[2](IMG, IMG2, 'nngp')
  assert_close(build(stax).ndk_fn(IMG, IMG2, 0.4, 1.1, temperature=0.0).nngp, expected)
  gap, scale = _fdt_gap(build(stax), IMG, IMG2, 1.2, 0.3, temperature=0.5)
  assert gap < 1e-10 * scale


# ---------------------------------------------------------------------------------------------------------
# Biases, mixed stds, T > 0: against the independent NumPy recursion of tests/reference_kernels.py.

REFERENCE_EXPECTATIONS = {
  'erf': (stax.Erf, ref.erf_expectations, 1e-10),
  'relu': (stax.Relu, ref.relu_expectations, 1e-10),
  'abrelu': (lambda: stax.ABRelu(-0.4, 1.3), lambda q1, q2, c: ref.abrelu_expectations(q1, q2, c, -0.4, 1.3), 1e-10),
  'gelu': (lambda: stax.Gelu(approximate=False), ref.quadrature_expectations(ref.gelu, ref.dgelu), 1e-7),
  'sin': (stax.Sin, ref.quadrature_expectations(np.sin, np.cos), 1e-7),
}
# (σ0_W, σ_W, σ0_b, σ_b) per layer: different init and prior stds, biases on and off.
MIXED_LAYERS = [(1.5, 0.8, 0.3, 0.6), (0.9, 1.4, None, None), (1.2, 1.0, 0.5, 0.2)]


def _mixed_net(act):
  layers = []
  for i, (w0, w, b0, b) in enumerate(MIXED_LAYERS):
    layers.append(stax.Dense(16 if i < len(MIXED_LAYERS) - 1 else 1, W_std=w0, b_std=b0, W_prior_std=w, b_prior_std=b))
    if i < len(MIXED_LAYERS) - 1:
      layers.append(act())
  return stax.serial(*layers)


@pytest.mark.parametrize('name', list(REFERENCE_EXPECTATIONS))
@pytest.mark.parametrize(
  'temperature,times',
  [(0.0, (0.0, 0.0)), (0.0, (3.0, 1.0)), (0.3, (0.0, 0.0)), (0.3, (2.0, 0.5)), (0.3, (0.5, 2.0)), (0.7, (4.0, 4.0))],
)
def test_two_time_kernels_match_independent_recursion(name, temperature, times):
  act, expectations, rtol = REFERENCE_EXPECTATIONS[name]
  k = _mixed_net(act).ndk_fn(X1, X2, *times, temperature=temperature)
  nngp, resp = ref.mlp_two_time(np.asarray(X1), np.asarray(X2), *times, temperature, MIXED_LAYERS, expectations)
  assert_close(k.nngp, nngp, rtol=rtol, atol=rtol)
  assert_close(k.ndk, resp, rtol=rtol, atol=rtol)


# ---------------------------------------------------------------------------------------------------------
# Equilibrium: t1 = t2 → ∞ gives Neural Tangents' NNGP built with the prior stds.


@pytest.mark.parametrize('name', ['erf', 'relu', 'gelu'])
def test_equilibrium_is_nngp_with_prior_stds(name):
  ours, theirs, kw = ACTIVATIONS[name]
  net = _mixed_net(lambda: ours(**kw))
  nt_layers = []
  for i, (_, w, _, b) in enumerate(MIXED_LAYERS):
    nt_layers.append(nt_stax.Dense(16, W_std=w, b_std=b))
    if i < len(MIXED_LAYERS) - 1:
      nt_layers.append(theirs(**kw))
  expected = nt_stax.serial(*nt_layers)[2](X1, X2, 'nngp')
  temperature = 0.5
  slowest = min(net.relaxation_rates(temperature))
  k_inf = net.ndk_fn(X1, X2, jnp.inf, jnp.inf, temperature=temperature)
  k_late = net.ndk_fn(X1, X2, 80 / slowest, 80 / slowest, temperature=temperature)
  assert_close(k_inf.nngp, expected)
  assert_close(k_late.nngp, expected, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# Fluctuation–dissipation: R(t, s) = (1/T) ∂_s C(t, s) for t > s.


def _fdt_gap(net, x1, x2, t, s, temperature):
  dc_ds = jax.jacfwd(lambda s_: net.ndk_fn(x1, x2, t, s_, temperature=temperature).nngp)(s)
  resp = net.ndk_fn(x1, x2, t, s, temperature=temperature).ndk
  return np.max(np.abs(np.asarray(resp - dc_ds / temperature))), np.max(np.abs(np.asarray(resp)))


@pytest.mark.parametrize('name', ['erf', 'relu', 'sin'])
def test_fluctuation_dissipation_at_all_times_when_prior_equals_init(name):
  ours, _, kw = ACTIVATIONS[name]
  net = stax.serial(
    stax.Dense(16, W_std=1.3, b_std=0.4),
    ours(**kw),
    stax.Dense(16, W_std=0.8, b_std=0.2),
    ours(**kw),
    stax.Dense(1, W_std=1.1, b_std=0.3),
  )
  for t, s in [(0.3, 0.1), (2.0, 0.5), (5.0, 4.9)]:
    gap, scale = _fdt_gap(net, X1, X2, t, s, temperature=0.4)
    assert gap < 1e-10 * scale


def test_fluctuation_dissipation_at_late_times_when_prior_differs():
  net = _mixed_net(stax.Erf)
  temperature = 0.5
  slowest = min(net.relaxation_rates(temperature))
  early_gap, scale = _fdt_gap(net, X1, X2, 0.6, 0.3, temperature)
  late_gap, late_scale = _fdt_gap(net, X1, X2, 60 / slowest + 1.0, 60 / slowest, temperature)
  assert late_gap < 1e-9 * late_scale
  assert early_gap > 1e-3 * scale  # the identity genuinely needs equilibrium when σ0 ≠ σ


def test_fluctuation_dissipation_cnn():
  net = stax.serial(
    stax.Conv(4, (3, 3), W_std=1.2, b_std=0.3, padding='SAME'), stax.Erf(), stax.Flatten(), stax.Dense(1, W_std=1.1)
  )
  gap, scale = _fdt_gap(net, IMG, IMG2, 1.3, 0.4, temperature=0.6)
  assert gap < 1e-10 * scale


# ---------------------------------------------------------------------------------------------------------
# Symmetry, causality, and t ≠ s pairs of equal inputs are not "identical inputs".


def test_symmetry_causality_and_correlation_below_one():
  net = _mixed_net(stax.Relu)
  temperature = 0.5
  t, s = 1.7, 0.4
  k_ts = net.ndk_fn(X1, X2, t, s, temperature=temperature)
  k_st = net.ndk_fn(X2, X1, s, t, temperature=temperature)
  assert_close(k_ts.nngp, k_st.nngp.T)
  assert np.all(np.asarray(k_st.ndk) == 0)
  assert np.all(np.asarray(k_ts.ndk) > 0)
  k_same = net.ndk_fn(X1, None, t, s, temperature=temperature)
  diag = np.diag(np.asarray(k_same.nngp))
  bound = np.sqrt(np.asarray(k_same.cov1) * np.asarray(k_same.cov2))
  assert np.all(diag < bound * (1 - 1e-3))
  k_equal = net.ndk_fn(X1, None, t, t, temperature=temperature)
  assert_close(np.diag(np.asarray(k_equal.nngp)), k_equal.cov1)


def test_time_grid_matches_pointwise_evaluation():
  build, x1, x2, _ = _architectures(stax)['cnn']
  net = build()
  t1 = jnp.array([0.0, 0.5, 2.0])
  t2 = jnp.array([0.3, 2.0])
  grid = net.ndk_fn(x1, x2, t1, t2, temperature=0.3)
  assert grid.nngp.shape == (3, 2, 3, 2) and grid.cov1.shape == (3, 3) and grid.cov2.shape == (2, 2)
  for i, a in enumerate(t1):
    for j, b in enumerate(t2):
      k = net.ndk_fn(x1, x2, float(a), float(b), temperature=0.3)
      assert_close(grid.nngp[i, j], k.nngp)
      assert_close(grid.ndk[i, j], k.ndk)
      assert_close(grid.cov1[i], k.cov1)
      assert_close(grid.cov2[j], k.cov2)
  row = net.ndk_fn(x1, x2, 0.5, t2, temperature=0.3)
  assert row.nngp.shape == (2, 3, 2)
  assert_close(row.nngp, grid.nngp[1])


# Square grids with t1 == t2 and x2 = None: only pairs t >= s are evaluated (the causal triangle), the rest from
# C(s, t, x', x) = C(t, s, x, x') and R(s, t) = 0 for s < t. Unsorted times, a repeated time and t = inf.
SQUARE_TIMES = np.array([2.0, 0.0, 0.5, 2.0, np.inf, 0.3])
SEQ3 = jax.random.normal(jax.random.PRNGKey(4), (3, 4, 5))

SQUARE_GRID_NETS = {
  'erf_mlp': (lambda: _mixed_net(stax.Erf), X1),
  'relu_mlp': (lambda: _mixed_net(stax.Relu), X1),
  'cnn_pool': (_architectures(stax)['cnn'][0], IMG),
  'cnn_spatial_output': (
    lambda: stax.serial(
      stax.Conv(3, (3, 3), W_std=1.3, b_std=0.2, W_prior_std=1.0, padding='SAME'),
      stax.Erf(),
      stax.AvgPool((2, 2)),
      stax.Conv(2, (2, 2), W_std=1.4),
    ),
    IMG,
  ),
  'dropout': (
    lambda: stax.serial(stax.Dense(8, b_std=0.1), stax.Relu(), stax.Dropout(0.7, mode='train'), stax.Dense(1)),
    X1,
  ),
  'attention': (
    lambda: stax.serial(
      stax.Dense(6),
      stax.GlobalSelfAttention(6, 6, 6, 2, b_std=0.1, W_value_prior_std=0.7),
      stax.Erf(),
      stax.GlobalAvgPool(),
      stax.Dense(1),
    ),
    SEQ3,
  ),
}


@pytest.mark.filterwarnings('ignore:Linear scaling attention')
@pytest.mark.parametrize('name', list(SQUARE_GRID_NETS))
def test_square_grid_evaluates_causal_triangle_equal_to_full_grid(name, monkeypatch):
  build, x = SQUARE_GRID_NETS[name]
  net = build()
  triangles = []
  causal_triangle = stax._causal_triangle

  def counting(pair, tv, high, low, *rest):
    triangles.append(high.size)  # evaluated pairs
    return causal_triangle(pair, tv, high, low, *rest)

  monkeypatch.setattr(stax, '_causal_triangle', counting)
  half = net.ndk_fn(x, None, SQUARE_TIMES, SQUARE_TIMES.copy(), temperature=0.3)
  n = len(SQUARE_TIMES)
  assert triangles == [n * (n + 1) // 2]
  full = net.ndk_fn(x, x, SQUARE_TIMES, SQUARE_TIMES, temperature=0.3)  # x2 given: every pair evaluated
  assert triangles == [n * (n + 1) // 2]
  for field, a, b in zip(half._fields, half, full):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-12, err_msg=field)
  later = SQUARE_TIMES[:, None] < SQUARE_TIMES[None, :]
  assert np.all(np.asarray(half.ndk)[later] == 0)  # exact zeros, as the full grid's rule gives


def test_square_grid_under_jit_uses_the_triangle_only_for_the_same_traced_times(monkeypatch):
  net = _mixed_net(stax.Erf)
  full = net.ndk_fn(X1, X1, SQUARE_TIMES, SQUARE_TIMES, temperature=0.3)
  triangles = []
  causal_triangle = stax._causal_triangle
  monkeypatch.setattr(stax, '_causal_triangle', lambda *a: triangles.append(1) or causal_triangle(*a))
  same = jax.jit(lambda t: net.ndk_fn(X1, None, t, t, temperature=0.3))(SQUARE_TIMES)
  assert triangles == [1]  # t1 is t2: known statically although traced
  distinct = jax.jit(lambda t, s: net.ndk_fn(X1, None, t, s, temperature=0.3))(SQUARE_TIMES, SQUARE_TIMES)
  assert triangles == [1]  # traced, values unknown: the full grid
  for k in (same, distinct):
    for field, a, b in zip(k._fields, k, full):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-12, err_msg=field)


def test_grids_that_are_not_square_in_the_same_inputs_use_the_full_grid(monkeypatch):
  monkeypatch.setattr(stax, '_causal_triangle', lambda *a: pytest.fail('the causal triangle was used'))
  net = _mixed_net(stax.Erf)
  t = jnp.array([0.0, 1.0])
  net.ndk_fn(X1, X1, t, t, temperature=0.3)  # x2 given
  net.ndk_fn(X1, None, t, t + 1e-9, temperature=0.3)  # different times
  net.ndk_fn(X1, None, t, t[:1], temperature=0.3)


# Memory of time grids: refused up front (resources.ndk_grid_bytes), and that estimate bounds the measured peak.
_GRID_REQUEST = """
import json
import jax
jax.config.update('jax_enable_x64', True)
import numpy as np
from ndk_flax import resources, stax


def rss(field):
  return next(int(line.split()[1]) * 1024 for line in open('/proc/self/status') if line.startswith(field + ':'))


estimates = []
require_memory = resources.require_memory
resources.require_memory = lambda what, needed, **kw: estimates.append(needed) or require_memory(what, needed, **kw)
net = stax.serial(stax.Dense(16, W_std=1.2, b_std=0.1), stax.Erf(), stax.Dense(16, W_std=1.2), stax.Relu(),
                  stax.Dense(1, W_std=1.2))
x = np.random.default_rng(0).normal(size=({n_points}, 3))
times = np.geomspace(1e-2, 10.0, {n_times})
net.ndk_fn(x[:2], None, times[:2], times[:2], temperature=0.1)
before = rss('VmRSS')
try:
  jax.block_until_ready(net.ndk_fn(x, {x2}, times, times, temperature=0.1))
  message = None
except MemoryError as e:
  message = str(e)
# VmHWM: the peak of this process's own memory (ru_maxrss would be inherited from a forking parent).
print(json.dumps(dict(message=message, rss=rss('VmHWM'), increase=rss('VmHWM') - before, estimate=estimates[-1])))
"""


def _grid_request(n_points: int, n_times: int, x2: str) -> dict:
  code = _GRID_REQUEST.format(n_points=n_points, n_times=n_times, x2=x2)
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('x2', ['None', 'x'], ids=['causal triangle', 'full grid'])
def test_huge_time_grid_is_refused_before_any_allocation(x2):
  """A 4000 x 4000 time grid on 50 points (0.6 TB of kernels): MemoryError naming the bytes needed and available and
  what to change, with the process's peak RSS far below the request; an 8 x 8 grid on the same points is computed."""
  huge = _grid_request(50, 4000, x2)
  assert huge['message'] is not None, 'the request was not refused'
  assert re.search(r'needs about [\d.e+]+ GiB, but only [\d.e+]+ GiB are available', huge['message'])
  assert 'fewer times' in huge['message'] and 'blocks' in huge['message']
  assert huge['rss'] < 2**30
  assert _grid_request(50, 8, x2)['message'] is None


@pytest.mark.slow
@pytest.mark.parametrize('x2', ['None', 'x'], ids=['causal triangle', 'full grid'])
def test_time_grid_memory_estimate_bounds_the_measured_peak(x2):
  """64 x 64 times on 100 points (0.6 GB of results, one batch of 4096 pairs): the peak RSS increase of the call
  stays below resources.ndk_grid_bytes, which is not more than 3x too cautious."""
  measured = _grid_request(100, 64, x2)
  assert measured['message'] is None
  assert measured['estimate'] / 3 < measured['increase'] < measured['estimate']


def test_float32_inputs_give_finite_kernels():
  net = mlp(stax, stax.Erf, 1.2)
  k = net.ndk_fn(X1.astype(jnp.float32), None, jnp.array([0.0, 1.0]), jnp.array([0.0, 1.0]), temperature=0.1)
  assert np.all(np.isfinite(np.asarray(k.ndk)))


# ---------------------------------------------------------------------------------------------------------
# Drop-in behaviour and input validation.


def test_layers_unpack_as_neural_tangents_triples():
  init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(8, W_std=1.5, b_std=0.1), stax.Relu(), stax.Dense(2))
  _, params = init_fn(KEY, X1.shape)
  assert apply_fn(params, X1).shape == (4, 2)
  expected = nt_stax.serial(nt_stax.Dense(8, W_std=1.5, b_std=0.1), nt_stax.Relu(), nt_stax.Dense(2))[2]
  assert_close(kernel_fn(X1, X2, 'ntk'), expected(X1, X2, 'ntk'))
  # Our layers also work inside Neural Tangents' own combinators and predictors.
  nt_net = nt_stax.serial(stax.Dense(8), stax.Erf(), stax.Dense(1))
  predict = nt_predict.gradient_descent_mse_ensemble(nt_net[2], X1, jnp.ones((4, 1)))
  assert predict(1.0, X2, 'ntk').shape == (3, 1)


def test_plain_neural_tangents_parameter_free_layer_is_accepted():
  net = stax.serial(
    stax.Dense(8), nt_stax.serial(nt_stax.Relu(), nt_stax.Identity()), stax.Dense(8), nt_stax.Erf(), stax.Dense(1)
  )
  expected = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(8), stax.Erf(), stax.Dense(1)).ndk_fn(
    X1, None, 1.0, 0.0, temperature=0.2
  )
  k = net.ndk_fn(X1, None, 1.0, 0.0, temperature=0.2)
  assert_close(k.ndk, expected.ndk)


def test_plain_neural_tangents_parametric_layers_are_rejected_with_replacement_named():
  with pytest.raises(TypeError, match='ndk_flax.stax.Dense'):
    stax.serial(stax.Erf(), nt_stax.Dense(3))
  hidden = stax.serial(stax.Dense(4), nt_stax.serial(nt_stax.Relu(), nt_stax.Dense(3)))
  with pytest.raises(TypeError, match='trainable parameters'):
    hidden.ndk_fn(X1, None, 0.0, 0.0, temperature=0.1)


def test_self_attention_fails_clearly():
  attn = stax.serial(
    stax.GlobalSelfAttention(4, 4, 4, 1, linear_scaling=False, attention_mechanism='IDENTITY'),
    stax.Flatten(),
    stax.Dense(1),
  )
  assert attn[2](jnp.ones((2, 3, 4)), None, 'nngp').shape == (2, 2)
  with pytest.raises(NotImplementedError, match='GlobalSelfAttention'):
    attn.ndk_fn(jnp.ones((2, 3, 4)), None, 0.0, 0.0, temperature=0.0)


@pytest.mark.parametrize(
  'kwargs,match',
  [
    (dict(temperature=-0.1), 'temperature'),
    (dict(temperature=float('nan')), 'temperature'),
    (dict(temperature=0.1, t1=-1.0), 't1'),
    (dict(temperature=0.1, t2=float('nan')), 't2'),
    (dict(temperature=0.1, t1=np.zeros((2, 2))), 't1'),
    (dict(temperature=0.1, x2=jnp.ones((3, 4))), 'x1.*x2'),
    (dict(temperature=0.1, x1=jnp.ones(5)), 'x1'),
    (dict(temperature=0.1, x1=jnp.full((2, 5), jnp.nan)), 'x1'),
  ],
)
def test_ndk_fn_rejects_bad_input(kwargs, match):
  net = mlp(stax, stax.Erf, 1.0)
  args = dict(x1=X1, x2=None, t1=0.0, t2=0.0)
  args.update(kwargs)
  temperature = args.pop('temperature')
  with pytest.raises((ValueError, TypeError), match=match):
    net.ndk_fn(args['x1'], args['x2'], args['t1'], args['t2'], temperature=temperature)


@pytest.mark.parametrize(
  'kwargs,match',
  [
    (dict(W_std=-1.0), 'W_std'),
    (dict(W_prior_std=0.0), 'W_prior_std'),
    (dict(b_std=0.1, b_prior_std=-2.0), 'b_prior_std'),
    (dict(b_prior_std=1.0), 'b_std'),
    (dict(parameterization='mean_field'), 'parameterization'),
    (dict(W_std='big'), 'W_std'),
  ],
)
def test_parametric_layers_reject_bad_stds(kwargs, match):
  with pytest.raises((ValueError, TypeError), match=match):
    stax.Dense(3, **kwargs)


def test_every_neural_tangents_layer_is_importable_with_same_signature():
  import inspect

  for name in nt_stax.__dict__:
    if name.startswith('_') or not callable(getattr(nt_stax, name)):
      continue
    ours = getattr(stax, name)
    theirs = getattr(nt_stax, name)
    ours_params = list(inspect.signature(ours).parameters)
    theirs_params = list(inspect.signature(theirs).parameters)
    assert ours_params[: len(theirs_params)] == theirs_params, name


# ---------------------------------------------------------------------------------------------------------
# Monte Carlo: finite networks with weights drawn from the exact free OU process at times t and s.


def _ou_pair_draw(key, shape, group_init, group_prior, temperature, t, s):
  lam = temperature / group_prior**2
  ctt = ref.ou_c(t, t, group_init**2, group_prior**2, lam)
  css = ref.ou_c(s, s, group_init**2, group_prior**2, lam)
  cts = ref.ou_c(t, s, group_init**2, group_prior**2, lam)
  k1, k2 = jax.random.split(key)
  z1 = jax.random.normal(k1, shape)
  z2 = jax.random.normal(k2, shape)
  a = np.sqrt(css)
  theta_s = a * z1
  theta_t = cts / a * z1 + np.sqrt(ctt - cts**2 / css) * z2
  return theta_t, theta_s, ref.ou_r(t, s, lam)


@pytest.mark.slow
def test_monte_carlo_finite_width_matches_two_time_kernels():
  """Width-1024 erf network, two hidden layers with biases, σ0 ≠ σ, weights drawn at times t and s.

  C: the hidden layers are sampled; the readout is averaged analytically given them (Rao–Blackwell):
  E[f(x,t) f(x',s) | hidden] = c_W(t,s) φ(x,t)·φ(x',s)/N + c_b(t,s). R: gradient inner products weighted by the
  response r_g(t,s) of each parameter group. Both self-average at width N (fluctuation O(1/√N) per network);
  the standard error comes from the spread across 128 networks. Tolerance: 4 standard errors (elementwise,
  12 entries, and for the overall projection ratio) plus the finite-width bias allowance 3/N of the kernel
  scale (the O(1/N) correction of a 2-hidden-layer network). Checked when written: the test fails when `nngp`
  is scaled by ±6 % or `ndk` by ±4 %.
  """
  width, n_nets, temperature, t, s = 1024, 128, 0.5, 1.5, 0.5
  net = _mixed_net(stax.Erf)
  theory = net.ndk_fn(X1, X2, t, s, temperature=temperature)
  dims = [X1.shape[1], width, width, 1]
  w0_out, w_out, b0_out, b_out = MIXED_LAYERS[-1]
  c_w_out = ref.ou_c(t, s, w0_out**2, w_out**2, temperature / w_out**2)
  c_b_out = ref.ou_c(t, s, b0_out**2, b_out**2, temperature / b_out**2)

  def forward(params, x, readout=True):
    h = x
    for i, (w, b) in enumerate(params):
      if i == len(params) - 1 and not readout:
        return h
      h = h @ w / np.sqrt(w.shape[0]) + (0.0 if b is None else b)
      if i < len(params) - 1:
        h = jax.scipy.special.erf(h)
    return h

  @jax.jit
  def one_network(key):
    params_t, params_s, resp = [], [], []
    for i, (w0, w, b0, b) in enumerate(MIXED_LAYERS):
      key, kw, kb = jax.random.split(key, 3)
      wt, ws, rw = _ou_pair_draw(kw, (dims[i], dims[i + 1]), w0, w, temperature, t, s)
      if b0 is None:
        bt = bs = None
        rb = 0.0
      else:
        bt, bs, rb = _ou_pair_draw(kb, (dims[i + 1],), b0, b, temperature, t, s)
      params_t.append((wt, bt))
      params_s.append((ws, bs))
      resp.append((rw, rb))
    phi_t = forward(params_t, X1, readout=False)
    phi_s = forward(params_s, X2, readout=False)
    c_emp = c_w_out * phi_t @ phi_s.T / width + c_b_out
    jt = jax.jacrev(lambda p: forward(p, X1)[:, 0])(params_t)
    js = jax.jacrev(lambda p: forward(p, X2)[:, 0])(params_s)
    r_emp = 0.0
    for (gw_t, gb_t), (gw_s, gb_s), (rw, rb) in zip(jt, js, resp):
      r_emp += rw * jnp.einsum('a...,b...->ab', gw_t, gw_s)
      if gb_t is not None:
        r_emp += rb * jnp.einsum('a...,b...->ab', gb_t, gb_s)
    return c_emp, r_emp

  keys = jax.random.split(jax.random.PRNGKey(7), n_nets)
  for empirical, expected in zip(jax.lax.map(one_network, keys), (theory.nngp, theory.ndk)):
    empirical, expected = np.asarray(empirical), np.asarray(expected)
    se = empirical.std(0, ddof=1) / np.sqrt(n_nets)
    scale = np.max(np.abs(expected))
    assert np.all(np.abs(empirical.mean(0) - expected) < 4 * se + 3 / width * scale)
    # Overall scale: projection ratio ρ = <emp, theory>/<theory, theory> per network, mean within 4 SE of 1.
    ratios = np.einsum('nab,ab->n', empirical, expected) / np.sum(expected**2)
    assert abs(ratios.mean() - 1) < 4 * ratios.std(ddof=1) / np.sqrt(n_nets) + 3 / width


# ---------------------------------------------------------------------------------------------------------
# Drop-in sweep (issue 11): every public layer and combinator of neural_tangents.stax, float64.

VEC = jax.random.normal(jax.random.PRNGKey(10), (3, 5), jnp.float64)
VEC2 = jax.random.normal(jax.random.PRNGKey(11), (2, 5), jnp.float64)
SEQ = jax.random.normal(jax.random.PRNGKey(12), (3, 4, 3), jnp.float64)
SEQ2 = jax.random.normal(jax.random.PRNGKey(13), (2, 4, 3), jnp.float64)
PIX = jax.random.normal(jax.random.PRNGKey(14), (3, 4, 4, 2), jnp.float64)
PIX2 = jax.random.normal(jax.random.PRNGKey(15), (2, 4, 4, 2), jnp.float64)


def _head(lib, layer, flatten=False):
  """Dense(8) -> layer -> [Flatten] -> Dense(1), unit W_std, no bias (so NT's ntk / σ0² = NT's ntk)."""
  return lib.serial(lib.Dense(8), layer, *([lib.Flatten()] if flatten else []), lib.Dense(1))


def _sweep(lib):
  ew = lambda layer: (_head(lib, layer), VEC, VEC2)
  img = lambda *layers: (
    lib.serial(lib.Conv(4, (2, 2), padding='SAME'), *layers, lib.Flatten(), lib.Dense(1)),
    PIX,
    PIX2,
  )
  return {
    'ABRelu': ew(lib.ABRelu(-0.3, 1.2)),
    'Abs': ew(lib.Abs()),
    'Cos': ew(lib.Cos()),
    'Erf': ew(lib.Erf()),
    'Exp': ew(lib.Exp()),
    'ExpNormalized': ew(lib.ExpNormalized()),
    'Gabor': ew(lib.Gabor()),
    'Gaussian': ew(lib.Gaussian()),
    'Gelu': ew(lib.Gelu()),
    'Hermite': ew(lib.Hermite(2)),
    'LeakyRelu': ew(lib.LeakyRelu(0.1)),
    'Monomial': ew(lib.Monomial(2)),
    'Polynomial': ew(lib.Polynomial([0.1, 1.0, 0.3])),
    'Rbf': ew(lib.Rbf()),
    'Relu': ew(lib.Relu()),
    'Sigmoid_like': ew(lib.Sigmoid_like()),
    'Sign': ew(lib.Sign()),
    'Sin': ew(lib.Sin()),
    'Elementwise': ew(
      lib.Elementwise(jnp.sin, lambda c, x, y: 0.5 * jnp.exp(-(x + y) / 2) * (jnp.exp(c) - jnp.exp(-c)))
    ),
    'ElementwiseNumerical': ew(lib.ElementwiseNumerical(jnp.tanh, deg=25)),
    'Identity': ew(lib.Identity()),
    'Dropout': ew(lib.Dropout(0.8, mode='train')),
    'LayerNorm': ew(lib.LayerNorm()),
    'Dense_bias_prior': (
      lib.serial(lib.Dense(8, 1.0, 0.0), lib.Relu(), lib.Dense(1, 1.0, 0.0)),
      VEC,
      VEC2,
    ),
    'Conv': img(lib.Relu()),
    'ConvTranspose': img(lib.ConvTranspose(3, (2, 2), padding='SAME'), lib.Relu()),
    'ConvLocal': img(lib.Relu(), lib.ConvLocal(3, (2, 2))),
    'AvgPool': img(lib.Relu(), lib.AvgPool((2, 2))),
    'SumPool': img(lib.Relu(), lib.SumPool((2, 2))),
    'GlobalAvgPool': img(lib.Relu(), lib.GlobalAvgPool()),
    'GlobalSumPool': img(lib.Relu(), lib.GlobalSumPool()),
    'ImageResize': img(lib.Relu(), lib.ImageResize((3, 6, 6, -1), 'linear')),
    'Index': (
      lib.serial(lib.Dense(4), lib.Relu(), lib.Index(lib.Slice[:, 1:3]), lib.Flatten(), lib.Dense(1)),
      SEQ,
      SEQ2,
    ),
    'Aggregate': (lib.serial(lib.Dense(4), lib.Relu(), lib.Aggregate(), lib.GlobalSumPool(), lib.Dense(1)), SEQ, SEQ2),
    'DotGeneral': (
      lib.serial(lib.Dense(4), lib.Relu(), lib.DotGeneral(rhs=2.0), lib.Flatten(), lib.Dense(1)),
      SEQ,
      SEQ2,
    ),
    'FanOut_FanInSum_parallel': (
      lib.serial(
        lib.Dense(8), lib.Relu(), lib.FanOut(2), lib.parallel(lib.Dense(8), lib.Dense(8)), lib.FanInSum(), lib.Dense(1)
      ),
      VEC,
      VEC2,
    ),
    'FanInProd': (
      lib.serial(lib.FanOut(2), lib.parallel(lib.Dense(8), lib.Dense(8)), lib.FanInProd(), lib.Dense(1)),
      VEC,
      VEC2,
    ),
    'FanInConcat': (
      lib.serial(lib.Dense(8), lib.FanOut(2), lib.parallel(lib.Relu(), lib.Erf()), lib.FanInConcat(), lib.Dense(1)),
      VEC,
      VEC2,
    ),
    'repeat': (lib.serial(lib.Dense(8), lib.repeat(lib.serial(lib.Relu(), lib.Dense(8)), 2), lib.Dense(1)), VEC, VEC2),
  }


SWEEP_NAMES = sorted(_sweep(nt_stax))


def test_sweep_covers_every_public_name_of_neural_tangents_stax():
  covered = {'Dense', 'Flatten', 'serial', 'Slice', 'FanOut', 'FanInSum', 'parallel'}
  covered |= {n.split('_')[0] for n in SWEEP_NAMES} | set(SWEEP_NAMES)
  helpers = {'AggregateImplementation', 'AttentionMechanism', 'Bool', 'Diagonal', 'MaskedArray', 'Padding'}
  helpers |= {'PositionalEmbedding', 'layer', 'requires', 'supports_masking', 'unmask_fn'}
  public = {n for n in dir(nt_stax) if not n.startswith('_')}
  # GlobalSelfAttention: its two-time rule is ndk_flax/attention.py's (tests there); its triple is checked below.
  # RectifiedMonomial: NT's own cov1 is NaN (checked below: ndk_fn refuses it, naming the field).
  assert public - covered - helpers == {'GlobalSelfAttention', 'RectifiedMonomial'}
  for name in helpers | {'Slice'}:
    assert getattr(stax, name) is getattr(nt_stax, name), name


@pytest.mark.parametrize('name', SWEEP_NAMES)
def test_sweep_ndk_fn_at_time_zero_is_neural_tangents_and_the_triple_is_identical(name):
  with jax.enable_x64(True):
    ours, x1, x2 = _sweep(stax)[name]
    theirs = _sweep(nt_stax)[name][0]
    x1, x2 = x1.astype(jnp.float64), x2.astype(jnp.float64)
    _, p_ours = ours.init_fn(jax.random.PRNGKey(5), x1.shape)
    _, p_theirs = theirs[0](jax.random.PRNGKey(5), x1.shape)
    assert jax.tree.structure(p_ours) == jax.tree.structure(p_theirs)
    assert all(jnp.array_equal(a, b) for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_theirs)))
    apply_kw = {'rng': jax.random.PRNGKey(6)} if name == 'Dropout' else {}
    if name == 'Aggregate':
      adjacency = [jax.random.bernoulli(jax.random.PRNGKey(n), 0.5, (n, 4, 4)).astype(x1.dtype) for n in (3, 2)]
      apply_kw = {'pattern': adjacency[0]}
    if name == 'ExpNormalized':  # NT defines no forward pass for it
      with pytest.raises(NotImplementedError):
        ours.apply_fn(p_ours, x1)
    else:
      np.testing.assert_array_equal(ours.apply_fn(p_ours, x1, **apply_kw), theirs[1](p_theirs, x1, **apply_kw))
    for second in (None, x2):
      kw = {'pattern': (adjacency[0], adjacency[0] if second is None else adjacency[1])} if name == 'Aggregate' else {}
      k = ours.ndk_fn(x1, second, 0.0, 0.0, temperature=0.3, **kw)
      want = theirs[2](x1, second, ('nngp', 'ntk', 'cov1', 'cov2'), **kw)
      # rtol 1e-8: NT's x2 = None path evaluates the diagonal with other float64 roundings (seen: 7e-10).
      assert_close(k.nngp, want.nngp, rtol=1e-8)
      assert_close(k.ndk, want.ntk, rtol=1e-8)
      assert_close(k.cov1, want.cov1, rtol=1e-8)
      if second is not None:
        assert_close(k.cov2, want.cov2, rtol=1e-8)
    k = ours.ndk_fn(x1, x2, jnp.array([0.5, 3.0]), jnp.array([0.2, 3.0]), temperature=0.3, **kw)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in k)


def test_self_attention_triple_is_neural_tangents():
  ours = stax.GlobalSelfAttention(4, 4, 4, 2, linear_scaling=False, attention_mechanism='IDENTITY')
  theirs = nt_stax.GlobalSelfAttention(4, 4, 4, 2, linear_scaling=False, attention_mechanism='IDENTITY')
  _, p1 = ours.init_fn(KEY, SEQ.shape)
  _, p2 = theirs[0](KEY, SEQ.shape)
  assert all(jnp.array_equal(a, b) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)))
  np.testing.assert_array_equal(ours.apply_fn(p1, SEQ), theirs[1](p2, SEQ))
  assert_close(ours.kernel_fn(SEQ, SEQ2, 'nngp'), theirs[2](SEQ, SEQ2, 'nngp'))


def test_non_finite_kernels_raise_naming_the_field():
  net = stax.serial(stax.Dense(8), stax.RectifiedMonomial(2), stax.Dense(1))
  assert bool(
    jnp.all(
      jnp.isnan(nt_stax.serial(nt_stax.Dense(8), nt_stax.RectifiedMonomial(2), nt_stax.Dense(1))[2](VEC, VEC2, 'cov1'))
    )
  )  # NT's own closed form
  with pytest.raises(FloatingPointError, match='cov1'):
    net.ndk_fn(VEC, VEC2, 0.0, 0.0, temperature=0.1)
  with pytest.raises(FloatingPointError, match='nngp'):
    stax.serial(stax.Dense(1, W_std=1e200), stax.Dense(1, W_std=1e200)).ndk_fn(VEC, None, 1.0, 1.0, temperature=0.1)


def test_drop_in_arguments_accepted_by_neural_tangents():
  assert stax.Slice is nt_stax.Slice
  # Zero stds: the group is absent, as in NT at T = 0; W_std = 0 with a prior is a group started at zero.
  assert stax.Dense(5, 1.0, 0.0).spec.bias is None and len(stax.Dense(5, 1.0, 0.0).groups) == 1
  assert stax.Dense(5, 0.0).spec.weight is None
  assert stax.Dense(5, 0.0, W_prior_std=1.0).groups[0].init_std == 0.0
  # 'standard': NT's triple; only ndk_fn refuses, saying why and what works.
  std = stax.serial(stax.Dense(8, parameterization='standard'), stax.Relu(), stax.Dense(1, parameterization='standard'))
  nt_std = nt_stax.serial(
    nt_stax.Dense(8, parameterization='standard'), nt_stax.Relu(), nt_stax.Dense(1, parameterization='standard')
  )
  assert_close(std.kernel_fn(X1, X2, 'ntk'), nt_std[2](X1, X2, 'ntk'))
  with pytest.raises(ValueError, match="parameterization='ntk'"):
    std.ndk_fn(X1, None, 0.0, 0.0, temperature=0.0)
  # repeat: NT's stacked parameter tree; n = 0 is the identity.
  block = stax.serial(stax.Dense(5, 1.2, 0.1), stax.Relu())
  ours, theirs = stax.repeat(block, 3), nt_stax.repeat(nt_stax.serial(nt_stax.Dense(5, 1.2, 0.1), nt_stax.Relu()), 3)
  _, p1 = ours.init_fn(KEY, X1.shape)
  _, p2 = theirs[0](KEY, X1.shape)
  assert jax.tree.structure(p1) == jax.tree.structure(p2)
  np.testing.assert_array_equal(ours.apply_fn(p2, X1), theirs[1](p2, X1))
  assert_close(ours.ndk_fn(X1, X2, 0.0, 0.0, temperature=0.5).nngp, theirs[2](X1, X2, 'nngp'))
  assert_close(stax.repeat(stax.Relu(), 0).ndk_fn(X1, X2, 1.0, 0.5, temperature=0.1).nngp, X1 @ X2.T / 5)
  assert stax.Dense(np.int64(3)).spec.out_dim == 3


def test_ndk_fn_forwards_neural_tangents_keyword_arguments():
  masked = SEQ.at[:, 3:].set(-99.0)
  net = stax.serial(stax.Dense(8), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1))
  nt_net = nt_stax.serial(nt_stax.Dense(8), nt_stax.Relu(), nt_stax.GlobalAvgPool(), nt_stax.Dense(1))
  k = net.ndk_fn(masked, None, 0.0, 0.0, temperature=0.2, mask_constant=-99.0)
  assert_close(k.nngp, nt_net[2](masked, None, 'nngp', mask_constant=-99.0))
  assert not np.allclose(k.nngp, nt_net[2](masked, None, 'nngp'))  # the mask changes the kernel
  adjacency = (jax.random.bernoulli(KEY, 0.5, (3, 4, 4)).astype(SEQ.dtype),) * 2
  graph = stax.serial(stax.Dense(8), stax.Relu(), stax.Aggregate(), stax.GlobalSumPool(), stax.Dense(1))
  nt_graph = nt_stax.serial(
    nt_stax.Dense(8), nt_stax.Relu(), nt_stax.Aggregate(), nt_stax.GlobalSumPool(), nt_stax.Dense(1)
  )
  assert_close(
    graph.ndk_fn(SEQ, None, 0.0, 0.0, temperature=0.2, pattern=adjacency).nngp,
    nt_graph[2](SEQ, None, 'nngp', pattern=adjacency),
    rtol=1e-6,
  )


def test_dropout_train_mode_at_equal_times_is_neural_tangents():
  net = stax.serial(stax.Dense(8), stax.Relu(), stax.Dropout(0.7, mode='train'), stax.Dense(1))
  nt_net = nt_stax.serial(nt_stax.Dense(8), nt_stax.Relu(), nt_stax.Dropout(0.7, mode='train'), nt_stax.Dense(1))
  k = net.ndk_fn(X1, None, jnp.array([0.0, 2.0]), jnp.array([0.0, 2.0]), temperature=0.0)
  want = nt_net[2](X1, None, 'nngp')
  assert_close(k.nngp[0, 0], want, rtol=1e-6)
  assert_close(k.nngp[1, 1], want, rtol=1e-6)
  assert not np.allclose(k.nngp[0, 1], want)  # t1 != t2: not the same draw of the inputs


def test_jit_over_times_and_temperature():
  net = mlp(stax, stax.Erf, 1.0)
  f = jax.jit(lambda t, temperature: net.ndk_fn(X1, None, t, 0.0, temperature=temperature).ndk)
  assert_close(f(1.0, 0.2), net.ndk_fn(X1, None, 1.0, 0.0, temperature=0.2).ndk, rtol=1e-6)


@pytest.mark.parametrize(
  'call,match',
  [
    (lambda net: net.ndk_fn(X1, None, [], 0.0, temperature=0.1), 't1'),
    (lambda net: net.ndk_fn(jnp.ones((0, 5)), None, 0.0, 0.0, temperature=0.1), 'x1'),
    (lambda net: net.ndk_fn(jnp.ones((3, 0)), None, 0.0, 0.0, temperature=0.1), 'x1'),
    (lambda net: net.ndk_fn(X1.astype(jnp.complex64), None, 0.0, 0.0, temperature=0.1), 'real'),
    (lambda net: stax.serial(), 'serial'),
    (lambda net: stax.Dense(0), 'out_dim'),
  ],
)
def test_degenerate_input_gives_clear_errors(call, match):
  with pytest.raises((ValueError, TypeError), match=match):
    call(mlp(stax, stax.Erf, 1.0))
