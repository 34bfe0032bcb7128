"""Import hygiene: ndk_flax reaches Neural Tangents without TensorFlow, and importing it prints nothing."""

import subprocess
import sys
import textwrap

import pytest

PUBLIC_MODULES = ('stax', 'predict', 'optax', 'nn', 'ensemble', 'validate')


def _run(code: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True, timeout=300, check=False
  )


def test_public_modules_import_without_tensorflow_and_silently():
  imports = '; '.join(f'import ndk_flax.{m}' for m in PUBLIC_MODULES)
  out = _run(f"""
    import sys
    {imports}
    leaked = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf2jax')]
    sys.stderr.flush()
    sys.__stdout__.write('LEAKED=' + ','.join(leaked))
  """)
  assert out.returncode == 0, out.stderr
  assert out.stdout == 'LEAKED=', out.stdout
  assert out.stderr == ''


@pytest.mark.parametrize(
  'first',
  [
    pytest.param('', id='ndk_flax_first'),
    pytest.param(
      """
      try:
        import neural_tangents  # fails on JAX >= 0.6 (TensorFlow, removed jax.core names)
      except Exception:
        pass
      """,
      id='neural_tangents_first',
    ),
  ],
)
def test_neural_tangents_modules_work_whatever_was_imported_first(first):
  out = _run(
    textwrap.dedent(first)
    + """
import jax.numpy as jnp
import numpy as np
from ndk_flax import stax
from ndk_flax._nt import nt_stax, nt_predict, nt_batching, Kernel
net = nt_stax.serial(nt_stax.Dense(4), nt_stax.Relu(), nt_stax.Dense(1))
x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2)))
k = net[2](x, None, ('nngp', 'ntk'))
batched = nt_batching.batch(net[2], batch_size=1)(x, None, 'nngp')
ours = stax.serial(stax.Dense(4), stax.Relu(), stax.Dense(1)).ndk_fn(x, None, 0.0, 0.0, temperature=0.0)
assert np.allclose(batched, k.nngp, rtol=1e-6) and np.allclose(ours.nngp, k.nngp, rtol=1e-6)
assert callable(nt_predict.gradient_descent_mse_ensemble) and Kernel is type(net[2](x, None, None))
print('OK')
"""
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == 'OK'
