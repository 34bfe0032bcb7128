"""An independent anchor for ndk_flax.optax.langevin: one step equals one step of BlackJAX's SGLD.

BlackJAX (test-only dependency; skipped without it) implements SGLD as the Euler step of the overdamped Langevin
diffusion, θ' = θ + ε ∇log p(θ) + √(2τε) ξ. With log p = −E/T + log N(θ; 0, σ²), ε = ηT and τ = 1 this is
θ − η(∇E + (T/σ²)θ) + √(2ηT) ξ, the step of docs/theory.md §1. Both are given the same ξ: BlackJAX draws
``normal(key, (n,))`` over the ravelled parameter tree, and it is given the noise key of our state (the second half
of its split), from which ``ndk_flax.optax`` draws ξ the same way.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ndk_flax import optax as ndk_optax
from ndk_flax.optax import langevin

blackjax = pytest.importorskip('blackjax')


def energy(theta):
  """A non-quadratic loss of two parameter arrays, so that the gradient term is tested beyond a linear map."""
  w, b = theta['w'], theta['b']
  return 0.5 * jnp.sum((jnp.tanh(w.sum(0)) - 0.3) ** 2) + 0.1 * jnp.sum(b**4) + 0.05 * jnp.sum(w**2) * jnp.sum(b)


@pytest.mark.parametrize('eta, temperature, sigma', [(0.01, 0.5, 1.3), (0.002, 2.0, 0.7)])
def test_one_langevin_step_equals_one_blackjax_sgld_step(eta, temperature, sigma):
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  theta = {'w': jax.random.normal(keys[0], (3, 4)), 'b': jax.random.normal(keys[1], (5,))}
  tx = langevin(eta, temperature, sigma, key=42)
  state = tx.init(theta)
  updates, _ = tx.update(jax.grad(energy)(theta), state, theta)
  ours = optax.apply_updates(theta, updates)

  noise_state = state[-1]  # LangevinNoiseState of add_langevin_noise, the last link of the chain
  _, noise_key = jax.random.split(jax.random.wrap_key_data(noise_state.key))

  def grad_log_density(position, minibatch):
    del minibatch
    return jax.grad(
      lambda p: -energy(p) / temperature - 0.5 * sum(jnp.sum(q**2) for q in jax.tree.leaves(p)) / sigma**2
    )(position)

  kernel = blackjax.sgld.build_kernel()
  with jax.threefry_partitionable(ndk_optax.NOISE_BITS_PARTITIONABLE):  # the Threefry mode of our noise draws
    theirs = kernel(noise_key, theta, grad_log_density, None, eta * temperature, 1.0)
  chex.assert_trees_all_close(ours, theirs, rtol=1e-12, atol=1e-14)
  # Sharp: a different noise draw or the prior term left out is far outside the tolerance.
  other = kernel(jax.random.split(noise_key)[0], theta, grad_log_density, None, eta * temperature, 1.0)
  assert np.max(np.abs(ours['w'] - other['w'])) > 1e-4
  no_prior = kernel(
    noise_key, theta, lambda p, _: jax.grad(lambda q: -energy(q) / temperature)(p), None, eta * temperature
  )
  assert np.max(np.abs(ours['w'] - no_prior['w'])) > 1e-6
