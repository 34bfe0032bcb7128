"""Ensemble statistics beside the theory, with discrepancies in units of their standard error.

* :func:`compare`: mean and variance of the member outputs of an :class:`ndk_flax.ensemble.EnsembleRecord` at every
  recorded time and point vs the predictor of ``ndk_flax.predict.langevin_mse_ensemble`` (docs/theory.md §4).
* :func:`two_time_overlap`: empirical two-time kernels from members, e.g. the hidden-layer overlap
  (1/N) Σ_i a_i(x, t) a_i(x', s) whose infinite-width limit is the two-time kernel C^l (docs/theory.md §6), or the
  output two-time covariance.
* :func:`empirical_ndk`: the Neural Dynamical Kernel of trained members, R̂(t, s, x, x') =
  Σ_θ r_θ(t, s) ∂f(x; θ(t))/∂θ · ∂f(x'; θ(s))/∂θ with r_θ(t, s) = e^{−λ_θ(t − s)} (t ≥ s), λ_θ = T/σ_θ²: a kick of
  the loss gradient at time s relaxes in the weights like a free Ornstein–Uhlenbeck process (docs/theory.md §2), so this
  is the response of f(x, t) to a force on f(x', s); its member average tends to R of ``ndk_fn`` as the width grows.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ndk_flax import _validation as V
from ndk_flax import nn, ou, verdict

__all__ = ['KernelEstimate', 'ValidationReport', 'compare', 'empirical_ndk', 'two_time_overlap']


class ValidationReport(NamedTuple):
  """Ensemble vs theory at every recorded time and point (arrays (n_t, n, out)).

  Standard errors are those of the member statistics under the null hypothesis that the M members are i.i.d. draws
  from the predicted Gaussian (so that z is exactly standard normal for the mean and close to it for the variance).

  Attributes:
    times: (n_t,) times. points: 'train' or 'test'. n_members: M.
    theory_mean, ensemble_mean: f̄ of the theory and the member average.
    mean_se: √(v/M) with v the predicted variance (the member variance when the variance is not compared).
    mean_z: (ensemble_mean − theory_mean)/mean_se.
    theory_var: the predicted covariance diagonal v (the same for every output channel), broadcast to (n_t, n, out).
    ensemble_var: the unbiased member variance; var_se = v √(2/(M − 1)) (Gaussian members).
    var_z: (ensemble_var − theory_var)/var_se. None (with the variance fields) if the variance was not compared.

  Examples:
    400 members drawn from the predicted N(0, 1) at one time and two points (so z is standard normal):

    >>> from ndk_flax._nt import Gaussian
    >>> from ndk_flax.ensemble import EnsembleRecord
    >>> outputs = np.random.default_rng(0).standard_normal((400, 1, 2, 1))
    >>> theory = lambda t, x, compute_cov: Gaussian(np.zeros((1, 2, 1)), np.eye(2)[None])
    >>> r = compare(EnsembleRecord(np.array([0.0]), outputs, None, None), theory)
    >>> bool(np.allclose(r.mean_z, (r.ensemble_mean - r.theory_mean) / r.mean_se)), float(r.mean_se[0, 0, 0])
    (True, 0.05)
    >>> bool(np.allclose(r.var_se, np.sqrt(2 / 399))), r.max_abs_z < 4, r.passed(z_tol=4.0)
    (True, True, True)
  """

  times: np.ndarray
  points: str
  n_members: int
  theory_mean: np.ndarray
  ensemble_mean: np.ndarray
  mean_se: np.ndarray
  mean_z: np.ndarray
  theory_var: Optional[np.ndarray]
  ensemble_var: Optional[np.ndarray]
  var_se: Optional[np.ndarray]
  var_z: Optional[np.ndarray]

  @property
  def max_abs_z(self) -> float:
    """max |z| over times, points, outputs, mean and (if compared) variance."""
    zs = [self.mean_z] + ([] if self.var_z is None else [self.var_z])
    return float(max(np.max(np.abs(z)) for z in zs))

  def passed(self, z_tol: float = 4.0, *, mean_atol: float = 0.0, var_atol: float = 0.0) -> bool:
    """|ensemble − theory| ≤ z_tol · se + atol for every mean (and variance) entry (``ndk_flax.verdict.within``).

    ``mean_atol``/``var_atol`` allow a systematic finite-width deviation (the theory is the infinite-width limit).
    """
    if z_tol <= 0 or mean_atol < 0 or var_atol < 0:
      raise ValueError(f'need z_tol > 0 and atol >= 0, got {z_tol}, {mean_atol}, {var_atol}')
    ok = verdict.within(self.ensemble_mean, self.theory_mean, self.mean_se, z_tol, mean_atol)
    if self.var_z is not None:
      ok &= verdict.within(self.ensemble_var, self.theory_var, self.var_se, z_tol, var_atol)
    return bool(ok)


def _member_moments(samples: np.ndarray):
  """Mean and unbiased variance over axis 0 (members)."""
  return samples.mean(0), samples.var(0, ddof=1)


POINTS = ('train', 'test')
"""The point sets :func:`compare` can compare on."""


def _record_points(record: Any, points: Optional[str], x_test: Any) -> tuple[np.ndarray, str, Any]:
  """(outputs (M, n_t, n, out), the point set, the inputs to pass to the predictor) of a record.

  The record's own inputs are used and checked: test points by default when the record has test outputs; a given
  ``x_test`` must equal the record's.
  """
  if points is None:
    points = 'train' if record.test is None and x_test is None else 'test'
  if points not in POINTS:
    raise ValueError(f"points must be 'train', 'test' or None (the record's test points if it has any), got {points!r}")
  if points == 'train':
    if x_test is not None:
      raise ValueError("x_test is given but points='train' compares the training points; drop x_test or the points")
    return np.asarray(record.train), points, None
  if record.test is None:
    raise ValueError("the record has no test outputs (train_ensemble(..., x_test=...)); compare points='train'")
  outputs = np.asarray(record.test)
  recorded = getattr(record, 'x_test', None)
  if recorded is None:
    if x_test is None:
      raise ValueError('the record does not keep its test inputs: pass the x_test it was trained with')
    if np.shape(x_test)[0] != outputs.shape[2]:
      raise ValueError(f'x_test has {np.shape(x_test)[0]} points but the record has {outputs.shape[2]}')
    return outputs, points, x_test
  recorded = np.asarray(recorded)
  if x_test is not None:
    given = np.asarray(x_test)
    same = given.shape == recorded.shape and np.array_equal(given.astype(recorded.dtype), recorded)
    if not same:
      detail = (
        f'shape {given.shape} vs {recorded.shape}'
        if given.shape != recorded.shape
        else f'max |difference| {float(np.max(np.abs(given.astype(recorded.dtype) - recorded))):.3g}'
      )
      raise ValueError(f"x_test differs from the record's test inputs ({detail}); omit x_test to use the record's")
  return outputs, points, recorded


def compare(
  record: Any, predictor: Any, *, x_test: Any = None, points: Optional[str] = None, compute_var: bool = True
) -> ValidationReport:
  """Ensemble mean/variance vs the theory at every recorded time and point: z = (f̄_M − f̄)/s.e. (docs/theory.md §4).

  Args:
    record: an ``EnsembleRecord`` (``times``, ``train`` (M, n_t, P, out), ``test``, and the inputs ``x_test``).
    predictor: ``ndk_flax.predict.langevin_mse_ensemble(...)`` for the same network, data and temperature.
    x_test: optional check: the test inputs the record was trained with (refused if they differ from
      ``record.x_test``); needed only for records that do not keep their inputs.
    points: ``'train'`` or ``'test'``; default: the test points when the record has test outputs, else the
      training points.
    compute_var: also compare the member variance with the predicted covariance diagonal.

  Returns:
    :class:`ValidationReport`.

  Examples:
    >>> import numpy as np
    >>> from ndk_flax._nt import Gaussian
    >>> from ndk_flax.ensemble import EnsembleRecord
    >>> rng = np.random.default_rng(0)
    >>> outputs = rng.standard_normal((400, 1, 2, 1))  # members ~ N(0, 1) at one time and two points
    >>> rec = EnsembleRecord(np.array([0.0]), outputs, None, None)
    >>> theory = lambda t, x, compute_cov: Gaussian(np.zeros((1, 2, 1)), np.eye(2)[None])
    >>> r = compare(rec, theory)
    >>> r.points, r.passed(4.0)
    ('train', True)
  """
  for field in ('times', 'train', 'test'):
    if not hasattr(record, field):
      raise TypeError(f'record must be an EnsembleRecord (with times/train/test), got {type(record).__name__}')
  if not callable(predictor):
    raise TypeError(f'predictor must be callable as predictor(t, x_test, compute_cov), got {predictor!r}')
  outputs, points, x_test = _record_points(record, points, x_test)
  n_members = outputs.shape[0]
  if n_members < 2:
    raise ValueError(f'need at least 2 members for standard errors, got {n_members}')
  times = np.asarray(record.times, dtype=np.float64)
  theory = predictor(times, x_test, compute_cov=compute_var)
  theory_mean = np.asarray(theory.mean if compute_var else theory)
  if theory_mean.shape != outputs.shape[1:]:
    raise ValueError(
      f'predictor mean has shape {theory_mean.shape}, the record {outputs.shape[1:]}: were they built on the same data?'
    )
  mean, var = _member_moments(outputs)
  theory_var = var_se = var_z = None
  if compute_var:
    diag = np.diagonal(np.asarray(theory.covariance), axis1=-2, axis2=-1)  # (n_t, n)
    theory_var = np.broadcast_to(diag[..., None], var.shape)
    if np.any(theory_var <= 0):
      raise ValueError(
        'the predicted variance is not positive at some time/point: cannot form standard '
        'errors; compare with compute_var=False'
      )
    mean_se = np.sqrt(theory_var / n_members)
    var_se = theory_var * math.sqrt(2 / (n_members - 1))
    var_z = (var - theory_var) / var_se
  else:
    mean_se = np.sqrt(var / n_members)
    var = None
  return ValidationReport(
    times, points, n_members, theory_mean, mean, mean_se, (mean - theory_mean) / mean_se, theory_var, var, var_se, var_z
  )


class KernelEstimate(NamedTuple):
  """Member average of a two-time kernel, (n_t, n_t, n, n), and its standard error over members.

  Examples:
    >>> import numpy as np
    >>> k = KernelEstimate(mean=np.eye(2), se=np.zeros((2, 2)))
    >>> float(k.mean.trace()), float(k.se.sum())
    (2.0, 0.0)
  """

  mean: np.ndarray
  se: np.ndarray


def two_time_overlap(features: Any, *, centre: bool = False) -> KernelEstimate:
  """Empirical two-time kernel K(t, s, x, x') = (1/N) Σ_i a_i(x, t) a_i(x', s), averaged over members.

  Args:
    features: (M, n_t, n, ...) per member, time and input: e.g. ``record.hidden[l]`` (hidden activations, N the
      product of the trailing axes; limit C^l(t, s, x, x') of docs/theory.md §6) or ``record.train`` (outputs).
    centre: subtract the member mean at each (t, x) first (and use M − 1): the two-time covariance of the
      outputs across members instead of the raw second moment.

  Returns:
    :class:`KernelEstimate` with (n_t, n_t, n, n) arrays; ``se`` is the across-member std / √M.

  Examples:
    >>> import numpy as np
    >>> a = np.ones((3, 2, 1, 4))  # M = 3 members, 2 times, 1 point, N = 4 units, a_i = 1
    >>> k = two_time_overlap(a)
    >>> k.mean.shape, float(k.mean[0, 1, 0, 0]), float(k.se.max())
    ((2, 2, 1, 1), 1.0, 0.0)
    >>> two_time_overlap(np.ones((1, 2, 1, 4)))
    Traceback (most recent call last):
    ...
    ValueError: need at least 2 members, got 1
  """
  a = np.asarray(features, dtype=np.float64)
  if a.ndim < 3:
    raise ValueError(f'features must be (members, times, points, ...), got shape {a.shape}')
  m = a.shape[0]
  if m < 2:
    raise ValueError(f'need at least 2 members, got {m}')
  a = a.reshape(a.shape[:3] + (-1,))
  n_units = a.shape[-1]
  if centre:
    a = (a - a.mean(0)) * math.sqrt(m / (m - 1))
  per_member = np.einsum('mtxi,msyi->mtsxy', a, a) / n_units
  return KernelEstimate(per_member.mean(0), per_member.std(0, ddof=1) / math.sqrt(m))


def empirical_ndk(record: Any, model: nnx.Module, x1: Any, x2: Any = None, *, temperature: float) -> KernelEstimate:
  """Member average of the empirical NDK R̂(t, s, x1, x2) at every pair of recorded times, with its standard error.

  R̂_m(t, s, x, x') = (1/out) Σ_k Σ_θ r_θ(t, s) ∂f_k(x; θ_m(t))/∂θ · ∂f_k(x'; θ_m(s))/∂θ for member m, with
  r_θ(t, s) = e^{−λ_θ(t − s)} for t ≥ s and 0 for t < s, λ_θ = T/σ_θ² (σ_θ the prior std of the parameter's group);
  the output channels k are averaged (Neural Tangents' ``trace_axes``). At t = s = 0 it is the empirical raw NTK
  of the members; its infinite-width limit is ``layer.ndk_fn(x1, x2, t, s, temperature=T).ndk``.

  Args:
    record: an ``EnsembleRecord`` from ``train_ensemble(..., record_params=True)``.
    model: an ``ndk_flax.nn`` model of the trained architecture (e.g. ``nn.from_stax(layer, width, ...)``): its
      graph and prior stds are used, its parameter values are not.
    x1, x2: (n1, ...) and (n2, ...) inputs (``x2=None``: x1).
    temperature: T ≥ 0 of the training run (T = 0: r ≡ 1).

  Returns:
    :class:`KernelEstimate` with (n_t, n_t, n1, n2) arrays (zero for t < s); ``se`` = std over members / √M.

  Examples:
    One raw Dense layer f = W x/√d + b has ∂f/∂W = x/√d and ∂f/∂b = 1 whatever θ, so R̂(t, s, x, x') =
    e^{−λ_W (t − s)} x·x'/d + e^{−λ_b (t − s)} for t ≥ s, λ = T/σ². Two identical members at times 0 and 1:

    >>> from ndk_flax.ensemble import EnsembleRecord
    >>> model = nn.Dense(3, 1, W_std=1.0, b_std=1.0, W_prior_std=1.0, b_prior_std=0.5, rngs=nnx.Rngs(0))
    >>> theta = nnx.as_pure(nnx.state(model, nnx.Param))
    >>> params = jax.tree.map(lambda p: np.broadcast_to(np.asarray(p), (2, 2) + p.shape), theta)  # (M, n_t, ...)
    >>> rec = EnsembleRecord(np.array([0.0, 1.0]), np.zeros((2, 2, 2, 1)), None, None, params=params)
    >>> x = np.array([[1.0, 0.0, 1.0], [0.0, 2.0, 1.0]])
    >>> k = empirical_ndk(rec, model, x, temperature=0.1)  # λ_W = 0.1/1², λ_b = 0.1/0.5² = 0.4
    >>> k.mean.shape, bool(np.allclose(k.mean[1, 0], np.exp(-0.1) * x @ x.T / 3 + np.exp(-0.4), rtol=1e-5))
    ((2, 2, 2, 2), True)
    >>> float(np.abs(k.mean[0, 1]).max()), float(k.se.max())  # zero for t < s; identical members
    (0.0, 0.0)
  """
  if getattr(record, 'params', None) is None:
    raise ValueError('record has no parameters: train the ensemble with train_ensemble(..., record_params=True)')
  if not isinstance(model, nnx.Module):
    raise TypeError(f'model must be an nnx.Module built by ndk_flax.nn, got {type(model).__name__}')
  temperature = V.temperature(temperature)
  graphdef, template = nnx.split(model, nnx.Param)
  template, recorded = nnx.as_pure(template), nnx.as_pure(record.params)
  if jax.tree.structure(recorded) != jax.tree.structure(template):
    raise ValueError(
      'record.params does not have the parameter structure of model: build model with the same '
      'architecture and width as the trained ensemble'
    )
  x1 = V.batched_array('x1', x1)
  x2 = x1 if x2 is None else V.inputs_like('x2', x2, x1, 'x1')
  leaves = jax.tree.leaves(recorded)
  m, n_t = leaves[0].shape[:2]
  if m < 2:
    raise ValueError(f'need at least 2 members, got {m}')
  times = jnp.asarray(record.times, x1.dtype)
  responses = [
    ou.response(times[:, None], times[None, :], prior_std=float(std), temperature=temperature)
    for std in jax.tree.leaves(nn.prior_std_tree(model))
  ]

  def jacobians(params, x):  # leaves (n_t, n, out, size) of ∂f/∂θ at every recorded time
    def one(p):
      jac = jax.jacrev(lambda q: nnx.merge(graphdef, q)(x))(p)
      return [j.reshape(j.shape[:2] + (-1,)) for j in jax.tree.leaves(jac)]

    return jax.vmap(one)(params)

  @jax.jit
  def member_kernel(params):
    params = jax.tree.map(lambda p: p.astype(x1.dtype), params)
    j1 = jacobians(params, x1)
    j2 = j1 if x2 is x1 else jacobians(params, x2)
    out = j1[0].shape[2]
    return sum(r[:, :, None, None] * jnp.einsum('txok,syok->tsxy', a, b) / out for r, a, b in zip(responses, j1, j2))

  per_member = np.stack([np.asarray(member_kernel(jax.tree.map(lambda p, i=i: p[i], recorded))) for i in range(m)])
  return KernelEstimate(per_member.mean(0), per_member.std(0, ddof=1) / math.sqrt(m))
