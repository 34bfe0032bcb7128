"""Typed network specs, the one std rule shared by stax and nn, and the OU statistics module (docs/theory.md §2)."""

import ast
import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ndk_flax import nn, ou, spec, stax


def test_specs_are_frozen_and_typed():
  net = stax.serial(stax.Dense(4, 1.5, 0.1), stax.Relu(), stax.Conv(2, (2,)), stax.repeat(stax.Relu(), 2))
  dense, free, conv, rep = net.spec.children
  assert isinstance(dense, spec.DenseSpec) and dense.weight == spec.ParamGroup(1.5, 1.5)
  assert isinstance(free, spec.FreeSpec) and free.name == 'Relu'
  assert isinstance(conv, spec.ConvSpec) and conv.kind is spec.LayerKind.CONV
  assert isinstance(rep, spec.RepeatSpec) and rep.n == 2
  with pytest.raises(dataclasses.FrozenInstanceError):
    dense.out_dim = 3
  assert [s.kind for s in spec.parametric_specs(net.spec)] == [spec.LayerKind.DENSE, spec.LayerKind.CONV]


def test_stax_layers_are_explicit_module_level_definitions():
  tree = ast.parse(inspect.getsource(stax))
  defined = set()
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
      defined.add(node.name)
    elif isinstance(node, ast.Assign):
      defined |= {t.id for t in node.targets if isinstance(t, ast.Name)}
  assert set(stax.__all__) <= defined
  assert 'globals()' not in inspect.getsource(stax) and 'lru_cache' not in inspect.getsource(stax)


def test_one_std_rule_for_stax_and_nn():
  """W_std = 0 with an explicit prior: accepted by both, the weights start at zero with prior σ."""
  net = stax.serial(stax.Dense(4, W_std=0.0, W_prior_std=1.3), stax.Erf(), stax.Dense(1, 1.0, 0.0))
  assert net.groups == (spec.ParamGroup(0.0, 1.3), spec.ParamGroup(1.0, 1.0))
  model = nn.from_stax(net, np.int64(8), input_shape=(3, 2), rngs=nnx.Rngs(0))
  first = model.root.layers[0]
  assert first.W.shape == (2, 8) and float(jnp.max(jnp.abs(first.W[...]))) == 0.0
  assert first.W.prior_std == 1.3 and model.root.layers[-1].b is None  # b_std = 0, no prior: absent
  stds = jax.tree.leaves(nn.prior_std_tree(model))
  assert sorted(stds) == [1.0, 1.3]
  with pytest.raises(ValueError, match='W_prior_std'):
    nn.from_stax(stax.serial(stax.Dense(4, 0.0), stax.Dense(1)), input_shape=(3, 2), rngs=nnx.Rngs(0))
  for bad in (dict(W_std=-1.0), dict(W_std=1.0, W_prior_std=0.0), dict(b_std=None, b_prior_std=1.0)):
    with pytest.raises(ValueError):
      spec.param_group('W', bad.get('W_std', bad.get('b_std')), bad.get('W_prior_std', bad.get('b_prior_std')))


def test_ou_limits_and_causality():
  stats = dict(init_std=0.7, prior_std=1.4)
  assert float(ou.covariance(2.0, 5.0, temperature=0.0, **stats)) == pytest.approx(0.49)
  assert float(ou.covariance(jnp.inf, jnp.inf, temperature=0.3, **stats)) == pytest.approx(1.96)
  assert float(ou.response(1.0, 2.0, prior_std=1.4, temperature=0.3)) == 0.0
  assert float(ou.response(jnp.inf, 0.0, prior_std=1.4, temperature=0.0)) == 1.0


def test_exact_pair_draw_and_transition_have_the_ou_covariance():
  """200 000 draws: the s.e. of an empirical (co)variance is ≤ √(2/200000)·c ≈ 0.32 % of c; tolerance 1.5 %. A
  prior std 10 % off (perturbed theory) is outside it."""
  stats = dict(init_std=0.6, prior_std=1.5, temperature=0.9)
  t, s, n = 2.0, 0.7, 200_000
  with jax.enable_x64(True):
    a, b = ou.sample_pair(jax.random.PRNGKey(0), (n,), t, s, dtype=jnp.float64, **stats)
    c = lambda u, v, **kw: float(ou.covariance(u, v, **{**stats, **kw}))
    for got, (u, v) in ((np.mean(a * a), (t, t)), (np.mean(b * b), (s, s)), (np.mean(a * b), (t, s))):
      assert got == pytest.approx(c(u, v), rel=0.015)
    assert abs(np.mean(a * b) / c(t, s, prior_std=1.65) - 1) > 0.015
    # The exact transition from θ(s) reproduces the same joint law.
    a2 = ou.transition(
      b, t - s, jax.random.normal(jax.random.PRNGKey(1), (n,), jnp.float64), prior_std=1.5, temperature=0.9
    )
    assert np.mean(a2 * b) == pytest.approx(c(t, s), rel=0.015)
    assert np.mean(a2 * a2) == pytest.approx(c(t, t), rel=0.015)
