"""One resource estimator: bytes needed against bytes available, and work against a cap, checked before any work.

Every entry point that allocates in proportion to its request (kernels, time grids, the predictor's mean and
covariance) states what it needs through :func:`require_memory` and, for long computations, :func:`require_work`
before it allocates or computes anything. A request that does not fit is refused with the amount needed, the amount
available and what to change.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

__all__ = [
  'EnsembleBytes',
  'available_bytes',
  'ensemble_bytes',
  'host_available_bytes',
  'require_ensemble_memory',
  'require_memory',
  'require_work',
]


def host_available_bytes() -> int:
  """Bytes the host can allocate now: MemAvailable of /proc/meminfo, else half the physical memory (no JAX import).

  Examples:
    >>> from ndk_flax.resources import host_available_bytes
    >>> host_available_bytes() > 0
    True
  """
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return int(0.5 * os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))


def available_bytes() -> int:
  """Bytes a computation may allocate now: free memory of the first accelerator, else MemAvailable of the host.

  Examples:
    >>> from ndk_flax.resources import available_bytes
    >>> available_bytes() > 0
    True
  """
  import jax

  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != 'cpu' else None
  if stats and 'bytes_limit' in stats:
    return int(stats['bytes_limit'] - stats.get('bytes_in_use', 0))
  return host_available_bytes()


def _gib(n: float) -> str:
  return f'{n / 2**30:.3g} GiB'


def require_memory(what: str, bytes_needed: float, *, remedy: str, limit: Optional[float] = None) -> None:
  """Raise MemoryError (before any allocation) when ``bytes_needed`` exceed ``limit`` (default :func:`available_bytes`).

  Args:
    what: the request, e.g. ``'the covariance of 30000 test points'``.
    bytes_needed: estimated peak bytes of the request.
    remedy: what the caller can change, e.g. ``'request fewer test points at once'``.
    limit: bytes the request may use (default: what is free now).

  Examples:
    >>> from ndk_flax.resources import require_memory
    >>> require_memory('a small array', 1e3, remedy='nothing', limit=1e6)
    >>> try:
    ...   require_memory('a big array', 2**31, remedy='ask for less', limit=2**30)
    ... except MemoryError as e:
    ...   print(e)
    a big array needs about 2 GiB, but only 1 GiB are available: ask for less.
  """
  available = available_bytes() if limit is None else limit
  if bytes_needed > available:
    raise MemoryError(f'{what} needs about {_gib(bytes_needed)}, but only {_gib(available)} are available: {remedy}.')


ENSEMBLE_STATE_COPIES = 6
"""Live member-stacked copies of the parameters during a Langevin step: θ, the gradient, the noise ξ, the update,
the new θ and one temporary of the fused update (``ndk_flax.ensemble.build_program``)."""

ENSEMBLE_ACTIVATION_COPIES = 4
"""Live copies of the hidden units per point in the forward and backward passes: pre-activations, activations and
their two cotangents."""


class EnsembleBytes(NamedTuple):
  """Peak bytes of ``ndk_flax.ensemble.train_ensemble`` (:func:`ensemble_bytes`), by where they live.

  Attributes:
    training: on the device: the member-stacked parameters and their step copies, and the activations.
    records: on the host: the recorded outputs, hidden representations and parameters (NumPy).

  Examples:
    >>> from ndk_flax.resources import EnsembleBytes
    >>> EnsembleBytes(training=3e9, records=1e9).total
    4000000000.0
  """

  training: float
  records: float

  @property
  def total(self) -> float:
    return self.training + self.records


def ensemble_bytes(
  n_members: int,
  n_params: int,
  n_observed: int,
  hidden_per_point: int,
  n_record: int,
  *,
  n_out: int = 1,
  record_hidden: bool = False,
  record_params: bool = False,
  itemsize: int = 4,
) -> EnsembleBytes:
  """Upper bound of the peak bytes of a Langevin ensemble (``ndk_flax.ensemble.train_ensemble``), from its sizes.

  With M members of n_θ parameters, n_o = P + n* observed points (training and test), H hidden units per point (the
  summed sizes of the hidden representations, e.g. depth × width) and n_r record times, in ``itemsize`` bytes:

  * training = itemsize · M · (6 n_θ + 4 n_o H): :data:`ENSEMBLE_STATE_COPIES` of the parameters and
    :data:`ENSEMBLE_ACTIVATION_COPIES` of the activations;
  * records = 2 · itemsize · M · n_r · (n_o · out [+ n_o H with ``record_hidden``] [+ n_θ with ``record_params``]):
    the per-time records and their stacked copy.

  Examples:
    >>> from ndk_flax.resources import ensemble_bytes
    >>> need = ensemble_bytes(4096, 4096 * 4, 10, 4096, 200, record_params=True)
    >>> round(need.training / 2**30, 2), round(need.records / 2**30, 1)  # M = 4096, N = 4096, 200 times
    (4.0, 100.1)
  """
  m = float(n_members)
  training = (
    itemsize * m * (ENSEMBLE_STATE_COPIES * n_params + ENSEMBLE_ACTIVATION_COPIES * n_observed * hidden_per_point)
  )
  per_time = n_observed * n_out + record_hidden * n_observed * hidden_per_point + record_params * n_params
  return EnsembleBytes(training, 2.0 * itemsize * m * n_record * per_time)


def require_ensemble_memory(what: str, need: EnsembleBytes, *, remedy: str, limit: Optional[float] = None) -> None:
  """:func:`require_memory` for an ensemble: on a CPU the training and the records share the host memory; on an
  accelerator the training must fit its free memory and the records the host's. ``limit`` bounds the total.

  Examples:
    >>> from ndk_flax.resources import EnsembleBytes, require_ensemble_memory
    >>> try:
    ...   require_ensemble_memory('the ensemble', EnsembleBytes(2**30, 2**31), remedy='record fewer times', limit=2**30)
    ... except MemoryError as e:
    ...   print(e)
    the ensemble needs about 3 GiB, but only 1 GiB are available: record fewer times.
  """
  import jax

  if limit is not None or jax.devices()[0].platform == 'cpu':
    require_memory(what, need.total, remedy=remedy, limit=limit)
    return
  require_memory(f'{what} (training, on the device)', need.training, remedy=remedy)
  require_memory(f'{what} (records, on the host)', need.records, remedy=remedy, limit=host_available_bytes())


def require_work(what: str, amount: float, *, unit: str, cap: float, cap_name: str) -> None:
  """Raise ValueError (before any work) when the estimated ``amount`` of work exceeds the user's ``cap``.

  Args:
    what: the request.
    amount: its estimated size, in ``unit``.
    unit: what is counted, e.g. ``'solver times'``.
    cap: the largest accepted amount.
    cap_name: the argument that sets ``cap``, named in the message so the caller can raise it.

  Examples:
    >>> from ndk_flax.resources import require_work
    >>> try:
    ...   require_work('the mean', 5e6, unit='grid times', cap=1e5, cap_name='max_grid_times')
    ... except ValueError as e:
    ...   print(e)
    the mean needs about 5e+06 grid times, more than `max_grid_times` = 1e+05: raise `max_grid_times`, or ask for less.
  """
  if amount > cap:
    raise ValueError(
      f'{what} needs about {amount:.3g} {unit}, more than `{cap_name}` = {cap:.3g}: '
      f'raise `{cap_name}`, or ask for less.'
    )


GRID_LIVE_COPIES = 8
"""Arrays of one batch's size that the evaluation of a time-grid batch holds at once (kernels of consecutive layers,
NT's intermediates), as measured for MLPs, CNNs with pooling and attention (tests/test_stax.py)."""


