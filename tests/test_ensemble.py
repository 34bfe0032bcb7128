"""Tests of ndk_flax.ensemble (mechanics: members, records, sharding, errors) and end-to-end checks vs the theory."""

import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ndk_flax import _progress, stax
from ndk_flax.ensemble import record_steps, train_ensemble

X = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
Y = jnp.sin(X[:, :1]) + 0.3 * X[:, 1:2]
X_TEST = jax.random.normal(jax.random.PRNGKey(2), (3, 3))
SMALL = stax.serial(stax.Dense(8, W_std=1.2, b_std=0.1), stax.Erf(), stax.Dense(1))
KW = dict(temperature=0.1, learning_rate=0.05, record_times=[0.0, 0.5, 1.0], width=16, progress=False)


@pytest.fixture(scope='module')
def small_record():
  return train_ensemble(SMALL, X, Y, n_members=3, x_test=X_TEST, record_hidden=True, seed=7, **KW)


def test_record_shapes_and_times(small_record):
  rec = small_record
  np.testing.assert_allclose(rec.times, [0.0, 0.5, 1.0])
  assert rec.train.shape == (3, 3, 5, 1) and rec.test.shape == (3, 3, 3, 1)
  assert len(rec.hidden) == 1 and rec.hidden[0].shape == (3, 3, 8, 16)
  # Members differ (independent initialisations) and move (training happens).
  assert not np.allclose(rec.train[0], rec.train[1])
  assert not np.allclose(rec.train[:, 0], rec.train[:, -1])


def test_members_depend_only_on_seed_and_index(small_record):
  """Member m is the same whatever the ensemble size and the recorded extras (keys fold_in(seed, m))."""
  two = train_ensemble(SMALL, X, Y, n_members=2, seed=7, **KW)
  assert two.test is None and two.hidden is None
  np.testing.assert_allclose(two.train, small_record.train[:2], rtol=1e-12, atol=1e-14)


def test_zero_temperature_single_member_is_plain_gradient_descent():
  """T = 0: each member follows θ ← θ − η∇E; a hand-written loop with optax.sgd on the same init agrees."""
  import optax
  from flax import nnx

  from ndk_flax import nn

  lr, n_steps = 0.05, 20
  rec = train_ensemble(
    SMALL, X, Y, n_members=1, temperature=0.0, learning_rate=lr, record_times=[n_steps * lr], width=16, progress=False
  )
  init_key, _ = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(0), 0))
  model = nn.from_stax(SMALL, 16, input_shape=X.shape, rngs=nnx.Rngs(init_key))
  graphdef, params = nnx.split(model, nnx.Param)
  loss = lambda p: 0.5 * jnp.sum((nnx.merge(graphdef, p)(X) - Y) ** 2)
  sgd = optax.sgd(lr)
  state = sgd.init(params)
  for _ in range(n_steps):
    updates, state = sgd.update(jax.grad(loss)(params), state)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(rec.train[0, -1], nnx.merge(graphdef, params)(X), rtol=1e-10)


