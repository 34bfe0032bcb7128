"""The paper scripts (examples/paper) in their quick presets: files written, and the summary numbers checked against
closed forms computed here independently with Neural Tangents (NTK interpolant, NNGP posterior = equilibrium,
arc-cosine / arcsin two-time correlations, mean activation √(q/2π)).

All four scripts run once, in one process (``python -m examples.paper.all --quick``), in a module fixture.
"""

import json
import math
import os

import numpy as np
import pytest

from ndk_flax._nt import nt_stax

pytestmark = pytest.mark.slow

NT_ACT = {'erf': nt_stax.Erf, 'relu': nt_stax.Relu}


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  from examples.paper import all as paper_all

  out = str(tmp_path_factory.mktemp('paper'))
  return out, paper_all.main(['--quick', '--out', out])


def _nt_kernel(act, depth, sigma0):
  layers = []
  for _ in range(depth):
    layers += [nt_stax.Dense(512, W_std=sigma0), NT_ACT[act]()]
  return nt_stax.serial(*layers, nt_stax.Dense(1, W_std=sigma0))[2]


def _posterior(act, depth, sigma, task, temperature, x=None):
  """K(x, X)[K + T I]⁻¹Y with NT's NNGP at the prior std σ."""
  k = _nt_kernel(act, depth, sigma)
  x = task.x_test if x is None else x
  k_xx = np.asarray(k(task.x, task.x, 'nngp'))
  return np.asarray(k(x, task.x, 'nngp')) @ np.linalg.solve(k_xx + temperature * np.eye(len(task.x)), task.y)


def _ntk_interpolant(act, depth, sigma0, task):
  k = _nt_kernel(act, depth, sigma0)
  return np.asarray(k(task.x_test, task.x, 'ntk')) @ np.linalg.solve(np.asarray(k(task.x, task.x, 'ntk')), task.y)


def _mse(f, y):
  return float(np.mean((f - y) ** 2))


def test_files_and_claim_tables(run):
  out, results = run
  assert set(results) == {'two_phases', 'parameter_dependence', 'digits', 'drift'}
  for name, res in results.items():
    folder = os.path.join(out, name)
    pngs = [f for f in os.listdir(folder) if f.endswith('.png')]
    assert pngs and all(os.path.getsize(os.path.join(folder, f)) > 10_000 for f in pngs)
    summary = open(os.path.join(folder, 'summary.md')).read()
    assert '## Paper claims' in summary and res['preset'] == 'quick'
    assert res['claims'] and all(c['evidence'] for c in res['claims'])
    assert json.load(open(os.path.join(folder, 'results.json')))['claims'] == res['claims']
  assert '| claim | reproduced |' in open(os.path.join(out, 'README.md')).read()


def test_two_phases_numbers_match_closed_forms(run):
  from examples.paper.common import orthogonal_task

  res = run[1]['two_phases']
  task = orthogonal_task(6, 6, overlap=0.5, seed=0)
  sa = res['vs_temperature']
  sigma0 = math.sqrt(sa['sigma0_sq_over_sigma_sq'])
  ntk_k = _nt_kernel('erf', 1, sigma0)
  raw_ntk = np.asarray(ntk_k(task.x, task.x, 'ntk')) / sigma0**2  # raw NTK = NT ntk / σ0² (no bias)
  np.testing.assert_allclose(sa['gradient_time'], 1 / np.linalg.eigvalsh(raw_ntk)[-1], rtol=1e-8)
  np.testing.assert_allclose(
    sa['ntk_interpolant_test_mse'], _mse(_ntk_interpolant('erf', 1, sigma0, task), task.y_test), rtol=1e-8
  )
  for row in sa['rows']:
    np.testing.assert_allclose(row[6], _mse(_posterior('erf', 1, 1.0, task, row[0]), task.y_test), rtol=1e-8)
  for row in res['vs_ratio']['rows']:
    np.testing.assert_allclose(
      row[2], _mse(_ntk_interpolant('erf', 1, math.sqrt(row[0]), task), task.y_test), rtol=1e-8
    )
    np.testing.assert_allclose(
      row[5], _mse(_posterior('erf', 1, 1.0, task, res['vs_ratio']['temperature']), task.y_test), rtol=1e-8
    )


def test_parameter_dependence_ends_match_closed_forms(run):
  """τ = 0: NTK(σ0) interpolant; τ = ∞: noise-free NNGP(σ) interpolant (from the Volterra-solver code path's
  closed-form branch); equilibrium at each T: NNGP posterior; the best value lies between the ends."""
  from examples.paper import parameter_dependence
  from examples.paper.common import digits_task

  res = run[1]['parameter_dependence']
  task = digits_task((4, 9), 16, 60, seed=0)
  cols = res['columns']
  for row in res['rows']:
    r = dict(zip(cols, row))
    sigma0, sigma = math.sqrt(r['sigma0_sq']), math.sqrt(r['sigma_sq'])
    np.testing.assert_allclose(
      r['ntk_end_mse'], _mse(_ntk_interpolant(r['act'], r['depth'], sigma0, task), task.y_test), rtol=1e-7
    )
    np.testing.assert_allclose(
      r['nngp_end_mse'], _mse(_posterior(r['act'], r['depth'], sigma, task, 0.0), task.y_test), rtol=1e-7
    )
    for temperature in res['temperatures']:
      np.testing.assert_allclose(
        r[f'equilibrium_mse_T={temperature}'],
        _mse(_posterior(r['act'], r['depth'], sigma, task, temperature), task.y_test),
        rtol=1e-7,
      )
    # The shape label must agree with the numbers (a mislabelled or mis-indexed best point fails): a 'dip' has its
    # best strictly inside the path and below both ends by more than the tolerance, else the best is an end.
    ends = (r['ntk_end_mse'], r['nngp_end_mse'])
    assert r['best_tau'] in res['taus']
    if r['shape'] == 'dip':
      assert 0 < r['best_tau'] < math.inf and r['best_mse'] < min(ends) - parameter_dependence.TOL
    else:
      assert r['best_mse'] >= min(ends) - parameter_dependence.TOL
  assert any(r[cols.index('shape')] == 'dip' for r in res['rows'])  # the quick preset shows the dip


