"""Tests of ndk_flax.nn: raw-parameterised Flax layers and from_stax against Neural Tangents and ndk_fn."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ndk_flax import nn, stax
from ndk_flax.optax import add_prior_decay, langevin

X = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
IMAGES = jax.random.normal(jax.random.PRNGKey(2), (3, 5, 5, 2))


def mlp(nonlin, depth, width=16, W_std=1.3, b_std=0.2, W_prior_std=None, out=1):
  layers = []
  for _ in range(depth):
    layers += [stax.Dense(width, W_std=W_std, b_std=b_std, W_prior_std=W_prior_std), nonlin()]
  return stax.serial(*layers, stax.Dense(out, W_std=W_std, W_prior_std=W_prior_std))


def cnn(width=8, padding='SAME', strides=None, conv=stax.Conv):
  return stax.serial(
    conv(width, (3, 3), strides=strides, padding=padding, W_std=1.2, b_std=0.3),
    stax.Relu(),
    stax.Flatten(),
    stax.Dense(1, W_std=0.9),
  )


def local_transpose_cnn(width=6):
  """ConvLocal (unshared weights and biases) -> ConvTranspose (strided, non-square filter) -> Dense readout."""
  return stax.serial(
    stax.ConvLocal(width, (2, 3), strides=(1, 2), padding='SAME', W_std=1.3, b_std=0.2),
    stax.Erf(),
    stax.ConvTranspose(width, (3, 2), strides=(2, 1), padding='VALID', W_std=1.1, b_std=0.4),
    stax.Relu(),
    stax.Flatten(),
    stax.Dense(2, W_std=0.8),
  )


def resnet(width=16):
  block = stax.serial(
    stax.FanOut(2),
    stax.parallel(stax.serial(stax.Relu(), stax.Dense(width, W_std=1.1)), stax.Identity()),
    stax.FanInSum(),
  )
  return stax.serial(stax.Dense(width, W_std=1.4, b_std=0.1), block, stax.Relu(), stax.Dense(1))


def nt_params(module, ndim):
  """Neural Tangents ('ntk' parameterisation) parameters equal to a from_stax module: W_nt = W/σ0, b_nt = b/σ0_b."""
  if isinstance(module, nn.StaxModel):
    return nt_params(module.root, ndim)
  if isinstance(module, (nn.Serial, nn.Parallel)):
    return tuple(nt_params(m, ndim) for m in module.layers)
  if isinstance(module, nn.Free):
    return module.nt_params
  w = module.W[...] / module.W.init_std
  b = None if module.b is None else module.b[...] / module.b.init_std
  if isinstance(module, nn.Dense):
    b = None if b is None else b.reshape((1,) * (ndim - 1) + (-1,))
  elif isinstance(module, nn.ConvLocal):  # one bias per output position: NT's bias is the output shape, N = 1
    b = None if b is None else jnp.expand_dims(b, module.dimension_numbers[2].index('N'))
  else:
    b = None if b is None else b.reshape([-1 if c == 'C' else 1 for c in module.dimension_numbers[2]])
  return (w, b)


@pytest.mark.parametrize(
  'name, layer, x',
  [
    ('erf_mlp', mlp(stax.Erf, 2), X),
    ('relu_mlp', mlp(stax.Relu, 1, out=3), X),
    ('cnn_same', cnn(), IMAGES),
    ('cnn_valid_strided', cnn(padding='VALID', strides=(2, 1)), IMAGES),
    ('cnn_circular', cnn(padding='CIRCULAR'), IMAGES),
    ('conv_transpose_same', cnn(conv=stax.ConvTranspose), IMAGES),
    ('conv_transpose_valid', cnn(padding='VALID', conv=stax.ConvTranspose), IMAGES),
    ('conv_transpose_same_strided', cnn(strides=(2, 2), conv=stax.ConvTranspose), IMAGES),
    ('conv_transpose_valid_strided', cnn(padding='VALID', strides=(2, 1), conv=stax.ConvTranspose), IMAGES),
    ('conv_transpose_circular_strided', cnn(padding='CIRCULAR', strides=(1, 2), conv=stax.ConvTranspose), IMAGES),
    ('conv_local_valid_strided', cnn(padding='VALID', strides=(2, 1), conv=stax.ConvLocal), IMAGES),
    ('conv_local_same', cnn(conv=stax.ConvLocal), IMAGES),
    ('conv_local_circular', cnn(padding='CIRCULAR', conv=stax.ConvLocal), IMAGES),
    ('local_then_transpose', local_transpose_cnn(), IMAGES),
    ('resnet', resnet(), X),
  ],
)
def test_forward_is_neural_tangents_apply_fn(name, layer, x):
  """from_stax(layer)(x) equals layer.apply_fn with the same weights mapped to NT's ntk parameterisation."""
  model = nn.from_stax(layer, input_shape=x.shape, rngs=nnx.Rngs(0))
  expected = layer.apply_fn(nt_params(model, x.ndim), x)
  chex.assert_trees_all_close(model(x), expected, rtol=1e-12, atol=1e-12)
  assert model(x).shape == model.output_shape


