"""Formulas stated in docs/theory.md that the other test files do not check, and its section citations.

* §3.5: R(0, 0) with biases and unequal stds is Neural Tangents' NTK in its 'standard' parameterisation with
  s = (fan_in, 1) in every layer, and it is NOT NT's 'ntk'-parameterisation ntk / σ0² (which holds only when every
  group, biases included, starts at the same σ0). At equilibrium R(t, t) is the same raw NTK at the prior stds.
* §2.2: the per-group fluctuation–dissipation defect (1/T) ∂_s c − r = (1 − σ0²/σ²) e^{−λ(t+s)}.
* §4.4–4.5 (slow): T = 0 with biases equals NT's gradient_descent_mse_ensemble on that raw kernel at
  t_NT = t · y.size; t = ∞ equals NT's gp_inference on the NNGP at the prior stds with noise variance T.
* §5.1: for ReLU without bias, Θ0 ∝ σ0^{2L} with L the number of hidden layers.
* Every `docs/theory.md §n` (or legacy `THEORY.md §n`) cited in the tree names a section the document has.
"""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ndk_flax import predict, stax
from ndk_flax._nt import nt_predict, nt_stax

RNG = np.random.default_rng(0)
X1 = RNG.normal(size=(4, 5))
X2 = RNG.normal(size=(3, 5))
WIDTH = 16
# (σ0_W, σ0_b) per Dense layer: biases whose init std differs from the weights', and unequal weight stds.
INIT = [(1.3, 0.4), (0.9, 0.7), (1.1, 0.2)]
PRIOR = [(0.8, 0.6), (1.4, 0.3), (1.0, 0.5)]  # (σ_W, σ_b) per layer, all different from INIT


def _mlp(lib, stds, standard=False, prior=None):
  """Dense, ReLU, Dense, Erf, Dense (the readout has one output). ``standard``: NT's standard parameterisation with
  s = (fan_in, 1), whose NTK weight term is (fan_in / s[0]) Σ̃ = Σ̃ (the raw one). ``prior``: (σ_W, σ_b) per layer
  (ndk_flax.stax only)."""
  fans = [X1.shape[1], WIDTH, WIDTH]
  outs = [WIDTH, WIDTH, 1]
  layers = []
  for i, ((w, b), fan, out) in enumerate(zip(stds, fans, outs)):
    extra = dict(parameterization='standard', s=(fan, 1)) if standard else {}
    if prior is not None:
      extra = dict(W_prior_std=prior[i][0], b_prior_std=prior[i][1])
    layers.append(lib.Dense(out, W_std=w, b_std=b, **extra))
    if i < len(stds) - 1:
      layers.append([lib.Relu, lib.Erf][i]())
  return lib.serial(*layers)


def _max_abs(a):
  return float(jnp.max(jnp.abs(jnp.asarray(a))))


def test_raw_ntk_with_biases_is_nt_standard_parameterisation_not_ntk_over_sigma0_squared():
  k = _mlp(stax, INIT).ndk_fn(X1, X2, 0.0, 0.0, temperature=0.0)
  standard = _mlp(nt_stax, INIT, standard=True)[2](X1, X2, ('nngp', 'ntk'))
  np.testing.assert_allclose(k.ndk, standard.ntk, rtol=1e-12, atol=1e-13)
  np.testing.assert_allclose(k.nngp, standard.nngp, rtol=1e-12, atol=1e-13)

  def ratio_gap(stds):  # ours − NT's ntk / σ0_W², relative (one σ0_W = 1.3 for every weight)
    ours = _mlp(stax, stds).ndk_fn(X1, X2, 0.0, 0.0, temperature=0.0).ndk
    return _max_abs(ours - _mlp(nt_stax, stds)[2](X1, X2, 'ntk') / 1.3**2) / _max_abs(ours)

  assert ratio_gap([(1.3, 0.4)] * 3) > 0.1  # biases at another σ0_b: not ntk / σ0²
  assert ratio_gap([(1.3, 1.3)] * 3) < 1e-12  # every group, biases too, at one σ0: ntk / σ0²


def test_raw_ntk_of_a_cnn_is_nt_standard_parameterisation():
  img1, img2 = RNG.normal(size=(3, 5, 5, 2)), RNG.normal(size=(2, 5, 5, 2))
  ours = stax.serial(
    stax.Conv(4, (3, 3), W_std=1.2, b_std=0.3, padding='SAME'), stax.Relu(), stax.Flatten(), stax.Dense(1, 0.9, 0.7)
  )
  theirs = nt_stax.serial(
    nt_stax.Conv(4, (3, 3), W_std=1.2, b_std=0.3, padding='SAME', parameterization='standard', s=(2 * 9, 1)),
    nt_stax.Relu(),
    nt_stax.Flatten(),
    nt_stax.Dense(1, W_std=0.9, b_std=0.7, parameterization='standard', s=(4 * 25, 1)),
  )[2]
  np.testing.assert_allclose(ours.ndk_fn(img1, img2, 0.0, 0.0, temperature=0.0).ndk, theirs(img1, img2, 'ntk'), 1e-12)