@pytest.mark.slow
def test_sharded_and_unsharded_runs_agree(tmp_path):
  """Same seed on 4 (forced host) devices with M = 6 (padded to 8) and on 1 device: the same numbers, for Langevin
  training and for the frozen-readout drift (members sharded over the devices in both)."""
  out = tmp_path / 'sharded.npy'
  script = textwrap.dedent(f"""
        import jax, numpy as np
        jax.config.update("jax_enable_x64", True)
        assert jax.device_count() == 4, jax.devices()
        from ndk_flax import stax
        from ndk_flax.ensemble import _member_mesh, train_ensemble
        sharding, n_padded = _member_mesh(6)
        assert n_padded == 8 and sharding.mesh.devices.size == 4
        x = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
        y = jax.numpy.sin(x[:, :1]) + 0.3 * x[:, 1:2]
        net = stax.serial(stax.Dense(8, W_std=1.2, b_std=0.1), stax.Erf(), stax.Dense(1))
        rec = train_ensemble(net, x, y, n_members=6, temperature=0.1, learning_rate=0.05,
                             record_times=[0.0, 0.5, 1.0], width=16, progress=False)
        np.save({str(out)!r}, rec.train)
        from ndk_flax.ensemble import drift_ensemble, readout_filter
        drifted = drift_ensemble(net, x, y, n_members=6, temperature=0.1, learning_rate=0.05, width=16,
                                 equilibration_time=0.5, drift_times=[0.0, 2.0], frozen=readout_filter,
                                 progress=False)
        np.save({str(out)!r} + '.drift.npy', drifted.train)
    """)
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert jax.device_count() == 1
  unsharded = train_ensemble(SMALL, X, Y, n_members=6, **KW).train
  np.testing.assert_allclose(np.load(out), unsharded, rtol=1e-12, atol=1e-13)
  from ndk_flax.ensemble import drift_ensemble, readout_filter

  drifted = drift_ensemble(
    SMALL,
    X,
    Y,
    n_members=6,
    temperature=0.1,
    learning_rate=0.05,
    width=16,
    equilibration_time=0.5,
    drift_times=[0.0, 2.0],
    frozen=readout_filter,
    progress=False,
  )
  np.testing.assert_allclose(np.load(str(out) + '.drift.npy'), drifted.train, rtol=1e-12, atol=1e-13)


def test_divergence_is_detected_with_the_step_and_the_bad_parameters():
  """With the stability check switched off, η λ_max ≈ 8 diverges: the error names the step, the parameters that are
  NaN/inf and their members."""
  relu = stax.serial(stax.Dense(8, W_std=1.5), stax.Relu(), stax.Dense(1))
  with pytest.raises(
    FloatingPointError,
    match=r'after step \d+ .*(Non-finite parameters: root/layers/\d/W \(members|'
    r'still finite).*smaller learning_rate',
  ):
    train_ensemble(
      relu,
      X,
      Y,
      n_members=2,
      temperature=0.05,
      learning_rate=3.0,
      record_times=[300.0],
      width=64,
      progress=False,
      stability_bound=math.inf,
    )


def test_unstable_learning_rate_is_refused_with_the_numbers():
  """The same run with the default bound is refused before training: η, η λ_max(Θ0), the bound, λ_max(Θ0), and the
  largest η accepted, with λ_max(Θ0) the top eigenvalue of the NTK R(0, 0, X, X) computed here independently."""
  relu = stax.serial(stax.Dense(8, W_std=1.5), stax.Relu(), stax.Dense(1))
  lam = float(np.linalg.eigvalsh(np.asarray(relu.ndk_fn(X, X, 0.0, 0.0, temperature=0.05).ndk))[-1])
  assert 3.0 * lam > 1  # the case is unstable
  with pytest.raises(
    ValueError,
    match=rf'η = 3 is unstable: η λ_max\(Θ0\) = {3 * lam:.3g} >= 1 \(λ_max\(Θ0\) = '
    rf'{lam:.4g}\); use learning_rate < {1 / lam:.3g}',
  ):
    train_ensemble(relu, X, Y, n_members=2, temperature=0.05, learning_rate=3.0, record_times=[3.0], progress=False)
  # Just below the bound is accepted (the rule is η λ_max < 1, not a looser or tighter one).
  eta = 0.99 / lam
  train_ensemble(relu, X, Y, n_members=1, temperature=0.05, learning_rate=eta, record_times=[eta], progress=False)


@pytest.mark.parametrize(
  'schedule, match',
  [
    (lambda k: 0.1 - 0.03 * k, r'returns η = -0.02 at step 4'),
    (lambda k: 0.01 * (1 + k), r'η = 0.5 at step 49 is unstable: η λ_max\(Θ0\) = 2.5 >= 1'),
  ],
)
def test_check_learning_rate_refuses_negative_and_unstable_schedules(schedule, match):
  from ndk_flax.ensemble import check_learning_rate

  check_learning_rate(lambda k: 0.1 + 0 * k, 5.0, n_steps=50)  # constant 0.1 · 5 = 0.5 < 1: accepted
  with pytest.raises(ValueError, match=match):
    check_learning_rate(schedule, 5.0, n_steps=50)


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_low_precision_parameters_are_refused(dtype):
  with pytest.raises(TypeError, match='float32 or float64'):
    train_ensemble(SMALL, X, Y, n_members=2, dtype=dtype, **KW)


