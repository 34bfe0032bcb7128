"""The ``ndk-flax`` command: theory against Langevin-trained Flax ensembles in one command.

    ndk-flax validate [--quick] [--config run.json] [--FLAG value ...] [--out DIR]
    ndk-flax kernels  [--FLAG value ...] [--out DIR]

``validate`` solves the infinite-width theory (``ndk_flax.predict``), trains an ensemble of finite networks with the
discrete Langevin rule (``ndk_flax.ensemble``), compares them point by point in units of the ensemble's standard
error (``ndk_flax.validate``) and writes ``report.md``, ``results.json`` and PNG figures to ``--out``.
``kernels`` evaluates the two-time kernels C(t, s) and R(t, s) (``layer.ndk_fn``) on a time grid and writes
``kernels.npz`` and ``kernels.png``.

Exit status: 0 the ensemble agrees with the theory within the tolerance (``kernels``: done), 1 it does not, 2 bad
flags or config, or a request that cannot fit in memory (one line on stderr; checked before anything is written),
3 an unexpected error (one line on stderr, the traceback in ``INTERRUPTED.md``), 130 Ctrl-C and 143 SIGTERM.
Files are written into ``--out/.partial/`` and moved into ``--out`` only when the run is complete, so a previous
complete result is never lost; after an interruption or error ``INTERRUPTED.md`` says where the run stopped.
Flags are defined when the command line is parsed (:func:`parse`), not at import; ``ndk-flax COMMAND --help``
lists the flags of one command.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import sys
import threading
import time
from typing import Any, Callable, NamedTuple, Sequence

from ndk_flax import config as config_lib
from ndk_flax import resources
from ndk_flax import verdict as verdict_lib
from ndk_flax.config import ConfigError, RunConfig

COMMANDS = ('validate', 'kernels')
DEFAULT_OUT = {'validate': 'validate_out', 'kernels': 'kernels_out'}
EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130; SIGTERM gives 128 + 15 = 143
SUMMARIES = {
  'validate': 'theory (infinite width) vs a Langevin-trained Flax ensemble; report.md, results.json, figures',
  'kernels': 'the two-time kernels C(t, s) and R(t, s) on the record-time grid; kernels.npz, kernels.png',
}
_EXTRA_FLAGS = {  # name: (commands, kind, default, help)
  'quick': (('validate',), 'bool', False, f'Preset for a run under a minute: {config_lib.QUICK}.'),
  'config': (
    COMMANDS,
    'str',
    None,
    'JSON file of settings (keys = the flag names); flags given explicitly on the command line override it.',
  ),
  'out': (
    COMMANDS,
    'str',
    None,
    'Output directory (default: validate_out / kernels_out). Files of a previous run of the same command in it '
    'are replaced only once the new run is complete.',
  ),
  'progress': (COMMANDS, 'bool', True, 'Show progress bars on stderr (--noprogress: off).'),
}


def _flag_values(command: str):
  """A fresh absl FlagValues holding the flags of ``command`` (defined here, at parse time, never at import)."""
  from absl import flags

  define = {'int': flags.DEFINE_integer, 'float': flags.DEFINE_float, 'bool': flags.DEFINE_bool}
  fv = flags.FlagValues()
  for f in config_lib.fields_of(command):
    if f.metadata['choices']:
      flags.DEFINE_enum(f.name, f.default, f.metadata['choices'], f.metadata['help'], flag_values=fv)
    elif f.type == 'str':
      flags.DEFINE_string(f.name, f.default, f.metadata['help'], flag_values=fv)
    else:
      define[f.type](f.name, f.default, f.metadata['help'], flag_values=fv)
  for name, (commands, kind, default, text) in _EXTRA_FLAGS.items():
    if command in commands:
      {'bool': flags.DEFINE_bool, 'str': flags.DEFINE_string}[kind](name, default, text, flag_values=fv)
  return fv


def command_help(command: str) -> str:
  """The flags of ``command``: one line each, ``--name=DEFAULT`` (numbers as numbers) and the description.

  Examples:
    >>> print(command_help('kernels').splitlines()[0])
    usage: ndk-flax kernels [--config FILE] [--FLAG VALUE ...] [--out DIR]
  """
  lines = [
    f'usage: ndk-flax {command} {"[--quick] " if command == "validate" else ""}[--config FILE] [--FLAG VALUE ...] '
    '[--out DIR]',
    '',
    f'ndk-flax {command}: {SUMMARIES[command]}.',
    '',
    'flags:',
  ]
  entries = [(f.name, f.default, f.metadata['help'], f.metadata['choices']) for f in config_lib.fields_of(command)]
  entries += [(n, d, h, None) for n, (cmds, _, d, h) in _EXTRA_FLAGS.items() if command in cmds]
  for name, default, text, choices in entries:
    shown = (
      {True: 'true', False: 'false', None: 'none'}.get(default, default)
      if isinstance(default, (bool, type(None)))
      else default
    )
    lines.append(f'  --{name}={shown}')
    lines.append(f'      {text}' + (f' One of: {", ".join(choices)}.' if choices else ''))
  return '\n'.join(lines)


def top_help(full: bool = False) -> str:
  """``ndk-flax --help``: the module description and the commands (``full``: and every command's flags).

  Examples:
    >>> '--n_members=' in top_help(), '--n_members=' in top_help(full=True)
    (False, True)
  """
  text = __doc__ + '\ncommands:\n' + '\n'.join(f'  {c:9s} {SUMMARIES[c]}' for c in COMMANDS)
  text += '\n\n`ndk-flax COMMAND --help` lists the flags of one command; --helpfull lists all.\n'
  if full:
    text += '\n' + '\n\n'.join(command_help(c) for c in COMMANDS) + '\n'
  return text


class Settings(NamedTuple):
  """A parsed command line.

  Examples:
    >>> s = parse(['ndk-flax', 'kernels', '--depth', '2', '--noprogress'])
    >>> s.command, s.config.depth, s.out, s.progress
    ('kernels', 2, 'kernels_out', False)
  """

  command: str
  config: RunConfig
  out: str
  progress: bool


def parse(argv: Sequence[str]) -> Settings:
  """Parse ``argv`` (program name first) into :class:`Settings`; ConfigError with a one-line reason if invalid.

  Precedence: defaults <- ``--quick`` preset <- ``--config`` file <- flags given on the command line. A request
  that cannot fit in memory is refused here too (:func:`memory_problem`).

  Examples:
    >>> cfg = parse(['ndk-flax', 'validate', '--quick', '--width', '128']).config
    >>> cfg.width, cfg.n_members == config_lib.QUICK['n_members']  # the flag beats the preset
    (128, True)
    >>> try:
    ...   parse(['ndk-flax', 'validate', '--n_times', '2'])
    ... except ConfigError as e:
    ...   print(e)
    n_times must be >= 3 (t = 0, t_max/1000 and t_max), got 2
  """
  from absl import flags

  named = [a for a in argv[1:] if a in COMMANDS]
  if not named:
    given = ' '.join(a for a in argv[1:] if not a.startswith('-')) or 'none'
    raise ConfigError(f'expected exactly one command out of {", ".join(COMMANDS)}, got {given} (see --help)')
  command = named[0]
  fv = _flag_values(command)
  try:
    rest = fv(list(argv))
  except flags.Error as e:
    raise ConfigError(str(e).splitlines()[0]) from None
  if rest[1:] != [command]:
    raise ConfigError(
      f'expected exactly one command out of {", ".join(COMMANDS)}, got {" ".join(rest[1:]) or "none"} (see --help)'
    )
  explicit = {f.name: fv[f.name].value for f in config_lib.fields_of(command) if fv[f.name].present}
  file_values = config_lib.load_json(fv.config) if fv.config else None
  quick = command == 'validate' and fv.quick
  cfg = config_lib.resolve(quick=quick, file_values=file_values, explicit=explicit, config_path=fv.config or 'config')
  out = fv.out if fv.out else DEFAULT_OUT[command]
  _check_out_dir(out)
  problem = memory_problem(cfg, command)
  if problem:
    raise ConfigError(problem)
  return Settings(command, cfg, out, fv.progress)


def estimated_bytes(cfg: RunConfig, command: str) -> dict[str, float]:
  """Rough peak memory of each part of ``command`` (bytes), from the sizes alone; the refusal of
  :func:`memory_problem` compares their sum with the available memory. The theory is not here: its own estimates
  (``LangevinPredictor.check_request``) refuse it in ``validate`` before anything is written.

  * ensemble: ``ndk_flax.resources.ensemble_bytes`` (the estimate ``train_ensemble`` checks) in float32, with
    record segments + n_times record times;
  * kernels: ``ndk_flax.resources.ndk_grid_bytes`` of the (n_t, n_t, P, P) grid in float64 (the estimate
    ``ndk_fn`` checks).

  Examples:
    >>> sizes = estimated_bytes(RunConfig(), 'validate')
    >>> sorted(sizes), sizes['ensemble'] < 1e9
    (['ensemble'], True)
  """
  p, n_test, n_t = cfg.n_train, cfg.n_test, cfg.n_times
  if command == 'kernels':  # ndk_fn(x, None, times, times): the causal triangle, float64 (its own estimate)
    _, batch = resources.ndk_grid_batch(n_t * (n_t + 1) // 2, p * p)
    return {'kernels': resources.ndk_grid_bytes(p, p, n_t, n_t, itemsize=8, batch_elements=batch)}
  ensemble = resources.ensemble_bytes(
    cfg.n_members, parameter_count(cfg), p + n_test, cfg.depth * cfg.width, MAX_SEGMENTS + n_t
  )
  return {'ensemble': ensemble.total}


def parameter_count(cfg: RunConfig) -> int:
  """Parameters of one member of :func:`build_network`: d·N + (depth − 1)·N² + N weights (d = the data's input
  dimension, N = width) and, with ``bias``, depth·N + 1 biases.

  Examples:
    >>> parameter_count(RunConfig(width=8, depth=2, bias=False))  # 3·8 + 8² + 8
    96
    >>> parameter_count(RunConfig(width=8, depth=2, bias=True))  # + 2·8 + 1
    113
  """
  from ndk_flax import data

  w = cfg.width
  return data.INPUT_DIM * w + (cfg.depth - 1) * w**2 + w + cfg.bias * (cfg.depth * w + 1)


def memory_problem(cfg: RunConfig, command: str, available: int | None = None) -> str | None:
  """Why ``cfg`` cannot run in the available memory (a one-line refusal naming the bytes), or None.

  Examples:
    >>> memory_problem(RunConfig(), 'validate', available=2**34) is None
    True
    >>> memory_problem(RunConfig(n_test=30000), 'validate', available=2**34).split(' (')[0]  # the activations
    'needs about 2.5e+11 bytes'
  """
  sizes = estimated_bytes(cfg, command)
  need = sum(sizes.values())
  available = resources.host_available_bytes() if available is None else available
  if need <= available:
    return None
  parts = ', '.join(f'{k} {v:.2g}' for k, v in sizes.items())
  hint = {
    'kernels': 'lower n_times or n_train',
    'ensemble': 'lower width, n_members, depth, n_train or n_test',
  }[max(sizes, key=sizes.get)]
  return f'needs about {need:.2g} bytes ({parts}) but {available:.2g} bytes are available; {hint}'


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
  """The files one command writes into ``--out``, crash-safe: every file is first written into the staging folder
  ``--out/.partial/`` (each atomically: temporary name + rename) and moved into ``--out`` only by :meth:`commit`,
  once the whole run is complete. A previous complete result in ``--out`` is therefore never touched by a run that
  is interrupted or crashes; the interruption note lists what the stopped run had completed in ``.partial/``.

  Examples:
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> out = OutputDir(folder, ['results.json'])
    >>> out.create()
    >>> _ = out.write_text('results.json', '{}')
    >>> os.listdir(folder)  # nothing in place until the run is complete
    ['.partial']
    >>> out.commit()
    >>> os.listdir(folder)
    ['results.json']
  """

  NOTE = 'INTERRUPTED.md'
  STAGING = '.partial'

  def __init__(self, path: str, owned: Sequence[str]):
    self.path = path
    self.staging = os.path.join(path, self.STAGING)
    self.owned = tuple(owned)
    self.written: list[str] = []
    self.created = False

  def create(self) -> None:
    """Create ``--out/.partial/``, emptied of what an earlier stopped run left there."""
    os.makedirs(self.staging, exist_ok=True)
    self.created = True
    for name in self.owned:
      target = os.path.join(self.staging, name)
      if os.path.isfile(target):
        os.remove(target)

  def write(self, name: str, writer: Callable[[str], Any]) -> str:
    """Call ``writer(tmp_path)`` and move the result to ``.partial/name``; returns that path."""
    if name not in self.owned:
      raise ValueError(f'{name!r} is not one of the files this command owns: {self.owned}')
    final = os.path.join(self.staging, name)
    root, ext = os.path.splitext(final)
    tmp = f'{root}.tmp{ext}'
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

  def commit(self) -> None:
    """Move every written file into ``--out`` (replacing the previous run's), drop the previous run's files this
    run did not write and a stale ``INTERRUPTED.md``, and remove the staging folder."""
    for name in self.written:
      os.replace(os.path.join(self.staging, name), os.path.join(self.path, name))
    for name in (*self.owned, self.NOTE):
      target = os.path.join(self.path, name)
      if name not in self.written and os.path.isfile(target):
        os.remove(target)
    os.rmdir(self.staging)

  def note_interrupted(self, stage: str, command_line: str, cause: str, details: str = '') -> str:
    """Write ``--out/INTERRUPTED.md``: which command stopped, in which stage, why, which files it completed."""
    os.makedirs(self.path, exist_ok=True)
    kept = '\n'.join(f'* `{self.STAGING}/{n}`' for n in self.written) or '* (none)'
    missing = '\n'.join(f'* `{n}`' for n in self.owned if n not in self.written)
    previous = [n for n in self.owned if os.path.isfile(os.path.join(self.path, n))]
    text = (
      f'# Run interrupted\n\n`{command_line}` was interrupted ({cause}) during: {stage}.\n\n'
      f'Files this run completed (in `{self.STAGING}/`, not moved into place):\n{kept}\n\nNot written:\n{missing}\n'
      + (
        f'\nThe files of the previous complete run in this folder are untouched: {", ".join(previous)}.\n'
        if previous
        else ''
      )
      + (f'\n## Details\n\n```\n{details}```\n' if details else '')
    )
    final = os.path.join(self.path, self.NOTE)
    with open(final + '.tmp', 'w', encoding='utf-8') as fh:
      fh.write(text)
    os.replace(final + '.tmp', final)
    return final


def build_network(cfg: RunConfig):
  """The stax network of ``cfg``: ``depth`` × [Dense(width), activation] then Dense(1), raw parameterisation.

  Examples:
    One ReLU layer, σ0 = 1, on orthogonal unit inputs in R³: the first layer gives K = x·x'/3 = I/3, so the output
    NNGP C(0, 0) is K/2 = 1/6 on the diagonal and the arc-cosine value (1/3)/(2π) = 1/(6π) off it:

    >>> import numpy as np
    >>> net = build_network(RunConfig(activation='relu', W_std=1.0, W_prior_std=1.0))
    >>> c = np.asarray(net.ndk_fn(np.eye(3), np.eye(3), np.zeros(1), np.zeros(1), temperature=0.05).nngp[0, 0])
    >>> expected = np.where(np.eye(3) == 1, 1 / 6, 1 / (6 * np.pi))
    >>> bool(np.allclose(c, expected, atol=1e-6))
    True
  """
  from ndk_flax import stax

  bias = {'b_std': cfg.b_std, 'b_prior_std': cfg.b_prior_std} if cfg.bias else {}
  activation = {'erf': stax.Erf, 'relu': stax.Relu}[cfg.activation]

  def dense(n: int):
    return stax.Dense(n, W_std=cfg.W_std, W_prior_std=cfg.W_prior_std, **bias)

  return stax.serial(*[layer for _ in range(cfg.depth) for layer in (dense(cfg.width), activation())], dense(1))


def time_grid(cfg: RunConfig, t_first: float | None = None) -> 'np.ndarray':  # noqa: F821
  """Record times: 0 and ``n_times - 1`` geometrically spaced times from ``t_first`` (default t_max/1000, at least
  one step) to exactly ``t_max``, on whole steps; rounding to steps never merges two times.

  Examples:
    >>> from ndk_flax.config import RunConfig
    >>> time_grid(RunConfig(t_max=1.0, n_times=4, learning_rate=0.1)).round(6).tolist()
    [0.0, 0.1, 0.3, 1.0]
  """
  import numpy as np

  last = int(round(cfg.t_max / cfg.learning_rate))
  t_first = max(cfg.learning_rate, cfg.t_max / 1000 if t_first is None else t_first)
  steps = np.rint(np.geomspace(t_first, cfg.t_max, cfg.n_times - 1) / cfg.learning_rate).astype(np.int64)
  steps[-1] = last
  for i in range(steps.size):  # forwards: at least one step after the previous time
    steps[i] = max(steps[i], steps[i - 1] + 1 if i else 1)
  steps[-1] = last
  for i in range(steps.size - 2, -1, -1):  # backwards: at least one step before the next time, ending at t_max
    steps[i] = min(steps[i], steps[i + 1] - 1)
  if steps[0] < 1:
    raise ConfigError(f'{cfg.n_times} record times do not fit into the {last} steps up to t_max = {cfg.t_max:g}')
  return np.concatenate([[0.0], steps * cfg.learning_rate])


class Interrupted(KeyboardInterrupt):
  """Ctrl-C (SIGINT) or SIGTERM while a command runs; ``signum`` says which.

  Examples:
    >>> e = Interrupted(signal.SIGTERM)
    >>> str(e), isinstance(e, KeyboardInterrupt), 128 + e.signum  # the exit status of a SIGTERM-ed run
    ('SIGTERM', True, 143)
  """

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


class _Stage:
  """Progress messages on stderr; remembers the current stage for the interruption note.

  While a command runs, SIGINT and SIGTERM are recorded here: Python raises :class:`Interrupted` at once (between
  two compiled training segments at the latest), and if a library swallows it (a C++ call that checks for signals
  and drops the error), the next stage change raises it.
  """

  def __init__(self, total: int):
    self.total, self.count, self.name = total, 0, 'start-up'
    self.started = time.perf_counter()
    self.signum: int | None = None

  def on_signal(self, signum: int, frame: Any) -> None:
    self.signum = signum
    raise Interrupted(signum)

  def __call__(self, name: str) -> None:
    if self.signum is not None:
      raise Interrupted(self.signum)
    self.count += 1
    self.name = name
    print(
      f'[{self.count}/{self.total}] {name} (at {time.perf_counter() - self.started:.0f} s)', file=sys.stderr, flush=True
    )


def _run_guarded(settings: Settings, body: Callable[..., int], owned: Sequence[str], argv: Sequence[str]) -> int:
  """Run ``body(settings, out, stage, argv)`` with SIGINT and SIGTERM caught.

  * ConfigError (raised only before anything is written): one line, exit 2.
  * Ctrl-C / SIGTERM: one line, ``INTERRUPTED.md``, exit 128 + signal number (130 / 143).
  * Any other error: one line, ``INTERRUPTED.md`` with the traceback, exit 3 (not 1, which means the theory failed).

  In every case the previous complete result in ``--out`` is left as it was (see :class:`OutputDir`).
  """
  import traceback

  out = OutputDir(settings.out, owned)
  stage = _Stage(len(_STAGES[body.__name__]))
  in_main_thread = threading.current_thread() is threading.main_thread()
  previous = {}
  if in_main_thread:
    for signum in (signal.SIGINT, signal.SIGTERM):
      previous[signum] = signal.signal(signum, stage.on_signal)
  try:
    return body(settings, out, stage, argv)
  except ConfigError as e:
    print(f'ndk-flax: error: {e}', file=sys.stderr)
    return EXIT_USAGE
  except (KeyboardInterrupt, Exception) as e:
    interrupted = isinstance(e, KeyboardInterrupt)
    signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
    if interrupted:
      cause = 'Ctrl-C' if signum == signal.SIGINT else signal.Signals(signum).name
    else:
      cause = (f'{type(e).__name__}: {e}'.splitlines() or [type(e).__name__])[0]
    details = '' if interrupted else ''.join(traceback.format_exception(e))
    try:
      note = out.note_interrupted(stage.name, _command_line(argv), cause, details)
      where = f'kept {len(out.written)} complete file(s) in {out.staging}; see {note}'
    except OSError as note_error:  # e.g. the disk is full: say so, still in one line
      where = f'could not write {OutputDir.NOTE} ({note_error.strerror or note_error})'
    what = 'interrupted' if interrupted else 'error: unexpected'
    print(f'\nndk-flax: {what} ({cause}) during {stage.name}; {where}', file=sys.stderr)
    return 128 + signum if interrupted else EXIT_ERROR
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


def _command_line(argv: Sequence[str]) -> str:
  return 'ndk-flax ' + ' '.join(shlex.quote(str(a)) for a in argv[1:])


_STAGES = {
  'validate': ('theory (infinite width)', 'training the ensemble', 'comparing', 'figures', 'report'),
  'kernels': ('two-time kernels', 'writing'),
  'sweep': ('theory (infinite width)', 'training the ensembles', 'fitting against 1/N', 'figure'),
}
VALIDATE_FILES = ('config.json', 'mean.png', 'variance.png', 'loss.png', 'kernel.png', 'results.json', 'report.md')
KERNELS_FILES = ('kernels.npz', 'kernels.png')
SWEEP_FILES = ('config.json', 'results.json', 'report.md', 'width_sweep.png')


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
      ('two-time NNGP\nC(t, s, x, x)', maps['nngp'][:, :, 0, 0]),
      ('correlation\nC(t,s)/√(C(t,t)C(s,s))', maps['correlation'][:, :, 0, 0]),
      ('NDK R(t, s, x, x)\n(0 for t < s)', maps['ndk'][:, :, 0, 0]),
    ],
    suptitle=title,
  )


def _kernel_figure_times(record_times, n: int = 48):
  """0 and ``n`` geometric times from the first positive record time to the last: the grid of the heat maps."""
  import numpy as np

  return np.concatenate([[0.0], np.geomspace(record_times[1], record_times[-1], n)])


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
  """``ndk-flax kernels``: C and R of the configured network on the record-time grid, for the training inputs.

  Examples:
    A tiny run through :func:`main` (which enables float64 for the theory: restored afterwards). The file holds
    C(t, s, x, x') for every pair of record times, symmetric under (t, x) ↔ (s, x'):

    >>> import contextlib, io, os, tempfile
    >>> import jax, numpy as np
    >>> x64 = jax.config.jax_enable_x64
    >>> with tempfile.TemporaryDirectory() as d, contextlib.redirect_stderr(io.StringIO()):
    ...   argv = ['ndk-flax', 'kernels', '--n_train', '2', '--n_times', '3', '--t_max', '1', '--out', d]
    ...   status = main(argv)
    ...   files = sorted(os.listdir(d))
    ...   with np.load(os.path.join(d, 'kernels.npz')) as f:
    ...     times, nngp = f['times'], f['nngp']
    >>> jax.config.update('jax_enable_x64', x64)
    >>> status, files, times.tolist(), nngp.shape  # (n_t, n_t, P, P)
    (0, ['kernels.npz', 'kernels.png'], [0.0, 0.02, 1.0], (3, 3, 2, 2))
    >>> bool(np.allclose(nngp, np.transpose(nngp, (1, 0, 3, 2))))
    True
  """
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
  figure_times = _kernel_figure_times(times)
  figure_maps = _kernel_maps(layer, x[:1], figure_times, cfg.temperature)
  title = _arch_title(cfg) + ', first training point'
  out.write('kernels.png', lambda p: _kernel_figure(p, figure_times, figure_maps, title))
  out.commit()
  print(f'ndk-flax: wrote {", ".join(out.written)} to {out.path}', file=sys.stderr)
  return EXIT_PASS


class _Theory(NamedTuple):
  """The infinite-width theory of a run, solved once: the network, the data, the time scales, the record times,
  the dense grid and the tabulated predictor on it, and the mean and variance (n_t, P + n*) at the record times."""

  layer: Any
  ds: Any
  scales: Any
  times: Any
  dense: Any
  tabulated: _Tabulated
  mean: Any
  var: Any


def _solve_theory(cfg: RunConfig) -> _Theory:
  """The theory of ``cfg`` (float64); ConfigError, before anything is written, if η is unstable for it (the
  library's rule) or if the predictor refuses the request up front (memory, work)."""
  import numpy as np

  from ndk_flax import data, predict
  from ndk_flax import ensemble as ensemble_lib

  _enable_x64()
  layer = build_network(cfg)
  ds = data.synthetic(cfg.dataset, cfg.n_train, cfg.n_test, cfg.data_seed)
  predictor = predict.langevin_mse_ensemble(layer, ds.x_train, ds.y_train, temperature=cfg.temperature)
  scales = predictor.time_scales
  try:  # the library's stability rule (ndk_flax.ensemble), refused here before anything is written
    ensemble_lib.check_learning_rate(cfg.learning_rate, 1 / scales.gradient)
  except ValueError as err:
    raise ConfigError(str(err)) from None
  times = time_grid(cfg)
  dense = _dense_grid(times)
  for points in (None, ds.x_test):  # the predictor's own memory and work estimates, before any solving
    try:
      predictor.check_request(dense, points, compute_cov=True)
    except (MemoryError, ValueError) as err:
      raise ConfigError(f'the theory: {err} In the CLI: lower n_test, n_train, n_times or t_max.') from None
  theory = _Tabulated(dense, predictor(dense, None, compute_cov=True), predictor(dense, ds.x_test, compute_cov=True))
  recorded = np.searchsorted(dense, times)
  mean = np.concatenate([theory.train.mean[recorded, :, 0], theory.test.mean[recorded, :, 0]], axis=1)
  var = np.concatenate(
    [np.einsum('tnn->tn', theory.train.covariance[recorded]), np.einsum('tnn->tn', theory.test.covariance[recorded])],
    axis=1,
  )
  return _Theory(layer, ds, scales, times, dense, theory, mean, var)


def validate(settings: Settings, out: OutputDir, stage: _Stage, argv: Sequence[str]) -> int:
  """``ndk-flax validate``: theory vs a Langevin-trained ensemble; 0 if they agree within the tolerance, else 1.

  Examples:
    A real run takes minutes; here the theory's stability rule η λ_max(Θ0) < 1 refuses a too large step before
    anything is written (exit status 2; float64, which the theory enables, is restored afterwards):

    >>> import contextlib, io, os, tempfile
    >>> import jax
    >>> x64 = jax.config.jax_enable_x64
    >>> err = io.StringIO()
    >>> with tempfile.TemporaryDirectory() as d, contextlib.redirect_stderr(err):
    ...   status = main(['ndk-flax', 'validate', '--quick', '--learning_rate', '1.0', '--out', d])
    ...   written = os.listdir(d)
    >>> jax.config.update('jax_enable_x64', x64)
    >>> status, written
    (2, [])
    >>> print(err.getvalue().splitlines()[-1].split('; ')[0])
    ndk-flax: error: learning_rate η = 1 is unstable: η λ_max(Θ0) = 4.83 >= 1 (λ_max(Θ0) = 4.827)
  """
  import numpy as np

  from ndk_flax import report

  cfg = settings.config
  names = _STAGES['validate']
  started, cpu_started = time.perf_counter(), time.process_time()
  stage(names[0])
  problem = accelerator_problem(cfg)
  if problem:
    raise ConfigError(problem)
  layer, ds, scales, times, dense, theory, theory_mean, theory_var = _solve_theory(cfg)
  allowance = verdict_lib.allowances(float(np.max(np.abs(ds.y_train))), float(np.max(theory_var)), cfg.width)
  problem = verdict_lib.power_problem(theory_mean, allowance, cfg.width)
  if problem:
    raise ConfigError(problem)
  losses = {
    'train': 0.5 * np.sum((ds.y_train - theory.train.mean) ** 2, axis=(1, 2)),
    'test': np.mean((ds.y_test - theory.test.mean) ** 2, axis=(1, 2)),
  }
  t_theory = time.perf_counter() - started

  out.create()
  out.write_text('config.json', json.dumps(cfg.to_dict(), indent=2) + '\n')
  stage(names[1])
  record = train_in_segments(layer, ds, cfg, times, progress=settings.progress)
  t_ensemble = time.perf_counter() - started - t_theory

  stage(names[2])
  results = _results(cfg, argv, scales, _compare(record, theory, ds), ds, record, allowance)
  results['runtime_s'] = {'theory': t_theory, 'ensemble': t_ensemble, 'total': time.perf_counter() - started}
  results['runtime_s']['cpu'] = time.process_time() - cpu_started
  out.write_text('results.json', json.dumps(results, indent=1) + '\n')  # the numbers first, then the pictures
  out.write_text('report.md', report.render(results))

  stage(names[3])
  phases = (scales.gradient, scales.diffusive)
  _time_figures(out, cfg, dense, {'train': theory.train, 'test': theory.test}, losses, results, phases)
  kernel_times = _kernel_figure_times(times)
  maps = _kernel_maps(layer, ds.x_train[:1], kernel_times, cfg.temperature)
  kernel_title = _arch_title(cfg) + ', first training point'
  out.write('kernel.png', lambda p: _kernel_figure(p, kernel_times, maps, kernel_title))
  out.commit()
  print(f'ndk-flax: {verdict_lib.sentence(results)} Report: {os.path.join(out.path, "report.md")}', file=sys.stderr)
  return EXIT_PASS if results['passed'] else EXIT_FAIL


def accelerator_problem(cfg: RunConfig, backend: str | None = None) -> str | None:
  """Why ``--preset gpu`` is not run here (one line with its size), or None: the preset is sized for an
  accelerator (``backend``: JAX's default backend, asked only for that preset); on CPU cores the training work of
  :data:`SEGMENT_WORK`'s model, M · parameters · (10 + 2 (P + n*)) per step at about 1 ns each, is refused. The same
  settings given as explicit flags, without the preset, do run on CPU.

  Examples:
    >>> gpu = config_lib.resolve(explicit={'preset': 'gpu'})
    >>> accelerator_problem(gpu, backend='cpu').split(';')[0]
    'preset gpu (width 4096, M = 1024) is sized for an accelerator, but JAX runs on cpu'
    >>> accelerator_problem(gpu, backend='gpu') is None
    True
  """
  if cfg.preset != 'gpu':
    return None
  if backend is None:
    import jax

    backend = jax.default_backend()
  if backend != 'cpu':
    return None
  n_params = parameter_count(cfg)
  steps = round(cfg.t_max / cfg.learning_rate)
  work = cfg.n_members * n_params * (10.0 + 2 * (cfg.n_train + cfg.n_test)) * steps
  return (
    f'preset gpu (width {cfg.width}, M = {cfg.n_members}) is sized for an accelerator, but JAX runs on cpu; '
    f'it needs about {cfg.n_members * n_params * steps:.2g} parameter-updates (about {work * 1e-9 / 60:.0f} min of '
    f'CPU cores) and {sum(estimated_bytes(cfg, "validate").values()):.2g} bytes; run it where jax.devices() lists '
    f'a GPU or TPU, or give --width {cfg.width} --n_members {cfg.n_members} without the preset to run it here'
  )


def sweep(settings: Settings, out: OutputDir, stage: _Stage, argv: Sequence[str]) -> int:
  """``ndk-flax validate --widths N1,N2,...``: one ensemble per width on the same data, against the theory solved
  once, the i-th width with seed ``seed + i`` (independent ensembles: the fit takes the widths' errors as
  independent); the discrepancies D_mean and D_var (``ndk_flax.width_sweep``, in units of s = max |y|, over the
  record times t > 0 and all points) fitted by a + c/N. 0 if both intercepts a (the N → ∞ limit) are consistent
  with 0, else 1.

  Examples:
    >>> config_lib.sweep_widths(RunConfig(widths='512,128,256')), SWEEP_FILES[-1]  # trained in this order; the figure
    ((128, 256, 512), 'width_sweep.png')
  """
  import dataclasses

  import numpy as np

  from ndk_flax import report, width_sweep

  cfg = settings.config
  widths = config_lib.sweep_widths(cfg)
  names = _STAGES['sweep']
  started, cpu_started = time.perf_counter(), time.process_time()
  stage(names[0])
  for problem in (accelerator_problem(cfg), memory_problem(dataclasses.replace(cfg, width=widths[-1]), 'validate')):
    if problem:
      raise ConfigError(problem)
  theory = _solve_theory(cfg)
  t_theory = time.perf_counter() - started
  out.create()
  out.write_text('config.json', json.dumps(cfg.to_dict(), indent=2) + '\n')
  stage(names[1])
  scale = float(np.max(np.abs(theory.ds.y_train)))
  positive = theory.times > 0
  found, seconds = [], []
  for i, width in enumerate(widths):
    stage.name = f'{names[1]} (width {width}, {i + 1} of {len(widths)})'
    print(f'  width N = {width} ({i + 1} of {len(widths)})', file=sys.stderr, flush=True)
    begun = time.perf_counter()
    record = train_in_segments(
      theory.layer,
      theory.ds,
      dataclasses.replace(cfg, width=width, seed=cfg.seed + i),
      theory.times,
      progress=settings.progress,
    )
    outputs = np.concatenate([np.asarray(record.train), np.asarray(record.test)], axis=2)[:, positive]
    found.append(
      width_sweep.ensemble_discrepancy(
        outputs, theory.mean[positive, :, None], theory.var[positive, :, None], scale=scale
      )
    )
    seconds.append(time.perf_counter() - begun)

  stage(names[2])
  fits = {
    'mean': width_sweep.fit_inverse_width(widths, [d.mean for d in found], [d.mean_se for d in found]),
    'variance': width_sweep.fit_inverse_width(widths, [d.var for d in found], [d.var_se for d in found]),
  }
  results = _sweep_results(cfg, argv, widths, found, fits, scale, theory.times[positive])
  results['runtime_s'] = {
    'theory': t_theory,
    'ensembles': seconds,
    'total': time.perf_counter() - started,
    'cpu': time.process_time() - cpu_started,
  }
  out.write_text('results.json', json.dumps(results, indent=1) + '\n')  # the numbers first, then the picture
  out.write_text('report.md', report.render_sweep(results))
  stage(names[3])
  out.write('width_sweep.png', lambda p: _sweep_figure(p, cfg, results))
  out.commit()
  print(f'ndk-flax: {report.sweep_sentence(results)} Report: {os.path.join(out.path, "report.md")}', file=sys.stderr)
  return EXIT_PASS if results['passed'] else EXIT_FAIL


INTERCEPT_Z = 3.0
"""A sweep passes when both fitted intercepts a (the N → ∞ limit of the discrepancy) are within this many standard
errors of 0 (the same bound as in :func:`ndk_flax.width_sweep.fit_inverse_width`)."""


def _sweep_results(cfg: RunConfig, argv: Sequence[str], widths, found, fits: dict, scale: float, times) -> dict:
  """The machine-readable results of a sweep (``results.json``; also what ``report.md`` is rendered from)."""
  from ndk_flax import __version__

  passed = all(abs(f.intercept) < INTERCEPT_Z * f.intercept_se for f in fits.values())
  return {
    'command': _command_line(argv),
    'ndk_flax_version': __version__,
    'config': cfg.to_dict(),
    'widths': list(widths),
    'seeds': [cfg.seed + i for i in range(len(widths))],
    'scale': scale,
    'times': [float(t) for t in times],
    'discrepancy': {
      'mean': [d.mean for d in found],
      'mean_se': [d.mean_se for d in found],
      'variance': [d.var for d in found],
      'variance_se': [d.var_se for d in found],
    },
    'fit': {name: fit._asdict() for name, fit in fits.items()},
    'intercept_z': INTERCEPT_Z,
    'passed': passed,
  }


def _sweep_figure(path: str, cfg: RunConfig, results: dict) -> None:
  from ndk_flax import plotting

  d, fits = results['discrepancy'], results['fit']

  def panel(name: str, symbol: str, formula: str) -> plotting.WidthPanel:
    f = fits[name]
    title = (
      f'{name}: {symbol} = {formula}\nc = {f["coefficient"]:.3g} ± {f["coefficient_se"]:.2g}, '
      f'χ²/dof = {f["chi2"]:.2g}/{f["dof"]}, p = {f["p_value"]:.2g}'
    )
    key = 'mean' if name == 'mean' else 'variance'
    return plotting.WidthPanel(title, symbol, d[key], d[f'{key}_se'], f['intercept'], f['coefficient'])

  panels = [panel('mean', 'D_mean', '⟨f̄_M − f̄⟩ / s'), panel('variance', 'D_var', '⟨v̂_M − v⟩ / s²')]
  title = (
    f'Discrepancy from the N → ∞ theory vs 1/N (top axis: N), ensemble ± 1 s.e.\n{_arch_title(cfg)}, '
    f'M={cfg.n_members}, s = max|y| = {results["scale"]:.3g}'
  )
  plotting.inverse_width_panels(path, results['widths'], panels, suptitle=title)


SEGMENT_WORK = 1.5e9
"""Work of one compiled training segment, in parameter-updates × (10 + 2 (P + n*)) (measured on CPU: ≈ 1 ns each,
so ≈ 1.5 s; the 10 is drawing the noise, the rest the forward and backward passes): Ctrl-C is answered between two
segments."""

MAX_SEGMENTS = 2000
"""Most training segments per run (each adds one recorded output per member and point)."""


def segment_steps(cfg: RunConfig) -> int:
  """Steps per compiled training segment: SEGMENT_WORK over M · parameters · (10 + 2 (P + n*)) per step, at least
  t_max / (η MAX_SEGMENTS).

  Examples:
    >>> from ndk_flax.config import RunConfig
    >>> segment_steps(RunConfig())  # 1.5e9 / (256 · 4096 · 30), 4096 = parameter_count
    47
  """
  per_step = cfg.n_members * parameter_count(cfg) * (10.0 + 2 * (cfg.n_train + cfg.n_test))
  total = int(round(cfg.t_max / cfg.learning_rate))
  return max(1, int(SEGMENT_WORK // per_step), math.ceil(total / MAX_SEGMENTS))


def train_in_segments(layer, ds, cfg: RunConfig, times, *, progress: bool):
  """``ndk_flax.ensemble.train_ensemble`` on ``times`` refined by segment boundaries every :func:`segment_steps`
  steps (so that no compiled call runs long), returning the record at ``times`` only.

  Examples:
    >>> from ndk_flax import data
    >>> cfg = RunConfig(width=4, n_members=2, n_train=2, n_test=1, t_max=0.2, n_times=3)
    >>> ds = data.synthetic(cfg.dataset, cfg.n_train, cfg.n_test, cfg.data_seed)
    >>> times = time_grid(cfg)
    >>> record = train_in_segments(build_network(cfg), ds, cfg, times, progress=False)
    >>> record.times.round(6).tolist() == times.round(6).tolist(), record.train.shape, record.test.shape
    (True, (2, 3, 2, 1), (2, 3, 1, 1))
  """
  import jax.numpy as jnp
  import numpy as np

  from ndk_flax import ensemble

  last = int(round(times[-1] / cfg.learning_rate))
  boundaries = np.arange(0, last, segment_steps(cfg)) * cfg.learning_rate
  grid = np.union1d(np.round(times / cfg.learning_rate), np.round(boundaries / cfg.learning_rate)) * cfg.learning_rate
  record = ensemble.train_ensemble(
    layer,
    ds.x_train,
    ds.y_train,
    temperature=cfg.temperature,
    learning_rate=cfg.learning_rate,
    record_times=grid,
    n_members=cfg.n_members,
    width=cfg.width,
    x_test=ds.x_test,
    seed=cfg.seed,
    progress=progress,
    dtype=jnp.float32,
    noise=cfg.noise,
  )
  keep = np.isin(np.round(np.asarray(record.times) / cfg.learning_rate), np.round(times / cfg.learning_rate))
  return record._replace(
    times=np.asarray(record.times)[keep],
    train=np.asarray(record.train)[:, keep],
    test=None if record.test is None else np.asarray(record.test)[:, keep],
  )


def _compare(record, theory, ds) -> dict:
  from ndk_flax import validate as validate_lib

  return {
    'train': validate_lib.compare(record, theory, points='train'),
    'test': validate_lib.compare(record, theory, x_test=ds.x_test),
  }


def _results(
  cfg: RunConfig, argv: Sequence[str], scales, reports: dict, ds, record, allowance: verdict_lib.Allowance
) -> dict[str, Any]:
  """The machine-readable results (``results.json``; also what ``report.md`` is rendered from)."""
  import numpy as np

  from ndk_flax import __version__

  def joined(field: str):
    return np.concatenate([np.asarray(getattr(reports[k], field))[..., 0] for k in ('train', 'test')], axis=1)

  mean = {'theory': joined('theory_mean'), 'ensemble': joined('ensemble_mean'), 'se': joined('mean_se')}
  mean['z'] = joined('mean_z')
  var = {'theory': joined('theory_var'), 'ensemble': joined('ensemble_var'), 'se': joined('var_se')}
  var['z'] = joined('var_z')
  comparisons = {
    'mean': verdict_lib.Comparison(mean['theory'], mean['ensemble'], mean['se']),
    'variance': verdict_lib.Comparison(var['theory'], var['ensemble'], var['se']),
  }
  decision = verdict_lib.decide(comparisons['mean'], comparisons['variance'], cfg.z_tol, allowance)
  n_train = ds.x_train.shape[0]
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
      'width_allowance_kappa': verdict_lib.WIDTH_ALLOWANCE,
      'mean_atol': allowance.mean,
      'var_atol': allowance.var,
      'rule': '|ensemble - theory| <= z_tol * se + atol for every time, point, mean and variance',
    },
    'passed': decision.passed,
    'max_abs_z': {
      'mean': float(np.max(np.abs(mean['z']))),
      'variance': float(np.max(np.abs(var['z']))),
      'all': float(max(np.max(np.abs(mean['z'])), np.max(np.abs(var['z'])))),
      'beyond_allowance': decision.statistic,
    },
    'worst': decision.worst._asdict(),
    'sign_patterns': [verdict_lib.sign_pattern(k, c)._asdict() for k, c in comparisons.items()],
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
      (),
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
      (),
      logy=True,
    ),
  ]
  out.write(
    'loss.png',
    lambda p: plotting.time_panels(
      p, loss_panels, suptitle='Learning curves of the mean predictor f̄: ' + title, time_scales=phases
    ),
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
  """Run the command line ``argv`` (program name first); returns the exit status.

  Examples:
    >>> import contextlib, io
    >>> with contextlib.redirect_stdout(io.StringIO()) as out:
    ...   status = main(['ndk-flax', 'kernels', '--help'])
    >>> status, out.getvalue().splitlines()[0]
    (0, 'usage: ndk-flax kernels [--config FILE] [--FLAG VALUE ...] [--out DIR]')
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...   status = main(['ndk-flax', 'validate', '--n_times', '2'])
    >>> status == EXIT_USAGE, err.getvalue().strip()
    (True, 'ndk-flax: error: n_times must be >= 3 (t = 0, t_max/1000 and t_max), got 2')
  """
  asked = [a for a in argv[1:] if a in ('-h', '-?', '--help', '--helpshort', '--helpfull')]
  if asked:
    named = [a for a in argv[1:] if a in COMMANDS]
    print(command_help(named[0]) if named and asked[0] != '--helpfull' else top_help(full=asked[0] == '--helpfull'))
    return EXIT_PASS
  try:
    settings = parse(argv)
  except ConfigError as e:
    print(f'ndk-flax: error: {e}', file=sys.stderr)
    return EXIT_USAGE
  if settings.command == 'validate' and settings.config.widths:
    return _run_guarded(settings, sweep, SWEEP_FILES, argv)
  if settings.command == 'validate':
    return _run_guarded(settings, validate, VALIDATE_FILES, argv)
  return _run_guarded(settings, kernels, KERNELS_FILES, argv)


def run(argv: Sequence[str] | None = None) -> None:
  """Console entry point ``ndk-flax``.

  Examples:
    >>> import contextlib, io
    >>> with contextlib.redirect_stdout(io.StringIO()) as out:
    ...   try:
    ...     run(['ndk-flax', '--help'])
    ...   except SystemExit as e:
    ...     code = e.code
    >>> code, 'commands:' in out.getvalue()
    (0, True)
  """
  sys.exit(main(sys.argv if argv is None else argv))


if __name__ == '__main__':
  run()
