"""Two-time kernels of `ndk_flax.stax.GlobalSelfAttention` (docs/attention.md) checked three ways.

(a) T = 0, or t1 = t2 = 0: Neural Tangents' nngp / cov1 / cov2 and its ntk in the raw convention (ntk/σ0² for equal
    σ0 without bias; the per-group closed form otherwise).
(b) t = s → ∞ with prior stds ≠ init stds: NT's NNGP built with the prior stds; the fluctuation–dissipation
    identity R(t,s) = (1/T) ∂_s C(t,s) (jax.jacfwd in s).
(c) Monte Carlo of finite-width attention layers (NT's own apply_fn) whose weights are drawn from the exact OU pair
    law of (θ(t), θ(s)).
Plus an independent NumPy implementation of the formulas at t ≠ s, and the refusals.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ndk_flax import stax
from ndk_flax._nt import nt_stax
from tests import reference_kernels as ref

jax.config.update('jax_enable_x64', True)

pytestmark = pytest.mark.filterwarnings('ignore:Linear scaling attention used')

X1 = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5))
X2 = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 5))
MECHANISMS = ['SOFTMAX', 'IDENTITY', 'ABS', 'RELU']
NETWORK_MECHANISMS = ['SOFTMAX', 'RELU']  # deeper checks; one-layer checks cover all four φ

# (init std, prior std) per group; the tied query-key group has σ0² = σ0_Q σ0_K and σ² = σ_Q σ_K.
STDS = dict(W_query=(1.2, 0.8), W_key=(0.9, 1.4), W_value=(1.1, 0.7), W_out=(0.8, 1.3), b=(0.3, 0.5))


def assert_close(a, b, rtol=1e-10, atol=1e-12):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def attention(lib, mechanism, which=0, n_out=6, prior=False, **kw):
  """An attention layer with the stds of STDS (`which` = 0: init stds as NT's stds, 1: prior stds as NT's)."""
  stds = {f'{g}_std': v[which] for g, v in STDS.items() if g != 'b'}
  stds['b_std'] = STDS['b'][which]
  if prior:
    kw.update({f'{g}_prior_std': v[1] for g, v in STDS.items()})
  return lib.GlobalSelfAttention(n_out, 4, 4, 2, **stds, attention_mechanism=mechanism, **kw)


def network(lib, mechanism, which=0, prior=False):
  """Dense → Erf → attention → Erf → Flatten → Dense, with biases and distinct stds (erf gives logits of both signs)."""
  kw = lambda w, b: dict(W_std=w[which], b_std=b[which], **(dict(W_prior_std=w[1], b_prior_std=b[1]) if prior else {}))
  return lib.serial(
    lib.Dense(6, **kw((1.3, 0.9), (0.2, 0.4))),
    lib.Erf(),
    attention(lib, mechanism, which, prior=prior),
    lib.Erf(),
    lib.Flatten(),
    lib.Dense(1, **kw((1.1, 1.5), (0.1, 0.3))),
  )


# ---------------------------------------------------------------------------------------------------------
# (a) T = 0 or t1 = t2 = 0: Neural Tangents.


@pytest.mark.parametrize('mechanism', NETWORK_MECHANISMS)
@pytest.mark.parametrize('temperature,times', [(0.0, (0.0, 0.0)), (0.0, (3.0, 1.0)), (0.4, (0.0, 0.0))])
def test_zero_time_or_temperature_matches_neural_tangents_nngp(mechanism, temperature, times):
  ours = network(stax, mechanism, prior=True).ndk_fn(X1, X2, *times, temperature=temperature)
  theirs = network(nt_stax, mechanism)[2](X1, X2, ('nngp', 'cov1', 'cov2'))
  assert_close(ours.nngp, theirs.nngp)
  assert_close(ours.cov1, theirs.cov1)
  assert_close(ours.cov2, theirs.cov2)


@pytest.mark.parametrize('mechanism', NETWORK_MECHANISMS)
def test_zero_temperature_ndk_is_raw_ntk_neural_tangents_ntk_over_sigma0_squared(mechanism):
  s0 = 1.3

  def net(lib):
    return lib.serial(
      lib.Dense(6, W_std=s0),
      lib.Erf(),
      lib.GlobalSelfAttention(6, 4, 4, 2, True, s0, s0, s0, s0, attention_mechanism=mechanism),
      lib.Erf(),
      lib.Flatten(),
      lib.Dense(1, W_std=s0),
    )

  ours = net(stax).ndk_fn(X1, X2, 2.0, 1.0, temperature=0.0)
  theirs = net(nt_stax)[2](X1, X2, ('nngp', 'ntk'))
  assert_close(ours.nngp, theirs.nngp)
  assert_close(ours.ndk, theirs.ntk / s0**2)


@pytest.mark.parametrize('mechanism', MECHANISMS)
def test_zero_temperature_ndk_with_distinct_stds_is_the_per_group_raw_ntk(mechanism):
  """One layer on raw inputs: NT's ntk = 2 σ_O²σ_V² M + σ_b², the raw NTK is (σ_V² + σ_O²) M + 1 (gradients of W_out,
  W_value and b; the query-key gradient vanishes as n_chan_key → ∞), with M = (NT's nngp − σ_b²)/(σ_O² σ_V²)."""
  ours = attention(stax, mechanism, prior=True).ndk_fn(X1, X2, 1.0, 0.5, temperature=0.0)
  theirs = attention(nt_stax, mechanism)[2](X1, X2, ('nngp', 'ntk'))
  var_o, var_v, var_b = STDS['W_out'][0] ** 2, STDS['W_value'][0] ** 2, STDS['b'][0] ** 2
  mixed = (theirs.nngp - var_b) / (var_o * var_v)
  assert_close(theirs.ntk, 2 * var_o * var_v * mixed + var_b)  # NT's own formula, read as stated
  assert_close(ours.ndk, (var_o + var_v) * mixed + 1.0)


# ---------------------------------------------------------------------------------------------------------
# Independent NumPy implementation of docs/attention.md §3 for one layer on raw inputs, at t ≠ s.


def _phi(mechanism, logits):
  if mechanism == 'SOFTMAX':
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
  return {'IDENTITY': lambda z: z, 'ABS': np.abs, 'RELU': lambda z: np.maximum(z, 0)}[mechanism](logits)


def _var(group, t, s, temperature):
  if group == 'W_qk':
    (q0, q), (k0, k) = STDS['W_query'], STDS['W_key']
    init_var, prior_var = q0 * k0, q * k
  else:
    init_var, prior_var = STDS[group][0] ** 2, STDS[group][1] ** 2
  lam = temperature / prior_var
  return ref.ou_c(t, s, init_var, prior_var, lam), ref.ou_r(t, s, lam)


def _reference_layer(mechanism, x1, x2, t, s, temperature):
  x1, x2 = np.asarray(x1), np.asarray(x2)
  n_chan = x1.shape[-1]
  gram = lambda a, b: np.einsum('iac,jbc->ijab', a, b) / n_chan
  a1 = _phi(mechanism, _var('W_qk', t, t, temperature)[0] * np.einsum('iac,ibc->iab', x1, x1) / n_chan)
  a2 = _phi(mechanism, _var('W_qk', s, s, temperature)[0] * np.einsum('iac,ibc->iab', x2, x2) / n_chan)
  mixed = np.einsum('iac,ijcd,jbd->ijab', a1, gram(x1, x2), a2)
  (c_o, r_o), (c_v, r_v), (c_b, r_b) = (_var(g, t, s, temperature) for g in ('W_out', 'W_value', 'b'))
  return c_o * c_v * mixed + c_b, (r_o * c_v + c_o * r_v) * mixed + r_b


@pytest.mark.parametrize('mechanism', MECHANISMS)
@pytest.mark.parametrize('times', [(1.5, 0.5), (0.5, 1.5)])
def test_one_layer_matches_independent_numpy_formulas(mechanism, times):
  temperature = 0.6
  ours = attention(stax, mechanism, prior=True).ndk_fn(X1, X2, *times, temperature=temperature)
  nngp, resp = _reference_layer(mechanism, X1, X2, *times, temperature)
  assert_close(ours.nngp, nngp)
  assert_close(ours.ndk, resp)


# ---------------------------------------------------------------------------------------------------------
# (b) Equilibrium: NNGP with the prior stds, and fluctuation–dissipation.


@pytest.mark.parametrize('mechanism', NETWORK_MECHANISMS)
def test_equilibrium_is_neural_tangents_nngp_with_prior_stds(mechanism):
  net = network(stax, mechanism, prior=True)
  expected = network(nt_stax, mechanism, which=1)[2](X1, X2, ('nngp', 'cov1', 'cov2'))
  temperature = 0.5
  k_inf = net.ndk_fn(X1, X2, jnp.inf, jnp.inf, temperature=temperature)
  late = 80 / min(net.relaxation_rates(temperature))
  k_late = net.ndk_fn(X1, X2, late, late, temperature=temperature)
  for got in (k_inf, k_late):
    assert_close(got.nngp, expected.nngp, rtol=1e-9)
    assert_close(got.cov1, expected.cov1, rtol=1e-9)
    assert_close(got.cov2, expected.cov2, rtol=1e-9)


def _fdt_gap(net, t, s, temperature):
  dc_ds = jax.jacfwd(lambda s_: net.ndk_fn(X1, X2, t, s_, temperature=temperature).nngp)(s)
  resp = net.ndk_fn(X1, X2, t, s, temperature=temperature).ndk
  return np.max(np.abs(np.asarray(resp - dc_ds / temperature))), np.max(np.abs(np.asarray(resp)))


@pytest.mark.parametrize('mechanism', ['SOFTMAX'])
def test_fluctuation_dissipation_at_equilibrium_when_prior_differs(mechanism):
  net = network(stax, mechanism, prior=True)
  temperature = 0.5
  late = 60 / min(net.relaxation_rates(temperature))
  gap, scale = _fdt_gap(net, late + 0.7, late, temperature)
  assert gap < 1e-9 * scale
  early_gap, early_scale = _fdt_gap(net, 0.6, 0.3, temperature)
  assert early_gap > 1e-3 * early_scale  # the identity genuinely needs equilibrium when σ0 ≠ σ


@pytest.mark.parametrize('mechanism', ['RELU'])
def test_fluctuation_dissipation_at_all_times_when_prior_equals_init(mechanism):
  net = network(stax, mechanism)
  for t, s in [(0.4, 0.1), (2.0, 1.5)]:
    gap, scale = _fdt_gap(net, t, s, temperature=0.4)
    assert gap < 1e-10 * scale


# ---------------------------------------------------------------------------------------------------------
# Refusals and the NT triple for every option.


@pytest.mark.parametrize(
  'kwargs,match',
  [
    (dict(linear_scaling=False, attention_mechanism='IDENTITY'), 'linear_scaling=False'),
    (dict(pos_emb_type='SUM'), 'pos_emb_type'),
    (dict(pos_emb_type='CONCAT', val_pos_emb=True), 'pos_emb_type'),
  ],
)
def test_underived_options_keep_the_nt_triple_and_refuse_ndk_fn_with_the_reason(kwargs, match):
  ours = stax.GlobalSelfAttention(3, 4, 4, 2, **kwargs)
  theirs = nt_stax.GlobalSelfAttention(3, 4, 4, 2, **kwargs)
  assert_close(ours[2](X1, X2, 'nngp'), theirs[2](X1, X2, 'nngp'))
  _, params = ours.init_fn(jax.random.PRNGKey(3), X1.shape)
  _, nt_params = theirs[0](jax.random.PRNGKey(3), X1.shape)
  assert_close(ours.apply_fn(params, X1), theirs[1](nt_params, X1))
  with pytest.raises(NotImplementedError, match=match):
    ours.ndk_fn(X1, X2, 1.0, 0.5, temperature=0.1)


def test_absent_groups_and_bad_stds():
  no_bias = stax.GlobalSelfAttention(3, 4, 4, 1, b_std=0.0)
  assert len(no_bias.groups) == 3  # a zero std without a prior std: the group is absent
  assert_close(
    no_bias.ndk_fn(X1, X2, 1.0, 1.0, temperature=0.2).nngp, nt_stax.GlobalSelfAttention(3, 4, 4, 1)[2](X1, X2, 'nngp')
  )
  with pytest.raises(ValueError, match='W_key_prior_std'):
    stax.GlobalSelfAttention(3, 4, 4, 1, W_key_prior_std=-1.0)
  with pytest.raises(ValueError, match='b_prior_std'):
    stax.GlobalSelfAttention(3, 4, 4, 1, b_prior_std=1.0)


# ---------------------------------------------------------------------------------------------------------
# (c) Monte Carlo: finite-width attention layers with weights drawn from the exact OU pair law.


def _ou_pair(key, shape, init_var, prior_var, temperature, t, s):
  """(θ(t), θ(s)) jointly Gaussian: variances c(t,t), c(s,s), covariance c(t,s) (Cholesky of the 2×2 matrix)."""
  lam = temperature / prior_var
  ctt, css, cts = (ref.ou_c(a, b, init_var, prior_var, lam) for a, b in ((t, t), (s, s), (t, s)))
  z_t, z_s = jax.random.normal(key, (2, *shape))
  theta_t = np.sqrt(ctt) * z_t
  theta_s = cts / np.sqrt(ctt) * z_t + np.sqrt(css - cts**2 / ctt) * z_s
  return theta_t, theta_s, ref.ou_r(t, s, lam)


def _agrees(samples, theory, allowance):
  """Mean of per-network estimates within 4.5 standard errors + `allowance`·scale of `theory`, elementwise and for
  the projection ratio ρ = <estimate, theory>/<theory, theory> (whose mean must be 1)."""
  samples, theory = np.asarray(samples), np.asarray(theory)
  n = samples.shape[0]
  scale = np.max(np.abs(theory))
  se = samples.std(0, ddof=1) / np.sqrt(n)
  elementwise = np.all(np.abs(samples.mean(0) - theory) <= 4.5 * se + allowance * scale)
  ratios = samples.reshape(n, -1) @ theory.ravel() / np.sum(theory**2)
  ratio = abs(ratios.mean() - 1) <= 4.5 * ratios.std(ddof=1) / np.sqrt(n) + allowance
  return bool(elementwise and ratio)


@pytest.mark.slow
@pytest.mark.parametrize('mechanism', ['SOFTMAX', 'RELU'])
def test_monte_carlo_finite_width_matches_two_time_kernels(mechanism):
  """One attention layer on fixed inputs x = x' = X1 (3 inputs, 4 positions) at two times (t, s) = (1.5, 0.5).

  Widths: n_chan_key = 1024, 4 heads × 128 value channels, 1024 output channels. The finite network is Neural
  Tangents' own `apply_fn` with unit stds, so its parameters are the raw ones of docs/attention.md §2: U (tied
  query-key), V, O and b, each drawn from the exact OU pair law at (t, s).
  C: per network, the average over the output channels of f_o(x,t) f_o(x',s).
  R: per network, for output channel 0, Σ_g r_g(t,s) ∇_g f(x,t)·∇_g f(x',s) over all four groups (the query-key
  term included; the theory says it vanishes as n_chan_key → ∞).
  Tolerance: the per-network estimates fluctuate (measured: about 13 % of the kernel scale for C, 3 % for R); the
  standard error comes from the spread over 400 independent networks. Check: 4.5 s.e., elementwise over the 144
  entries and for the projection ratio, plus an allowance 4/n_chan_key of the kernel scale for the finite-key bias
  (the logits fluctuate by O(1/√n_chan_key) and enter φ nonlinearly: an O(1/n_chan_key) shift of the mean).
  The same check rejects the theory scaled by 1.05 and by 0.95.
  """
  n_key, n_heads, n_val, n_out, n_nets = 1024, 4, 128, 1024, 400
  temperature, t, s = 0.5, 1.5, 0.5
  theory = attention(stax, mechanism, n_out=n_out, prior=True).ndk_fn(X1, X1, t, s, temperature=temperature)
  unit = dict(W_key_std=1.0, W_query_std=1.0, W_value_std=1.0, W_out_std=1.0, b_std=1.0)
  apply_full = nt_stax.GlobalSelfAttention(n_out, n_key, n_val, n_heads, attention_mechanism=mechanism, **unit)[1]
  apply_one = nt_stax.GlobalSelfAttention(1, n_key, n_val, n_heads, attention_mechanism=mechanism, **unit)[1]
  n_in = X1.shape[-1]
  variances = {
    'U': (STDS['W_query'][0] * STDS['W_key'][0], STDS['W_query'][1] * STDS['W_key'][1]),
    **{g: (STDS[name][0] ** 2, STDS[name][1] ** 2) for g, name in (('V', 'W_value'), ('O', 'W_out'), ('b', 'b'))},
  }
  shapes = {'U': (n_heads, n_in, n_key), 'V': (n_heads, n_in, n_val), 'O': (n_heads * n_val, n_out), 'b': (1, 1, n_out)}

  def nt_params(p):
    return (None, p['U'], p['V'], p['O'], p['b'], None)

  @jax.jit
  def one_network(key):
    keys = dict(zip(shapes, jax.random.split(key, len(shapes))))
    draws = {g: _ou_pair(keys[g], shapes[g], *variances[g], temperature, t, s) for g in shapes}
    p_t = {g: d[0] for g, d in draws.items()}
    p_s = {g: d[1] for g, d in draws.items()}
    c_emp = jnp.einsum('iao,jbo->ijab', apply_full(nt_params(p_t), X1), apply_full(nt_params(p_s), X1)) / n_out

    def first_channel(p, x):
      one = dict(p, O=p['O'][:, :1], b=p['b'][..., :1])
      return apply_one(nt_params(one), x)[..., 0]

    jac_t = jax.jacrev(first_channel)(p_t, X1)
    jac_s = jax.jacrev(first_channel)(p_s, X1)
    r_emp = sum(draws[g][2] * jnp.einsum('ia...,jb...->ijab', jac_t[g], jac_s[g]) for g in shapes)
    return c_emp, r_emp

  c_samples, r_samples = jax.lax.map(one_network, jax.random.split(jax.random.PRNGKey(11), n_nets))
  allowance = 4 / n_key
  for samples, expected in ((c_samples, theory.nngp), (r_samples, theory.ndk)):
    assert _agrees(samples, expected, allowance)
    assert not _agrees(samples, 1.05 * expected, allowance)
    assert not _agrees(samples, 0.95 * expected, allowance)


@pytest.mark.parametrize('mechanism', NETWORK_MECHANISMS)
def test_masked_inputs_match_neural_tangents_at_zero_temperature(mechanism):
  """The rule on Neural Tangents' masked input kernel (`mask_constant`): NT's nngp/cov1/cov2 and, with one σ0 and
  no bias, ntk/σ0², at T = 0; at T > 0 the masked entries stay zero. (Called through `layer.rule` on NT's input
  kernel, which is what `ndk_fn` builds.)"""
  x1 = X1.at[0, 3].set(0.0).at[1, 2:].set(0.0)
  x2 = X2.at[1, 0].set(0.0)
  k = nt_stax.Identity()[2](x1, x2, mask_constant=0.0, diagonal_spatial=False).replace(x1_is_x2=False)
  s0 = 1.2
  for b_std in (0.3, None):
    kw = dict(W_key_std=s0, W_query_std=s0, W_value_std=s0, W_out_std=s0, b_std=b_std, attention_mechanism=mechanism)
    ours = stax.GlobalSelfAttention(3, 4, 4, 2, **kw).rule(k, 2.0, 1.0, 0.0)
    theirs = nt_stax.GlobalSelfAttention(3, 4, 4, 2, **kw)[2](k)
    for field in ('nngp', 'cov1', 'cov2'):
      assert_close(getattr(ours, field), getattr(theirs, field))
    if b_std is None:
      assert_close(ours.ntk, theirs.ntk / s0**2)
  warm = stax.GlobalSelfAttention(3, 4, 4, 2, b_std=0.3, attention_mechanism=mechanism).rule(k, 2.0, 1.0, 0.5)
  kept = np.asarray(~(k.mask1[:, None, :, None, 0] | k.mask2[None, :, None, :, 0]))  # both positions unmasked
  assert np.all(np.asarray(warm.nngp)[~kept] == 0) and np.all(np.asarray(warm.ntk)[~kept] == 0)
  assert np.all(np.abs(np.asarray(warm.nngp)[kept]) > 0)


def test_time_grid_matches_pointwise_evaluation():
  layer = attention(stax, 'SOFTMAX', prior=True)
  t1, t2 = np.array([0.0, 0.7, 2.0]), np.array([0.3, 1.5])
  grid = layer.ndk_fn(X1, X2, t1, t2, temperature=0.4)
  for i, a in enumerate(t1):
    assert_close(grid.cov1[i], layer.ndk_fn(X1, X2, a, 0.0, temperature=0.4).cov1)
    for j, b in enumerate(t2):
      point = layer.ndk_fn(X1, X2, a, b, temperature=0.4)
      assert_close(grid.nngp[i, j], point.nngp)
      assert_close(grid.ndk[i, j], point.ndk)
      assert_close(grid.cov2[j], point.cov2)