def test_trainable_filter_keeps_the_other_parameters_at_their_initial_values():
  """trainable = the readout only: the hidden weights and biases at t = 1 equal those at t = 0, the readout moved."""
  from flax import nnx

  from ndk_flax import nn
  from ndk_flax.ensemble import readout_filter

  template = nn.from_stax(SMALL, 16, input_shape=X.shape, rngs=nnx.Rngs(0))
  rec = train_ensemble(SMALL, X, Y, n_members=2, record_params=True, trainable=readout_filter(template), **KW)
  flat = {'/'.join(map(str, p)): v for p, v in nnx.to_flat_state(rec.params)}
  assert set(flat) == {'root/layers/0/W', 'root/layers/0/b', 'root/layers/2/W'}
  for name in ('root/layers/0/W', 'root/layers/0/b'):
    np.testing.assert_array_equal(flat[name][:, 0], flat[name][:, -1])
  assert not np.allclose(flat['root/layers/2/W'][:, 0], flat['root/layers/2/W'][:, -1])


def test_record_steps():
  np.testing.assert_array_equal(record_steps([0.0, 0.3, 1.0], 0.1), [0, 3, 10])
  with pytest.raises(ValueError, match='multiples'):
    record_steps([0.0, 0.25], 0.1)
  with pytest.raises(ValueError, match='increasing'):
    record_steps([1.0, 0.5], 0.1)
  with pytest.raises(ValueError, match='>= 0'):
    record_steps([-0.1], 0.1)


@pytest.mark.parametrize(
  'kwargs, err, match',
  [
    (dict(n_members=0), ValueError, 'n_members'),
    (dict(temperature=-1.0), ValueError, 'temperature'),
    (dict(temperature=100.0), ValueError, 'unstable'),
    (dict(learning_rate=0.0), ValueError, 'learning_rate'),
    (dict(learning_rate=lambda k: 0.1), TypeError, 'learning_rate'),
    (dict(y=jnp.ones((4, 1))), ValueError, 'rows'),
    (dict(y=jnp.ones((5, 2))), ValueError, 'output shape'),
    (dict(y=jnp.ones(5)), ValueError, 'y_train'),
    (dict(x_test=jnp.ones((2, 4))), ValueError, 'x_test'),
    (dict(record_times=[0.0, 0.33]), ValueError, 'multiples'),
    (dict(x=X.at[0, 0].set(jnp.nan)), ValueError, 'x_train'),
  ],
)
def test_bad_input(kwargs, err, match):
  args = dict(KW, n_members=2)
  x, y = kwargs.pop('x', X), kwargs.pop('y', Y)
  args.update(kwargs)
  with pytest.raises(err, match=match):
    train_ensemble(SMALL, x, y, **args)


# ---------------------------------------------------------------------------------------------------------------
# End to end: finite ensembles vs the infinite-width theory of ndk_flax.predict (docs/theory.md §4).

D_IN = 3
_X_ALL = jax.random.normal(jax.random.PRNGKey(11), (6, D_IN))
_X_ALL = _X_ALL / jnp.linalg.norm(_X_ALL, axis=1, keepdims=True) * np.sqrt(D_IN)  # |x|²/d = 1
E2E_X, E2E_X_TEST = _X_ALL[:4], _X_ALL[4:]
E2E_Y = jnp.sin(E2E_X[:, :1]) + 0.5 * E2E_X[:, 1:2]
E2E_STEPS = np.array([0, 5, 20, 50, 100])
E2E_TEMPERATURE = 1.0


