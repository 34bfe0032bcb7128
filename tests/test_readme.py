"""The README: every Python block runs as pasted (in order, in one session, at the quick sizes of NDK_FLAX_QUICK=1),
and the NTK row of its conventions table holds for a network with biases, in Neural Tangents' terms."""

import os
import re

import numpy as np
import pytest

from ndk_flax import data, stax
from ndk_flax._nt import nt_stax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_blocks() -> list[str]:
  with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as fh:
    text = fh.read()
  return re.findall(r'^```python\n(.*?)^```', text, flags=re.S | re.M)


def test_the_readme_has_the_tour():
  blocks = python_blocks()
  assert len(blocks) >= 5 and 'ndk_fn' in blocks[0] and 'validate.compare' in blocks[3]


@pytest.mark.slow
def test_every_python_block_runs_as_pasted(monkeypatch, capsys):
  """Paste order, one namespace (as the README says); nothing defined here beforehand."""
  monkeypatch.setenv('NDK_FLAX_QUICK', '1')
  namespace: dict = {'__name__': '__readme__'}
  for i, block in enumerate(python_blocks()):
    try:
      exec(compile(block, f'README.md python block {i + 1}', 'exec'), namespace)
    except Exception as e:  # pragma: no cover - the message is the point
      raise AssertionError(f'README python block {i + 1} fails as pasted: {type(e).__name__}: {e}') from e
  assert capsys.readouterr().out.strip()


def test_raw_ntk_with_biases_in_neural_tangents_terms():
  """One hidden erf layer with biases, σ0_W ≠ σ0_b: R(0, 0) = Θ_raw = (K − σ0_b²)/σ0_W² + 1 + (ntk − K)(x·x'/d + 1)/K¹
  with K, ntk Neural Tangents' kernels and K¹ = σ0_W² x·x'/d + σ0_b² (README, conventions); and ntk = σ0² Θ when
  every σ0 is equal. The recursion: Θ^{l+1} = E[φφ'] + 1 + σ_W² E[φ̇φ̇'] Θ^l (raw) against NT's
  ntk^{l+1} = K^{l+1} + σ_W² E[φ̇φ̇'] ntk^l; a wrong factor (e.g. forgetting the bias part) fails."""
  x = data.synthetic(n_train=5).x_train
  d = x.shape[1]
  for w_std, b_std in ((2.0, 0.5), (1.3, 1.3)):
    ours = stax.serial(stax.Dense(64, W_std=w_std, b_std=b_std), stax.Erf(), stax.Dense(1, W_std=w_std, b_std=b_std))
    theta = np.asarray(ours.ndk_fn(x, None, np.zeros(1), np.zeros(1), temperature=0.0).ndk[0, 0])
    nt_kernel = nt_stax.serial(
      nt_stax.Dense(64, W_std=w_std, b_std=b_std), nt_stax.Erf(), nt_stax.Dense(1, W_std=w_std, b_std=b_std)
    )[2]
    k, ntk = (np.asarray(v) for v in nt_kernel(x, None, ('nngp', 'ntk')))
    gram = x @ x.T / d
    k1 = w_std**2 * gram + b_std**2
    expected = (k - b_std**2) / w_std**2 + 1 + (ntk - k) * (gram + 1) / k1
    np.testing.assert_allclose(theta, expected, rtol=1e-6)
    if w_std == b_std:
      np.testing.assert_allclose(ntk, w_std**2 * theta, rtol=1e-6)
    else:
      ratio = ntk / (w_std**2 * theta)
      assert np.ptp(ratio) > 1e-3 and not np.allclose(ntk, w_std**2 * theta, rtol=1e-2)  # no common factor
