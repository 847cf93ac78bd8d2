"""The paper's networks: structure, parameter counts, non-local block, torchvision weights."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from flax import nnx

from reid_jax.models import (NonLocalBlock, create_model, load_torchvision_resnet50, num_params)

TINY = dict(stage_depths=(1, 2, 2, 1), width=8, bottleneck_dim=16)


@nnx.jit
def forward(model, clips):
  return model(clips)


def relative_error(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


# --- parameter counts, written from the architecture rather than read off the model -----------

def resnet50_backbone_params(depths=(3, 4, 6, 3), width=64):
  """Conv + BN parameters of torchvision's ResNet-50 without fc (BN: scale and bias)."""
  total = 3 * width * 49 + 2 * width  # stem conv 7x7 + bn
  in_ch = width
  for stage, depth in enumerate(depths):
    planes = width * 2 ** stage
    for block in range(depth):
      total += in_ch * planes + 2 * planes          # conv1 1x1 + bn1
      total += planes * planes * 9 + 2 * planes     # conv2 3x3 + bn2
      total += planes * 4 * planes + 2 * 4 * planes  # conv3 1x1 + bn3
      if block == 0:
        total += in_ch * 4 * planes + 2 * 4 * planes  # downsample conv + bn
      in_ch = 4 * planes
  return total


def head_params(feature_dim, bottleneck, classes):
  return feature_dim * bottleneck + bottleneck + 2 * bottleneck + bottleneck * classes + classes


def temporal_params(depths=(3, 4, 6, 3), width=64):
  patterns = ((3,), (3, 1), (3, 1), (1, 3))
  total = 5 * 3 * 3  # stem: 5 taps, 3 -> 3 channels
  for stage, depth in enumerate(depths):
    planes = width * 2 ** stage
    total += sum(3 * planes * planes for b in range(depth)
                 if patterns[stage][b % len(patterns[stage])] == 3)
  return total


def nonlocal_params(channels):
  inner = channels // 2
  return 3 * (channels * inner + inner) + (inner * channels + channels) + 2 * channels


def test_parameter_counts_match_the_formula():
  classes = 625
  backbone, head = resnet50_backbone_params(), head_params(2048, 512, classes)
  expected = {
      "resnet50_tp": backbone + head,
      "resnet3d50": backbone + head + temporal_params(),
      "resnet3d50_nl": (backbone + head + temporal_params()
                        + 2 * nonlocal_params(512) + 3 * nonlocal_params(1024)),
  }
  assert resnet50_backbone_params() == 25_557_032 - 2048 * 1000 - 1000  # torchvision, fc removed
  for name, count in expected.items():
    model = nnx.eval_shape(lambda: create_model(name, num_classes=classes, rngs=nnx.Rngs(0)))
    print(f"{name}: {num_params(model):,} parameters")
    assert num_params(model) == count, name
  assert expected["resnet3d50_nl"] == 33_748_702


def test_full_size_shapes():
  model = nnx.eval_shape(lambda: create_model("resnet3d50_nl", num_classes=625,
                                              rngs=nnx.Rngs(0)))
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
  assert [w.shape for w in weights] == [(2, 2048, 2048)] * 2 + [(2, 512, 512)] * 3


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
  model = create_model("resnet3d50_nl", num_classes=5, rngs=nnx.Rngs(0), dtype="bfloat16",
                       **TINY)
  out = forward(model, jnp.ones((2, 4, 32, 16, 3)))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert out["pooled"].dtype == jnp.float32 and out["logits"].dtype == jnp.float32
  assert np.isfinite(out["logits"]).all()


