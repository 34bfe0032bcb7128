"""The one door through which ndk_flax reaches Neural Tangents (NT 0.6.5, its last release).

Why this module exists: ``import neural_tangents`` fails on JAX >= 0.6. NT's package ``__init__`` imports
``neural_tangents.experimental`` (which imports TensorFlow and ``jax.experimental.jax2tf``) and
``neural_tangents._src.empirical`` (which imports ``jax.core`` names removed in JAX 0.6). The modules ndk_flax
needs, ``neural_tangents.stax``, ``neural_tangents.predict``, the ``Kernel`` dataclass and
``neural_tangents._src.batching``, import nothing of that and run on current JAX.

Mechanism: when ``neural_tangents`` is not in ``sys.modules`` yet, this module registers a bare package object
under that name whose ``__path__`` is NT's installed folder (found with ``importlib.util.find_spec``, which does
not execute the package), and then imports the submodules above through the normal import system. NT's package
``__init__`` is never executed, so neither TensorFlow nor tf2jax is imported, and nothing in JAX is patched. When
``neural_tangents`` was already imported (an older JAX on which NT's own ``__init__`` works), that package is used
as it is. After a failed ``import neural_tangents`` (current JAX) the submodules that did load are reused.

Limits: after this module ran, ``import neural_tangents`` returns the bare package. ``neural_tangents.stax`` and
``neural_tangents.predict`` work through it; ``neural_tangents.empirical_kernel_fn``, ``monte_carlo_kernel_fn``,
``linearize``, ``taylor_expand`` and ``neural_tangents.experimental`` do not exist on current JAX. Use
:mod:`ndk_flax.empirical` for empirical NTK / NNGP estimates of finite networks (built on ``jax.jacobian`` and
``jax.vmap``), and ``jax.linearize`` / ``jax.jvp`` for linearisation.

Examples:
  >>> from ndk_flax._nt import nt_stax, Kernel
  >>> _, _, kernel_fn = nt_stax.serial(nt_stax.Dense(8), nt_stax.Relu(), nt_stax.Dense(1))
  >>> import jax.numpy as jnp
  >>> kernel_fn(jnp.ones((2, 3)), None, 'nngp').shape
  (2, 2)
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types

_PACKAGE = 'neural_tangents'


def _package() -> types.ModuleType:
  """NT's package object: the imported one, or a bare one that never runs NT's ``__init__``."""
  if _PACKAGE in sys.modules:
    return sys.modules[_PACKAGE]
  spec = importlib.util.find_spec(_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(
      'ndk_flax needs neural-tangents (0.6.5): `pip install neural-tangents==0.6.5`, or reinstall ndk_flax.'
    )
  package = types.ModuleType(_PACKAGE, 'Neural Tangents, loaded by ndk_flax._nt without its package __init__.')
  package.__path__ = list(spec.submodule_search_locations)
  package.__spec__ = importlib.machinery.ModuleSpec(_PACKAGE, None, is_package=True)
  package.__spec__.submodule_search_locations = package.__path__
  sys.modules[_PACKAGE] = package
  return package


_package()
nt_stax = importlib.import_module(f'{_PACKAGE}.stax')
nt_predict = importlib.import_module(f'{_PACKAGE}.predict')
nt_batching = importlib.import_module(f'{_PACKAGE}._src.batching')
Kernel = importlib.import_module(f'{_PACKAGE}._src.utils.kernel').Kernel
Gaussian = nt_predict.Gaussian

__all__ = ['Gaussian', 'Kernel', 'nt_batching', 'nt_predict', 'nt_stax']
