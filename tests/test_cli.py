"""The ``ndk-flax`` command: end-to-end runs, the report/results contract, bad inputs, Ctrl-C, and the examples."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import runpy
import signal
import subprocess
import sys

import numpy as np
import pytest

from ndk_flax import cli, config, data
from ndk_flax import report as report_lib

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


NUMBER = r'(-?[0-9.]+(?:e[-+]?[0-9]+)?)'


def check_summary(report: str, results: dict) -> None:
  """The five summary lines of report.md come first and carry the results.json numbers (recomputed here)."""
  lines = report.split('\n\n')[1].splitlines()
  assert [line[:3] for line in lines] == ['1. ', '2. ', '3. ', '4. ', '5. ']
  verdict = 'PASSED' if results['passed'] else 'FAILED'
  assert lines[0].startswith(f'1. **{verdict}**')
  tol = results['tolerance']
  # The deciding statistic, recomputed from the published arrays: max (|ensemble − theory| − δ)/s.e.
  excess = {
    k: (np.abs(np.subtract(results[k]['ensemble'], results[k]['theory'])) - atol) / np.asarray(results[k]['se'])
    for k, atol in (('mean', tol['mean_atol']), ('variance', tol['var_atol']))
  }
  statistic = max(e.max() for e in excess.values())
  found = re.search(r'max \(\|ensemble − theory\| − δ\)/s\.e\. = ' + NUMBER + ' (≤|>) z_tol = ' + NUMBER, lines[1])
  assert_printed(found[1], statistic)
  assert found[2] == ('≤' if statistic <= tol['z_tol'] else '>') and float(found[3]) == tol['z_tol']
  assert (statistic <= tol['z_tol']) == results['passed']
  found = re.search(r'gradient phase 1/λ_max\(Θ0\) = ' + NUMBER, lines[2])
  assert_printed(found[1], results['time_scales']['gradient'])
  kind = max(excess, key=lambda k: excess[k].max())
  i, j = np.unravel_index(np.argmax(excess[kind]), excess[kind].shape)
  found = re.search(
    f'4. Worst comparison: {kind} at t = {NUMBER}, {results["points"][j]}: ensemble {NUMBER} vs theory {NUMBER}',
    lines[3],
  )
  assert found, lines[3]
  assert_printed(found[1], results['times'][i])
  assert_printed(found[2], results[kind]['ensemble'][i][j])
  assert_printed(found[3], results[kind]['theory'][i][j])
  for kind in ('mean', 'variance'):
    diff = np.subtract(results[kind]['ensemble'][-1], results[kind]['theory'][-1])
    above, below = int(np.sum(diff > 0)), int(np.sum(diff < 0))
    if above == 0 or below == 0:
      ratio = np.divide(results[kind]['ensemble'][-1], results[kind]['theory'][-1])
      side = 'above' if below == 0 else 'below'
      found = re.search(
        f'{kind} is {side} the theory at all {above + below} points .ensemble/theory {NUMBER}–{NUMBER}', lines[4]
      )
      assert found, lines[4]
      assert_printed(found[1], ratio.min())
      assert_printed(found[2], ratio.max())
    else:
      assert f'{kind}: {above} points above, {below} below the theory' in lines[4]


# --------------------------------------------------------------------------------------------------------------
# End to end.


@pytest.mark.slow
def test_validate_quick_writes_consistent_report(tmp_path):
  proc = ndk_flax('validate', '--quick', '--out', 'run', '--noprogress', cwd=str(tmp_path))
  out = tmp_path / 'run'
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'PASSED' in proc.stderr
  assert sorted(os.listdir(out)) == sorted(VALIDATE_FILES)  # no INTERRUPTED.md, no .partial folder
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
  assert '**PASSED**' in report and f'max |z| without δ: {results["max_abs_z"]["all"]:.4g}' in report
  check_summary(report, results)
  full = md_table(report, '## Appendix: theory vs ensemble at every recorded time and point')
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
  assert 'PASSED: the ensemble agrees with the theory' in proc.stderr.splitlines()[-1]


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
  assert files == ['.partial', 'INTERRUPTED.md']  # nothing half-done in place; the complete file kept aside
  assert os.listdir(tmp_path / 'run' / '.partial') == ['config.json']
  note = (tmp_path / 'run' / 'INTERRUPTED.md').read_text()
  assert 'training the ensemble' in note and '`.partial/config.json`' in note and '`report.md`' in note
  assert 'interrupted' in rest


class FakeTheory:
  """Theory mean 1 − e^(−t) and variance 1 at every point: a learning signal of 1, cheap to evaluate."""

  def __init__(self):
    from ndk_flax import predict

    self.time_scales = predict.TimeScales(gradient=0.2, diffusive=20.0)

  def check_request(self, t, x_test=None, compute_cov=False):
    pass  # always fits

  def __call__(self, t, x_test=None, compute_cov=False):
    from ndk_flax._nt import Gaussian

    n = 4 if x_test is None else len(x_test)
    mean = np.broadcast_to((1 - np.exp(-np.asarray(t)))[:, None, None], (len(t), n, 1))
    return Gaussian(mean, np.broadcast_to(np.eye(n), (len(t), n, n))) if compute_cov else mean


FAKE_ARGS = ['ndk-flax', 'validate', '--quick', '--n_train', '4', '--n_test', '2', '--noprogress']


@pytest.fixture
def fake_run(monkeypatch):
  """The CLI with FakeTheory and an "ensemble" N(theory mean + shift, 1); ``calls`` records every training call;
  ``on_train`` (settable) runs inside the training call (to interrupt or break it)."""
  from ndk_flax import ensemble, predict

  state = {'shift': 0.0, 'calls': [], 'on_train': None}

  def fake_train(layer, x_train, y_train, *, record_times, n_members, x_test, seed, **kwargs):
    state['calls'].append(dict(kwargs, record_times=np.asarray(record_times)))
    if state['on_train']:
      state['on_train']()
    rng = np.random.default_rng(seed)
    t = np.asarray(record_times)
    level = (1 - np.exp(-t))[None, :, None, None] + state['shift']
    shape = (n_members, len(t))
    return ensemble.EnsembleRecord(
      t,
      level + rng.standard_normal(shape + (len(x_train), 1)),
      level + rng.standard_normal(shape + (len(x_test), 1)),
      None,
    )

  monkeypatch.setattr(predict, 'langevin_mse_ensemble', lambda *a, **k: FakeTheory())
  monkeypatch.setattr(ensemble, 'train_ensemble', fake_train)
  return state


def test_disagreeing_ensemble_exits_1_with_a_failed_report(tmp_path, fake_run):
  """Ensemble mean off by 0.5 = 4 s.e. at M = 64 at each of the 36 mean comparisons: the run must fail (exit 1) and
  still write every file. (The comparison itself is tested in tests/test_validate.py and tests/test_verdict.py.)"""
  fake_run['shift'] = 0.5
  status = cli.main(FAKE_ARGS + ['--noise', 'rademacher', '--out', str(tmp_path)])
  assert status == cli.EXIT_FAIL
  assert fake_run['calls'][0]['noise'] == 'rademacher' and 'Rademacher' in (tmp_path / 'report.md').read_text()
  assert sorted(os.listdir(tmp_path)) == sorted(VALIDATE_FILES)
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results['passed'] is False and results['max_abs_z']['beyond_allowance'] > results['config']['z_tol']
  report = (tmp_path / 'report.md').read_text()
  assert '**FAILED**' in report
  check_summary(report, results)
  # The shift is +0.5 everywhere: the summary names the systematic sign of the mean at the last time.
  assert 'the ensemble mean is above the theory at all 6 points' in report


def test_report_states_what_ran_from_the_data(tmp_path, fake_run):
  """The trained span and step count in report.md come from the recorded times, not from the flags."""
  from ndk_flax import report

  status = cli.main(FAKE_ARGS + ['--out', str(tmp_path)])
  assert status == cli.EXIT_PASS
  results = json.loads((tmp_path / 'results.json').read_text())
  assert math.isclose(results['times'][-1], results['config']['t_max'])
  assert f'trained up to t = 40 ({int(40 / 0.02)} steps, 6 record times' in report.render(results)
  results['times'] = results['times'][:-1] + [20.0]  # as if training had stopped at t = 20
  assert 'trained up to t = 20 (1000 steps' in report.render(results)


def test_training_runs_in_short_segments(tmp_path, fake_run):
  """Ctrl-C is answered between compiled segments: the CLI asks train_ensemble for records at most
  segment_steps apart, and keeps only the requested record times."""
  assert cli.main(FAKE_ARGS + ['--width', '1024', '--out', str(tmp_path)]) == cli.EXIT_PASS
  cfg = config.resolve(quick=True, explicit={'n_train': 4, 'n_test': 2, 'width': 1024})
  steps = np.round(fake_run['calls'][0]['record_times'] / cfg.learning_rate)
  assert steps[0] == 0 and steps[-1] == round(cfg.t_max / cfg.learning_rate)
  assert np.max(np.diff(steps)) <= cli.segment_steps(cfg) < round(cfg.t_max / cfg.learning_rate) / 2
  results = json.loads((tmp_path / 'results.json').read_text())
  np.testing.assert_allclose(results['times'], cli.time_grid(cfg))


def test_width_too_small_to_fail_is_refused(tmp_path, fake_run, capsys):
  """N = 1: the allowance 4 max|y|/N dwarfs the learning signal 1 of the theory, so the run could not fail."""
  status = cli.main(FAKE_ARGS + ['--width', '1', '--out', str(tmp_path / 'run')])
  assert status == cli.EXIT_USAGE
  err = capsys.readouterr().err
  assert 'width = 1 is too small' in err and 'use width >=' in err and not (tmp_path / 'run').exists()
  assert fake_run['calls'] == []


def test_every_figure_has_the_promised_size_and_dpi(tmp_path, fake_run):
  """validate's four PNGs and kernels.png: style.COLUMN inches wide at style.DPI (≥ 150 dpi at that size)."""
  from tests.test_figures import assert_house_figure

  assert cli.main(FAKE_ARGS + ['--out', str(tmp_path / 'v')]) == cli.EXIT_PASS
  for name in ('mean.png', 'variance.png', 'loss.png', 'kernel.png'):
    assert_house_figure(tmp_path / 'v' / name)
  args = ['ndk-flax', 'kernels', '--n_times', '5', '--t_max', '2', '--n_train', '3', '--out', str(tmp_path / 'k')]
  assert cli.main(args) == cli.EXIT_PASS
  assert_house_figure(tmp_path / 'k' / 'kernels.png')


