"""The paper's networks: structure, parameter counts, convolutions, pools, non-local block."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from reid_jax.models import NonLocalBlock, create_model, num_params

TINY = dict(stage_depths=(1, 2, 2, 1), width=8, bottleneck_dim=16)


@nnx.jit
def forward(model, clips):
  return model(clips)


# --- parameter counts, written from the architecture rather than read off the model -----------


def resnet50_backbone_params(depths=(3, 4, 6, 3), width=64):
  """Conv + BN parameters of torchvision's ResNet-50 without fc (BN: scale and bias)."""
  total = 3 * width * 49 + 2 * width  # stem conv 7x7 + bn
  in_ch = width
  for stage, depth in enumerate(depths):
    planes = width * 2**stage
    for block in range(depth):
      total += in_ch * planes + 2 * planes  # conv1 1x1 + bn1
      total += planes * planes * 9 + 2 * planes  # conv2 3x3 + bn2
      total += planes * 4 * planes + 2 * 4 * planes  # conv3 1x1 + bn3
      if block == 0:
        total += in_ch * 4 * planes + 2 * 4 * planes  # downsample conv + bn
      in_ch = 4 * planes
  return total


def head_params(feature_dim, bottleneck, classes):
  return feature_dim * bottleneck + bottleneck + 2 * bottleneck + bottleneck * classes + classes


def i3d_extra_params(depths=(3, 4, 6, 3), width=64):
  """What inflation adds: the stem's 4 more 7x7 planes, and 2 more planes of every 3x1x1 conv1."""
  patterns = ((3,), (3, 1), (3, 1), (1, 3))
  total = 4 * 3 * width * 49
  in_ch = width
  for stage, depth in enumerate(depths):
    planes = width * 2**stage
    for block in range(depth):
      if patterns[stage][block % len(patterns[stage])] == 3:
        total += 2 * in_ch * planes
      in_ch = 4 * planes
  return total


def nonlocal_params(channels):
  inner = channels // 2
  return 3 * (channels * inner + inner) + (inner * channels + channels) + 2 * channels


def test_parameter_counts_match_the_formula():
  classes = 625
  backbone, head = resnet50_backbone_params(), head_params(2048, 512, classes)
  expected = {
    "resnet50_tp": backbone + head,
    "resnet3d50": backbone + head + i3d_extra_params(),
    "resnet3d50_nl": (
      backbone + head + i3d_extra_params() + 2 * nonlocal_params(512) + 3 * nonlocal_params(1024)
    ),
  }
  assert resnet50_backbone_params() == 25_557_032 - 2048 * 1000 - 1000  # torchvision, fc removed
  for name, count in expected.items():
    model = nnx.eval_shape(lambda: create_model(name, num_classes=classes, rngs=nnx.Rngs(0)))
    print(f"{name}: {num_params(model):,} parameters")
    assert num_params(model) == count, name
  # pytorchvideo's i3d_r50 has 28,043,472 parameters with its 400-class projection.
  assert expected["resnet3d50"] - head == 28_043_472 - (2048 * 400 + 400)


def test_full_size_shapes():
  model = nnx.eval_shape(lambda: create_model("resnet3d50_nl", num_classes=625, rngs=nnx.Rngs(0)))
  clips = jax.ShapeDtypeStruct((2, 8, 256, 128, 3), jnp.float32)
  graph, state = nnx.split(model)

  def forward(state, clips):
    m = nnx.merge(graph, state)
    feature_map, attention = m.backbone(clips, return_attention=True)
    return m(clips), feature_map, [a["weights"] for a in attention]

  out, feature_map, weights = jax.eval_shape(forward, state, clips)
  assert out["pooled"].shape == (2, 2048)
  assert out["features"].shape == (2, 512)
  assert out["logits"].shape == (2, 625)
  assert feature_map.shape == (2, 4, 8, 4, 2048)
  # 1x2x2-pooled keys and values: a quarter of the positions.
  assert [w.shape for w in weights] == [(2, 2048, 512)] * 2 + [(2, 512, 128)] * 3


