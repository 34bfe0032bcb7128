"""Sharding of the training-point axis P over all visible devices with ``jax.sharding`` (docs/scaling.md).

The training inputs X are placed with a :class:`jax.sharding.NamedSharding` over a one-axis
:class:`jax.sharding.Mesh` of every visible device; jitted kernel work that takes X as an argument (kernel rows
R(t, s, x1, X), the mean solver's ring, the covariance blocks) is then partitioned along P by XLA's SPMD partitioner,
and contractions over P become all-reduces. Nothing else changes: the results do not depend on the device count
(up to the order of floating-point sums, tested to 1e-12 in float64 on 4 forced host devices). When P is not a
multiple of the device count, X stays on the default device (unsharded): the same results, one device's speed.
`ndk_flax.stax`'s ``ndk_fn`` splits the point axis of its inputs the same way (x1, else x2; the other side
replicated), so a time grid's kernels are computed in parts along P on every device.
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ['POINTS', 'point_mesh', 'shard_axis', 'shard_points']

POINTS = 'points'
"""Name of the mesh axis that carries the training points."""


def point_mesh() -> Mesh:
  """A one-axis mesh (axis ``POINTS``) over every visible device (all hosts after ``jax.distributed.initialize``).

  Examples:
    >>> from ndk_flax._sharding import point_mesh
    >>> point_mesh().axis_names
    ('points',)
  """
  return Mesh(np.array(jax.devices()), (POINTS,))


def shard_points(x: jax.Array) -> jax.Array:
  """``x`` with its leading (point) axis split over :func:`point_mesh`; unchanged on one device or when the number
  of points is not a multiple of the device count.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ndk_flax._sharding import shard_points
    >>> shard_points(jnp.ones((4, 2))).shape
    (4, 2)
  """
  return shard_axis(x, 0)


def shard_axis(x: jax.Array, axis: Optional[int]) -> jax.Array:
  """``x`` with its point axis ``axis`` split over :func:`point_mesh`, or, for ``axis=None``, replicated on every
  device of the mesh; unchanged on one device or when ``x.shape[axis]`` is not a multiple of the device count.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ndk_flax._sharding import shard_axis
    >>> shard_axis(jnp.ones((2, 4)), 1).shape, shard_axis(jnp.ones(3), None).shape
    ((2, 4), (3,))
  """
  n_devices = jax.device_count()
  if n_devices == 1 or (axis is not None and x.shape[axis] % n_devices):
    return x
  spec = PartitionSpec() if axis is None else PartitionSpec(*([None] * (axis % x.ndim)), POINTS)
  return jax.device_put(x, NamedSharding(point_mesh(), spec))