def _hidden_block(nonlin, width, s0, s):
  phi = {'erf': stax.Erf, 'relu': stax.Relu}[nonlin]
  # Bias stds σ_b = σ/2 keep the bias relaxation rate T/σ_b² slow enough for the step η (ηλ_b ≤ 0.1).
  return stax.serial(stax.Dense(width, W_std=s0, b_std=0.5 * s0, W_prior_std=s, b_prior_std=0.5 * s), phi())


def _network(nonlin, depth, width, s0, s):
  blocks = [_hidden_block(nonlin, width, s0, s) for _ in range(depth)]
  return stax.serial(*blocks, stax.Dense(1, W_std=s0, W_prior_std=s))


# A 2^(3-1) fractional factorial design over (nonlinearity, depth, σ0 vs σ): every level of every factor appears
# twice and every pair of levels of two factors once. Width 512 for one hidden layer, 64 for two (cost ∝ width²;
# the O(depth/width) allowance stays well below 4 standard errors).
# A fifth case repeats one with Rademacher noise (ξ = ±1, the weak Euler scheme of ndk_flax.optax): the theory is
# the same continuous-time limit, so the same allowances apply.
E2E_CASES = [
  ('erf', 1, 512, 1.0, 1.0, 0.02, 'gaussian'),
  ('erf', 2, 64, 1.4, 1.0, 0.012, 'gaussian'),
  ('relu', 1, 512, 1.0, 1.4, 0.02, 'gaussian'),
  ('relu', 2, 64, 1.0, 1.0, 0.02, 'gaussian'),
  ('erf', 2, 64, 1.4, 1.0, 0.012, 'rademacher'),
]


@pytest.mark.slow
@pytest.mark.parametrize(
  'nonlin, depth, width, s0, s, eta, noise',
  E2E_CASES,
  ids=[f'{c[0]}-{c[1]}hidden-s0_{c[3]}-s_{c[4]}-{c[6]}' for c in E2E_CASES],
)
def test_ensemble_matches_langevin_theory(nonlin, depth, width, s0, s, eta, noise):
  """128 members, T = 1, times 0 … 100η reaching ≥ 1/λ_W (diffusive phase, λ_W = T/σ_W² of the weights).

  Mean on train and test points and variance on train points vs ndk_flax.predict within 4 standard errors (under
  the null hypothesis that members are i.i.d. draws from the predicted Gaussian) plus systematic allowances:
  * discretisation: the chain takes steps η, the theory is continuous. In the gradient-driven phase each NTK mode
    decays as (1 − ηλ_i)^k instead of e^{−λ_i ηk}: max_k,i of the difference × ‖Y‖ bounds the mean's deviation;
    in the diffusive phase the relaxation clock of the weights is off by a relative ηλ_θ/2, shifting the mean by at
    most ηλ_θ/2 · max|Y|. The stationary variance of a mode of rate λ is larger by 1/(1 − ηλ/2): relative
    allowance η max(λ)/2 on the variance. Here η max(λ) ≤ 0.1 for all rates (NTK eigenvalues and T/σ²).
  * finite width: corrections to ensemble averages are O(depth/width) relative; allowance 2·depth/width of the
    output scale (max|Y| for the mean, the largest predicted variance for the variance).
  * solver accuracy: the predictor's mean is within rtol·max|Y|, its covariance within 10·rtol of the largest entry.
  The test is sharp: the same ensemble must fail the comparison with the T = 0 (NTK gradient-flow) theory (whose
  training-point variance decays to zero while the Langevin one stays O(T)).
  """
  from ndk_flax.predict import langevin_mse_ensemble
  from ndk_flax.validate import compare

  net = _network(nonlin, depth, width, s0, s)
  theta0 = net.ndk_fn(E2E_X, E2E_X, 0.0, 0.0, temperature=0.0).ndk
  evals = np.linalg.eigvalsh(np.asarray(theta0))
  weight_rates = np.asarray(net.relaxation_rates(E2E_TEMPERATURE))
  assert eta * max(evals[-1], weight_rates.max()) <= 0.1
  assert E2E_STEPS[-1] * eta >= E2E_TEMPERATURE**-1 * s**2  # t_max ≥ 1/λ_W: into the diffusive phase
  rec = train_ensemble(
    net,
    E2E_X,
    E2E_Y,
    temperature=E2E_TEMPERATURE,
    learning_rate=eta,
    record_times=E2E_STEPS * eta,
    n_members=128,
    width=width,
    x_test=E2E_X_TEST,
    seed=1,
    progress=False,
    dtype=jnp.float32,
    noise=noise,
  )
  rtol = 1e-2
  predictor = langevin_mse_ensemble(net, E2E_X, E2E_Y, temperature=E2E_TEMPERATURE, rtol=rtol, growth=0.5)
  k = np.arange(E2E_STEPS[-1] + 1)[:, None]
  y_scale = float(np.max(np.abs(E2E_Y)))
  width_rel = 2 * depth / width
  mean_atol = (
    np.max(np.abs((1 - eta * evals) ** k - np.exp(-eta * evals * k))) * np.linalg.norm(E2E_Y)
    + (eta * weight_rates.max() / 2 + width_rel + rtol) * y_scale
  )

  train = compare(rec, predictor, points='train')
  var_atol = (eta * max(evals[-1], weight_rates.max()) / 2 + width_rel + 10 * rtol) * float(np.max(train.theory_var))
  assert train.passed(4.0, mean_atol=mean_atol, var_atol=var_atol), (train.mean_z[..., 0], train.var_z[..., 0])
  test = compare(rec, predictor, x_test=E2E_X_TEST, compute_var=False)
  assert test.passed(4.0, mean_atol=mean_atol), test.mean_z[..., 0]

  gradient_flow = langevin_mse_ensemble(net, E2E_X, E2E_Y, temperature=0.0)
  assert not compare(rec, gradient_flow, points='train').passed(4.0, mean_atol=mean_atol, var_atol=var_atol)