def test_dense_and_conv_raw_parameterisation():
  """Dense: h = W a/√N + b; Conv fan-in = in_channels × filter size; θ(0) ~ N(0, σ0²); metadata σ0 and σ."""
  d = nn.Dense(3, 2, W_std=2.0, b_std=0.5, W_prior_std=1.5, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(d(X), X @ d.W[...] / math.sqrt(3) + d.b[...], rtol=1e-13)
  assert (d.W.init_std, d.W.prior_std, d.b.init_std, d.b.prior_std) == (2.0, 1.5, 0.5, 0.5)
  big = nn.Dense(400, 500, W_std=2.0, rngs=nnx.Rngs(1))
  # Sample std of 2e5 N(0, 4) draws: relative standard error 1/√(2n) = 1.6e-3; allow 5 of them.
  np.testing.assert_allclose(np.std(big.W[...]), 2.0, rtol=5 * 1.6e-3)
  assert big.b is None
  c = nn.Conv(2, 4, (3, 3), W_std=1.0, rngs=nnx.Rngs(0))
  patch = IMAGES[:, :3, :3, :]  # the single VALID position of a 3×3 filter on the top-left corner
  np.testing.assert_allclose(
    c(IMAGES)[:, 0, 0, :], jnp.einsum('nhwi,hwio->no', patch, c.W[...]) / math.sqrt(2 * 9), rtol=1e-12
  )


def test_conv_transpose_and_conv_local_raw_parameterisation():
  """ConvTranspose: W (filter, in, out), fan-in in_channels × filter size (also when strided); ConvLocal: a
  filter and a bias per output position; θ(0) ~ N(0, σ0²) with metadata σ0 and σ."""
  t = nn.ConvTranspose(2, 4, (3, 3), strides=(2, 2), W_std=1.5, b_std=0.5, W_prior_std=0.8, rngs=nnx.Rngs(0))
  assert t.W[...].shape == (3, 3, 2, 4) and t.b[...].shape == (4,)
  assert (t.W.init_std, t.W.prior_std, t.b.init_std, t.b.prior_std) == (1.5, 0.8, 0.5, 0.5)
  pixel = IMAGES[:, :1, :1, :]  # one input position: the (VALID) output is the flipped filter times a / √N
  np.testing.assert_allclose(
    t(pixel) - t.b[...],
    jnp.einsum('ni,hwio->nhwo', pixel[:, 0, 0], t.W[...][::-1, ::-1]) / math.sqrt(2 * 9),
    rtol=1e-12,
    atol=1e-14,
  )
  loc = nn.ConvLocal(2, 4, (3, 3), padding='VALID', input_spatial_shape=(5, 5), W_std=1.0, b_std=0.3, rngs=nnx.Rngs(0))
  assert loc.W[...].shape == (3, 3, 2 * 9, 4) and loc.b[...].shape == (3, 3, 4)
  patch = IMAGES[:, 1:4, 2:5, :]  # the receptive field of output position (1, 2), flattened channel-major
  expected = jnp.moveaxis(patch, -1, 1).reshape(3, -1) @ loc.W[...][1, 2] / math.sqrt(2 * 9)
  np.testing.assert_allclose(loc(IMAGES)[:, 1, 2, :], expected + loc.b[...][1, 2], rtol=1e-12)
  with pytest.raises(ValueError, match='spatial shape'):
    loc(IMAGES[:, :4])


def test_width_override_keeps_the_readout():
  layer = stax.serial(stax.Dense(7), stax.Relu(), stax.Dense(5), stax.Relu(), stax.Dense(2))
  model = nn.from_stax(layer, 32, input_shape=X.shape, rngs=nnx.Rngs(0))
  shapes = [m.W[...].shape for m in model.root.layers if isinstance(m, nn.Dense)]
  assert shapes == [(3, 32), (32, 32), (32, 2)]
  assert [
    m.W[...].shape
    for m in nn.from_stax(layer, input_shape=X.shape, rngs=nnx.Rngs(0)).root.layers
    if isinstance(m, nn.Dense)
  ] == [(3, 7), (7, 5), (5, 2)]
  conv = nn.from_stax(cnn(width=3), 6, input_shape=IMAGES.shape, rngs=nnx.Rngs(0))
  assert conv.root.layers[0].W[...].shape == (3, 3, 2, 6) and conv(IMAGES).shape == (3, 1)
  mixed = nn.from_stax(local_transpose_cnn(width=3), 5, input_shape=IMAGES.shape, rngs=nnx.Rngs(0))
  local, transpose, readout = (mixed.root.layers[i] for i in (0, 2, 5))
  assert local.W[...].shape == (5, 3, 2 * 6, 5) and local.b[...].shape == (5, 3, 5)
  assert transpose.W[...].shape == (3, 2, 5, 5) and transpose.b[...].shape == (5,)
  assert readout.W[...].shape == (11 * 4 * 5, 2) and mixed(IMAGES).shape == mixed.output_shape == (3, 2)


def test_hidden_are_the_inputs_of_downstream_parametric_layers():
  layer = mlp(stax.Erf, 2, width=8)
  model = nn.from_stax(layer, input_shape=X.shape, rngs=nnx.Rngs(0))
  out, hidden = model(X, return_hidden=True)
  d0, d1 = model.root.layers[0], model.root.layers[2]
  a1 = jax.scipy.special.erf(d0(X))
  a2 = jax.scipy.special.erf(d1(a1))
  assert len(hidden) == 2
  chex.assert_trees_all_close(hidden, (a1, a2), rtol=1e-13)
  chex.assert_trees_all_close(out, model(X), rtol=0)
  conv = nn.from_stax(local_transpose_cnn(), input_shape=IMAGES.shape, rngs=nnx.Rngs(0))
  out, hidden = conv(IMAGES, return_hidden=True)
  local, transpose = conv.root.layers[0], conv.root.layers[2]
  a1 = jax.scipy.special.erf(local(IMAGES))
  a2 = jax.nn.relu(transpose(a1)).reshape(IMAGES.shape[0], -1)
  chex.assert_trees_all_close(hidden, (a1, a2), rtol=1e-13)


def test_prior_std_tree_feeds_the_optimizer():
  layer = mlp(stax.Relu, 1, W_prior_std=0.7)
  model = nn.from_stax(layer, input_shape=X.shape, rngs=nnx.Rngs(0))
  params = nnx.as_pure(nnx.state(model, nnx.Param))  # what nnx.Optimizer(..., wrt=nnx.Param) passes to tx.update
  stds = nn.prior_std_tree(model)
  assert jax.tree.structure(stds) == jax.tree.structure(params)
  assert sorted(set(jax.tree.leaves(stds))) == [0.2, 0.7]  # W prior 0.7, bias prior = its init std 0.2
  decay = add_prior_decay(0.5, stds)
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = decay.update(grads, decay.init(params), params)
  layers = model.root.layers
  expected = {
    0: (0.5 / 0.7**2 * layers[0].W[...], 0.5 / 0.2**2 * layers[0].b[...]),
    2: (0.5 / 0.7**2 * layers[2].W[...], None),
  }
  for i, (w, b) in expected.items():
    np.testing.assert_allclose(updates['root']['layers'][i]['W'], w, rtol=1e-14)
    if b is not None:
      np.testing.assert_allclose(updates['root']['layers'][i]['b'], b, rtol=1e-14)
  langevin(0.1, 0.5, stds, key=0).init(params)  # the tree is accepted by the full optimizer
  langevin(0.1, 0.5, stds, key=0).init(nnx.state(model, nnx.Param))  # and against Variable-wrapped parameters


def _over_inits(layer, width, x, n, seed, fn):
  """fn(model) for n independent from_stax initialisations (built from keys inside jax.lax.map, in batches)."""
  graphdef = nnx.graphdef(nn.from_stax(layer, width, input_shape=x.shape, rngs=nnx.Rngs(0)))

  def one(key):
    state = nnx.state(nn.from_stax(layer, width, input_shape=x.shape, rngs=nnx.Rngs(key)))
    return fn(graphdef, state)

  keys = jax.random.split(jax.random.PRNGKey(seed), n)
  return jax.jit(lambda k: jax.lax.map(one, k, batch_size=min(n, 100)))(keys)


def _mean_and_se(samples):
  return samples.mean(0), samples.std(0, ddof=1) / math.sqrt(samples.shape[0])


@pytest.mark.slow
@pytest.mark.parametrize(
  'name, layer, x, width, depth_bias',
  [
    ('erf_1hidden', mlp(stax.Erf, 1), X, 512, 0),
    ('relu_2hidden', mlp(stax.Relu, 2, W_std=1.1), X, 512, 1),
    ('cnn', cnn(), IMAGES[:, :4, :4], 128, 0),
    (
      'conv_transpose_strided',
      cnn(padding='VALID', strides=(2, 1), conv=stax.ConvTranspose),
      IMAGES[:, :4, :4],
      128,
      0,
    ),
    ('conv_local', cnn(conv=stax.ConvLocal), IMAGES[:, :4, :4], 128, 0),
    ('resnet', resnet(), X, 512, 1),
  ],
)
def test_empirical_ntk_at_init_matches_ndk_at_zero_temperature(name, layer, x, width, depth_bias):
  """Θ_emp(x, x') = Σ_θ ∂f(x)/∂θ ∂f(x')/∂θ (raw θ) at initialisation vs R(0, 0) = ndk_fn(..., temperature=0).ndk.

  Averaged over 32 independent initialisations; standard error = across-seed std/√32 (finite-width fluctuations
  are O(1/√width)). Allowance: 4 standard errors, plus 4/width × max|Θ| for the O(1/N) bias of the mean NTK of
  networks with more than one hidden layer (for one hidden layer, the single-conv-layer CNN included, the mean is
  exact: the NTK is an average of i.i.d. terms over hidden units / channels).
  """
  theory = layer.ndk_fn(x, x, 0.0, 0.0, temperature=0.0).ndk

  def ntk(graphdef, state):
    jac = jax.jacrev(lambda p: nnx.merge(graphdef, p)(x).reshape(-1))(state)
    return sum(jnp.tensordot(j, j, axes=(tuple(range(1, j.ndim)),) * 2) for j in jax.tree.leaves(jac))

  mean, se = _mean_and_se(_over_inits(layer, width, x, 32, 0, ntk))
  scale = jnp.max(jnp.abs(theory))
  tol = 4 * se + depth_bias * 4 / width * scale
  assert bool(jnp.all(jnp.abs(mean - theory) <= tol)), (name, mean, theory, se)
  assert float(jnp.max(tol)) < 0.15 * scale  # sharp: an error of 15 % of the kernel scale would fail


@pytest.mark.slow
@pytest.mark.parametrize(
  'name, layer, x, width, depth_bias',
  [
    ('erf_1hidden', mlp(stax.Erf, 1), X, 256, 0),
    ('relu_2hidden', mlp(stax.Relu, 2, W_std=1.1), X, 256, 1),
    ('cnn', cnn(), IMAGES, 64, 0),
    ('conv_transpose_strided', cnn(padding='VALID', strides=(2, 1), conv=stax.ConvTranspose), IMAGES, 64, 0),
    ('conv_local', cnn(conv=stax.ConvLocal), IMAGES, 64, 0),
  ],
)
def test_output_covariance_over_inits_matches_nngp(name, layer, x, width, depth_bias):
  """Cov_θ(0)[f(x), f(x')] over 2000 random initialisations vs ndk_fn(...).nngp = C(0, 0).

  The mean of f is zero (symmetric readout weights), so the covariance is E[f f']; its standard error per entry
  is the std of f(x)f(x') over inits /√2000. Tolerance 4 se, plus 4/width × max|C| for the O(1/N) bias of
  deeper nets (one-hidden-layer networks, the single-conv-layer CNN included, are unbiased).
  """
  theory = layer.ndk_fn(x, x, 0.0, 0.0, temperature=0.0).nngp
  f = _over_inits(layer, width, x, 2000, 3, lambda g, s: nnx.merge(g, s)(x)[:, 0])  # (R, n)
  mean, se = _mean_and_se(f[:, :, None] * f[:, None, :])
  scale = jnp.max(jnp.abs(theory))
  tol = 4 * se + depth_bias * 4 / width * scale
  assert bool(jnp.all(jnp.abs(mean - theory) <= tol)), (name, mean, theory, se)
  assert float(jnp.max(tol)) < 0.2 * scale  # sharp: an error of 20 % of the kernel scale would fail


def test_errors():
  with pytest.raises(ValueError, match='width'):
    nn.from_stax(mlp(stax.Erf, 1), 0, input_shape=X.shape, rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match='rngs'):
    nn.from_stax(mlp(stax.Erf, 1), input_shape=X.shape, rngs=0)
  with pytest.raises(TypeError, match='ndk_flax.stax'):
    nn.from_stax((lambda: 0, lambda: 0, lambda: 0), input_shape=X.shape, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='no parametric layer'):
    nn.from_stax(stax.serial(stax.Relu()), input_shape=X.shape, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='input_shape'):
    nn.from_stax(mlp(stax.Erf, 1), input_shape=(3,), rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match='GlobalSelfAttention'):
    attention = stax.GlobalSelfAttention(4, 4, 4, 1, linear_scaling=False)
    nn.from_stax(
      stax.serial(stax.Dense(4), attention, stax.Flatten(), stax.Dense(1)), input_shape=(2, 3, 5), rngs=nnx.Rngs(0)
    )
  with pytest.raises(ValueError, match='spatial sizes'):
    nn.from_stax(cnn(conv=stax.ConvLocal), input_shape=(-1, -1, 5, 2), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='exceeds the input size'):
    nn.ConvLocal(2, 2, (7, 3), input_spatial_shape=(5, 5), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='channels'):
    nn.ConvTranspose(3, 2, (3, 3), rngs=nnx.Rngs(0))(IMAGES)
  with pytest.raises(ValueError, match='W_std'):
    nn.Dense(3, 2, W_std=0.0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='b_prior_std'):
    nn.Dense(3, 2, b_prior_std=1.0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='padding'):
    nn.Conv(2, 2, (3, 3), padding='FULL', rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='features'):
    nn.Dense(4, 2, rngs=nnx.Rngs(0))(X)
  with pytest.raises(TypeError, match='nnx.Module'):
    nn.prior_std_tree({'W': 1.0})
