"""Ensemble statistics beside the theory, with discrepancies in units of their standard error.

* :func:`compare`: mean and variance of the member outputs of an :class:`ndk_flax.ensemble.EnsembleRecord` at every
  recorded time and point vs the predictor of ``ndk_flax.predict.langevin_mse_ensemble`` (THEORY.md §4).
* :func:`two_time_overlap`: empirical two-time kernels from members, e.g. the hidden-layer overlap
  (1/N) Σ_i a_i(x, t) a_i(x', s) whose infinite-width limit is the two-time kernel C^l (THEORY.md §6), or the
  output two-time covariance.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import numpy as np

__all__ = ["KernelEstimate", "ValidationReport", "compare", "two_time_overlap"]


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
        """|ensemble − theory| ≤ z_tol · se + atol for every mean (and variance) entry.

        ``mean_atol``/``var_atol`` allow a systematic finite-width deviation (the theory is the infinite-width limit).
        """
        if z_tol <= 0 or mean_atol < 0 or var_atol < 0:
            raise ValueError(f"need z_tol > 0 and atol >= 0, got {z_tol}, {mean_atol}, {var_atol}")
        ok = np.all(np.abs(self.ensemble_mean - self.theory_mean) <= z_tol * self.mean_se + mean_atol)
        if self.var_z is not None:
            ok &= np.all(np.abs(self.ensemble_var - self.theory_var) <= z_tol * self.var_se + var_atol)
        return bool(ok)


def _member_moments(samples: np.ndarray):
    """Mean and unbiased variance over axis 0 (members)."""
    return samples.mean(0), samples.var(0, ddof=1)


def compare(record: Any, predictor: Any, *, x_test: Any = None, compute_var: bool = True) -> ValidationReport:
    """Ensemble mean/variance vs the theory at every recorded time and point.

    Args:
      record: an ``EnsembleRecord`` (``times``, ``train`` (M, n_t, P, out), ``test``).
      predictor: ``ndk_flax.predict.langevin_mse_ensemble(...)`` for the same network, data and temperature.
      x_test: the test inputs of the record; given, the test outputs are compared, else the training outputs.
      compute_var: also compare the member variance with the predicted covariance diagonal.

    Returns:
      :class:`ValidationReport`.
    """
    for field in ("times", "train", "test"):
        if not hasattr(record, field):
            raise TypeError(f"record must be an EnsembleRecord (with times/train/test), got {type(record).__name__}")
    if not callable(predictor):
        raise TypeError(f"predictor must be callable as predictor(t, x_test, compute_cov), got {predictor!r}")
    if x_test is None:
        outputs, points = np.asarray(record.train), "train"
    else:
        if record.test is None:
            raise ValueError("x_test is given but the record has no test outputs (train_ensemble(..., x_test=...))")
        outputs, points = np.asarray(record.test), "test"
        if np.shape(x_test)[0] != outputs.shape[2]:
            raise ValueError(f"x_test has {np.shape(x_test)[0]} points but the record has {outputs.shape[2]}")
    n_members = outputs.shape[0]
    if n_members < 2:
        raise ValueError(f"need at least 2 members for standard errors, got {n_members}")
    times = np.asarray(record.times, dtype=np.float64)
    theory = predictor(times, x_test, compute_cov=compute_var)
    theory_mean = np.asarray(theory.mean if compute_var else theory)
    if theory_mean.shape != outputs.shape[1:]:
        raise ValueError(f"predictor mean has shape {theory_mean.shape}, the record {outputs.shape[1:]}: "
                         "were they built on the same data?")
    mean, var = _member_moments(outputs)
    theory_var = var_se = var_z = None
    if compute_var:
        diag = np.diagonal(np.asarray(theory.covariance), axis1=-2, axis2=-1)  # (n_t, n)
        theory_var = np.broadcast_to(diag[..., None], var.shape)
        if np.any(theory_var <= 0):
            raise ValueError("the predicted variance is not positive at some time/point: cannot form standard "
                             "errors; compare with compute_var=False")
        mean_se = np.sqrt(theory_var / n_members)
        var_se = theory_var * math.sqrt(2 / (n_members - 1))
        var_z = (var - theory_var) / var_se
    else:
        mean_se = np.sqrt(var / n_members)
        var = None
    return ValidationReport(times, points, n_members, theory_mean, mean, mean_se, (mean - theory_mean) / mean_se,
                            theory_var, var, var_se, var_z)


class KernelEstimate(NamedTuple):
    """Member average of a two-time kernel, (n_t, n_t, n, n), and its standard error over members."""

    mean: np.ndarray
    se: np.ndarray


def two_time_overlap(features: Any, *, centre: bool = False) -> KernelEstimate:
    """Empirical two-time kernel K(t, s, x, x') = (1/N) Σ_i a_i(x, t) a_i(x', s), averaged over members.

    Args:
      features: (M, n_t, n, ...) per member, time and input: e.g. ``record.hidden[l]`` (hidden activations, N the
        product of the trailing axes; limit C^l(t, s, x, x') of THEORY.md §6) or ``record.train`` (outputs).
      centre: subtract the member mean at each (t, x) first (and use M − 1): the two-time covariance of the
        outputs across members instead of the raw second moment.

    Returns:
      :class:`KernelEstimate` with (n_t, n_t, n, n) arrays; ``se`` is the across-member std / √M.
    """
    a = np.asarray(features, dtype=np.float64)
    if a.ndim < 3:
        raise ValueError(f"features must be (members, times, points, ...), got shape {a.shape}")
    m = a.shape[0]
    if m < 2:
        raise ValueError(f"need at least 2 members, got {m}")
    a = a.reshape(a.shape[:3] + (-1,))
    n_units = a.shape[-1]
    if centre:
        a = (a - a.mean(0)) * math.sqrt(m / (m - 1))
    per_member = np.einsum("mtxi,msyi->mtsxy", a, a) / n_units
    return KernelEstimate(per_member.mean(0), per_member.std(0, ddof=1) / math.sqrt(m))
