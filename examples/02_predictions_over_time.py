"""Tour 2: the mean and variance of Langevin-trained wide networks at every time, from the two-time kernels.

`ndk_flax.predict.langevin_mse_ensemble` is the Langevin analogue of Neural Tangents'
`predict.gradient_descent_mse_ensemble`. Run: python examples/02_predictions_over_time.py
"""

import jax

jax.config.update('jax_enable_x64', True)

import numpy as np  # noqa: E402

from ndk_flax import data, predict, stax  # noqa: E402
from ndk_flax._nt import nt_predict  # noqa: E402

sigma0, sigma, T = 2.0, 1.0, 0.05
net = stax.serial(
  stax.Dense(512, W_std=sigma0, W_prior_std=sigma), stax.Erf(), stax.Dense(1, W_std=sigma0, W_prior_std=sigma)
)
ds = data.synthetic()  # P = 6 training points, 4 test points, targets y = sin θ + ½ cos 2θ

predictor = predict.langevin_mse_ensemble(net, ds.x_train, ds.y_train, temperature=T)
scales = predictor.time_scales
print(f'gradient-driven phase 1/λ_max(Θ0) = {scales.gradient:.3f}, diffusive phase σ²/T = {scales.diffusive:g}')

t = np.array([0.0, 0.2, 1.0, 5.0, 20.0, 80.0, np.inf])  # time = learning rate × steps; ∞ = equilibrium
test = predictor(t, ds.x_test, compute_cov=True)  # Gaussian(mean (7, 4, 1), covariance (7, 4, 4))
train_loss = predictor.train_loss(t)
test_mse = predictor.test_mse(t, ds.x_test, ds.y_test)
print(f'\n{"t":>6} {"train loss":>11} {"test MSE":>9} {"mean test variance":>19}')
for i, ti in enumerate(t):
  var = np.mean(np.diag(test.covariance[i]))
  print(f'{ti:>6g} {float(train_loss[i]):11.4f} {float(test_mse[i]):9.4f} {var:19.4f}')
print("The test error dips inside the diffusive phase and rises to the NNGP posterior's (σ0² ≠ σ²).")

# T = 0 is NTK gradient flow: Neural Tangents' predictor with our conventions mapped (summed loss -> NT's
# loss / y.size, raw NTK -> NT ntk = σ0² × raw NTK): t_NT = t · y.size / σ0².
frozen = predict.langevin_mse_ensemble(net, ds.x_train, ds.y_train, temperature=0.0)
nt_predict = nt_predict.gradient_descent_mse_ensemble(net.kernel_fn, ds.x_train, ds.y_train)
t0 = np.array([0.1, 1.0, 10.0])
ours = frozen(t0, ds.x_test, compute_cov=True)
theirs = nt_predict(t0 * ds.y_train.size / sigma0**2, ds.x_test, 'ntk', compute_cov=True)
print(
  f'\nT = 0 vs Neural Tangents: max |Δ mean| = {np.max(np.abs(ours.mean - theirs.mean)):.1e}, '
  f'max |Δ covariance| = {np.max(np.abs(ours.covariance - theirs.covariance)):.1e}'
)