def test_remat_changes_nothing_but_memory():
  clips = jax.random.normal(jax.random.key(2), (2, 4, 32, 16, 3))
  labels = jnp.array([0, 1])

  def loss_and_grad(remat):
    model = create_model("resnet3d50_nl", num_classes=3, rngs=nnx.Rngs(0), remat=remat,
                         dropout_rate=0.0, **TINY)

    def loss_fn(model):
      logits = model(clips)["logits"]
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(2), labels])

    return nnx.jit(nnx.value_and_grad(loss_fn))(model)

  (l0, g0), (l1, g1) = loss_and_grad(False), loss_and_grad(True)
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("channels", [3, 8])
def test_temporal_conv_matches_a_3d_convolution_in_values_and_gradients(channels):
  """Both temporal-conv paths (broadcast for few channels, matmuls otherwise) against lax's 3D
  convolution, forward and both gradients; the stem's 3-channel path has its own VJP."""
  from reid_jax.models.layers import FEW_CHANNELS, TemporalConv
  assert (channels <= FEW_CHANNELS) == (channels == 3)
  conv = TemporalConv(channels, 5, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(channels)
  conv.kernel[...] = jnp.asarray(rng.normal(size=(5, channels, channels)), jnp.float32)
  x = jnp.asarray(rng.normal(size=(2, 6, 5, 4, channels)), jnp.float32)
  probe = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

  def reference(kernel, x):
    return jax.lax.conv_general_dilated(x, kernel[:, None, None], (1, 1, 1),
                                        ((2, 2), (0, 0), (0, 0)),
                                        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                        precision="highest")

  graphdef, state = nnx.split(conv)

  def ours(kernel, x):  # the module as a function of its only parameter
    return nnx.merge(graphdef, jax.tree.map(lambda _: kernel, state))(x)

  np.testing.assert_allclose(ours(conv.kernel[...], x), reference(conv.kernel[...], x),
                             rtol=1e-5, atol=1e-5)
  grad = lambda f: jax.grad(lambda k, x: jnp.sum(f(k, x) * probe), argnums=(0, 1))
  kernel = conv.kernel[...]
  for got, want in zip(grad(ours)(kernel, x), grad(reference)(kernel, x)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pool, window, strides, padding", [
    ("spatial", (1, 3, 3), (1, 2, 2), ((0, 0), (1, 1), (1, 1))),
    ("temporal", (2, 1, 1), (2, 1, 1), ((0, 0),) * 3),
    ("spatial_valid", (1, 2, 2), (1, 2, 2), ((0, 0),) * 3),
])
def test_max_pools_match_reduce_window_in_values_and_gradients(pool, window, strides, padding):
  """The slice-maximum pools against `nnx.max_pool` (reduce_window) on tie-free inputs, odd
  sizes included, and their gradient."""
  from reid_jax.models import layers
  ours = {"spatial": lambda x: layers.max_pool_spatial(x, 3, 2),
          "temporal": layers.max_pool_temporal,
          "spatial_valid": layers.max_pool_spatial_valid}[pool]
  reference = lambda x: nnx.max_pool(x, window, strides=strides, padding=padding)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.permutation(4 * 6 * 7 * 5 * 3).reshape(4, 6, 7, 5, 3), jnp.float32) - 100
  np.testing.assert_array_equal(ours(x), reference(x))
  probe = jnp.asarray(rng.normal(size=reference(x).shape), jnp.float32)
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * probe))(x)
  np.testing.assert_allclose(grad(ours), grad(reference), rtol=1e-6)


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
  theta, phi, g = p(block.theta, x), p(block.phi, x), p(block.g, x)
  if pool:
    pool2 = lambda v: v.reshape(b, t, h // 2, 2, w // 2, 2, -1).max(axis=(3, 5))
    phi, g = pool2(phi), pool2(g)
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


@pytest.mark.parametrize("pool,scale", [(False, False), (True, False), (False, True)])
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


# --- torchvision weights ------------------------------------------------------------------------

def randomised_torchvision(depths=(3, 4, 6, 3), seed=0):
  """A torchvision ResNet with random weights and random BatchNorm statistics, in eval mode."""
  torch.manual_seed(seed)
  net = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, list(depths))
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.2, 0.2)
        module.running_mean.uniform_(-0.2, 0.2)
        module.running_var.uniform_(0.5, 1.5)
  return net.eval()


def torch_pooled(net, frames):  # frames [N, H, W, 3] -> [N, 2048]
  net.fc = torch.nn.Identity()
  with torch.no_grad():
    return net(torch.from_numpy(np.asarray(frames)).permute(0, 3, 1, 2)).numpy()


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
  net = randomised_torchvision()
  path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
  torch.save(net.state_dict(), path)
  return path, net


