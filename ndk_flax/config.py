"""Run configuration of the ``ndk-flax`` command: one validated record built from defaults, a preset, a JSON file
and explicit command-line flags (later sources override earlier ones).

Every key of :class:`RunConfig` is both a command-line flag (``--W_std 0.8``) and a key of the ``--config`` JSON
file (``{"W_std": 0.8}``). Conventions (see docs/theory.md §1): raw parameterisation h = W a/√N + b, initial stds σ0
(``W_std``, ``b_std``), prior stds σ (``W_prior_std``, ``b_prior_std``), temperature T, decay λ = T/σ², summed ½-MSE
loss, time t = learning_rate × steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping

from ndk_flax.data import KINDS

ACTIVATIONS = ('erf', 'relu')
# ndk_flax.optax.NOISE_LAWS, written out so that the CLI parses flags without importing JAX (a test checks they agree).
NOISE_LAWS = ('gaussian', 'rademacher')


PRESETS: dict[str, dict[str, Any]] = {'gpu': {'width': 4096, 'n_members': 1024}}
"""``--preset NAME``: settings applied over the defaults (and ``--quick``), under the config file and the flags.
``gpu``: the default problem at accelerator scale, width N = 4096 and M = 1024 members (the ensemble engine shards
the members over all devices), about 4 · 10^6 parameter-updates per step."""

MIN_SWEEP_WIDTHS = 3
"""Fewest widths of a sweep: the fit D(N) = a + c/N has two parameters and needs one degree of freedom for χ²."""

MAX_STEPS = 10**9
"""Most Langevin steps a run may ask for (t_max / learning_rate); beyond, the time grid loses precision in float64."""

STABLE_DECAY = 1.0
"""Largest one-step prior decay η T/σ² accepted: the discrete rule multiplies θ by 1 − η T/σ² per step, which must
stay positive for it to approximate the continuous decay e^(−η T/σ²)."""


class ConfigError(ValueError):
  """A setting is missing, of the wrong type or out of range; the message is one line naming the key.

  Examples:
    >>> try:
    ...   RunConfig(width=0)
    ... except ConfigError as e:
    ...   print(e)
    width must be > 0, got 0
    >>> issubclass(ConfigError, ValueError)
    True
  """


BOTH = ('validate', 'kernels')
VALIDATE = ('validate',)


def _field(default: Any, help: str, choices: tuple[str, ...] | None = None, commands: tuple[str, ...] = BOTH) -> Any:
  return dataclasses.field(default=default, metadata={'help': help, 'choices': choices, 'commands': commands})


def fields_of(command: str) -> tuple[dataclasses.Field, ...]:
  """The :class:`RunConfig` fields that ``command`` (``'validate'`` or ``'kernels'``) uses, i.e. its flags.

  Examples:
    >>> 'n_members' in [f.name for f in fields_of('kernels')], 'n_members' in [f.name for f in fields_of('validate')]
    (False, True)
  """
  if command not in BOTH:
    raise ValueError(f'command must be one of {BOTH}, got {command!r}')
  return tuple(f for f in dataclasses.fields(RunConfig) if command in f.metadata['commands'])


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything that defines a validation run (and, for ``kernels``, the architecture and time grid).

  Examples:
    >>> cfg = RunConfig(temperature=0.1, W_prior_std=2.0)
    >>> cfg.width, cfg.n_members, cfg.temperature / cfg.W_prior_std**2  # the prior decay λ = T/σ_W²
    (1024, 256, 0.025)
    >>> RunConfig(**cfg.to_dict()) == cfg
    True
    >>> RunConfig(learning_rate=0.5, temperature=4.0)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ConfigError: temperature = 4.0 is too large for learning_rate = 0.5 and W_prior_std = 1.0: ...
  """

  activation: str = _field('erf', 'Nonlinearity of every hidden layer.', ACTIVATIONS)
  depth: int = _field(1, 'Number of hidden layers (each Dense(width) followed by the nonlinearity).')
  width: int = _field(
    1024, 'Hidden width N of the trained Flax networks (the theory is N -> infinity).', None, VALIDATE
  )
  bias: bool = _field(False, 'Give every Dense layer a bias (std b_std, prior std b_prior_std).')
  W_std: float = _field(
    2.0,
    'sigma0_W: initial std of every weight (raw parameterisation h = W a/sqrt(N) + b, W ~ N(0, sigma0_W^2); '
    "the same forward pass and NNGP as NT's W_std).",
  )
  W_prior_std: float = _field(1.0, 'sigma_W: prior std of every weight; weight decay lambda = T / sigma_W^2.')
  b_std: float = _field(0.5, 'sigma0_b: initial std of every bias (only with --bias).')
  b_prior_std: float = _field(0.5, 'sigma_b: prior std of every bias (only with --bias).')
  temperature: float = _field(0.05, 'Langevin temperature T >= 0 (T = 0: plain gradient descent).')
  learning_rate: float = _field(0.02, 'Step eta of the discrete Langevin rule; time t = eta * steps.')
  noise: str = _field(
    'gaussian',
    'Law of the Langevin noise xi: gaussian (Euler-Maruyama) or rademacher (+-1, the '
    'weak Euler scheme: same mean and covariance, cheaper to draw).',
    NOISE_LAWS,
    VALIDATE,
  )
  n_members: int = _field(256, 'Ensemble size M (independent initialisations and noise).', None, VALIDATE)
  t_max: float = _field(80.0, 'Last recorded time (in units of learning_rate * steps).')
  n_times: int = _field(12, 'Number of record times (0 and a geometric grid from t_max/1000 to t_max), >= 3.')
  seed: int = _field(0, 'Seed of the ensemble (initialisations and Langevin noise).', None, VALIDATE)
  dataset: str = _field('regression', 'Built-in synthetic data set.', KINDS)
  n_train: int = _field(6, 'Number P of training points.')
  n_test: int = _field(4, 'Number of test points.', None, VALIDATE)
  data_seed: int = _field(0, 'Seed of the synthetic data set.')
  z_tol: float = _field(
    4.5,
    'Tolerance in standard errors: pass if |ensemble - theory| <= z_tol * s.e. + '
    'delta (finite-width allowance) at every time and point.',
    None,
    VALIDATE,
  )
  widths: str = _field(
    '',
    'Finite-width sweep: a comma list of at least 3 distinct widths N (e.g. 128,256,512,1024,2048); one ensemble '
    'per width on the same data and theory, the discrepancy from the theory fitted against 1/N (the width flag is '
    'then unused). Empty: one validation run at width.',
    None,
    VALIDATE,
  )
  preset: str = _field(
    'none',
    'Named preset applied under the config file and the flags: gpu = width 4096, M = 1024 members sharded over all '
    'devices (needs an accelerator).',
    ('none', *PRESETS),
    VALIDATE,
  )

  def __post_init__(self) -> None:
    _check(self)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# The ``--quick`` preset: same problem, smaller network / ensemble / grid (under a minute on 2 CPU cores).