def test_tiny_network_trains_and_evals():
  model = create_model("resnet3d50_nl", num_classes=5, rngs=nnx.Rngs(0), **TINY)
  clips = jax.random.normal(jax.random.key(1), (4, 8, 64, 32, 3))
  train_out = forward(model, clips)
  assert train_out["logits"].shape == (4, 5) and train_out["features"].shape == (4, 16)
  model.eval()
  a, b = forward(model, clips), forward(model, clips)
  np.testing.assert_array_equal(a["logits"], b["logits"])  # no dropout, running stats
  model.train()
  c, d = forward(model, clips), forward(model, clips)
  assert not np.allclose(c["logits"], d["logits"])  # dropout is on


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  model = create_model("resnet3d50_nl", num_classes=5, rngs=nnx.Rngs(0), dtype="bfloat16", **TINY)
  out = forward(model, jnp.ones((2, 4, 64, 32, 3)))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert out["pooled"].dtype == jnp.float32 and out["logits"].dtype == jnp.float32
  assert np.isfinite(out["logits"]).all()


def test_remat_changes_nothing_but_memory():
  clips = jax.random.normal(jax.random.key(2), (2, 4, 64, 32, 3))
  labels = jnp.array([0, 1])

  def loss_and_grad(remat):
    model = create_model(
      "resnet3d50_nl", num_classes=3, rngs=nnx.Rngs(0), remat=remat, dropout_rate=0.0, **TINY
    )

    def loss_fn(model):
      logits = model(clips)["logits"]
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(2), labels])

    return nnx.jit(nnx.value_and_grad(loss_fn))(model)

  (l0, g0), (l1, g1) = loss_and_grad(False), loss_and_grad(True)
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
  "kernel_size, stride, channels",
  [
    ((5, 7, 7), 2, (3, 8)),  # the stem: time-shifted frames stacked on channels, one 2D conv
    ((3, 1, 1), 1, (6, 4)),  # the bottleneck's first conv: shifted channel matmuls
    ((1, 3, 3), 2, (4, 4)),  # the spatial conv
    ((1, 1, 1), 2, (6, 8)),  # the projection shortcut: a strided slice and a matmul
  ],
)
def test_conv3d_matches_a_3d_convolution_in_values_and_gradients(kernel_size, stride, channels):
  """Every formulation of `Conv3D` against lax's 3D convolution (PyTorch's padding k // 2),
  forward, input gradient and kernel gradient."""
  from reid_jax.models.layers import Conv3D

  conv = Conv3D(*channels, kernel_size, stride=stride, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(sum(kernel_size))
  x = jnp.asarray(rng.normal(size=(2, 6, 9, 7, channels[0])), jnp.float32)

  def reference(kernel, x):
    return jax.lax.conv_general_dilated(
      x,
      kernel,
      (1, stride, stride),
      [(k // 2, k // 2) for k in kernel_size],
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
      precision="highest",
    )

  graphdef, state = nnx.split(conv)

  def ours(kernel, x):  # the module as a function of its only parameter
    return nnx.merge(graphdef, jax.tree.map(lambda _: kernel, state))(x)

  kernel = conv.kernel[...]
  want = reference(kernel, x)
  np.testing.assert_allclose(ours(kernel, x), want, rtol=1e-5, atol=1e-5)
  probe = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
  grad = lambda f: jax.grad(lambda k, x: jnp.sum(f(k, x) * probe), argnums=(0, 1))
  for got, expected in zip(grad(ours)(kernel, x), grad(reference)(kernel, x)):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
  "pool, window, strides, padding",
  [
    ("spatial", (1, 3, 3), (1, 2, 2), ((0, 0), (1, 1), (1, 1))),
    ("spatial_unpadded", (1, 3, 3), (1, 2, 2), ((0, 0),) * 3),
    ("temporal", (2, 1, 1), (2, 1, 1), ((0, 0),) * 3),
    ("nonlocal_keys", (1, 2, 2), (1, 2, 2), ((0, 0),) * 3),
  ],
)
def test_max_pools_match_reduce_window_in_values_and_gradients(pool, window, strides, padding):
  """The slice-maximum pools against `nnx.max_pool` (reduce_window) on tie-free inputs, odd
  sizes included, and their gradient; on inputs full of ties, the gradient too: each window's
  goes to one input, the first that holds its maximum, as reduce_window's does."""
  from reid_jax.models import layers

  ours = {
    "spatial": lambda x: layers.max_pool_spatial(x, 3, 2, 1),
    "spatial_unpadded": lambda x: layers.max_pool_spatial(x, 3, 2, 0),
    "temporal": layers.max_pool_temporal,
    "nonlocal_keys": lambda x: layers.max_pool(x, (1, 2, 2), (1, 2, 2)),
  }[pool]
  reference = lambda x: nnx.max_pool(x, window, strides=strides, padding=padding)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.permutation(4 * 6 * 7 * 5 * 3).reshape(4, 6, 7, 5, 3), jnp.float32) - 100
  np.testing.assert_array_equal(ours(x), reference(x))
  probe = jnp.asarray(rng.normal(size=reference(x).shape), jnp.float32)
  grad = lambda f, x: jax.grad(lambda x: jnp.sum(f(x) * probe))(x)
  # An input that is the maximum of several windows sums their gradients in another order.
  np.testing.assert_allclose(grad(ours, x), grad(reference, x), rtol=1e-5, atol=1e-7)

  ties = jnp.asarray(rng.integers(0, 3, x.shape), jnp.float32)
  np.testing.assert_array_equal(ours(ties), reference(ties))
  np.testing.assert_allclose(grad(ours, ties), grad(reference, ties), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jnp.sum(grad(ours, ties)), jnp.sum(probe), rtol=1e-5)


def test_create_model_rejects_bad_names():
  with pytest.raises(ValueError, match="unknown model 'resnet18'"):
    create_model("resnet18", num_classes=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="widht"):
    create_model("resnet3d50", num_classes=2, rngs=nnx.Rngs(0), widht=8)
  with pytest.raises(ValueError, match="num_classes"):
    create_model("resnet3d50", num_classes=0, rngs=nnx.Rngs(0))


# --- the non-local block ------------------------------------------------------------------------


def numpy_nonlocal(block, x, *, pool=False, scale=False):
  """softmax(theta(x) phi(x)^T) g(x) written out in numpy, and z before the residual."""
  p = lambda layer, v: v @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...])
  x = np.asarray(x, np.float64)
  b, t, h, w, c = x.shape
  # The release's block pools x itself, before the phi and g projections.
  keys_in = x.reshape(b, t, h // 2, 2, w // 2, 2, c).max(axis=(3, 5)) if pool else x
  theta, phi, g = p(block.theta, x), p(block.phi, keys_in), p(block.g, keys_in)
  q = theta.reshape(b, t * h * w, -1)
  k = phi.reshape(b, q.shape[1] // (4 if pool else 1), -1)
  v = g.reshape(k.shape[0], k.shape[1], -1)
  logits = q @ k.transpose(0, 2, 1)
  if scale:
    logits /= math.sqrt(q.shape[-1])
  attention = np.exp(logits - logits.max(-1, keepdims=True))
  attention /= attention.sum(-1, keepdims=True)
  return attention, attention @ v


def test_fresh_nonlocal_block_is_the_identity():
  block = NonLocalBlock(16, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (2, 4, 6, 4, 16))
  np.testing.assert_array_equal(block(x), x)
  block.eval()
  np.testing.assert_array_equal(block(x), x)


@pytest.mark.parametrize("pool,scale", [(False, False), (True, False), (False, True), (True, True)])
def test_nonlocal_attention_matches_numpy(pool, scale):
  block = NonLocalBlock(16, pool_phi_g=pool, scale_attention=scale, rngs=nnx.Rngs(0))
  block.eval()
  x = jax.random.normal(jax.random.key(3), (2, 2, 4, 4, 16))
  _, info = block(x, return_attention=True)
  attention, y = numpy_nonlocal(block, x, pool=pool, scale=scale)
  np.testing.assert_allclose(info["weights"], attention, rtol=2e-4, atol=1e-6)
  assert info["key_grid"] == ((2, 2, 2) if pool else (2, 4, 4))
  # Give W_z's BatchNorm a non-zero scale so the block's output exercises y too.
  block.bn.scale.set_value(jnp.ones_like(block.bn.scale[...]))
  z = block(x)
  w_z = y.reshape(x.shape[:4] + (-1,)) @ np.asarray(block.w_z.kernel[...]) + block.w_z.bias[...]
  expected = w_z / np.sqrt(1 + 1e-5) + np.asarray(x)  # fresh running stats: mean 0, var 1
  np.testing.assert_allclose(z, expected, rtol=2e-4, atol=2e-5)


def test_dot_product_attention_path_matches_einsum():
  einsum_block = NonLocalBlock(16, rngs=nnx.Rngs(0))
  xla_block = NonLocalBlock(16, attention_impl="xla", rngs=nnx.Rngs(0))
  for block in (einsum_block, xla_block):
    block.bn.scale.set_value(jnp.ones_like(block.bn.scale[...]))
    block.eval()
  x = jax.random.normal(jax.random.key(4), (2, 2, 4, 4, 16))
  np.testing.assert_allclose(xla_block(x), einsum_block(x), rtol=1e-5, atol=1e-5)
