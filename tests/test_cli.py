"""The ``ndk-flax`` command: end-to-end runs, the report/results contract, bad inputs, Ctrl-C, and the examples."""

from __future__ import annotations

import json
import math
import os
import runpy
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ndk_flax import cli, config, data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALIDATE_FILES = ('report.md', 'results.json', 'config.json', 'mean.png', 'variance.png', 'loss.png', 'kernel.png')
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def ndk_flax(*args: str, cwd: str, timeout: float = 600) -> subprocess.CompletedProcess:
  """Run ``python -m ndk_flax.cli ARGS`` (what the console script ``ndk-flax`` calls)."""
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  return subprocess.run(
    [sys.executable, '-m', 'ndk_flax.cli', *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
  )


def md_table(report: str, heading: str) -> list[list[str]]:
  """Body rows of the first markdown table after the line ``heading``."""
  lines = report[report.index(heading) :].splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith('| '))
  rows = []
  for line in lines[start + 2 :]:
    if not line.startswith('| '):
      break
    rows.append([cell.strip() for cell in line.strip().strip('|').split('|')])
  return rows


def assert_printed(cell: str, value: float) -> None:
  """``cell`` is ``value`` printed to 4 significant digits."""
  assert math.isclose(float(cell), value, rel_tol=6e-4, abs_tol=1e-12), (cell, value)


# --------------------------------------------------------------------------------------------------------------
# End to end.


@pytest.mark.slow
def test_validate_quick_writes_consistent_report(tmp_path):
  started = time.perf_counter()
  proc = ndk_flax('validate', '--quick', '--out', 'run', '--noprogress', cwd=str(tmp_path))
  elapsed = time.perf_counter() - started
  out = tmp_path / 'run'
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'PASSED' in proc.stderr
  assert sorted(os.listdir(out)) == sorted(VALIDATE_FILES)  # no INTERRUPTED.md, no .partial files
  for name in VALIDATE_FILES:
    if name.endswith('.png'):
      blob = (out / name).read_bytes()
      assert blob.startswith(PNG_MAGIC) and 5_000 < len(blob) < 400_000, (name, len(blob))

  results = json.loads((out / 'results.json').read_text())
  report = (out / 'report.md').read_text()
  cfg = results['config']
  assert cfg == {**config.RunConfig().to_dict(), **config.QUICK}
  assert json.loads((out / 'config.json').read_text()) == cfg
  n_t, n_p = len(results['times']), cfg['n_train'] + cfg['n_test']
  assert results['times'][0] == 0 and math.isclose(results['times'][-1], cfg['t_max'])
  for kind in ('mean', 'variance'):
    for field in ('theory', 'ensemble', 'se', 'z'):
      assert np.shape(results[kind][field]) == (n_t, n_p)
    z = (np.array(results[kind]['ensemble']) - results[kind]['theory']) / results[kind]['se']
    np.testing.assert_allclose(results[kind]['z'], z, rtol=1e-9)
  assert results['passed'] is True
  max_z = max(np.abs(results['mean']['z']).max(), np.abs(results['variance']['z']).max())
  assert math.isclose(results['max_abs_z']['all'], max_z)
  # The pass rule: |ensemble − theory| <= z_tol · se + δ everywhere, recomputed from the published numbers.
  tol = results['tolerance']
  excess = max(
    np.max((np.abs(np.subtract(results[k]['ensemble'], results[k]['theory'])) - atol) / results[k]['se'])
    for k, atol in (('mean', tol['mean_atol']), ('variance', tol['var_atol']))
  )
  assert math.isclose(results['max_abs_z']['beyond_allowance'], excess) and excess <= tol['z_tol']
  y_scale = np.max(np.abs(results['targets'][: cfg['n_train']]))
  assert math.isclose(tol['mean_atol'], tol['width_allowance_kappa'] * y_scale / cfg['width'])

  # Every number of the report's tables is the results.json number (4 significant digits).
  assert '**PASSED**' in report and f'max |z| = {results["max_abs_z"]["all"]:.4g}' in report
  assert f'max (|ensemble − theory| − δ)/s.e. = {results["max_abs_z"]["beyond_allowance"]:.4g} ≤' in report
  full = md_table(report, '## Theory vs ensemble at every recorded time and point')
  assert len(full) == n_t * n_p
  for row in full:
    i = int(np.argmin(np.abs(np.array(results['times']) - float(row[0]))))
    j = results['points'].index(row[1])
    assert_printed(row[0], results['times'][i])
    cells = dict(zip(['mt', 'me', 'ms', 'mz', 'vt', 've', 'vs', 'vz'], row[2:]))
    for key, (kind, field) in {
      'mt': ('mean', 'theory'),
      'me': ('mean', 'ensemble'),
      'ms': ('mean', 'se'),
      'mz': ('mean', 'z'),
      'vt': ('variance', 'theory'),
      've': ('variance', 'ensemble'),
      'vs': ('variance', 'se'),
      'vz': ('variance', 'z'),
    }.items():
      assert_printed(cells[key], results[kind][field][i][j])
  summary = md_table(report, '## Summary per recorded time')
  assert len(summary) == n_t
  for i, row in enumerate(summary):
    assert_printed(row[0], results['times'][i])
    assert_printed(row[1], results['train_loss']['theory'][i])
    assert_printed(row[2], results['train_loss']['ensemble'][i])
    assert_printed(row[3], results['test_mse']['theory'][i])
    assert_printed(row[4], results['test_mse']['ensemble'][i])
    assert_printed(row[5], np.abs(results['mean']['z'][i]).max())
    assert_printed(row[6], np.abs(results['variance']['z'][i]).max())
  assert f'1/λ_max(Θ0) = {results["time_scales"]["gradient"]:.4g}' in report
  assert f'1/λ = σ²/T = {results["time_scales"]["diffusive"]:.4g}' in report
  # The time scales are the documented ones: σ²/T and 1/λ_max of the NTK at t = 0 (independent of the code).
  assert math.isclose(results['time_scales']['diffusive'], cfg['W_prior_std'] ** 2 / cfg['temperature'])
  assert elapsed < 120, f'--quick took {elapsed:.0f} s'