QUICK = {'width': 256, 'n_members': 64, 'n_times': 6, 't_max': 40.0}


def sweep_widths(cfg: RunConfig) -> tuple[int, ...]:
  """The widths N of ``cfg.widths`` (a comma list), increasing; () when no sweep is asked for.

  ConfigError (one line) unless every entry is a positive integer, the widths are distinct and there are at least
  :data:`MIN_SWEEP_WIDTHS` of them.

  Examples:
    >>> sweep_widths(RunConfig(widths='512, 128,256'))
    (128, 256, 512)
    >>> sweep_widths(RunConfig())
    ()
  """
  text = cfg.widths.strip()
  if not text:
    return ()
  widths = []
  for entry in text.split(','):
    entry = entry.strip()
    if not entry.isdigit() or int(entry) <= 0:
      raise ConfigError(f'widths must be a comma list of positive integers (e.g. 128,256,512), got entry {entry!r}')
    widths.append(int(entry))
  if len(set(widths)) != len(widths):
    raise ConfigError(f'widths must be distinct, got {cfg.widths!r}')
  if len(widths) < MIN_SWEEP_WIDTHS:
    raise ConfigError(
      f'widths needs at least {MIN_SWEEP_WIDTHS} widths (the fit a + c/N needs a degree of freedom), got '
      f'{len(widths)} in {cfg.widths!r}'
    )
  return tuple(sorted(widths))


def _coerce(name: str, type_name: str, value: Any, source: str) -> Any:
  """Strict JSON -> field type: ints must be integers (not bools), floats may be ints, bools must be bools."""
  ok = {
    'int': isinstance(value, int) and not isinstance(value, bool),
    'float': isinstance(value, (int, float)) and not isinstance(value, bool),
    'bool': isinstance(value, bool),
    'str': isinstance(value, str),
  }[type_name]
  if not ok:
    raise ConfigError(f'{source}: {name} must be of type {type_name}, got {value!r}')
  return float(value) if type_name == 'float' else value


