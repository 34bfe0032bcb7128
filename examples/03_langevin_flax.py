"""Tour 3: train one Flax NNX network with the Langevin optimizer, the way the theory assumes.

The model is the raw-parameterised NNX twin of a stax network (`ndk_flax.nn.from_stax`), the optimizer is
`ndk_flax.optax.langevin` (θ ← θ − η(∇E + (T/σ²)θ) + √(2ηT) ξ) on the summed ½-MSE loss, and time is
t = learning rate × steps. Run: python examples/03_langevin_flax.py [--quick]
"""

import sys

import jax

jax.config.update('jax_enable_x64', True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from ndk_flax import data, nn, predict, stax  # noqa: E402
from ndk_flax import optax as ndk_optax  # noqa: E402

quick = '--quick' in sys.argv
sigma0, sigma, T, eta = 2.0, 1.0, 0.05, 0.02
net = stax.serial(
  stax.Dense(512, W_std=sigma0, W_prior_std=sigma), stax.Erf(), stax.Dense(1, W_std=sigma0, W_prior_std=sigma)
)
ds = data.synthetic()
x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)

model = nn.from_stax(net, input_shape=x.shape, rngs=nnx.Rngs(0))  # θ(0) ~ N(0, σ0²), widths from the stax net
tx = ndk_optax.langevin(eta, T, nn.prior_std_tree(model), key=1)  # prior decay T/σ² + noise √(2ηT)
optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)


@nnx.jit
def train_step(model, optimizer):
  """One Langevin step on E = ½ Σ_μ (f(x_μ) − y_μ)²."""
  loss, grads = nnx.value_and_grad(lambda m: 0.5 * jnp.sum((m(x) - y) ** 2))(model)
  optimizer.update(model, grads)  # nnx.Optimizer passes the parameters to tx.update (needed for the prior decay)
  return loss


# Theory for comparison: the expected loss E[½ Σ (y − f)²] = ½ Σ [(y − f̄)² + Var f] of the infinite ensemble.
predictor = predict.langevin_mse_ensemble(net, x, y, temperature=T)
times = np.array([0.0, 0.4, 2.0, 10.0] if quick else [0.0, 0.4, 2.0, 10.0, 40.0, 80.0])
theory = predictor(times, compute_cov=True)
expected_loss = 0.5 * (
  np.sum((np.asarray(y) - theory.mean) ** 2, axis=(1, 2)) + np.trace(theory.covariance, axis1=1, axis2=2)
)

print(f'{"t":>6} {"steps":>6} {"loss of this network":>21} {"theory E[loss]":>15}')
done = 0
for t, expected in zip(times, expected_loss):
  steps = int(round(t / eta))
  while done < steps:
    train_step(model, optimizer)
    done += 1
  loss = float(0.5 * jnp.sum((model(x) - y) ** 2))
  print(f'{t:>6g} {done:>6d} {loss:21.4f} {expected:15.4f}')
print('One network fluctuates around the ensemble expectation; examples/04 averages many.')