def _complete_previous_run(out, fake_run) -> dict:
  assert cli.main(FAKE_ARGS + ['--out', str(out)]) == cli.EXIT_PASS
  return {name: (out / name).read_bytes() for name in VALIDATE_FILES}


@pytest.mark.parametrize('fault', ['ctrl-c', 'sigterm', 'error'])
def test_a_stopped_rerun_keeps_the_previous_result(tmp_path, fake_run, capsys, fault):
  """Rerun into a folder with a complete result, stopped during training: the old files stay byte for byte, the
  note says what happened; Ctrl-C exits 130, SIGTERM 143, an unexpected error 3 with one line on stderr."""
  out = tmp_path / 'run'
  before = _complete_previous_run(out, fake_run)
  capsys.readouterr()

  def stop():
    if fault == 'ctrl-c':
      raise KeyboardInterrupt
    if fault == 'sigterm':
      os.kill(os.getpid(), signal.SIGTERM)
    raise OSError(28, 'No space left on device')

  fake_run['on_train'] = stop
  status = cli.main(FAKE_ARGS + ['--seed', '1', '--out', str(out)])
  assert status == {'ctrl-c': 130, 'sigterm': 143, 'error': cli.EXIT_ERROR}[fault]
  assert {name: (out / name).read_bytes() for name in VALIDATE_FILES} == before
  note = (out / 'INTERRUPTED.md').read_text()
  assert 'training the ensemble' in note and 'previous complete run' in note
  assert {'ctrl-c': 'Ctrl-C', 'sigterm': 'SIGTERM', 'error': 'No space left on device'}[fault] in note
  err = [line for line in capsys.readouterr().err.splitlines() if line.startswith('ndk-flax:')]
  assert len(err) == 1 and 'INTERRUPTED.md' in err[0], err
  if fault == 'error':
    assert 'Traceback' in note and err[0].startswith('ndk-flax: error: unexpected (OSError')
  # The next complete run replaces the old result and removes the stale note.
  fake_run['on_train'] = None
  assert cli.main(FAKE_ARGS + ['--seed', '2', '--out', str(out)]) == cli.EXIT_PASS
  assert sorted(os.listdir(out)) == sorted(VALIDATE_FILES)
  assert (out / 'results.json').read_bytes() != before['results.json']


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
  (['validate', '--n_times', '2'], 'n_times'),  # the grid would have been [0, t_max/1000]
  (['validate', '--config', 'huge_t_max.json'], 't_max'),  # the grid overflowed
  (['validate', '--temperature', '100'], 'eta T / sigma^2'),  # one-step prior decay 1 − ηT/σ² = −1
  (['kernels', '--n_members', '4'], 'n_members'),  # a validate flag is not a kernels flag
]

