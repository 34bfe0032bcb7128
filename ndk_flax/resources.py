"""One resource estimator: bytes needed against bytes available, and work against a cap, checked before any work.

Every entry point that allocates in proportion to its request (kernels, time grids, the predictor's mean and
covariance) states what it needs through :func:`require_memory` and, for long computations, :func:`require_work`
before it allocates or computes anything. A request that does not fit is refused with the amount needed, the amount
available and what to change.
"""

from __future__ import annotations

import os
from typing import Optional

__all__ = ['available_bytes', 'host_available_bytes', 'require_memory', 'require_work']


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
