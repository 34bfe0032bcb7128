"""Input checks shared by the public functions of ndk_flax.

Every check names the argument, says what was expected and shows what was given. Traced values (inside ``jax.jit``
or ``jax.vmap``) cannot be inspected and pass through unchanged where the callers accept them.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(x: Any) -> bool:
  return isinstance(x, jax.core.Tracer)


def _real(name: str, value: Any) -> float:
  if isinstance(value, bool) or callable(value) or np.ndim(value) != 0:
    raise TypeError(f'`{name}` must be a real number, got {value!r}.')
  try:
    return float(value)
  except (TypeError, ValueError):
    raise TypeError(f'`{name}` must be a real number, got {value!r}.') from None


def positive(name: str, value: Any) -> float:
  """A finite real number > 0 (a variance, a standard deviation, a rate, a step)."""
  out = _real(name, value)
  if not math.isfinite(out) or out <= 0:
    raise ValueError(f'`{name}` must be finite and > 0, got {value!r}.')
  return out


def temperature(value: Any, *, allow_zero: bool = True, hint: str = '') -> Any:
  """The temperature T: finite, ≥ 0 (> 0 when ``allow_zero`` is False); a traced T is returned as is."""
  if is_traced(value):
    return value
  out = _real('temperature', value)
  if not math.isfinite(out) or out < 0 or (out == 0 and not allow_zero):
    bound = '>= 0' if allow_zero else '> 0'
    raise ValueError(f'`temperature` must be finite and {bound}{hint}, got {value!r}.')
  return out


def increasing_times(name: str, t: Any) -> tuple[np.ndarray, bool]:
  """Times as a float64 1-D array and whether a scalar was given: ≥ 0, strictly increasing, ``inf`` allowed last."""
  try:
    arr = np.asarray(t, dtype=np.float64)
  except (TypeError, ValueError):
    raise TypeError(f'`{name}` must be a scalar or a 1-D array of times, got {t!r}.') from None
  if arr.ndim > 1:
    raise ValueError(f'`{name}` must be a scalar or a 1-D array of times, got shape {arr.shape}.')
  scalar = arr.ndim == 0
  arr = np.atleast_1d(arr)
  if arr.size == 0:
    raise ValueError(f'`{name}` must hold at least one time, got an empty array.')
  if np.any(np.isnan(arr)) or np.any(arr < 0):
    raise ValueError(f'`{name}` must hold times >= 0 (inf allowed, no NaN), got {arr}.')
  if np.any(np.diff(arr) <= 0):
    raise ValueError(f'`{name}` must be strictly increasing, got {arr}.')
  return arr, scalar


HOST_CHECK_SIZE = 2**20
"""Arrays of at most this many elements are checked for NaN and inf on the host (:func:`all_finite`)."""


def all_finite(x: Any) -> bool:
  """Whether the array ``x`` holds no NaN or inf. Small arrays are checked on the host: a device reduction compiles
  once per shape (≈ 70 ms on CPU), far more than copying ``HOST_CHECK_SIZE`` elements; large ones on their device."""
  if np.size(x) <= HOST_CHECK_SIZE:
    return bool(np.isfinite(np.asarray(x)).all())
  return bool(jnp.all(jnp.isfinite(x)))


def batched_array(name: str, x: Any, ndim_min: int = 2) -> jax.Array:
  """A finite floating array with a leading batch axis and at least ``ndim_min`` dimensions (integers → float)."""
  try:
    x = jnp.asarray(x)
  except TypeError:
    raise TypeError(f'`{name}` must be an array, got {type(x).__name__}.') from None
  if x.ndim < ndim_min:
    raise ValueError(f'`{name}` must have at least {ndim_min} dimensions (batch first), got shape {x.shape}.')
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.result_type(float))
  if not all_finite(x):
    raise ValueError(f'`{name}` contains NaN or inf.')
  return x


def inputs_like(name: str, x: Any, reference: jax.Array, reference_name: str = 'x_train') -> jax.Array:
  """Inputs with the per-point shape of ``reference`` (checked like :func:`batched_array`), in its dtype."""
  x = batched_array(name, x, 2)
  if x.shape[1:] != reference.shape[1:]:
    raise ValueError(
      f'`{name}` must have shape (n, {", ".join(map(str, reference.shape[1:]))}) like '
      f'`{reference_name}`, got {x.shape}.'
    )
  return x.astype(reference.dtype)


LOW_PRECISION_DTYPES = ('bfloat16', 'float16')
"""Parameter dtypes refused by the Langevin pieces: the increment √(2ηT)ξ is below their resolution relative to θ
(bfloat16 has 8 significant bits, float16 11), so the chain's stationary law is wrong (e.g. a free OU chain in
bfloat16 has mean −0.53 where 0.0025 is expected)."""


def langevin_dtype(name: str, dtype: Any) -> Any:
  """A floating dtype for Langevin parameters: float32 or wider (bfloat16 and float16 are refused)."""
  try:
    dt = jnp.dtype(dtype)
  except TypeError:
    raise TypeError(f'`{name}` must be a floating dtype, got {dtype!r}.') from None
  if not jnp.issubdtype(dt, jnp.floating):
    raise TypeError(f'`{name}` must be a floating dtype, got {dt}.')
  if dt.name in LOW_PRECISION_DTYPES:
    raise TypeError(
      f'`{name}` is {dt.name}: Langevin dynamics need float32 or float64 parameters. In {dt.name} the noise '
      '√(2ηT)ξ and the decay ηTθ/σ² are rounded away relative to θ, and the stationary law is wrong; keep the '
      'parameters in float32 (mixed precision for activations is up to the model).'
    )
  return dt


def positive_int(name: str, value: Any) -> int:
  """An integer ≥ 1 (Python or NumPy integer; bool refused), returned as ``int``."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f'`{name}` must be a positive integer, got {value!r}.')
  if value < 1:
    raise ValueError(f'`{name}` must be a positive integer, got {value!r}.')
  return int(value)


def network_inputs(name: str, x: Any, mask_constant: Any = None) -> jax.Array:
  """Inputs of a stax network: a real, non-empty array with a batch axis; finite except masked entries.

  Entries equal to ``mask_constant`` (Neural Tangents' masking; NaN matches NaN) may be non-finite. Integers become
  floats; complex values are refused (a kernel of real networks would drop the imaginary part).
  """
  try:
    x = jnp.asarray(x)
  except TypeError:
    raise TypeError(f'`{name}` must be an array, got {type(x).__name__}.') from None
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    raise TypeError(f'`{name}` must be real, got dtype {x.dtype} (the imaginary part would be lost).')
  if x.ndim < 2:
    raise ValueError(f'`{name}` must have at least 2 dimensions (batch first), got shape {x.shape}.')
  if x.size == 0:
    raise ValueError(f'`{name}` must not be empty, got shape {x.shape}.')
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.result_type(float))
  values = np.asarray(x)  # NumPy: the check must not be traced when the caller runs under jax.jit
  finite = np.isfinite(values)
  if mask_constant is not None:
    finite |= (values == mask_constant) | (np.isnan(values) & bool(np.isnan(mask_constant)))
  if not finite.all():
    raise ValueError(f'`{name}` contains NaN or inf.')
  return x