@pytest.mark.slow
def test_ctrl_c_keeps_files_and_leaves_a_note(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  proc = subprocess.Popen(
    [sys.executable, '-m', 'ndk_flax.cli', 'validate', '--quick', '--noprogress', '--out', 'run'],
    cwd=str(tmp_path),
    env=env,
    stderr=subprocess.PIPE,
    text=True,
  )
  seen = []
  for line in proc.stderr:  # wait until the ensemble is training, then press Ctrl-C
    seen.append(line)
    if 'training the ensemble' in line:
      proc.send_signal(signal.SIGINT)
      break
  rest = proc.communicate(timeout=120)[1]
  assert proc.returncode == cli.EXIT_INTERRUPTED, ''.join(seen) + rest
  files = sorted(os.listdir(tmp_path / 'run'))
  assert files == ['INTERRUPTED.md', 'config.json']
  note = (tmp_path / 'run' / 'INTERRUPTED.md').read_text()
  assert 'training the ensemble' in note and '`config.json`' in note and '`report.md`' in note
  assert 'interrupted' in rest


def test_disagreeing_ensemble_exits_1_with_a_failed_report(tmp_path, monkeypatch):
  """Theory N(0, 1) at every time and point, "ensemble" N(0.5, 1): the mean is off by 0.5 = 4 s.e. at M = 64 at each
  of the 60 mean comparisons, so the run must fail (exit 1) and still write every file. (The comparison itself is
  tested in tests/test_validate.py; the real theory and ensemble in the slow end-to-end test.)"""
  from ndk_flax import ensemble, predict
  from ndk_flax._nt import Gaussian

  class StandardNormalTheory:
    time_scales = predict.TimeScales(gradient=0.2, diffusive=20.0)

    def __call__(self, t, x_test=None, compute_cov=False):
      n = 4 if x_test is None else len(x_test)
      mean = np.zeros((len(t), n, 1))
      return Gaussian(mean, np.broadcast_to(np.eye(n), (len(t), n, n))) if compute_cov else mean

  seen = {}

  def shifted(layer, x_train, y_train, *, record_times, n_members, x_test, seed, **kwargs):
    seen.update(kwargs)
    rng = np.random.default_rng(seed)
    shape = (n_members, len(record_times))
    return ensemble.EnsembleRecord(
      np.asarray(record_times),
      0.5 + rng.standard_normal(shape + (len(x_train), 1)),
      0.5 + rng.standard_normal(shape + (len(x_test), 1)),
      None,
    )

  monkeypatch.setattr(predict, 'langevin_mse_ensemble', lambda *a, **k: StandardNormalTheory())
  monkeypatch.setattr(ensemble, 'train_ensemble', shifted)
  status = cli.main(
    [
      'ndk-flax',
      'validate',
      '--quick',
      '--n_train',
      '4',
      '--n_test',
      '2',
      '--noprogress',
      '--noise',
      'rademacher',
      '--out',
      str(tmp_path),
    ]
  )
  assert status == cli.EXIT_FAIL
  assert seen['noise'] == 'rademacher' and 'Rademacher' in (tmp_path / 'report.md').read_text()
  assert sorted(os.listdir(tmp_path)) == sorted(VALIDATE_FILES)
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results['passed'] is False and results['max_abs_z']['beyond_allowance'] > results['config']['z_tol']
  assert '**FAILED**' in (tmp_path / 'report.md').read_text()


# --------------------------------------------------------------------------------------------------------------
# Bad inputs: exit 2, one line on stderr naming the problem, nothing written.


BAD = [
  (['validate', '--activation', 'tanh'], 'activation'),
  (['validate', '--temperature', '-0.1'], 'temperature'),
  (['validate', '--width', '0'], 'width'),
  (['validate', '--n_members', '1'], 'n_members'),
  (['validate', '--learning_rate', 'nan'], 'learning_rate'),
  (['validate', '--noise', 'uniform'], 'noise'),
  (['validate', '--t_max', '0.01', '--n_times', '12'], 't_max'),
  (['validate', '--config', 'missing.json'], 'missing.json'),
  (['validate', '--config', 'not_json.json'], 'not valid JSON'),
  (['validate', '--config', 'unknown_key.json'], 'colour'),
  (['validate', '--config', 'wrong_type.json'], 'width'),
  (['validate', '--config', 'negative_T.json'], 'temperature'),
  (['validate', '--no_such_flag'], 'no_such_flag'),
  (['validate', 'extra'], 'command'),
  ([], 'command'),
  (['fit'], 'command'),
  (['validate', '--out', 'a_file'], 'a_file'),
  (['kernels', '--depth', '0'], 'depth'),
]


@pytest.fixture
def bad_inputs_dir(tmp_path):
  (tmp_path / 'not_json.json').write_text('{width: 3')
  (tmp_path / 'unknown_key.json').write_text('{"colour": "red"}')
  (tmp_path / 'wrong_type.json').write_text('{"width": "wide"}')
  (tmp_path / 'negative_T.json').write_text('{"temperature": -1}')
  (tmp_path / 'a_file').write_text('')
  return tmp_path


@pytest.mark.parametrize('args, reason', BAD, ids=[' '.join(a) or 'no-command' for a, _ in BAD])
def test_bad_input_exits_2_with_reason_and_writes_nothing(bad_inputs_dir, args, reason):
  before = sorted(os.listdir(bad_inputs_dir))
  proc = ndk_flax(
    *args,
    '--out' if '--out' not in args else '--noprogress',
    *(['new_out'] if '--out' not in args else []),
    cwd=str(bad_inputs_dir),
    timeout=60,
  )
  assert proc.returncode == 2, proc.stderr
  message = [line for line in proc.stderr.splitlines() if line.startswith('ndk-flax: error:')]
  assert len(message) == 1 and reason in message[0], proc.stderr
  assert sorted(os.listdir(bad_inputs_dir)) == before  # in particular no new_out/


def test_unstable_learning_rate_is_rejected_before_writing(tmp_path, capsys):
  # η λ_max(Θ0) >= 1: refused after the (cheap) theory set-up, before the output directory exists.
  status = cli.main(
    ['ndk-flax', 'validate', '--quick', '--learning_rate', '1.0', '--t_max', '10', '--out', str(tmp_path / 'run')]
  )
  assert status == cli.EXIT_USAGE
  assert 'learning_rate' in capsys.readouterr().err and not (tmp_path / 'run').exists()


@pytest.mark.parametrize('flag', ['--helpfull', '--help', '-h'])
def test_help_lists_every_setting(flag):
  proc = ndk_flax(flag, cwd=REPO, timeout=60)
  assert proc.returncode == 0
  for name in [f for f in config.RunConfig().to_dict()] + ['quick', 'config', 'out']:
    assert f'--{name}' in proc.stdout, name


# --------------------------------------------------------------------------------------------------------------
# Settings: precedence and types (in process).


def test_precedence_defaults_quick_file_flags(tmp_path):
  path = tmp_path / 'run.json'
  path.write_text(json.dumps({'width': 128, 'temperature': 0.2, 'bias': True, 'b_std': 0.5}))
  s = cli.parse(
    ['ndk-flax', 'validate', '--quick', '--config', str(path), '--temperature', '0.1', '--out', str(tmp_path / 'o')]
  )
  assert s.command == 'validate' and s.out == str(tmp_path / 'o')
  assert s.config.width == 128  # file over preset
  assert s.config.n_members == config.QUICK['n_members']  # preset over default
  assert s.config.temperature == 0.1  # explicit flag over file
  assert s.config.bias and s.config.b_std == 0.5
  assert s.config.W_std == config.RunConfig().W_std  # default
  # A flag given explicitly with the default value still overrides the file.
  s = cli.parse(['ndk-flax', 'validate', '--config', str(path), '--width', '1024'])
  assert s.config.width == 1024


def test_noise_choices_are_the_optimizer_laws():
  from ndk_flax import optax as ndk_optax

  assert config.NOISE_LAWS == ndk_optax.NOISE_LAWS


def test_config_types_are_strict():
  with pytest.raises(config.ConfigError, match='n_members'):
    config.resolve(file_values={'n_members': 64.0})
  with pytest.raises(config.ConfigError, match='bias'):
    config.resolve(file_values={'bias': 1})
  assert config.resolve(file_values={'temperature': 1}).temperature == 1.0


def test_time_grid_is_on_whole_steps():
  for cfg in (
    config.RunConfig(),
    config.resolve(quick=True),
    config.resolve(explicit={'t_max': 0.5, 'n_times': 11, 'learning_rate': 0.05}),
  ):
    t = cli.time_grid(cfg)
    steps = t / cfg.learning_rate
    assert t.size == cfg.n_times and t[0] == 0 and np.all(np.diff(t) > 0)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-9)
    assert math.isclose(t[-1], cfg.t_max, rel_tol=cfg.learning_rate / cfg.t_max)