def test_equilibrium_response_is_the_raw_ntk_at_the_prior_stds():
  net = _mlp(stax, INIT, prior=PRIOR)
  expected = _mlp(nt_stax, PRIOR, standard=True)[2](X1, X2, 'ntk')
  np.testing.assert_allclose(net.ndk_fn(X1, X2, jnp.inf, jnp.inf, temperature=0.3).ndk, expected, rtol=1e-12)
  start = net.ndk_fn(X1, X2, 0.0, 0.0, temperature=0.3).ndk
  assert _max_abs(start - expected) > 0.03 * _max_abs(expected)  # σ0 ≠ σ: the two ends differ


def test_ou_fluctuation_dissipation_defect():
  """One Dense layer on the inputs: C = c_W(t, s) x·x'/d, R = r_W(t, s) x·x'/d, so the layer's two-time kernels
  carry the group's c and r; (1/T) ∂_s c − r must be (1 − σ0²/σ²) e^{−λ(t+s)} for t > s."""
  s0, s, temperature = 1.7, 0.9, 0.4
  lam = temperature / s**2
  layer = stax.Dense(1, W_std=s0, W_prior_std=s)
  x = X1[:1]
  unit = float(x[0] @ x[0]) / x.shape[1]
  for t, u in [(1.0, 0.2), (3.0, 2.5), (0.5, 0.0)]:
    dc_ds = jax.jacfwd(lambda v: layer.ndk_fn(x, x, t, v, temperature=temperature).nngp[0, 0])(u) / unit
    r = float(layer.ndk_fn(x, x, t, u, temperature=temperature).ndk[0, 0]) / unit
    assert r == pytest.approx(np.exp(-lam * (t - u)), rel=1e-12)
    assert dc_ds / temperature - r == pytest.approx((1 - s0**2 / s**2) * np.exp(-lam * (t + u)), rel=1e-10)


@pytest.mark.slow  # end to end through the predictor (~7 s CPU, compiles); the kernel identity above is fast
def test_zero_temperature_with_biases_is_nt_gradient_flow_on_the_raw_kernel():
  """NT's loss is averaged over y.size entries: its time is t · y.size on the raw kernel (two outputs here)."""
  x, x_test, y = X1, X2, RNG.normal(size=(4, 2))
  ours = predict.langevin_mse_ensemble(_mlp(stax, INIT), x, y, temperature=0.0)
  raw = nt_predict.gradient_descent_mse_ensemble(_mlp(nt_stax, INIT, standard=True)[2], x, y)
  times = np.array([0.0, 0.3, 2.0])
  a = ours(times, x_test, compute_cov=True)
  b = raw(times * y.size, x_test, 'ntk', compute_cov=True)
  np.testing.assert_allclose(a.mean, b.mean, atol=1e-10)
  np.testing.assert_allclose(a.covariance, b.covariance, atol=1e-10)


@pytest.mark.slow  # end to end through the predictor (~8 s CPU, compiles)
def test_equilibrium_predictor_is_nt_gp_inference_with_noise_temperature():
  x, x_test, y = X1, X2, RNG.normal(size=(4, 1))
  temperature = 0.2
  predictor = predict.langevin_mse_ensemble(_mlp(stax, INIT, prior=PRIOR), x, y, temperature=temperature)
  ours = predictor(jnp.inf, x_test, compute_cov=True)
  kernel_fn = _mlp(nt_stax, PRIOR)[2]
  gp = nt_predict.gp_inference(kernel_fn(x, None, 'nngp'), y, diag_reg=temperature, diag_reg_absolute_scale=True)
  theirs = gp('nngp', kernel_fn(x_test, x, 'nngp'), kernel_fn(x_test, None, 'nngp'))
  np.testing.assert_allclose(ours.mean, theirs.mean, atol=1e-12)
  np.testing.assert_allclose(ours.covariance, theirs.covariance, atol=1e-12)


@pytest.mark.parametrize('hidden', [1, 2])
def test_relu_ntk_scales_as_sigma0_to_the_2l(hidden):
  def net(w):
    layers = []
    for _ in range(hidden):
      layers += [stax.Dense(8, W_std=w), stax.Relu()]
    return stax.serial(*layers, stax.Dense(1, W_std=w))

  theta = [net(w).ndk_fn(X1, X2, 0.0, 0.0, temperature=0.0).ndk for w in (1.0, 2.0)]
  np.testing.assert_allclose(theta[1], 4.0**hidden * theta[0], rtol=1e-12)


ROOT = pathlib.Path(__file__).resolve().parents[1]
CITATION = re.compile(r'(?:docs/theory\.md|THEORY\.md) (§[0-9][0-9.]*(?:(?:[–-]|, )§?[0-9][0-9.]*)*)')


def test_cited_sections_exist():
  doc = (ROOT / 'docs' / 'theory.md').read_text(encoding='utf-8')
  headings = set(re.findall(r'^#+ §([0-9]+(?:\.[0-9]+)?) ', doc, flags=re.MULTILINE))
  assert {str(n) for n in range(1, 9)} <= headings, sorted(headings)
  cited = set()
  for path in [*ROOT.glob('ndk_flax/**/*.py'), *ROOT.glob('examples/**/*.py'), *ROOT.glob('benchmarks/*.py')]:
    for group in CITATION.findall(path.read_text(encoding='utf-8')):
      numbers = [n.rstrip('.') for n in re.findall(r'[0-9][0-9.]*', group)]
      cited.update((path.name, n) for n in numbers if n)
  assert cited, 'no citations of docs/theory.md found'
  missing = sorted((name, n) for name, n in cited if n not in headings)
  assert not missing, f'cited sections missing from docs/theory.md: {missing}'