def test_digits_ends_match_closed_forms(run):
  from examples.paper.common import digits_task

  res = run[1]['digits']
  cols = res['columns']
  tasks = {f'digits {a}-vs-{b}': digits_task((a, b), 16, 60, seed=0) for a, b in ((0, 1), (4, 9))}
  for row in res['rows']:
    r = dict(zip(cols, row))
    task = tasks[r['task']]
    act, sigma0 = ('erf', 2.0) if r['network'].startswith('erf') else ('relu', 1.0)
    ntk = _ntk_interpolant(act, 1, sigma0, task)
    eq = _posterior(act, 1, 1.0, task, r['T'])
    np.testing.assert_allclose(r['ntk_end_mse'], _mse(ntk, task.y_test), rtol=1e-7)
    np.testing.assert_allclose(r['equilibrium_mse'], _mse(eq, task.y_test), rtol=1e-7)
    np.testing.assert_allclose(r['equilibrium_class_error'], np.mean(np.sign(eq) != task.y_test))


def test_drift_numbers_match_closed_forms(run):
  """(a) stationary one-layer autocorrelation ρ(Δ) with c = e^{−λΔ}: ReLU (sin θ + (π − θ) cos θ)/π, cos θ = c;
  erf arcsin(2qc/(1 + 2q))/arcsin(2q/(1 + 2q)), q = σ²‖x‖²/d; floors 1/π and 0. (b) Δ = ∞: ReLU
  f̄ = σ_a² m(x*) m(X)ᵀ[K + T I]⁻¹Y with m = √(q/2π); erf: 0, so the affine readout is at chance (0.5)."""
  from examples.paper.common import digits_task
  from ndk_flax.drift import linear_readout_accuracy

  res = run[1]['drift']
  temperature, sigma = 0.1, 1.0
  lam = temperature / sigma**2
  task = digits_task((0, 1), 16, 60, seed=0)
  q = sigma**2 * np.sum(task.x_test**2, axis=1) / task.x.shape[1]
  c = np.exp(-lam * np.asarray(res['plastic']['lags']))
  theta = np.arccos(c)
  np.testing.assert_allclose(res['plastic']['rho']['relu'], (np.sin(theta) + (np.pi - theta) * c) / np.pi, rtol=1e-8)
  erf_rho = np.arcsin(2 * q[None] * c[:, None] / (1 + 2 * q[None])) / np.arcsin(2 * q / (1 + 2 * q))[None]
  np.testing.assert_allclose(res['plastic']['rho']['erf'], erf_rho.mean(-1), rtol=1e-8)
  floors = {r[0]: r[3] for r in res['plastic']['rows']}
  np.testing.assert_allclose(floors['relu'], 1 / np.pi, rtol=1e-10)
  assert abs(floors['erf']) < 1e-12
  for r in res['plastic']['rows']:
    eq = _posterior(r[0], 1, sigma, task, temperature)
    np.testing.assert_allclose(r[4], np.mean(np.sign(eq) == task.y_test))
  tasks = {f'digits {a}-vs-{b}': digits_task((a, b), 16, 60, seed=0) for a, b in ((0, 1), (4, 9))}
  for row in res['frozen']['rows']:
    name, act = row[0], row[1]
    task = tasks[name]
    limit = np.asarray(res['frozen']['limits'][f'{name} {act}']['f_test_inf'])
    if act == 'relu':
      m = lambda x: np.sqrt(sigma**2 * np.sum(x**2, axis=1) / x.shape[1] / (2 * np.pi))
      k = np.asarray(_nt_kernel('relu', 1, sigma)(task.x, task.x, 'nngp'))
      alpha = np.linalg.solve(k + temperature * np.eye(len(task.x)), task.y)
      np.testing.assert_allclose(limit, sigma**2 * np.outer(m(task.x_test), m(task.x)) @ alpha, rtol=1e-8)
    else:
      assert np.max(np.abs(limit)) < 1e-12
      np.testing.assert_allclose(row[5], 0.5)
    f0_train = _posterior(act, 1, sigma, task, temperature, task.x)
    f0_test = _posterior(act, 1, sigma, task, temperature)
    np.testing.assert_allclose(row[2], linear_readout_accuracy(f0_train, task.y, f0_test, task.y_test))
