"""ndk_flax: Neural Dynamical Kernels (Avidan, Li & Sompolinsky, arXiv:2309.04522) for JAX.

Modules:
  * :mod:`ndk_flax.stax`: drop-in superset of ``neural_tangents.stax`` whose layers expose ``ndk_fn``.
  * :mod:`ndk_flax.predict`: mean / covariance of the network output along Langevin learning.
  * :mod:`ndk_flax.optax`: the Langevin optimizer with prior-driven weight decay.
  * :mod:`ndk_flax.nn`: Flax NNX modules in the raw parameterisation (``from_stax``).
  * :mod:`ndk_flax.ensemble`: vmapped, sharded Langevin training of finite-width ensembles.
  * :mod:`ndk_flax.validate`: ensemble statistics against the theory, in standard errors.
  * :mod:`ndk_flax.reduced`, :mod:`ndk_flax.drift`: small-T slow-time equations; representational drift.
  * :mod:`ndk_flax.cli`: the ``ndk-flax`` command (``validate``, ``kernels``).
"""

__version__ = '0.1.0'
