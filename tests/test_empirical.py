"""ndk_flax.empirical against an independent computation (flattened Jacobians) and NT's infinite-width kernels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from ndk_flax import empirical, stax

jax.config.update('jax_enable_x64', True)

X1 = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 2))
X2 = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 2))
NET = stax.serial(stax.Conv(3, (2,), padding='SAME', b_std=0.3), stax.Erf(), stax.Dense(5, W_std=1.2, b_std=0.1))


def _flat_jacobian(apply_fn, params, x):
  flat, unravel = ravel_pytree(params)
  return jax.jacfwd(lambda p: apply_fn(unravel(p), x))(flat)  # (N, positions, channels, P)


@pytest.mark.parametrize(
  'trace_axes,diagonal_axes,layout',
  [
    ((-1,), (), 'aip,bjp->abij'),  # NT default: channels averaged
    ((), (), 'aicp,bjdp->abijcd'),  # full kernel: axes zipped
    ((1,), (-1,), 'aicp,bicp->abc'),  # positions averaged, channel diagonal
  ],
)
def test_empirical_ntk_and_nngp_equal_flattened_jacobian_products(trace_axes, diagonal_axes, layout):
  init_fn, apply_fn, _ = NET
  _, params = init_fn(jax.random.PRNGKey(2), X1.shape)
  k = empirical.empirical_kernel_fn(apply_fn, trace_axes, diagonal_axes)(X1, X2, ('nngp', 'ntk'), params)
  j1, j2 = _flat_jacobian(apply_fn, params, X1), _flat_jacobian(apply_fn, params, X2)
  f1, f2 = apply_fn(params, X1)[..., None], apply_fn(params, X2)[..., None]
  traced = np.prod([X1.shape[a] if a == 1 else 5 for a in trace_axes]) if trace_axes else 1
  if trace_axes == (-1,):  # contract channels
    j1, j2 = j1.transpose(0, 1, 3, 2).reshape(3, 4, -1), j2.transpose(0, 1, 3, 2).reshape(2, 4, -1)
    f1, f2 = f1[..., 0], f2[..., 0]
  ntk = jnp.einsum(layout, j1, j2) / traced
  nngp = jnp.einsum(layout, f1, f2) / traced
  np.testing.assert_allclose(k.ntk, ntk, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(k.nngp, nngp, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_monte_carlo_tends_to_the_infinite_width_kernels():
  """Width 512, 64 outputs averaged (trace axis), 64 samples: an entry of one sample has relative std ≈ √(2/64), so
  the mean has ≈ √(2/64/64) ≈ 2.2 % of the kernel scale (plus O(1/width) bias); tolerance 8 % of the largest entry."""
  net = stax.serial(stax.Dense(512, W_std=1.5, b_std=0.2), stax.Relu(), stax.Dense(64, W_std=1.5, b_std=0.2))
  x = jax.random.normal(jax.random.PRNGKey(3), (3, 4))
  mc = empirical.monte_carlo_kernel_fn(net.init_fn, net.apply_fn, jax.random.PRNGKey(4), 64, device_count=0)
  got = mc(x, None, ('nngp', 'ntk'))
  want = net.kernel_fn(x, None, ('nngp', 'ntk'))
  for a, b in ((got.nngp, want.nngp), (got.ntk, want.ntk)):
    np.testing.assert_allclose(a, b, atol=0.08 * float(jnp.max(b)))
  assert float(jnp.max(jnp.abs(got.ntk - 1.1 * want.ntk))) > 0.08 * float(jnp.max(want.ntk))  # 10 % off is seen
  # A generator at several sample counts; its last estimate is the plain one.
  *_, last = mc_gen = list(
    empirical.monte_carlo_kernel_fn(net.init_fn, net.apply_fn, jax.random.PRNGKey(4), [1, 64], device_count=0)(
      x, None, 'nngp'
    )
  )
  assert len(mc_gen) == 2
  np.testing.assert_allclose(last, got.nngp, rtol=1e-12)


def test_bad_get_is_refused():
  with pytest.raises(ValueError, match='get'):
    empirical.empirical_kernel_fn(NET.apply_fn)(X1, None, 'cov1', None)
