"""Tour 1: compose a network with ndk_flax.stax and evaluate its two-time kernels C(t, s) and R(t, s).

`ndk_flax.stax` is Neural Tangents' stax plus a prior std per layer; every layer still unpacks as NT's
(init_fn, apply_fn, kernel_fn) and additionally has `ndk_fn`. Run: python examples/01_two_time_kernels.py
"""

import jax

jax.config.update('jax_enable_x64', True)

import numpy as np  # noqa: E402

from ndk_flax import data, stax  # noqa: E402

sigma0, sigma, T = 2.0, 1.0, 0.05  # initial std σ0, prior std σ, temperature T: weight decay λ = T/σ² = 0.05
net = stax.serial(
  stax.Dense(512, W_std=sigma0, W_prior_std=sigma), stax.Erf(), stax.Dense(1, W_std=sigma0, W_prior_std=sigma)
)
init_fn, apply_fn, kernel_fn = net  # still Neural Tangents' triple
x = data.synthetic().x_train  # 6 points on a circle in R^3

# t = s = 0: the NNGP at the initial variances and the raw NTK (NT's ntk / σ0² for a bias-free net with one σ0).
k0 = net.ndk_fn(x, None, 0.0, 0.0, temperature=T)
nt = kernel_fn(x, None, ('nngp', 'ntk'))
print(
  f't = s = 0:  max |C - NT nngp| = {np.max(np.abs(k0.nngp - nt.nngp)):.1e}, '
  f'max |R - NT ntk / σ0²| = {np.max(np.abs(k0.ndk - nt.ntk / sigma0**2)):.1e}'
)

# Two-time kernels on a grid: leading axes (len(t), len(s)). The correlation of h(x, t) and h(x, s) decays on the
# diffusive time scale σ²/T = 20 while R(t, s) = 0 for t < s (causality).
t = np.array([0.0, 1.0, 10.0, 30.0, 100.0])
k = net.ndk_fn(x[:1], None, t, t, temperature=T)
c = k.nngp[:, :, 0, 0]
corr = c / np.sqrt(np.outer(np.diag(c), np.diag(c)))
print('\nC(t, s) / sqrt(C(t, t) C(s, s)) for the first input (rows t, columns s):')
print('t \\ s  ' + ''.join(f'{s:>8g}' for s in t))
for ti, row in zip(t, corr):
  print(f'{ti:>6g} ' + ''.join(f'{v:8.3f}' for v in row))
print(f'R(t, s) for t < s is zero: {bool(np.all(k.ndk[np.triu_indices(t.size, 1)] == 0))}')

# Equilibrium t = s = ∞: the NNGP with the prior variances σ².
k_eq = net.ndk_fn(x, None, np.inf, np.inf, temperature=T)
nt_prior = stax.serial(stax.Dense(512, W_std=sigma), stax.Erf(), stax.Dense(1, W_std=sigma))[2](x, None, 'nngp')
print(f't = s = ∞: max |C - NNGP(σ²)| = {np.max(np.abs(k_eq.nngp - nt_prior)):.1e}')