@pytest.mark.slow
def test_hidden_overlap_drifts_like_the_two_time_kernel():
  """(1/N) Σ_i φ(h_i(x, t)) φ(h_i(x', s)) averaged over members vs C^1(t, s, x, x') of the first hidden block.

  With raw parameters the data moves each hidden pre-activation by O(1/√N) with a random sign per unit, so the
  overlap keeps its free-network limit up to O(1/N) (docs/theory.md §6): allowance 4/N of max C plus 4 standard errors.
  Sharp: the overlap at (t, 0) must decorrelate, i.e. differ from C(0, 0) beyond that tolerance.
  """
  from ndk_flax.validate import two_time_overlap

  width, s0, s, eta, temp = 512, 1.0, 0.7, 0.02, 0.5  # η T/σ_b² = 0.08: the discrete chain tracks the theory
  net = _network('erf', 1, width, s0, s)
  steps = np.array([0, 50, 200])
  rec = train_ensemble(
    net,
    E2E_X,
    E2E_Y,
    temperature=temp,
    learning_rate=eta,
    record_times=steps * eta,
    n_members=32,
    width=width,
    x_test=E2E_X_TEST,
    seed=2,
    record_hidden=True,
    progress=False,
    dtype=jnp.float32,
  )
  emp = two_time_overlap(rec.hidden[0])
  theory = np.asarray(
    _hidden_block('erf', width, s0, s).ndk_fn(_X_ALL, _X_ALL, rec.times, rec.times, temperature=temp).nngp
  )
  tol = 4 * emp.se + 4 / width * np.max(np.abs(theory))
  assert np.all(np.abs(emp.mean - theory) <= tol), np.max(np.abs(emp.mean - theory) / tol)
  drift = np.abs(theory[-1, 0] - theory[0, 0])
  assert np.max(drift - tol[-1, 0]) > 0


# ---------------------------------------------------------------------------------------------------------------
# Empirical NDK of trained members (ndk_flax.validate.empirical_ndk).


