"""The ``ndk-flax`` command: theory against Langevin-trained Flax ensembles in one command.

    ndk-flax validate [--quick] [--config run.json] [--FLAG value ...] [--out DIR]
    ndk-flax kernels  [--FLAG value ...] [--out DIR]

``validate`` solves the infinite-width theory (``ndk_flax.predict``), trains an ensemble of finite networks with the
discrete Langevin rule (``ndk_flax.ensemble``), compares them point by point in units of the ensemble's standard
error (``ndk_flax.validate``) and writes ``report.md``, ``results.json`` and PNG figures to ``--out``.
``kernels`` evaluates the two-time kernels C(t, s) and R(t, s) (``layer.ndk_fn``) on a time grid and writes
``kernels.npz`` and ``kernels.png``.

Exit status: 0 the ensemble agrees with the theory within the tolerance (``kernels``: done), 1 it does not, 2 bad
flags or config (one line on stderr; checked before anything is written), 130 interrupted (Ctrl-C; the files
written so far are kept and ``INTERRUPTED.md`` says where the run stopped).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import sys
import threading
import time
from typing import Any, Callable, NamedTuple, Sequence

from absl import flags

from ndk_flax import config as config_lib
from ndk_flax.config import ConfigError, RunConfig

COMMANDS = ('validate', 'kernels')
DEFAULT_OUT = {'validate': 'validate_out', 'kernels': 'kernels_out'}
EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

FLAGS = flags.FLAGS
_DEFINE = {
  'int': flags.DEFINE_integer,
  'float': flags.DEFINE_float,
  'bool': flags.DEFINE_bool,
  'str': flags.DEFINE_string,
}
for _f in dataclasses.fields(RunConfig):
  if _f.metadata['choices']:
    flags.DEFINE_enum(_f.name, _f.default, _f.metadata['choices'], _f.metadata['help'])
  else:
    _DEFINE[_f.type](_f.name, _f.default, _f.metadata['help'])
flags.DEFINE_bool('quick', False, f'Preset for a run under a minute: {config_lib.QUICK} (validate).')
flags.DEFINE_string(
  'config',
  None,
  'JSON file of settings (keys = the flag names above); flags given explicitly on the command line override it.',
)
flags.DEFINE_string(
  'out',
  None,
  f'Output directory (default: {DEFAULT_OUT}). Files of a previous run of the same command in it are replaced.',
)
flags.DEFINE_bool('progress', True, 'Show progress bars on stderr.')


class Settings(NamedTuple):
  """A parsed command line."""

  command: str
  config: RunConfig
  out: str
  progress: bool


def parse(argv: Sequence[str]) -> Settings:
  """Parse ``argv`` (program name first) into :class:`Settings`; ConfigError with a one-line reason if invalid.

  Precedence: defaults <- ``--quick`` preset <- ``--config`` file <- flags given on the command line.
  """
  from absl import app

  app.define_help_flags()
  FLAGS.unparse_flags()
  try:
    rest = FLAGS(list(argv))
  except flags.Error as e:
    raise ConfigError(str(e).splitlines()[0]) from None
  commands = rest[1:]
  if len(commands) != 1 or commands[0] not in COMMANDS:
    raise ConfigError(
      f'expected exactly one command out of {", ".join(COMMANDS)}, got {" ".join(commands) or "none"} (see --helpfull)'
    )
  command = commands[0]
  names = [f.name for f in dataclasses.fields(RunConfig)]
  explicit = {name: FLAGS[name].value for name in names if FLAGS[name].present}
  file_values = config_lib.load_json(FLAGS.config) if FLAGS.config else None
  cfg = config_lib.resolve(
    quick=FLAGS.quick, file_values=file_values, explicit=explicit, config_path=FLAGS.config or 'config'
  )
  out = FLAGS.out if FLAGS.out else DEFAULT_OUT[command]
  _check_out_dir(out)
  return Settings(command, cfg, out, FLAGS.progress)


def _check_out_dir(out: str) -> None:
  """ConfigError unless ``out`` is (or can be created as) a writable directory; creates nothing."""
  path = os.path.abspath(out)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f'--out {out!r} exists and is not a directory')
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
    raise ConfigError(f'--out {out!r}: {existing!r} is not a writable directory')


class OutputDir:
  """The files one command writes into ``--out``: written atomically (temporary file + rename), tracked so that an
  interruption note can list them; files of a previous run of the same command are removed when the run starts."""

  NOTE = 'INTERRUPTED.md'

  def __init__(self, path: str, owned: Sequence[str]):
    self.path = path
    self.owned = tuple(owned) + (self.NOTE,)
    self.written: list[str] = []
    self.created = False

  def create(self) -> None:
    os.makedirs(self.path, exist_ok=True)
    self.created = True
    for name in self.owned:
      target = os.path.join(self.path, name)
      if os.path.isfile(target):
        os.remove(target)

  def write(self, name: str, writer: Callable[[str], Any]) -> str:
    """Call ``writer(tmp_path)`` and move the result to ``name``; returns the final path."""
    if name not in self.owned:
      raise ValueError(f'{name!r} is not one of the files this command owns: {self.owned}')
    final = os.path.join(self.path, name)
    root, ext = os.path.splitext(final)
    tmp = f'{root}.partial{ext}'
    try:
      writer(tmp)
      os.replace(tmp, final)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
    self.written.append(name)
    return final

  def write_text(self, name: str, text: str) -> str:
    def writer(tmp: str) -> None:
      with open(tmp, 'w', encoding='utf-8') as fh:
        fh.write(text)

    return self.write(name, writer)

  def note_interrupted(self, stage: str, command_line: str, cause: str) -> str:
    """Write ``INTERRUPTED.md``: which command stopped, in which stage, why, and which files are complete."""
    kept = '\n'.join(f'* `{n}`' for n in self.written) or '* (none)'
    missing = '\n'.join(f'* `{n}`' for n in self.owned if n not in self.written and n != self.NOTE)
    return self.write_text(
      self.NOTE,
      f'# Run interrupted\n\n`{command_line}` was interrupted ({cause}) during: '
      f'{stage}.\n\nFiles kept (complete):\n{kept}\n\nNot written:\n{missing}\n',
    )


def build_network(cfg: RunConfig):
  """The stax network of ``cfg``: ``depth`` × [Dense(width), activation] then Dense(1), raw parameterisation."""
  from ndk_flax import stax

  bias = {'b_std': cfg.b_std, 'b_prior_std': cfg.b_prior_std} if cfg.bias else {}
  activation = {'erf': stax.Erf, 'relu': stax.Relu}[cfg.activation]

  def dense(n: int):
    return stax.Dense(n, W_std=cfg.W_std, W_prior_std=cfg.W_prior_std, **bias)

  return stax.serial(*[layer for _ in range(cfg.depth) for layer in (dense(cfg.width), activation())], dense(1))


def time_grid(cfg: RunConfig, t_first: float | None = None) -> 'np.ndarray':  # noqa: F821
  """Record times: 0 and ``n_times - 1`` geometrically spaced times up to ``t_max``, on whole steps.

  The first positive time is ``t_first`` (default t_max/1000, at least one step); rounding to steps never merges
  two times (each later time is at least one step after the previous one).
  """
  import numpy as np

  t_first = max(cfg.learning_rate, cfg.t_max / 1000 if t_first is None else t_first)
  steps = np.rint(np.geomspace(t_first, cfg.t_max, cfg.n_times - 1) / cfg.learning_rate).astype(np.int64)
  for i in range(steps.size):
    steps[i] = max(steps[i], steps[i - 1] + 1 if i else 1)
  return np.concatenate([[0.0], steps * cfg.learning_rate])


class _Stage:
  """Progress messages on stderr; remembers the current stage for the interruption note.

  While a command runs, Ctrl-C (SIGINT) is also recorded here: Python raises KeyboardInterrupt at once, and if a
  library swallows it (a C++ call that checks for signals and drops the error), the next stage change raises it.
  """

  def __init__(self, total: int):
    self.total, self.count, self.name = total, 0, 'start-up'
    self.started = time.perf_counter()
    self.interrupted = False

  def on_sigint(self, signum: int, frame: Any) -> None:
    self.interrupted = True
    raise KeyboardInterrupt

  def __call__(self, name: str) -> None:
    if self.interrupted:
      raise KeyboardInterrupt
    self.count += 1
    self.name = name
    print(
      f'[{self.count}/{self.total}] {name} (at {time.perf_counter() - self.started:.0f} s)', file=sys.stderr, flush=True
    )


def _run_guarded(settings: Settings, body: Callable[..., int], owned: Sequence[str], argv: Sequence[str]) -> int:
  """Run ``body(settings, out, stage, argv)``. On Ctrl-C (exit 130) or an unexpected error (re-raised) after the
  output directory was created, keep the complete files and write ``INTERRUPTED.md`` saying what is missing."""
  out = OutputDir(settings.out, owned)
  stage = _Stage(len(_STAGES[body.__name__]))
  in_main_thread = threading.current_thread() is threading.main_thread()
  previous = signal.signal(signal.SIGINT, stage.on_sigint) if in_main_thread else None
  try:
    return body(settings, out, stage, argv)
  except ConfigError as e:  # raised only before anything is written (e.g. an unstable learning rate)
    print(f'ndk-flax: error: {e}', file=sys.stderr)
    return EXIT_USAGE
  except (KeyboardInterrupt, Exception) as e:
    interrupted = isinstance(e, KeyboardInterrupt)
    cause = 'Ctrl-C' if interrupted else f'{type(e).__name__}: {e}'.splitlines()[0]
    what = f'\nndk-flax: {"interrupted" if interrupted else "stopped"} ({cause}) during {stage.name}'
    if out.created:
      note = out.note_interrupted(stage.name, _command_line(argv), cause)
      print(f'{what}; kept {len(out.written)} complete file(s); see {note}', file=sys.stderr)
    else:
      print(f'{what}; nothing was written', file=sys.stderr)
    if not interrupted:
      raise
    return EXIT_INTERRUPTED
  finally:
    if in_main_thread:
      signal.signal(signal.SIGINT, previous)


def _command_line(argv: Sequence[str]) -> str:
  return 'ndk-flax ' + ' '.join(shlex.quote(str(a)) for a in argv[1:])


_STAGES = {
  'validate': ('theory (infinite width)', 'training the ensemble', 'comparing', 'figures', 'report'),
  'kernels': ('two-time kernels', 'writing'),
}
VALIDATE_FILES = ('config.json', 'mean.png', 'variance.png', 'loss.png', 'kernel.png', 'results.json', 'report.md')
KERNELS_FILES = ('kernels.npz', 'kernels.png')


def _kernel_maps(layer, x, times, temperature: float) -> dict[str, Any]:
  """C(t, s, x, x), its normalisation C(t,s)/√(C(t,t) C(s,s)) and R(t, s, x, x) for every input in ``x``."""
  import numpy as np

  k = layer.ndk_fn(x, None, times, times, temperature=temperature)
  nngp, ndk = np.asarray(k.nngp), np.asarray(k.ndk)
  diag = np.einsum('ttnn->tn', nngp)
  return {'nngp': nngp, 'ndk': ndk, 'correlation': nngp / np.sqrt(np.einsum('tn,sm->tsnm', diag, diag))}


def _kernel_figure(path: str, times, maps: dict[str, Any], title: str) -> None:
  from ndk_flax import plotting

  plotting.kernel_heatmaps(
    path,
    times,
    [
      ('C(t, s, x, x): two-time NNGP', maps['nngp'][:, :, 0, 0]),
      ('C(t,s) / √(C(t,t) C(s,s))', maps['correlation'][:, :, 0, 0]),
      ('R(t, s, x, x): NDK (0 for t < s)', maps['ndk'][:, :, 0, 0]),
    ],
    suptitle=title,
  )


def _dense_grid(record_times, n: int = 160):
  """``record_times`` plus ``n`` geometric times: smooth theory curves that pass through every recorded time."""
  import numpy as np

  positive = record_times[record_times > 0]
  return np.union1d(record_times, np.geomspace(positive[0] / 4, positive[-1], n))


class _Tabulated:
  """The theory, solved once on ``grid`` for the training and the test points, answering
  ``predictor(t, x_test=None, compute_cov=False)`` for times of that grid (what ``validate.compare`` asks)."""

  def __init__(self, grid, train, test):
    import numpy as np

    from ndk_flax._nt import Gaussian

    self.grid = np.asarray(grid)
    self.train = Gaussian(np.asarray(train.mean), np.asarray(train.covariance))
    self.test = Gaussian(np.asarray(test.mean), np.asarray(test.covariance))

  def __call__(self, t, x_test=None, compute_cov: bool = False):
    import numpy as np

    from ndk_flax._nt import Gaussian

    t = np.asarray(t, dtype=float)
    idx = np.clip(np.searchsorted(self.grid, t), 0, self.grid.size - 1)
    if not np.allclose(self.grid[idx], t, rtol=1e-12, atol=0):
      raise ValueError(f'times {t[~np.isclose(self.grid[idx], t)]} are not on the tabulated grid')
    table = self.train if x_test is None else self.test
    if x_test is not None and np.shape(x_test)[0] != table.mean.shape[1]:
      raise ValueError(f'x_test has {np.shape(x_test)[0]} points, the tabulated test set {table.mean.shape[1]}')
    mean = table.mean[idx]
    return Gaussian(mean, table.covariance[idx]) if compute_cov else mean


def kernels(settings: Settings, out: OutputDir, stage: _Stage, argv: Sequence[str]) -> int:
  """``ndk-flax kernels``: C and R of the configured network on the record-time grid, for the training inputs."""
  import numpy as np

  from ndk_flax import data

  cfg = settings.config
  stage(_STAGES['kernels'][0])
  _enable_x64()
  layer = build_network(cfg)
  x = data.synthetic(cfg.dataset, cfg.n_train, cfg.n_test, cfg.data_seed).x_train
  times = time_grid(cfg)
  maps = _kernel_maps(layer, x, times, cfg.temperature)
  stage(_STAGES['kernels'][1])
  out.create()

  def write_npz(path: str) -> None:
    with open(path, 'wb') as fh:  # a file object: np.savez would append '.npz' to a path
      np.savez(fh, times=times, x=x, nngp=maps['nngp'], ndk=maps['ndk'], config=json.dumps(cfg.to_dict()))

  out.write('kernels.npz', write_npz)
  out.write('kernels.png', lambda p: _kernel_figure(p, times, maps, _arch_title(cfg)))
  print(f'ndk-flax: wrote {", ".join(out.written)} to {out.path}', file=sys.stderr)
  return EXIT_PASS


def validate(settings: Settings, out: OutputDir, stage: _Stage, argv: Sequence[str]) -> int:
  """``ndk-flax validate``: theory vs a Langevin-trained ensemble; 0 if they agree within the tolerance, else 1."""
  import jax.numpy as jnp
  import numpy as np

  from ndk_flax import data, ensemble, predict, report
  from ndk_flax import validate as validate_lib

  cfg = settings.config
  names = _STAGES['validate']
  started, cpu_started = time.perf_counter(), time.process_time()
  stage(names[0])
  _enable_x64()
  layer = build_network(cfg)
  ds = data.synthetic(cfg.dataset, cfg.n_train, cfg.n_test, cfg.data_seed)
  predictor = predict.langevin_mse_ensemble(layer, ds.x_train, ds.y_train, temperature=cfg.temperature)
  scales = predictor.time_scales
  eta_lambda = cfg.learning_rate / scales.gradient
  if eta_lambda >= STABLE_ETA_LAMBDA:
    raise ConfigError(
      f'learning_rate = {cfg.learning_rate:g} is too large for this network and data: '
      f'η λ_max(Θ0) = {eta_lambda:.3g} >= {STABLE_ETA_LAMBDA} (λ_max(Θ0) = '
      f'{1 / scales.gradient:.4g}); use learning_rate < {STABLE_ETA_LAMBDA * scales.gradient:.3g}'
    )
  times = time_grid(cfg)
  dense = _dense_grid(times)
  theory = _Tabulated(dense, predictor(dense, None, compute_cov=True), predictor(dense, ds.x_test, compute_cov=True))
  losses = {
    'train': 0.5 * np.sum((ds.y_train - theory.train.mean) ** 2, axis=(1, 2)),
    'test': np.mean((ds.y_test - theory.test.mean) ** 2, axis=(1, 2)),
  }
  t_theory = time.perf_counter() - started

  out.create()
  out.write_text('config.json', json.dumps(cfg.to_dict(), indent=2) + '\n')
  stage(names[1])
  record = ensemble.train_ensemble(
    layer,
    ds.x_train,
    ds.y_train,
    temperature=cfg.temperature,
    learning_rate=cfg.learning_rate,
    record_times=times,
    n_members=cfg.n_members,
    width=cfg.width,
    x_test=ds.x_test,
    seed=cfg.seed,
    progress=settings.progress,
    dtype=jnp.float32,
    noise=cfg.noise,
  )
  t_ensemble = time.perf_counter() - started - t_theory

  stage(names[2])
  reports = {
    'train': validate_lib.compare(record, theory, points='train'),
    'test': validate_lib.compare(record, theory, x_test=ds.x_test),
  }
  results = _results(cfg, argv, scales, reports, ds, record)
  results['runtime_s'] = {'theory': t_theory, 'ensemble': t_ensemble}

  stage(names[3])
  phases = (scales.gradient, scales.diffusive)
  _time_figures(out, cfg, dense, {'train': theory.train, 'test': theory.test}, losses, results, phases)
  kernel_times = np.geomspace(times[1] / 4, times[-1], 48)
  maps = _kernel_maps(layer, ds.x_train[:1], kernel_times, cfg.temperature)
  kernel_title = _arch_title(cfg) + ', first training point'
  out.write('kernel.png', lambda p: _kernel_figure(p, kernel_times, maps, kernel_title))

  stage(names[4])
  results['runtime_s']['total'] = time.perf_counter() - started
  results['runtime_s']['cpu'] = time.process_time() - cpu_started
  out.write_text('results.json', json.dumps(results, indent=1) + '\n')
  out.write_text('report.md', report.render(results))
  verdict = 'PASSED' if results['passed'] else 'FAILED'
  print(
    f'ndk-flax: {verdict}: max |z| = {results["max_abs_z"]["all"]:.3g}, beyond the finite-width allowance '
    f'{results["max_abs_z"]["beyond_allowance"]:.3g} (tolerance {cfg.z_tol:g}); '
    f'report: {os.path.join(out.path, "report.md")}',
    file=sys.stderr,
  )
  return EXIT_PASS if results['passed'] else EXIT_FAIL


STABLE_ETA_LAMBDA = 1.0
"""Largest η λ_max(Θ0) accepted: gradient descent diverges at 2; the discretisation error of the fastest mode is
O(η λ_max / 2), so beyond 1 the ensemble could not be compared with the continuous-time theory anyway."""

WIDTH_ALLOWANCE = 4.0
"""κ of the finite-width allowance κ · scale / N added to z_tol · s.e. (see the tolerance text of the report)."""


def _results(cfg: RunConfig, argv: Sequence[str], scales, reports: dict, ds, record) -> dict[str, Any]:
  """The machine-readable results (``results.json``; also what ``report.md`` is rendered from)."""
  import numpy as np

  from ndk_flax import __version__

  def joined(field: str):
    return np.concatenate([np.asarray(getattr(reports[k], field))[..., 0] for k in ('train', 'test')], axis=1)

  mean = {
    'theory': joined('theory_mean'),
    'ensemble': joined('ensemble_mean'),
    'se': joined('mean_se'),
    'z': joined('mean_z'),
  }
  var = {
    'theory': joined('theory_var'),
    'ensemble': joined('ensemble_var'),
    'se': joined('var_se'),
    'z': joined('var_z'),
  }
  n_train = ds.x_train.shape[0]
  mean_atol = WIDTH_ALLOWANCE * float(np.max(np.abs(ds.y_train))) / cfg.width
  var_atol = WIDTH_ALLOWANCE * float(np.max(var['theory'])) / cfg.width
  passed = all(r.passed(cfg.z_tol, mean_atol=mean_atol, var_atol=var_atol) for r in reports.values())
  # The statistic the rule bounds: (|ensemble − theory| − δ)/s.e.; the run passes iff its maximum is <= z_tol.
  beyond = max(
    float(np.max((np.abs(np.asarray(d['ensemble']) - d['theory']) - atol) / d['se']))
    for d, atol in ((mean, mean_atol), (var, var_atol))
  )
  y = {'train': ds.y_train[:, 0], 'test': ds.y_test[:, 0]}
  ens_mean = {'train': mean['ensemble'][:, :n_train], 'test': mean['ensemble'][:, n_train:]}
  n_comparisons = int(mean['z'].size + var['z'].size)
  return {
    'command': _command_line(argv),
    'ndk_flax_version': __version__,
    'config': cfg.to_dict(),
    'time_scales': {
      'gradient': scales.gradient,
      'diffusive': scales.diffusive if np.isfinite(scales.diffusive) else None,
    },
    'tolerance': {
      'z_tol': cfg.z_tol,
      'n_comparisons': n_comparisons,
      'width_allowance_kappa': WIDTH_ALLOWANCE,
      'mean_atol': mean_atol,
      'var_atol': var_atol,
      'rule': '|ensemble - theory| <= z_tol * se + atol for every time, point, mean and variance',
    },
    'passed': bool(passed),
    'max_abs_z': {
      'mean': float(np.max(np.abs(mean['z']))),
      'variance': float(np.max(np.abs(var['z']))),
      'all': float(max(np.max(np.abs(mean['z'])), np.max(np.abs(var['z'])))),
      'beyond_allowance': beyond,
    },
    'times': np.asarray(record.times).tolist(),
    'points': [f'train {i}' for i in range(n_train)] + [f'test {i}' for i in range(ds.x_test.shape[0])],
    'theta': np.concatenate([ds.theta_train, ds.theta_test]).tolist(),
    'targets': np.concatenate([y['train'], y['test']]).tolist(),
    'mean': {k: v.tolist() for k, v in mean.items()},
    'variance': {k: v.tolist() for k, v in var.items()},
    'train_loss': {
      'theory': (0.5 * np.sum((y['train'] - mean['theory'][:, :n_train]) ** 2, axis=1)).tolist(),
      'ensemble': (0.5 * np.sum((y['train'] - ens_mean['train']) ** 2, axis=1)).tolist(),
    },
    'test_mse': {
      'theory': np.mean((y['test'] - mean['theory'][:, n_train:]) ** 2, axis=1).tolist(),
      'ensemble': np.mean((y['test'] - ens_mean['test']) ** 2, axis=1).tolist(),
    },
  }


def _time_figures(
  out: OutputDir, cfg: RunConfig, dense, theory: dict, losses: dict, results: dict, phases: tuple[float, float]
) -> None:
  """mean.png, variance.png and loss.png: theory lines on ``dense``, ensemble points at the recorded times."""
  import numpy as np

  from ndk_flax import plotting

  t_ens = np.asarray(results['times'])
  n_train = cfg.n_train
  title = _arch_title(cfg) + f', N={cfg.width}, M={cfg.n_members}'

  def panels(kind: str, theory_of: Callable, ylabel: str, logy: bool) -> list:
    out_panels = []
    for name, sl in (('train', slice(0, n_train)), ('test', slice(n_train, None))):
      ens = np.asarray(results[kind]['ensemble'])[:, sl]
      se = np.asarray(results[kind]['se'])[:, sl]
      labels = [f'{name} {i}' for i in range(ens.shape[1])]
      out_panels.append(
        plotting.Panel(f'{name} points', ylabel, dense, theory_of(theory[name]), t_ens, ens, se, labels, logy)
      )
    return out_panels

  mean_panels = panels('mean', lambda g: np.asarray(g.mean)[..., 0], 'mean output f̄(x, t)', logy=False)
  var_panels = panels(
    'variance', lambda g: np.einsum('tnn->tn', np.asarray(g.covariance)), 'variance of f(x, t)', logy=True
  )
  out.write(
    'mean.png', lambda p: plotting.time_panels(p, mean_panels, suptitle='Mean predictor: ' + title, time_scales=phases)
  )
  out.write(
    'variance.png', lambda p: plotting.time_panels(p, var_panels, suptitle='Variance: ' + title, time_scales=phases)
  )
  loss_panels = [
    plotting.Panel(
      'training loss ½ Σ (y − f̄)²',
      'loss',
      dense,
      losses['train'],
      t_ens,
      np.asarray(results['train_loss']['ensemble']),
      None,
      ('mean predictor',),
      logy=True,
    ),
    plotting.Panel(
      'test error mean (y* − f̄)²',
      'error',
      dense,
      losses['test'],
      t_ens,
      np.asarray(results['test_mse']['ensemble']),
      None,
      ('mean predictor',),
      logy=True,
    ),
  ]
  out.write(
    'loss.png', lambda p: plotting.time_panels(p, loss_panels, suptitle='Learning curves: ' + title, time_scales=phases)
  )


def _arch_title(cfg: RunConfig) -> str:
  return (
    f'{cfg.depth}×{cfg.activation}{" + bias" if cfg.bias else ""}, σ0={cfg.W_std:g}, σ={cfg.W_prior_std:g}, '
    f'T={cfg.temperature:g}'
  )


def _enable_x64() -> None:
  """The theory is solved in float64 (kernels near equilibrium are close to singular)."""
  import jax

  jax.config.update('jax_enable_x64', True)


def main(argv: Sequence[str]) -> int:
  """Run the command line ``argv`` (program name first); returns the exit status."""
  if any(a in ('-h', '-?', '--help', '--helpshort') for a in argv[1:]):  # absl's short help lists __main__'s flags
    print(f"{__doc__}\nFlags (--helpfull also lists absl's own):\n{FLAGS.module_help(sys.modules[__name__])}")
    return EXIT_PASS
  try:
    settings = parse(argv)
  except ConfigError as e:
    print(f'ndk-flax: error: {e}', file=sys.stderr)
    return EXIT_USAGE
  except SystemExit:  # absl's --help / --helpfull / --helpxml print the help and exit 1; asking is no failure
    return EXIT_PASS
  if settings.command == 'validate':
    return _run_guarded(settings, validate, VALIDATE_FILES, argv)
  return _run_guarded(settings, kernels, KERNELS_FILES, argv)


def run(argv: Sequence[str] | None = None) -> None:
  """Console entry point ``ndk-flax`` (absl flags; ``--helpfull`` lists every flag)."""
  sys.exit(main(sys.argv if argv is None else argv))


if __name__ == '__main__':
  run()