def _check(c: RunConfig) -> None:
  """Raise ConfigError (one line, naming the key) for the first out-of-range value."""
  for f in dataclasses.fields(c):
    value = getattr(c, f.name)
    choices = f.metadata['choices']
    if choices is not None and value not in choices:
      raise ConfigError(f'{f.name} must be one of {", ".join(choices)}; got {value!r}')
    if f.type == 'float' and not math.isfinite(value):
      raise ConfigError(f'{f.name} must be finite, got {value!r}')
  positive = ['depth', 'width', 'W_std', 'W_prior_std', 'learning_rate', 't_max', 'n_train', 'n_test', 'z_tol']
  if c.bias:
    positive += ['b_std', 'b_prior_std']
  for name in positive:
    if getattr(c, name) <= 0:
      raise ConfigError(f'{name} must be > 0, got {getattr(c, name)!r}')
  for name in ('temperature', 'seed', 'data_seed', 'b_std', 'b_prior_std'):
    if getattr(c, name) < 0:
      raise ConfigError(f'{name} must be >= 0, got {getattr(c, name)!r}')
  if c.n_members < 2:
    raise ConfigError(f'n_members must be >= 2 (standard errors need two members), got {c.n_members!r}')
  if c.n_times < 3:
    raise ConfigError(f'n_times must be >= 3 (t = 0, t_max/1000 and t_max), got {c.n_times!r}')
  if not c.t_max / c.learning_rate <= MAX_STEPS:
    raise ConfigError(
      f't_max = {c.t_max!r} is {c.t_max / c.learning_rate:.3g} steps of learning_rate = {c.learning_rate!r}; '
      f'at most {MAX_STEPS:.0e} steps are accepted'
    )
  for name in ('W_prior_std',) + (('b_prior_std',) if c.bias else ()):
    rate = c.learning_rate * c.temperature / getattr(c, name) ** 2
    if rate >= STABLE_DECAY:
      raise ConfigError(
        f'temperature = {c.temperature!r} is too large for learning_rate = {c.learning_rate!r} and {name} = '
        f'{getattr(c, name)!r}: the one-step prior decay eta T / sigma^2 = {rate:.3g} must be < {STABLE_DECAY:g}'
      )
  sweep_widths(c)
  if c.t_max < c.learning_rate * (c.n_times - 1):
    raise ConfigError(
      f't_max = {c.t_max!r} is shorter than n_times - 1 = {c.n_times - 1} steps of learning_rate = {c.learning_rate!r}'
    )


def load_json(path: str) -> dict[str, Any]:
  """The JSON object stored at ``path``; ConfigError (one line) if unreadable, not JSON or not an object.

  Examples:
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...   path = os.path.join(d, 'run.json')
    ...   with open(path, 'w') as fh:
    ...     _ = fh.write('{"W_std": 0.8, "bias": true}')
    ...   print(load_json(path))
    ...   with open(path, 'w') as fh:
    ...     _ = fh.write('[1, 2]')
    ...   try:
    ...     load_json(path)
    ...   except ConfigError as e:
    ...     print(str(e).replace(path, 'run.json'))
    {'W_std': 0.8, 'bias': True}
    config 'run.json' must hold a JSON object of settings, got list
  """
  try:
    with open(path, encoding='utf-8') as fh:
      values = json.load(fh)
  except OSError as e:
    raise ConfigError(f'cannot read config {path!r}: {e.strerror or e}') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ConfigError(f'config {path!r} is not valid JSON: {e}') from None
  if not isinstance(values, dict):
    raise ConfigError(f'config {path!r} must hold a JSON object of settings, got {type(values).__name__}')
  return values


def resolve(
  *,
  quick: bool = False,
  file_values: Mapping[str, Any] | None = None,
  explicit: Mapping[str, Any] | None = None,
  config_path: str = 'config',
) -> RunConfig:
  """Defaults <- ``QUICK`` preset (if ``quick``) or the named ``preset`` (:data:`PRESETS`, named in the file or the
  flags) <- ``file_values`` <- ``explicit`` (flags given on the command line).

  Keys and types are checked per source (the message names the source); ranges are checked on the final
  combination only, so e.g. a file may set ``bias`` and ``b_std`` in either order.

  Examples:
    >>> cfg = resolve(quick=True, file_values={'width': 128, 'W_std': 1}, explicit={'width': 64})
    >>> cfg.width, cfg.W_std, cfg.n_members == QUICK['n_members']  # flags beat the file, the file beats the preset
    (64, 1.0, True)
    >>> try:
    ...   resolve(file_values={'width': 1.5}, config_path='run.json')
    ... except ConfigError as e:
    ...   print(e)
    run.json: width must be of type int, got 1.5
  """
  typed_file, typed_flags = _typed(file_values or {}, config_path), _typed(explicit or {}, 'flags')
  merged: dict[str, Any] = dict(QUICK) if quick else {}
  preset = typed_flags.get('preset', typed_file.get('preset', 'none'))
  if preset != 'none':
    if quick:
      raise ConfigError(f'--quick and preset {preset!r} are two presets; give one of them')
    if preset not in PRESETS:
      raise ConfigError(f'preset must be one of none, {", ".join(PRESETS)}; got {preset!r}')
    merged.update(PRESETS[preset])
  merged.update(typed_file)
  merged.update(typed_flags)
  return dataclasses.replace(RunConfig(), **merged)


def _typed(values: Mapping[str, Any], source: str) -> dict[str, Any]:
  """``values`` with every key known and every value of its field's type; ConfigError naming ``source`` if not."""
  fields = {f.name: f for f in dataclasses.fields(RunConfig)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ConfigError(f'{source}: unknown key(s) {", ".join(map(repr, unknown))}; known keys: {", ".join(fields)}')
  return {name: _coerce(name, fields[name].type, value, source) for name, value in values.items()}