def test_empirical_ndk_contraction_is_the_response_weighted_gradient_product():
  """Two members with the same parameters at two times t0 < t1: R̂(t1, t0) = J(x) diag(e^{−λ_θ(t1 − t0)}) J(x')ᵀ with
  J the flattened Jacobian (jax.flatten_util) and λ_θ = T/σ_θ² per parameter (weights and biases have different
  σ here), R̂(t0, t1) = 0, R̂(t, t) = J Jᵀ; the member spread is zero."""
  from flax import nnx
  from jax.flatten_util import ravel_pytree

  from ndk_flax import nn
  from ndk_flax.ensemble import EnsembleRecord
  from ndk_flax.validate import empirical_ndk

  net = _network('erf', 1, 16, 1.3, 0.9)
  model = nn.from_stax(net, input_shape=E2E_X.shape, rngs=nnx.Rngs(4))
  graphdef, params = nnx.split(model, nnx.Param)
  params = nnx.as_pure(params)
  times, temp = np.array([0.3, 1.1]), 0.7
  stacked = jax.tree.map(lambda p: np.broadcast_to(np.asarray(p), (2, 2) + p.shape), params)
  record = EnsembleRecord(times, None, None, None, params=stacked)
  est = empirical_ndk(record, model, E2E_X, E2E_X_TEST, temperature=temp)

  flat, unravel = ravel_pytree(params)
  rates = ravel_pytree(jax.tree.map(lambda p, s: jnp.full(p.shape, temp / s**2), params, nn.prior_std_tree(model)))[0]
  jac = lambda x: jax.jacrev(lambda v: nnx.merge(graphdef, unravel(v))(x)[:, 0])(flat)
  j1, j2 = jac(E2E_X), jac(E2E_X_TEST)
  np.testing.assert_allclose(est.mean[1, 0], (j1 * jnp.exp(-rates * (times[1] - times[0]))) @ j2.T, rtol=1e-10)
  np.testing.assert_allclose(est.mean[0, 0], j1 @ j2.T, rtol=1e-10)
  np.testing.assert_array_equal(est.mean[0, 1], 0.0)
  np.testing.assert_allclose(est.se, 0.0, atol=1e-12)
  with pytest.raises(ValueError, match='record_params'):
    empirical_ndk(record._replace(params=None), model, E2E_X, temperature=temp)
  with pytest.raises(ValueError, match='structure'):
    empirical_ndk(
      record,
      nn.from_stax(_network('erf', 2, 16, 1.3, 0.9), input_shape=E2E_X.shape, rngs=nnx.Rngs(0)),
      E2E_X,
      temperature=temp,
    )


@pytest.mark.slow
def test_empirical_ndk_of_trained_members_matches_ndk_fn():
  """64 members of width 512 (erf, σ0 = 1.4 ≠ σ = 1, biases), trained with Langevin at T = 1 to t = 1 = σ²/T:
  R̂(t, s) on train × test inputs at all recorded t ≥ s vs ndk_fn within 4 s.e. plus an allowance of
  (2/width + η max λ/2) × max|R| (finite width O(1/N); the discrete chain's weight variance is off by the factor
  1/(1 − ηλ/2)): 2.4 % of max|R| (standard errors are 1.7 % of |R|; observed max |z| = 3.4 with no allowance).
  Sharp: the frozen T = 0 kernel R ≡ Θ0 (the NTK picture) misses by over 700 standard errors and must fail."""
  from flax import nnx

  from ndk_flax import nn
  from ndk_flax.validate import empirical_ndk

  width, eta, temp = 512, 0.01, 1.0
  net = _network('erf', 1, width, 1.4, 1.0)
  rec = train_ensemble(
    net,
    E2E_X,
    E2E_Y,
    temperature=temp,
    learning_rate=eta,
    record_times=eta * np.array([0, 20, 100]),
    n_members=64,
    width=width,
    seed=3,
    progress=False,
    dtype=jnp.float32,
    record_params=True,
  )
  model = nn.from_stax(net, width, input_shape=E2E_X.shape, rngs=nnx.Rngs(0))
  est = empirical_ndk(rec, model, E2E_X, E2E_X_TEST, temperature=temp)
  theory = np.asarray(net.ndk_fn(E2E_X, E2E_X_TEST, rec.times, rec.times, temperature=temp).ndk)
  causal = np.broadcast_to((rec.times[:, None] >= rec.times[None, :])[:, :, None, None], theory.shape)
  allowance = (2 / width + eta * max(net.relaxation_rates(temp)) / 2) * np.max(np.abs(theory))
  assert np.all(np.abs(est.mean - theory)[causal] <= 4 * est.se[causal] + allowance), (est.mean - theory) / est.se
  assert np.all(est.mean[~causal] == 0)
  frozen = np.asarray(net.ndk_fn(E2E_X, E2E_X_TEST, 0.0, 0.0, temperature=0.0).ndk)
  assert np.any((np.abs(est.mean - frozen) > 4 * est.se + allowance)[causal])


