"""An independent anchor for ndk_flax.optax.langevin: one step equals one step of BlackJAX's SGLD.

BlackJAX (test-only dependency; skipped without it) implements SGLD as the Euler step of the overdamped Langevin
diffusion, θ' = θ + ε ∇log p(θ) + √(2τε) ξ. With log p = −E/T + log N(θ; 0, σ²), ε = ηT and τ = 1 this is
θ − η(∇E + (T/σ²)θ) + √(2ηT) ξ, the step of docs/theory.md §1. Both are given the same ξ: BlackJAX draws
``normal(key, θ.shape)`` from the key that ``optax.tree_utils.tree_split_key_like`` gives the single leaf θ out of
the noise key of our state.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
import pytest

from ndk_flax.optax import langevin

blackjax = pytest.importorskip('blackjax')


def energy(theta):
  """A non-quadratic loss, so that the gradient term is tested beyond a linear map."""
  return 0.5 * jnp.sum((jnp.tanh(theta) - 0.3) ** 2) + 0.1 * jnp.sum(theta**4)


@pytest.mark.parametrize('eta, temperature, sigma', [(0.01, 0.5, 1.3), (0.002, 2.0, 0.7)])
def test_one_langevin_step_equals_one_blackjax_sgld_step(eta, temperature, sigma):
  theta = {'theta': jax.random.normal(jax.random.PRNGKey(0), (7,))}
  tx = langevin(eta, temperature, sigma, key=42)
  state = tx.init(theta)
  updates, _ = tx.update({'theta': jax.grad(energy)(theta['theta'])}, state, theta)
  ours = optax.apply_updates(theta, updates)['theta']

  noise_state = state[-1]  # LangevinNoiseState of add_langevin_noise, the last link of the chain
  _, noise_key = jax.random.split(jax.random.wrap_key_data(noise_state.key))
  leaf_key = otu.tree_split_key_like(noise_key, theta)['theta']

  def grad_log_density(position, minibatch):
    del minibatch
    return jax.grad(lambda p: -energy(p) / temperature - 0.5 * jnp.sum(p**2) / sigma**2)(position)

  kernel = blackjax.sgld.build_kernel()
  theirs = kernel(leaf_key, theta['theta'], grad_log_density, None, eta * temperature, 1.0)
  np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)
  # Sharp: a different noise draw or the prior term left out is far outside the tolerance.
  other = kernel(jax.random.split(leaf_key)[0], theta['theta'], grad_log_density, None, eta * temperature, 1.0)
  assert np.max(np.abs(ours - other)) > 1e-4
  no_prior = kernel(
    leaf_key, theta['theta'], lambda p, _: jax.grad(lambda q: -energy(q) / temperature)(p), None, eta * temperature
  )
  assert np.max(np.abs(ours - no_prior)) > 1e-6