def test_data_is_deterministic_and_on_the_circle():
  a, b = data.synthetic(seed=3), data.synthetic(seed=3)
  for u, v in zip(a, b):
    np.testing.assert_array_equal(u, v)
  np.testing.assert_allclose(np.sum(a.x_train**2, axis=1), 3.0)
  np.testing.assert_allclose(a.x_train @ a.x_train.T / 3, (1 + np.cos(a.theta_train[:, None] - a.theta_train)) / 2)
  c = data.synthetic('classification', n_train=8)
  assert set(np.unique(c.y_train)) <= {-1.0, 1.0}
  with pytest.raises(ValueError, match='n_train'):
    data.synthetic(n_train=0)


# --------------------------------------------------------------------------------------------------------------
# kernels.


def test_kernels_command_matches_neural_tangents_at_t0(tmp_path):
  from ndk_flax._nt import nt_stax

  status = cli.main(
    [
      'ndk-flax',
      'kernels',
      '--depth',
      '2',
      '--activation',
      'relu',
      '--n_times',
      '5',
      '--t_max',
      '2',
      '--n_train',
      '3',
      '--W_std',
      '1.5',
      '--W_prior_std',
      '0.7',
      '--out',
      str(tmp_path / 'k'),
    ]
  )
  assert status == cli.EXIT_PASS
  assert sorted(os.listdir(tmp_path / 'k')) == ['kernels.npz', 'kernels.png']
  z = np.load(tmp_path / 'k' / 'kernels.npz')
  assert z['nngp'].shape == z['ndk'].shape == (5, 5, 3, 3)
  # C(0, 0) is the NNGP at the initial variances: Neural Tangents' own kernel_fn.
  _, _, kernel_fn = nt_stax.serial(
    nt_stax.Dense(8, W_std=1.5),
    nt_stax.Relu(),
    nt_stax.Dense(8, W_std=1.5),
    nt_stax.Relu(),
    nt_stax.Dense(1, W_std=1.5),
  )
  np.testing.assert_allclose(z['nngp'][0, 0], kernel_fn(z['x'], None, 'nngp'), rtol=1e-6)
  # Causality of the response kernel: R(t, s) = 0 for t < s.
  t = z['times']
  assert np.all(z['ndk'][t[:, None] < t[None, :]] == 0)


# --------------------------------------------------------------------------------------------------------------
# Examples (the README tour), run in process with their small settings.


EXAMPLES = sorted(f for f in os.listdir(os.path.join(REPO, 'examples')) if f[:2].isdigit() and f.endswith('.py'))


@pytest.mark.slow
@pytest.mark.parametrize('name', EXAMPLES)
def test_example_runs(name, monkeypatch, tmp_path, capsys):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, 'argv', [name, '--quick'])
  runpy.run_path(os.path.join(REPO, 'examples', name), run_name='__main__')
  assert capsys.readouterr().out.strip()