def test_record_keeps_its_inputs(small_record):
  np.testing.assert_array_equal(small_record.x_train, np.asarray(X))
  np.testing.assert_array_equal(small_record.x_test, np.asarray(X_TEST))


def test_progress_counts_steps_and_is_quiet_off_a_terminal(monkeypatch):
  """The bar's total is the number of Langevin steps (not record points on a geometric grid), it advances by the
  steps run (so its rate and ETA are per step), and it is disabled when stderr is not a terminal."""
  from ndk_flax import ensemble

  bars = []

  class Recorder:
    def __init__(self, total, disable, **kwargs):
      self.total, self.disable, self.n = total, disable, 0
      bars.append(self)

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return False

    def update(self, n):
      self.n += n

  monkeypatch.setattr(_progress, 'tqdm', Recorder)  # the one progress rule (ndk_flax/_progress.py)
  monkeypatch.setattr(ensemble, 'SEGMENT_STEPS', 7)
  kw = dict(KW, record_times=[0.0, 0.05, 1.0], progress=True)
  monkeypatch.setattr(sys.stderr, 'isatty', lambda: True, raising=False)
  train_ensemble(SMALL, X, Y, n_members=2, **kw)
  assert (bars[-1].total, bars[-1].n, bars[-1].disable) == (20, 20, False)
  monkeypatch.setattr(sys.stderr, 'isatty', lambda: False, raising=False)
  train_ensemble(SMALL, X, Y, n_members=2, **kw)
  assert bars[-1].disable


_RESUME_SCRIPT = """
import sys
import jax
jax.config.update('jax_enable_x64', True)
import numpy as np
from ndk_flax import stax
from ndk_flax.ensemble import train_ensemble
x = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
y = jax.numpy.sin(x[:, :1])
net = stax.serial(stax.Dense(8, W_std=1.2, b_std=0.1), stax.Erf(), stax.Dense(1))
rec = train_ensemble(net, x, y, n_members=3, temperature=0.1, learning_rate=0.01, width=32, progress=False,
                     record_times=0.01 * np.arange(0, 40 * 4000 + 1, 4000), x_test=x[:2] + 1.0,
                     checkpoint_dir=sys.argv[1])
np.save(sys.argv[2], np.concatenate([rec.train, rec.test], axis=2))
"""