def test_converted_resnet50_tp_matches_torchvision(resnet50_file):
  path, net = resnet50_file
  model = load_torchvision_resnet50(create_model("resnet50_tp", num_classes=4, rngs=nnx.Rngs(0)),
                                    path)
  model.eval()
  clips = np.random.default_rng(0).normal(size=(2, 2, 96, 64, 3)).astype(np.float32)
  ours = forward(model, jnp.asarray(clips))["pooled"]
  theirs = torch_pooled(net, clips.reshape(4, 96, 64, 3)).reshape(2, 2, -1).mean(axis=1)
  assert relative_error(ours, theirs) < 1e-4


def test_center_inflation_of_a_static_clip_equals_the_2d_network(resnet50_file):
  path, _ = resnet50_file
  frame = np.random.default_rng(1).normal(size=(1, 1, 64, 32, 3)).astype(np.float32)
  static_clip = jnp.asarray(np.repeat(frame, 4, axis=1))
  baseline = load_torchvision_resnet50(
      create_model("resnet50_tp", num_classes=4, rngs=nnx.Rngs(0)), path)
  inflated = load_torchvision_resnet50(
      create_model("resnet3d50_nl", num_classes=4, rngs=nnx.Rngs(1)), path,
      temporal_init="center")
  baseline.eval()
  inflated.eval()
  expected = forward(baseline, jnp.asarray(frame))["pooled"]
  assert relative_error(forward(inflated, static_clip)["pooled"], expected) < 1e-4


def test_mean_inflation_taps_sum_to_the_identity(resnet50_file):
  path, _ = resnet50_file
  model = load_torchvision_resnet50(
      create_model("resnet3d50", num_classes=4, rngs=nnx.Rngs(0)), path, temporal_init="mean")
  kernel = np.asarray(model.layer2[0].conv2_t.kernel[...])
  assert kernel.shape == (3, 128, 128)
  np.testing.assert_allclose(kernel, np.broadcast_to(np.eye(128) / 3, kernel.shape), atol=1e-7)


@pytest.fixture(scope="module")
def small_resnet_state(tmp_path_factory):
  return randomised_torchvision(depths=(1, 1, 1, 1)).state_dict()


def small_model():
  return create_model("resnet3d50_nl", num_classes=3, rngs=nnx.Rngs(0), stage_depths=(1, 1, 1, 1))


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.pop("layer2.0.bn2.running_var"), "missing key 'layer2.0.bn2.running_var'"),
    (lambda s: s.__setitem__("layer5.0.conv1.weight", torch.zeros(1)),
     "unexpected key 'layer5.0.conv1.weight'"),
    (lambda s: s.__setitem__("layer3.0.conv2.weight", torch.zeros(256, 256, 1, 3)),
     r"key 'layer3.0.conv2.weight' has shape \(1, 3, 256, 256\)"),
])
def test_loader_names_the_bad_key(tmp_path, small_resnet_state, edit, message):
  state = dict(small_resnet_state)
  edit(state)
  torch.save(state, tmp_path / "bad.pth")
  model = small_model()
  before = np.asarray(model.conv1.conv.kernel[...]).copy()
  with pytest.raises(ValueError, match=message):
    load_torchvision_resnet50(model, tmp_path / "bad.pth")
  np.testing.assert_array_equal(model.conv1.conv.kernel[...], before)  # untouched on error


def test_loader_accepts_wrapped_checkpoints_and_rejects_bad_files(tmp_path, small_resnet_state):
  wrapped = {"state_dict": {f"module.{k}": v for k, v in small_resnet_state.items()}}
  torch.save(wrapped, tmp_path / "wrapped.pth")
  model = load_torchvision_resnet50(small_model(), tmp_path / "wrapped.pth")
  np.testing.assert_allclose(model.bn1.var[...], small_resnet_state["bn1.running_var"].numpy())
  with pytest.raises(FileNotFoundError, match="nowhere.pth"):
    load_torchvision_resnet50(small_model(), tmp_path / "nowhere.pth")
  (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
  with pytest.raises(ValueError, match="garbage.pth"):
    load_torchvision_resnet50(small_model(), tmp_path / "garbage.pth")
  with pytest.raises(ValueError, match="temporal_init"):
    load_torchvision_resnet50(small_model(), tmp_path / "wrapped.pth", temporal_init="edge")
