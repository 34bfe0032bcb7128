"""Shared pieces of the paper scripts: flags, data sets, networks, theory helpers, ensembles, figures, summaries."""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import time
from typing import Any, NamedTuple, Optional, Sequence

import jax
import matplotlib.pyplot as plt
import numpy as np

from ndk_flax import stax, style
from ndk_flax.ensemble import train_ensemble

ACTIVATIONS = {'erf': stax.Erf, 'relu': stax.Relu}


# ----------------------------------------------------------------------------------------------------------
# Flags.


def parse_args(name: str, description: str, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """``--out DIR`` (default ``paper_out/<name>``), ``--quick`` (small preset for tests), ``--seed``.

  The entry point of every paper script: it also turns on float64 (the theory near equilibrium needs it) and the
  Agg backend of matplotlib (files only) with the house style of ``ndk_flax.style`` (the CLI's), for this process;
  nothing of that happens at import.
  """
  jax.config.update('jax_enable_x64', True)
  plt.switch_backend('Agg')
  style.use()
  parser = argparse.ArgumentParser(prog=f'python -m examples.paper.{name}', description=description)
  parser.add_argument('--out', default=os.path.join('paper_out', name), help='output directory')
  parser.add_argument('--quick', action='store_true', help='small, fast preset (used by the tests)')
  parser.add_argument('--seed', type=int, default=0, help='seed of the data and of the ensembles')
  args = parser.parse_args(argv)
  if args.seed < 0:
    parser.error(f'--seed must be >= 0, got {args.seed}')
  os.makedirs(args.out, exist_ok=True)
  return args


# ----------------------------------------------------------------------------------------------------------
# Data.


class Task(NamedTuple):
  """A binary task with labels ±1: training (x, y) and test (x_test, y_test), y of shape (n, 1)."""

  name: str
  x: np.ndarray
  y: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def orthogonal_task(n_train: int, n_test: int, *, overlap: float = 0.5, seed: int = 0) -> Task:
  """Orthogonal inputs with random binary labels.

  Training inputs x_μ = √d e_μ (μ < P), d = P + n_test, labels y_μ = ±1 at random (balanced). Test input k is a
  noisy copy of training input k mod P: x*_k = √d (√overlap e_{k mod P} + √(1 − overlap) e_{P+k}), with that
  point's label; so every input has ‖x‖² = d, training inputs are mutually orthogonal, and x*_k · x_μ / d =
  √overlap δ_{μ, k mod P}.
  """
  if n_train < 2 or n_test < 1 or not 0 < overlap < 1:
    raise ValueError(f'need n_train >= 2, n_test >= 1, 0 < overlap < 1; got {n_train}, {n_test}, {overlap}')
  rng = np.random.default_rng(seed)
  d = n_train + n_test
  eye = np.eye(d)
  y = rng.permutation(np.where(np.arange(n_train) % 2 == 0, 1.0, -1.0))[:, None]
  src = np.arange(n_test) % n_train
  x_test = math.sqrt(d) * (math.sqrt(overlap) * eye[src] + math.sqrt(1 - overlap) * eye[n_train:])
  return Task(f'orthogonal P={n_train}', math.sqrt(d) * eye[:n_train], y, x_test, y[src])


def digits_task(pair: tuple[int, int], n_train: int, n_test: int, *, seed: int = 0) -> Task:
  """scikit-learn's bundled 8×8 digits (no download), classes ``pair`` → labels +1 / −1, pixels / 16 scaled by one
  global factor so that the mean of ‖x‖²/d over the task is 1 (norm differences between digits are kept).
  Balanced random training and test subsets (disjoint)."""
  from sklearn.datasets import load_digits

  digits = load_digits()
  x_all = digits.data / 16.0
  rng = np.random.default_rng(seed)
  picks = []
  for cls in pair:
    idx = rng.permutation(np.flatnonzero(digits.target == cls))
    if idx.size < n_train // 2 + n_test // 2:
      raise ValueError(
        f'digit {cls} has only {idx.size} images, fewer than {n_train // 2} + {n_test // 2} (training + test halves)'
      )
    picks.append(idx)
  half_train, half_test = n_train // 2, n_test // 2
  train = np.concatenate([p[:half_train] for p in picks])
  test = np.concatenate([p[half_train : half_train + half_test] for p in picks])
  label = lambda idx: np.where(digits.target[idx] == pair[0], 1.0, -1.0)[:, None]
  x_tr, x_te = x_all[train], x_all[test]
  scale = math.sqrt(np.mean(np.sum(np.concatenate([x_tr, x_te]) ** 2, axis=1)) / x_all.shape[1])
  return Task(f'digits {pair[0]}-vs-{pair[1]}', x_tr / scale, label(train), x_te / scale, label(test))


# ----------------------------------------------------------------------------------------------------------
# Networks and metrics.


@functools.lru_cache(maxsize=None)
def mlp(depth: int, activation: str, sigma0: float, sigma: float, width: int = 512) -> tuple:
  """``depth`` hidden layers Dense(width) + activation, then Dense(1); every weight has init std σ0 and prior std σ,
  no biases (so ReLU keeps only ‖x‖ in its mean activation and erf is odd). Cached: the same arguments give the
  same layer objects, so their compiled kernels are reused across scripts run in one process."""
  act = ACTIVATIONS[activation]
  layers = []
  for _ in range(depth):
    layers += [stax.Dense(width, W_std=sigma0, W_prior_std=sigma), act()]
  return tuple(layers + [stax.Dense(1, W_std=sigma0, W_prior_std=sigma)])


@functools.lru_cache(maxsize=None)
def network(depth: int, activation: str, sigma0: float, sigma: float) -> stax.NDKLayer:
  """``stax.serial(*mlp(...))``, cached like :func:`mlp`."""
  return stax.serial(*mlp(depth, activation, sigma0, sigma))


def mse(pred, y) -> np.ndarray:
  """Mean over points of (f − y)², per leading index."""
  return np.mean((np.asarray(pred) - np.asarray(y)) ** 2, axis=(-2, -1))


def class_error(pred, y) -> np.ndarray:
  """Fraction of points with sign(f) ≠ y, per leading index."""
  return np.mean(np.sign(np.asarray(pred)) != np.sign(np.asarray(y)), axis=(-2, -1))


class EndPoints(NamedTuple):
  """Closed forms on the test inputs: ``ntk`` = Θ0(x*, X)Θ0⁻¹Y (end of the gradient-driven phase, T → 0),
  ``equilibrium`` = K(x*, X)[K + T I]⁻¹Y (NNGP posterior, t → ∞, docs/theory.md §4) and the gradient time scale
  1/λ_max(Θ0)."""

  ntk: np.ndarray
  equilibrium: np.ndarray
  gradient_time: float


def end_points(net, task: Task, temperature: float) -> EndPoints:
  """:class:`EndPoints` from one kernel call (x = X ∪ x*, times (0, ∞))."""
  x_all = np.concatenate([task.x, task.x_test])
  p = len(task.x)
  k = net.ndk_fn(x_all, task.x, np.array([0.0, np.inf]), np.array([0.0, np.inf]), temperature=temperature)
  theta, nngp = np.asarray(k.ndk[0, 0]), np.asarray(k.nngp[1, 1])
  ntk = theta[p:] @ np.linalg.solve(theta[:p], task.y)
  eq = nngp[p:] @ np.linalg.solve(nngp[:p] + temperature * np.eye(p), task.y)
  return EndPoints(ntk, eq, 1 / float(np.linalg.eigvalsh(theta[:p])[-1]))


# ----------------------------------------------------------------------------------------------------------
# Ensembles.


class EnsemblePoints(NamedTuple):
  """Member-mean outputs with standard errors: times (n_t,), test/train means and s.e. (n_t, n, 1)."""

  times: np.ndarray
  test: np.ndarray
  test_se: np.ndarray
  train: np.ndarray
  train_se: np.ndarray
  n_members: int
  width: int
  seconds: float


def ensemble_points(
  net, task: Task, *, temperature: float, times, n_members: int, width: int, learning_rate: float, seed: int = 0
) -> EnsemblePoints:
  """Langevin-trained finite networks (``ndk_flax.ensemble.train_ensemble``) recorded at ``times`` (rounded to
  multiples of the step)."""
  times = learning_rate * np.unique(np.round(np.asarray(times) / learning_rate))
  start = time.time()
  rec = train_ensemble(
    net,
    task.x,
    task.y,
    temperature=temperature,
    learning_rate=learning_rate,
    record_times=times,
    n_members=n_members,
    width=width,
    x_test=task.x_test,
    seed=seed,
    progress=False,
  )
  se = lambda a: a.std(0, ddof=1) / math.sqrt(a.shape[0])
  return EnsemblePoints(
    rec.times, rec.test.mean(0), se(rec.test), rec.train.mean(0), se(rec.train), n_members, width, time.time() - start
  )


def ensemble_mse(ens_mean, ens_se, y) -> np.ndarray:
  """Unbiased estimate of the mean predictor's MSE from a finite ensemble: mean over points of (f̄_M − y)² − s.e.²
  (the M-member average carries variance s.e.² ≈ Var f/M on top of the error of the infinite-ensemble mean)."""
  return mse(ens_mean, y) - np.mean(np.asarray(ens_se) ** 2, axis=(-2, -1))


def z_scores(ens_mean, ens_se, theory) -> np.ndarray:
  """(ensemble − theory)/s.e., elementwise."""
  return (np.asarray(ens_mean) - np.asarray(theory)) / np.asarray(ens_se)


def z_threshold(n_members: int, n_comparisons: int, alpha: float = 0.01) -> float:
  """|z| bound that all of ``n_comparisons`` z-scores (standard errors estimated from M members, so Student t with
  M − 1 degrees of freedom) stay below with probability ≥ 1 − α if the theory is right (Bonferroni)."""
  from scipy.stats import t as student_t

  return float(student_t.ppf(1 - alpha / (2 * max(1, n_comparisons)), df=n_members - 1))


def ensemble_agreement_claim(rep: 'Report', text: str, z, z_eq, n_members: int, where: str) -> None:
  """Claim that a finite ensemble follows the theory: max |z| vs the solver (``z``) and vs the closed-form
  equilibrium (``z_eq``) below the Bonferroni bound of all these comparisons (α = 1 %)."""
  thr = z_threshold(n_members, np.size(z) + np.size(z_eq))
  rep.claim(
    f'{text} (Bonferroni bound, α = 1 %)',
    bool(np.max(np.abs(z)) < thr and np.max(np.abs(z_eq)) < thr),
    f'max |z| = {np.max(np.abs(z)):.2f} {where}, {np.max(np.abs(z_eq)):.2f} vs the equilibrium; bound '
    f'{thr:.2f} for M = {n_members}',
  )


# ----------------------------------------------------------------------------------------------------------
# Output.


class Report:
  """Collects the markdown summary and the numbers of a script; ``write()`` saves summary.md and results.json."""

  def __init__(self, out: str, title: str, args: argparse.Namespace):
    self.out = out
    self.lines = [
      f'# {title}',
      '',
      f'Preset: {"quick" if args.quick else "full"}, seed {args.seed}. '
      'Theory: infinite width (ndk_flax); ensembles: finite-width Langevin training.',
      '',
    ]
    self.results: dict[str, Any] = {'preset': 'quick' if args.quick else 'full', 'seed': args.seed}
    self.claims: list[tuple[str, bool, str]] = []
    self.start = time.time()

  def add(self, *lines: str) -> None:
    """Append markdown lines; a section heading (``## ...``) is also printed as progress: what runs now."""
    for line in lines:
      if line.startswith('## '):
        print(f'  {os.path.basename(self.out)}: {line[3:]} (at {time.time() - self.start:.0f} s)', flush=True)
    self.lines.extend(lines)

  def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    def fmt(v):  # NaN marks a quantity the run did not reach (e.g. a crossing time): shown as '—'
      if isinstance(v, (float, np.floating)):
        return '—' if np.isnan(v) else f'{v:.4g}'
      return str(v)

    self.lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    self.lines += ['| ' + ' | '.join(fmt(v) for v in row) + ' |' for row in rows]
    self.lines.append('')

  def claim(self, text: str, reproduced: Optional[bool], evidence: str) -> None:
    """A qualitative claim of the paper, whether we reproduced it (None: not tested in this preset), the numbers."""
    self.claims.append((text, None if reproduced is None else bool(reproduced), evidence))

  def figure(self, fig, name: str, caption: str) -> str:
    path = os.path.join(self.out, name)
    style.save(fig, path)
    plt.close(fig)
    self.lines += [f'![{caption}]({name})', '', f'*{caption}*', '']
    return path

  def write(self) -> dict:
    lines = list(self.lines)
    lines += ['## Paper claims', '', '| claim | reproduced | evidence |', '|---|---|---|']
    lines += [f'| {c} | {verdict(ok)} | {e} |' for c, ok, e in self.claims]
    lines += ['', f'Run time: {time.time() - self.start:.0f} s.', '']
    self.results['claims'] = [{'claim': c, 'reproduced': ok, 'evidence': e} for c, ok, e in self.claims]
    with open(os.path.join(self.out, 'summary.md'), 'w') as f:
      f.write('\n'.join(lines))
    with open(os.path.join(self.out, 'results.json'), 'w') as f:
      json.dump(_jsonable(self.results), f, indent=1)
    print(summary_line(os.path.basename(self.out), self.claims, time.time() - self.start, self.out), flush=True)
    return self.results


def summary_line(name: str, claims: Sequence[tuple[str, Optional[bool], str]], seconds: float, out: str) -> str:
  """One line per script: how many of the paper's claims were reproduced, not reproduced, not tested."""
  counts = {True: 0, False: 0, None: 0}
  for _, ok, _ in claims:
    counts[ok] += 1
  return (
    f'{name}: {counts[True]} of {len(claims)} claims reproduced, {counts[False]} not, {counts[None]} not tested '
    f'in this preset ({seconds:.0f} s); see {os.path.join(out, "summary.md")}'
  )


def verdict(reproduced: Optional[bool]) -> str:
  return 'not tested (preset)' if reproduced is None else 'yes' if reproduced else '**no**'


def _jsonable(value):
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.ndarray, jax.Array)):
    return _jsonable(np.asarray(value).tolist())
  if isinstance(value, (np.floating, float)):
    return None if not math.isfinite(float(value)) else float(value)
  if isinstance(value, (np.integer,)):
    return int(value)
  return value


def figure(nrows: int, ncols: int, row_height: float = 2.9):
  """``plt.subplots`` at the house size: :data:`ndk_flax.style.COLUMN` inches wide, ``row_height`` per row."""
  return plt.subplots(nrows, ncols, figsize=(style.COLUMN, row_height * nrows), squeeze=False, layout='constrained')


def legend_below(ax, ncols: int = 2) -> None:
  """The legend of ``ax`` below its x axis, outside the data."""
  ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.25), ncols=ncols, handlelength=1.5, columnspacing=1.0)


def log_time_axis(ax, label: str = 'time t = η × steps') -> None:
  ax.set_xscale('log')
  ax.set_xlabel(label)