def ndk_grid_bytes(
  n1: int,
  n2: int,
  n_t1: int,
  n_t2: int,
  *,
  n_fields: int = 2,
  itemsize: int = 8,
  spatial_size: float = 1.0,
  batch_elements: int = 2**26,
) -> float:
  """Upper estimate of the peak bytes of ``ndk_fn`` on an n_t1 × n_t2 time grid of n1 × n2 inputs.

  What it bounds: the result, ``n_fields`` kernels (C and R, docs/theory.md §3) of n_t1·n_t2·n1·n2·spatial_size
  values each, plus the equal-time covariances
  C(t1, t1, x1, x1) and C(t2, t2, x2, x2) of every evaluated pair (at most n_t1·n_t2·(n1 + n2)·spatial_size
  values, diagonal over the batch), plus the working set of one evaluated batch of time pairs:
  ``GRID_LIVE_COPIES`` arrays of ``batch_elements`` values (the layer kernels of every pair in the batch).

  Args:
    n1, n2: numbers of inputs on each side.
    n_t1, n_t2: numbers of times on each side.
    n_fields: grid-sized result kernels (nngp and ndk).
    itemsize: bytes per value (8 in float64).
    spatial_size: values per input pair of the output kernel (1 for a flat output; H·W, or (H·W)² for non-diagonal
      spatial kernels of an output that keeps positions).
    batch_elements: values of one kernel over one batch of evaluated time pairs.

  Examples:
    >>> from ndk_flax.resources import ndk_grid_bytes
    >>> ndk_grid_bytes(10, 10, 64, 64, batch_elements=0) / 2**20  # MiB: 64² pairs x (2 x 10² + 20) float64 values
    6.875
  """
  grid = n_fields * n_t1 * n_t2 * n1 * n2 * spatial_size
  covariances = n_t1 * n_t2 * (n1 + n2) * spatial_size
  return float(itemsize * (grid + covariances + GRID_LIVE_COPIES * batch_elements))


GRID_BATCH_ELEMENTS = 2**26
"""Kernel entries (per kernel copy) that one batch of evaluated time pairs of ``ndk_fn`` may hold."""


def ndk_grid_batch(n_pairs: int, pair_elements: int) -> tuple[int, int]:
  """(time pairs per batch, kernel entries of one batch) of an ``ndk_fn`` time grid evaluating ``n_pairs`` pairs of
  ``pair_elements`` input-kernel entries each: as many pairs as fit in :data:`GRID_BATCH_ELEMENTS`, at least one.
  The ``batch_elements`` of :func:`ndk_grid_bytes`.

  Examples:
    >>> from ndk_flax.resources import ndk_grid_batch
    >>> ndk_grid_batch(4096, 256 * 256)
    (1024, 67108864)
  """
  pairs = int(max(1, min(n_pairs, GRID_BATCH_ELEMENTS // max(1, pair_elements))))
  return pairs, pairs * pair_elements