# Requests that cannot fit in memory: refused before any allocation (the process stays small).
HUGE = [
  (['validate', '--config', 'n_test_30000.json'], 'n_test'),  # the ensemble's activations of 30 006 points
  (['kernels', '--n_times', '10000', '--t_max', '1000'], 'lower n_times'),
  (['kernels', '--n_train', '10000'], 'lower n_times or n_train'),
  (['validate', '--width', '1000000000'], 'lower width'),
  (['validate', '--n_members', '100000000'], 'lower width, n_members'),
]


@pytest.fixture
def bad_inputs_dir(tmp_path):
  (tmp_path / 'not_json.json').write_text('{width: 3')
  (tmp_path / 'unknown_key.json').write_text('{"colour": "red"}')
  (tmp_path / 'wrong_type.json').write_text('{"width": "wide"}')
  (tmp_path / 'negative_T.json').write_text('{"temperature": -1}')
  (tmp_path / 'a_file').write_text('')
  (tmp_path / 'huge_t_max.json').write_text('{"t_max": 1e308}')
  (tmp_path / 'n_test_30000.json').write_text('{"n_test": 30000}')
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


def _refusal_with_peak_rss(args, cwd, timeout):
  """Run ``ndk-flax *args --out new_out`` in ``cwd`` from a small probe process: (exit status, the refusal lines,
  the CLI process's peak RSS in KiB, stderr)."""
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  probe = (
    'import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); '
    'sys.stderr.write(p.stderr); print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)'
  )
  proc = subprocess.run(
    [sys.executable, '-c', probe, sys.executable, '-m', 'ndk_flax.cli', *args, '--out', 'new_out'],
    cwd=str(cwd),
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  status, rss_kib = map(int, proc.stdout.split())
  message = [line for line in proc.stderr.splitlines() if line.startswith('ndk-flax: error:')]
  return status, message, rss_kib, proc.stderr


@pytest.mark.parametrize('args, reason', HUGE, ids=[' '.join(a) for a, _ in HUGE])
def test_huge_request_is_refused_up_front(bad_inputs_dir, args, reason):
  """Exit 2 with the bytes needed and available, nothing written, and a peak RSS of the refusing process far
  below what the request would need (the estimate comes before any allocation)."""
  status, message, rss_kib, stderr = _refusal_with_peak_rss(args, bad_inputs_dir, timeout=60)
  assert status == cli.EXIT_USAGE, stderr
  assert len(message) == 1 and 'bytes' in message[0] and reason in message[0], stderr
  assert rss_kib < 400 * 1024, rss_kib
  assert not (bad_inputs_dir / 'new_out').exists()


def test_theory_too_big_is_refused_by_the_predictors_own_estimate(tmp_path):
  """The theory's memory is the predictor's own estimate (LangevinPredictor.check_request), not a CLI formula: a
  small ensemble with 20 000 test points is refused by the covariance estimate before anything is solved or written
  (exit 2, one line naming the theory, the bytes and what to lower), in a process that stays small."""
  args = ['validate', '--n_test', '20000', '--n_members', '2', '--width', '4', '--noprogress']
  status, message, rss_kib, stderr = _refusal_with_peak_rss(args, tmp_path, timeout=120)
  assert status == cli.EXIT_USAGE, stderr
  assert len(message) == 1, stderr
  assert 'the theory: The covariance' in message[0] and 'GiB' in message[0] and 'lower n_test' in message[0]
  assert rss_kib < 1024 * 1024, rss_kib
  assert not (tmp_path / 'new_out').exists()


def test_help_lists_the_commands_and_helpfull_every_setting():
  top = ndk_flax('--help', cwd=REPO, timeout=60)
  assert top.returncode == 0 and 'validate' in top.stdout and 'kernels' in top.stdout
  assert '--n_members' not in top.stdout  # the flags are per command
  full = ndk_flax('--helpfull', cwd=REPO, timeout=60)
  assert full.returncode == 0
  for name in [f for f in config.RunConfig().to_dict()] + ['quick', 'config', 'out']:
    assert f'--{name}=' in full.stdout, name


@pytest.mark.parametrize('command', ['validate', 'kernels'])
def test_command_help_lists_its_own_flags_with_numeric_defaults(command):
  proc = ndk_flax(command, '--help', cwd=REPO, timeout=60)
  assert proc.returncode == 0 and proc.stdout.startswith(f'usage: ndk-flax {command}')
  own = {f.name for f in config.fields_of(command)}
  for f in dataclasses.fields(config.RunConfig):
    assert (f'--{f.name}=' in proc.stdout) == (f.name in own), f.name
  assert '--W_std=2.0' in proc.stdout and '--t_max=80.0' in proc.stdout and not re.search("--\\w+='", proc.stdout)
  assert 'raw parameterisation' in proc.stdout and 'ntk parameterisation' not in proc.stdout
  assert ('--quick=' in proc.stdout) == (command == 'validate')
  assert ('--n_members=' in proc.stdout) == (command == 'validate')


def test_flags_are_defined_at_parse_time_not_at_import():
  """Importing ndk_flax.cli registers nothing in absl's global FLAGS; two parses do not share state."""
  from absl import flags

  assert 'width' not in flags.FLAGS and 'n_members' not in flags.FLAGS
  first = cli.parse(['ndk-flax', 'validate', '--width', '64'])
  second = cli.parse(['ndk-flax', 'validate'])
  assert first.config.width == 64 and second.config.width == config.RunConfig().width


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


# --------------------------------------------------------------------------------------------------------------
# Finite-width sweep (--widths) and the accelerator preset (--preset gpu).

SWEEP_WIDTHS = (4, 8, 16, 32)
SWEEP_C_MEAN = 8.0  # the fake ensembles' mean is off by SWEEP_C_MEAN / N (scale s = max |y| applied below)


@pytest.fixture
def fake_sweep(monkeypatch, fake_run):
  """fake_run whose ensemble mean is shifted by SWEEP_C_MEAN/N at width N (variance exactly the theory's)."""
  from ndk_flax import ensemble

  train = ensemble.train_ensemble

  def width_dependent(*args, width, **kwargs):
    fake_run['shift'] = SWEEP_C_MEAN / width
    return train(*args, width=width, **kwargs)

  monkeypatch.setattr(ensemble, 'train_ensemble', width_dependent)
  return fake_run


def test_width_sweep_writes_table_and_figure_from_results(tmp_path, fake_sweep):
  """--widths trains one ensemble per width (the theory solved once), fits the discrepancy against 1/N and writes
  results.json, report.md (its tables are the results.json numbers) and a house-style width_sweep.png. The fake
  ensembles carry a known 1/N mean shift: the fitted coefficient recovers it, the variance shows no 1/N term."""
  from tests.test_figures import assert_house_figure

  widths = ','.join(map(str, reversed(SWEEP_WIDTHS)))  # any order: sorted
  status = cli.main(FAKE_ARGS + ['--widths', widths, '--out', str(tmp_path)])
  assert status == cli.EXIT_PASS
  assert sorted(os.listdir(tmp_path)) == sorted(cli.SWEEP_FILES)
  assert [c['width'] for c in fake_sweep['calls']] == list(SWEEP_WIDTHS)
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results['widths'] == list(SWEEP_WIDTHS)
  fit = results['fit']['mean']
  scale = results['scale']
  assert abs(fit['coefficient'] - SWEEP_C_MEAN / scale) < 4 * fit['coefficient_se'] and fit['supports_inverse_width']
  assert not results['fit']['variance']['supports_inverse_width']
  report = (tmp_path / 'report.md').read_text()
  assert report.splitlines()[2] == report_lib.sweep_sentence(results)
  fit_rows = md_table(report, '## Fit D(N) = a + c/N')
  for row, name in zip(fit_rows, ('mean', 'variance')):
    f = results['fit'][name]
    assert row[0] == name and int(row[6]) == f['dof'] == len(SWEEP_WIDTHS) - 2
    for cell, key in zip(
      row[1:6] + row[7:8], ('coefficient', 'coefficient_se', 'intercept', 'intercept_se', 'chi2') + ('p_value',)
    ):
      assert_printed(cell, f[key])
    assert row[8] == ('yes' if f['supports_inverse_width'] else 'no')
  rows = md_table(report, '## Discrepancy per width')
  d = results['discrepancy']
  for i, row in enumerate(rows):
    assert int(row[0]) == SWEEP_WIDTHS[i]
    for cell, key in zip(row[1:5], ('mean', 'mean_se', 'variance', 'variance_se')):
      assert_printed(cell, d[key][i])
  assert_house_figure(tmp_path / 'width_sweep.png')


@pytest.mark.parametrize(
  'widths, reason',
  [('128,256', 'at least 3 widths'), ('128,x,512', "entry 'x'"), ('128,128,512', 'distinct'), ('0,1,2', "entry '0'")],
)
def test_bad_widths_exit_2_and_write_nothing(tmp_path, capsys, widths, reason):
  status = cli.main(['ndk-flax', 'validate', '--widths', widths, '--out', str(tmp_path / 'run')])
  assert status == cli.EXIT_USAGE
  err = capsys.readouterr().err
  assert 'widths' in err and reason in err and not (tmp_path / 'run').exists()


def test_gpu_preset_resolves_under_file_and_flags(tmp_path):
  """--preset gpu: width 4096 and M = 1024 over the defaults; a config file and explicit flags still win; it is
  exclusive with --quick."""
  s = cli.parse(['ndk-flax', 'validate', '--preset', 'gpu', '--out', str(tmp_path / 'o')])
  assert s.config == dataclasses.replace(config.RunConfig(), preset='gpu', **config.PRESETS['gpu'])
  assert s.config.width >= 4096 and s.config.n_members >= 1024
  path = tmp_path / 'run.json'
  path.write_text('{"preset": "gpu", "n_members": 2048}')
  s = cli.parse(['ndk-flax', 'validate', '--config', str(path), '--width', '8192', '--out', str(tmp_path / 'o')])
  assert (s.config.width, s.config.n_members) == (8192, 2048)
  with pytest.raises(config.ConfigError, match='two presets'):
    cli.parse(['ndk-flax', 'validate', '--quick', '--preset', 'gpu', '--out', str(tmp_path / 'o')])


def test_gpu_preset_is_refused_on_cpu_with_its_size(tmp_path, capsys):
  """On a CPU-only JAX the preset is refused before anything is written (exit 2), naming its work and memory; on an
  accelerator backend it is not refused, and the resource estimate refuses it where memory is short."""
  import jax

  cfg = config.resolve(explicit={'preset': 'gpu'})
  assert cli.accelerator_problem(cfg, backend='gpu') is None and cli.accelerator_problem(cfg, backend='tpu') is None
  assert 'parameter-updates' in cli.accelerator_problem(cfg, backend='cpu')
  assert cli.memory_problem(cfg, 'validate', available=2**28).startswith('needs about')
  assert cli.memory_problem(cfg, 'validate', available=139 * 2**30) is None  # one H200
  if jax.default_backend() == 'cpu':
    status = cli.main(['ndk-flax', 'validate', '--preset', 'gpu', '--noprogress', '--out', str(tmp_path / 'run')])
    assert status == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert 'sized for an accelerator' in err and 'bytes' in err and not (tmp_path / 'run').exists()


@pytest.mark.parametrize('depth, bias', [(1, False), (3, True)])
def test_parameter_count_is_the_models(depth, bias):
  """The one parameter count of the CLI's estimates (memory, segment length, accelerator work) equals the number of
  parameters of the Flax model train_ensemble builds (two of the three earlier formulas assumed a 4-dimensional input
  and no biases)."""
  import jax
  from flax import nnx

  from ndk_flax import nn

  cfg = config.RunConfig(width=16, depth=depth, bias=bias)
  model = nn.from_stax(cli.build_network(cfg), cfg.width, input_shape=(2, data.INPUT_DIM), rngs=nnx.Rngs(0))
  real = sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert cli.parameter_count(cfg) == real
