"""Pretrained weights from other frameworks' files: Kinetics I3D (Caffe2, PySlowFast,
pytorchvideo) and 2D ResNet-50s (torchvision, torchreid, fast-reid), on files the tests write
with each format's real names and layout, checked against the original networks' forward pass."""

import logging
import os
import pickle
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from flax import nnx

from reid_jax.models import Architecture, create_model, load_kinetics_i3d, load_torchvision_resnet50

import caffe2_i3d

sys.path.insert(
  0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
)
import torch_i3d  # noqa: E402  (bench/: the PyTorch peer under PySlowFast's names)

SMALL = dict(stage_depths=(1, 2, 2, 1), width=8)


@nnx.jit
def pooled(model, clips):
  return model(clips)["pooled"]


def relative_error(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def clips_and_torch_input(shape=(2, 8, 64, 32), seed=0):
  """Normalised clips `[B, T, H, W, 3]` for us and the same as `[B, 3, T, H, W]` for PyTorch."""
  clips = np.random.default_rng(seed).normal(size=(*shape, 3)).astype(np.float32)
  return jnp.asarray(clips), torch.from_numpy(clips).permute(0, 4, 1, 2, 3).contiguous()


def snapshot(model):
  return [
    np.asarray(leaf).copy()
    for leaf in __import__("jax").tree.leaves(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
  ]


def assert_untouched(model, before):
  for a, b in zip(snapshot(model), before):
    np.testing.assert_array_equal(a, b)


# --- Kinetics: pytorchvideo ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pytorchvideo_file(tmp_path_factory):
  from pytorchvideo.models.hub import i3d_r50

  torch.manual_seed(0)
  net = torch_i3d.randomise_batch_norms(i3d_r50(pretrained=False))
  path = tmp_path_factory.mktemp("ptv") / "I3D_8x8_R50.pyth"
  torch.save({"model_state": net.state_dict()}, path)
  return path, net


def test_pytorchvideo_i3d_matches_its_network(pytorchvideo_file):
  path, net = pytorchvideo_file
  model = load_kinetics_i3d(create_model("resnet3d50", num_classes=3, rngs=nnx.Rngs(0)), path)
  model.eval()
  ours, theirs_in = clips_and_torch_input()
  with torch.no_grad():
    x = theirs_in
    for block in net.blocks[:6]:  # stem, res2, pool, res3, res4, res5; blocks[6] is the head
      x = block(x)
    theirs = x.mean((2, 3, 4)).numpy()
  assert relative_error(pooled(model, ours), theirs) < 1e-4


# --- Kinetics: the Caffe2 release ---------------------------------------------------------------


@pytest.fixture(scope="module")
def caffe2_nonlocal_file(tmp_path_factory):
  blobs = caffe2_i3d.random_blobs(with_nonlocal=True)
  path = tmp_path_factory.mktemp("caffe2") / "i3d_nonlocal_8x8_IN_pretrain_400k.pkl"
  caffe2_i3d.write_python2_pickle({"blobs": blobs}, path)
  return path, blobs


def test_caffe2_nonlocal_i3d_matches_the_release_network(caffe2_nonlocal_file):
  path, blobs = caffe2_nonlocal_file
  model = create_model("resnet3d50_nl", num_classes=3, rngs=nnx.Rngs(0), stem_pool_padding=0)
  load_kinetics_i3d(model, path)
  model.eval()
  ours, theirs_in = clips_and_torch_input()
  assert relative_error(pooled(model, ours), caffe2_i3d.forward(blobs, theirs_in)) < 1e-4


def test_python2_pickle_is_what_the_reader_sees():
  """The test's pickles use Python 2's opcodes and names, as the downloaded files do."""
  import io
  import pickletools

  buffer = io.BytesIO()
  caffe2_i3d._Python2Pickler(buffer, protocol=2).dump({"conv1_w": np.ones((2, 3), np.float32)})
  ops = {op.name for op, _, _ in pickletools.genops(buffer.getvalue())}
  assert "SHORT_BINSTRING" in ops and "BINUNICODE" not in ops
  assert b"numpy.core.multiarray\n_reconstruct" in buffer.getvalue()


@pytest.fixture(scope="module")
def small_caffe2_blobs():
  return {
    nonlocal_: caffe2_i3d.random_blobs(
      depths=SMALL["stage_depths"], width=SMALL["width"], with_nonlocal=nonlocal_, seed=1
    )
    for nonlocal_ in (False, True)
  }


def small_model(name="resnet3d50_nl", **overrides):
  return create_model(
    name, num_classes=3, rngs=nnx.Rngs(0), **{**SMALL, "stem_pool_padding": 0, **overrides}
  )


def test_caffe2_baseline_checkpoint_and_what_it_skips(tmp_path, small_caffe2_blobs):
  blobs = small_caffe2_blobs[False]
  caffe2_i3d.write_python2_pickle({"blobs": blobs}, tmp_path / "baseline.pkl")
  model = load_kinetics_i3d(small_model("resnet3d50"), tmp_path / "baseline.pkl")
  np.testing.assert_array_equal(
    model.layer2[1].conv1.kernel[...], blobs["res3_1_branch2a_w"].transpose(2, 3, 4, 1, 0)
  )
  np.testing.assert_array_equal(model.bn1.var[...], blobs["res_conv1_bn_riv"])
  # pred_*, *_momentum, lr and model_iter are not the network: nothing else is left over.


@pytest.mark.parametrize(
  "edit, message",
  [
    (lambda b: b.pop("res3_1_branch2b_bn_riv"), "missing key 'res3_1_branch2b_bn_riv'"),
    (
      lambda b: b.__setitem__("res6_0_branch2a_w", np.zeros(1, np.float32)),
      "unexpected key 'res6_0_branch2a_w'",
    ),
    (
      lambda b: b.__setitem__("res4_0_branch2b_w", np.zeros((32, 32, 3, 3, 3), np.float32)),
      r"key 'res4_0_branch2b_w' of shape \(32, 32, 3, 3, 3\)",
    ),
    (
      lambda b: b.__setitem__("nonlocal_conv4_1_theta_w", np.zeros((32, 64, 1, 1), np.float32)),
      "nonlocal_conv4_1_theta_w",
    ),
  ],
)
def test_caffe2_bad_tensors_are_named_and_leave_the_model_untouched(
  tmp_path, small_caffe2_blobs, edit, message
):
  blobs = dict(small_caffe2_blobs[True])
  edit(blobs)
  caffe2_i3d.write_python2_pickle({"blobs": blobs}, tmp_path / "bad.pkl")
  model = small_model()
  before = snapshot(model)
  with pytest.raises(ValueError, match=message):
    load_kinetics_i3d(model, tmp_path / "bad.pkl")
  assert_untouched(model, before)


@pytest.mark.parametrize(
  "nonlocal_file, model_kwargs, message",
  [
    (True, dict(name="resnet3d50"), "has non-local blocks .* load it into resnet3d50_nl"),
    (False, dict(), "has no non-local blocks and the model has some"),
    (True, dict(nonlocal_pool=False), r"max-pool x by 1x2x2 .* nonlocal_pool=False"),
    (True, dict(nonlocal_scale=False), r"d\^-0.5; the model has nonlocal_scale=False"),
    (
      True,
      dict(stem_pool_padding=1),
      "stem max-pool by 0; build the model with stem_pool_padding=0",
    ),
    (False, dict(name="resnet3d50", temporal_pool=False), "temporal_pool=False"),
    (False, dict(name="resnet50_tp"), r"needs an inflated model"),
  ],
)
def test_caffe2_structure_mismatches_are_named(
  tmp_path, small_caffe2_blobs, nonlocal_file, model_kwargs, message
):
  caffe2_i3d.write_python2_pickle({"blobs": small_caffe2_blobs[nonlocal_file]}, tmp_path / "c.pkl")
  model = small_model(**model_kwargs)
  before = snapshot(model)
  with pytest.raises(ValueError, match=message):
    load_kinetics_i3d(model, tmp_path / "c.pkl")
  assert_untouched(model, before)


class _RunsCode:
  def __reduce__(self):
    return (os.system, ("touch pwned",))


def test_pickles_may_hold_numpy_arrays_only(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with open("evil.pkl", "wb") as f:
    pickle.dump({"blobs": {"conv1_w": _RunsCode()}}, f, protocol=2)
  with pytest.raises(pickle.UnpicklingError, match=r"evil.pkl: refuses to load posix.system"):
    load_kinetics_i3d(small_model(), "evil.pkl")
  assert not os.path.exists("pwned")


def test_unreadable_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere.pkl"):
    load_kinetics_i3d(small_model(), tmp_path / "nowhere.pkl")
  (tmp_path / "garbage.pkl").write_bytes(b"\x80\x02not a pickle at all")
  with pytest.raises(ValueError, match="garbage.pkl"):
    load_kinetics_i3d(small_model(), tmp_path / "garbage.pkl")
  torch.save({"model_state": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pyth")
  with pytest.raises(ValueError, match=r"other.pyth is not a ResNet-50 checkpoint"):
    load_kinetics_i3d(small_model(), tmp_path / "other.pyth")


# --- Kinetics: PySlowFast -----------------------------------------------------------------------


def pyslowfast_file(path, arch, seed=0, *, norm_name="bn"):
  """A PySlowFast training checkpoint of the I3D(-NL) of `arch`, with its Kinetics head."""
  torch.manual_seed(seed)
  net = torch_i3d.randomise_batch_norms(torch_i3d.I3D(arch), seed)
  state = net.state_dict()
  if norm_name != "bn":  # recent PySlowFast calls the non-local BatchNorm `norm`
    state = {
      k.replace("_nonlocal1.bn.", f"_nonlocal1.{norm_name}.").replace(
        "_nonlocal3.bn.", f"_nonlocal3.{norm_name}."
      ): v
      for k, v in state.items()
    }
  state["head.projection.weight"] = torch.zeros(400, net.feature_dim)
  state["head.projection.bias"] = torch.zeros(400)
  torch.save(
    {"epoch": 196, "model_state": state, "optimizer_state": {}, "cfg": "MODEL:\n  ARCH: i3d\n"},
    path,
  )
  return net


def test_pyslowfast_nonlocal_i3d_matches_its_network(tmp_path):
  arch = Architecture()
  net = pyslowfast_file(tmp_path / "I3D_NLN_8x8_R50.pyth", arch)
  model = load_kinetics_i3d(
    create_model("resnet3d50_nl", num_classes=3, rngs=nnx.Rngs(0)),
    tmp_path / "I3D_NLN_8x8_R50.pyth",
  )
  model.eval()
  ours, theirs_in = clips_and_torch_input(seed=1)
  with torch.no_grad():
    theirs = net(theirs_in).mean((2, 3, 4)).numpy()
  assert relative_error(pooled(model, ours), theirs) < 1e-4


def test_pyslowfast_names_of_both_versions_and_wrong_padding(tmp_path):
  arch = Architecture(**SMALL)
  net = pyslowfast_file(tmp_path / "new.pyth", arch, norm_name="norm")
  model = load_kinetics_i3d(small_model(stem_pool_padding=1), tmp_path / "new.pyth")
  np.testing.assert_array_equal(
    model.layer2[1].nonlocal_block.bn.var[...], net.s3.pathway0_nonlocal1.bn.running_var.numpy()
  )
  with pytest.raises(ValueError, match="stem_pool_padding=1"):
    load_kinetics_i3d(small_model(), tmp_path / "new.pyth")


# --- 2D ResNet-50s: torchvision, torchreid, fast-reid -------------------------------------------


def randomised_torchvision(depths=(3, 4, 6, 3), seed=0):
  """A torchvision ResNet with random weights and random BatchNorm statistics, in eval mode."""
  torch.manual_seed(seed)
  return torch_i3d.randomise_batch_norms(
    torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, list(depths)), seed
  )


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
  net = randomised_torchvision()
  path = tmp_path_factory.mktemp("weights") / "resnet50-0676ba61.pth"
  torch.save(net.state_dict(), path)
  return path, net


def test_resnet50_tp_matches_torchvision(resnet50_file):
  path, net = resnet50_file
  model = load_torchvision_resnet50(
    create_model("resnet50_tp", num_classes=4, rngs=nnx.Rngs(0)), path
  )
  model.eval()
  clips = np.random.default_rng(0).normal(size=(2, 2, 96, 64, 3)).astype(np.float32)
  net.fc = torch.nn.Identity()
  with torch.no_grad():
    frames = torch.from_numpy(clips.reshape(4, 96, 64, 3)).permute(0, 3, 1, 2)
    theirs = net(frames).numpy().reshape(2, 2, -1).mean(axis=1)
  assert relative_error(pooled(model, jnp.asarray(clips)), theirs) < 1e-4


def test_center_inflation_of_a_static_clip_equals_the_2d_network(resnet50_file):
  path, _ = resnet50_file
  frame = np.random.default_rng(1).normal(size=(1, 1, 64, 32, 3)).astype(np.float32)
  static_clip = jnp.asarray(np.repeat(frame, 4, axis=1))
  baseline = load_torchvision_resnet50(
    create_model("resnet50_tp", num_classes=4, rngs=nnx.Rngs(0)), path
  )
  inflated = load_torchvision_resnet50(
    create_model("resnet3d50_nl", num_classes=4, rngs=nnx.Rngs(1)), path, temporal_init="center"
  )
  baseline.eval()
  inflated.eval()
  expected = pooled(baseline, jnp.asarray(frame))
  assert relative_error(pooled(inflated, static_clip), expected) < 1e-4


def test_mean_inflation_divides_every_plane_by_t(resnet50_file):
  path, net = resnet50_file
  model = load_torchvision_resnet50(
    create_model("resnet3d50", num_classes=4, rngs=nnx.Rngs(0)), path, temporal_init="mean"
  )
  stem = np.asarray(model.conv1.kernel[...])
  assert stem.shape == (5, 7, 7, 3, 64)
  np.testing.assert_allclose(
    stem,
    np.broadcast_to(net.conv1.weight.detach().numpy().transpose(2, 3, 1, 0) / 5, stem.shape),
    rtol=1e-6,
  )
  conv1 = np.asarray(model.layer2[0].conv1.kernel[...])
  assert conv1.shape == (3, 1, 1, 256, 128)
  np.testing.assert_allclose(
    conv1,
    np.broadcast_to(
      net.layer2[0].conv1.weight.detach().numpy().transpose(2, 3, 1, 0) / 3, conv1.shape
    ),
    rtol=1e-6,
  )


@pytest.fixture(scope="module")
def small_resnet():
  net = randomised_torchvision(depths=(1, 1, 1, 1))
  return {k: v for k, v in net.state_dict().items()}


def small_2d_model():
  # One block per stage holds no non-local block (they follow blocks 1, 3, ...): none asked for.
  return create_model(
    "resnet3d50_nl", num_classes=3, rngs=nnx.Rngs(0), stage_depths=(1, 1, 1, 1), nonlocal_stages=()
  )


def test_reid_checkpoints_load_with_their_heads_skipped(tmp_path, small_resnet, caplog):
  """torchreid (`state_dict`, `module.`, classifier, numpy metrics) and fast-reid (`model`,
  `backbone.`, `heads.*`, pixel statistics) give the same network as the plain file."""
  torch.save(small_resnet, tmp_path / "plain.pth")
  torchreid = {f"module.{k}": v for k, v in small_resnet.items() if not k.startswith("fc.")}
  torchreid.update(
    {"module.classifier.weight": torch.zeros(751, 2048), "module.classifier.bias": torch.zeros(751)}
  )
  torch.save(
    {
      "state_dict": torchreid,
      "epoch": 60,
      "rank1": np.float64(0.874),
      "optimizer": {"state": {}, "param_groups": [{"lr": 3e-4}]},
    },
    tmp_path / "model.pth.tar-60",
  )
  fastreid = {f"backbone.{k}": v for k, v in small_resnet.items() if not k.startswith("fc.")}
  fastreid.update(
    {
      "heads.bottleneck.0.weight": torch.ones(2048),
      "heads.classifier.weight": torch.zeros(702, 2048),
      "pixel_mean": torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1),
      "pixel_std": torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1),
    }
  )
  torch.save({"model": fastreid, "iteration": 9000}, tmp_path / "duke_bot_R50.pth")

  reference = snapshot(load_torchvision_resnet50(small_2d_model(), tmp_path / "plain.pth"))
  for name, heads in (
    ("model.pth.tar-60", "classifier.bias, classifier.weight"),
    (
      "duke_bot_R50.pth",
      "heads.bottleneck.0.weight, heads.classifier.weight, pixel_mean, pixel_std",
    ),
  ):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="reid_jax"):
      model = load_torchvision_resnet50(small_2d_model(), tmp_path / name)
    assert f"skipped {len(heads.split(', '))} head tensors: {heads}" in caplog.text
    for a, b in zip(snapshot(model), reference):
      np.testing.assert_array_equal(a, b)

  fastreid["pixel_mean"] = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
  torch.save({"model": fastreid}, tmp_path / "unscaled.pth")
  with pytest.raises(ValueError, match="unscaled.pth: pixel_mean is .* not ImageNet's"):
    load_torchvision_resnet50(small_2d_model(), tmp_path / "unscaled.pth")


@pytest.mark.parametrize(
  "edit,message",
  [
    (lambda s: s.pop("layer2.0.bn2.running_var"), "missing key 'layer2.0.bn2.running_var'"),
    (
      lambda s: s.__setitem__("layer5.0.conv1.weight", torch.zeros(1)),
      "unexpected key 'layer5.0.conv1.weight'",
    ),
    (
      lambda s: s.__setitem__("layer3.0.conv2.weight", torch.zeros(256, 256, 1, 3)),
      r"key 'layer3.0.conv2.weight' of shape \(256, 256, 1, 3\)",
    ),
  ],
)
def test_2d_loader_names_the_bad_key(tmp_path, small_resnet, edit, message):
  state = dict(small_resnet)
  edit(state)
  torch.save(state, tmp_path / "bad.pth")
  model = small_2d_model()
  before = snapshot(model)
  with pytest.raises(ValueError, match=message):
    load_torchvision_resnet50(model, tmp_path / "bad.pth")
  assert_untouched(model, before)


def test_2d_loader_rejects_the_wrong_files_and_settings(tmp_path, small_resnet, small_caffe2_blobs):
  torch.save(small_resnet, tmp_path / "r50.pth")
  with pytest.raises(FileNotFoundError, match="nowhere.pth"):
    load_torchvision_resnet50(small_2d_model(), tmp_path / "nowhere.pth")
  (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
  with pytest.raises(ValueError, match="garbage.pth"):
    load_torchvision_resnet50(small_2d_model(), tmp_path / "garbage.pth")
  with pytest.raises(ValueError, match="temporal_init"):
    load_torchvision_resnet50(small_2d_model(), tmp_path / "r50.pth", temporal_init="edge")
  with pytest.raises(ValueError, match="pads its stem max-pool by 1"):
    load_torchvision_resnet50(
      create_model(
        "resnet3d50",
        num_classes=3,
        rngs=nnx.Rngs(0),
        stage_depths=(1, 1, 1, 1),
        stem_pool_padding=0,
      ),
      tmp_path / "r50.pth",
    )
  caffe2_i3d.write_python2_pickle({"blobs": small_caffe2_blobs[False]}, tmp_path / "i3d.pkl")
  with pytest.raises(ValueError, match="Kinetics I3D checkpoint .* load_kinetics_i3d"):
    load_torchvision_resnet50(small_2d_model(), tmp_path / "i3d.pkl")
  with pytest.raises(ValueError, match="2D ResNet-50 .* load_torchvision_resnet50"):
    load_kinetics_i3d(small_model(), tmp_path / "r50.pth")