@pytest.mark.slow
def test_run_killed_by_sigkill_resumes_bit_identically(tmp_path, monkeypatch):
  """A run with checkpoint_dir is SIGKILLed after its third record point (Orbax checkpoint on disk), restarted with
  the same arguments: it resumes from the checkpoint (not from scratch: fewer record points are left than were
  run) and its records equal those of an uninterrupted run bit for bit. A directory of another run is refused."""
  import signal
  import time

  ckpt, first, second = tmp_path / 'ckpt', tmp_path / 'first.npy', tmp_path / 'second.npy'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  cmd = [sys.executable, '-c', _RESUME_SCRIPT, str(ckpt)]
  proc = subprocess.Popen(cmd + [str(first)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  records = ckpt / 'records'
  deadline = time.monotonic() + 240
  while time.monotonic() < deadline and proc.poll() is None:
    if records.is_dir() and any(p.name.isdigit() and int(p.name) >= 3 for p in records.iterdir()):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL and not first.exists(), proc.stderr.read().decode()[-2000:]
  done_before = max(int(p.name) for p in records.iterdir() if p.name.isdigit())
  assert 3 <= done_before < 41

  # Restart in this process (same program, x64 as in the script), watching where the record loop starts.
  from ndk_flax import ensemble

  starts = []
  real_train = ensemble._train
  monkeypatch.setattr(ensemble, '_train', lambda *a, **k: starts.append(k['first']) or real_train(*a, **k))
  script = {}
  exec(
    compile(
      _RESUME_SCRIPT.replace('sys.argv[1]', repr(str(ckpt))).replace('sys.argv[2]', repr(str(second))), 'resume', 'exec'
    ),
    script,
  )
  assert starts == [done_before]
  uninterrupted = subprocess.run(
    cmd[:3] + [str(tmp_path / 'fresh'), str(first)], env=env, capture_output=True, text=True, timeout=600
  )
  assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
  np.testing.assert_array_equal(np.load(second), np.load(first))

  with pytest.raises(ValueError, match='another run .*seed'):
    train_ensemble(SMALL, X, Y, n_members=3, **dict(KW, record_times=[0.0, 0.05]), seed=5, checkpoint_dir=str(ckpt))


_HUGE_RECORD = """
import json, time
import numpy as np
from ndk_flax import stax
from ndk_flax.ensemble import train_ensemble
x = np.linspace(-1, 1, 18).reshape(6, 3)
start = time.perf_counter()
try:
  train_ensemble(stax.serial(stax.Dense(8), stax.Erf(), stax.Dense(1)), x, x[:, :1], temperature=0.01,
                 learning_rate=0.01, record_times=0.01 * np.arange(200), n_members=4096, width=4096,
                 record_params={record_params}, progress=False)
  message = None
except MemoryError as e:
  message = str(e)
seconds = time.perf_counter() - start
# VmHWM: this process's own peak (ru_maxrss would be inherited from a large forking parent).
rss = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM:'))
print(json.dumps(dict(message=message, rss=rss, seconds=seconds)))
"""


def test_huge_record_params_is_refused_before_any_allocation():
  """M = 4096, N = 4096, 200 record times with record_params (≈ 100 GiB of recorded parameters): MemoryError naming
  the bytes needed and available and what to lower, before anything is allocated (the process stays < 600 MB)."""
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  out = subprocess.run(
    [sys.executable, '-c', _HUGE_RECORD.format(record_params=True)],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result['message'] is not None, 'the request was not refused'
  message = result['message']
  assert 'needs about' in message and 'GiB are available' in message, message
  assert 'lower n_members' in message and 'record_params' in message, message
  assert result['rss'] < 600 * 2**20, result


def test_ensemble_refusal_names_the_limit_it_was_given(monkeypatch):
  """A small ensemble that does not fit a small memory limit is refused; the same call with room trains."""
  from ndk_flax import resources

  real = resources.require_ensemble_memory
  seen = []

  def with_limit(what, need, *, remedy, limit=None):
    seen.append(need)
    return real(what, need, remedy=remedy, limit=1e3)

  monkeypatch.setattr(resources, 'require_ensemble_memory', with_limit)
  with pytest.raises(MemoryError, match=r'needs about .* GiB, but only 9.31e-07 GiB are available: lower n_members'):
    train_ensemble(SMALL, X, Y, n_members=3, **KW)
  assert len(seen) == 1 and seen[0].total > 1e3
  monkeypatch.setattr(resources, 'require_ensemble_memory', real)
  assert train_ensemble(SMALL, X, Y, n_members=3, **KW).train.shape == (3, 3, 5, 1)
