"""The Non-local release's Caffe2 I3D checkpoints, made by the tests: names, file, network.

Written from facebookresearch/video-nonlocal-net (`lib/models/resnet_video.py` with
`VIDEO_ARC_CHOICE 2`, `resnet_helper.py`, `nonlocal_helper.py`, `lib/utils/checkpoints.py`):

- `random_blobs` gives the blobs of `save_model_params` for the I3D ResNet-50, with or without
  the five non-local blocks: every parameter and BatchNorm statistic under its Caffe2 name,
  their `_momentum` blobs, the Kinetics classifier `pred_w` / `pred_b`, `lr` and `model_iter`.
- `write_python2_pickle` writes `{'blobs': blobs}` as Python 2's cPickle did (byte strings as
  STRING opcodes, numpy's globals under `numpy.core`), the bytes a user downloads.
- `forward` is the release's network in PyTorch ops, blob by blob, up to res5 and a global
  average: conv1 5x7x7 with pads [2, 3, 3], pool1 1x3x3 / 2 with pads 0, `res{2..5}_{i}`
  bottlenecks (branch2a k_t x 1 x 1, branch2b 1x3x3 with the stride, branch2c, branch1),
  pool2 2x1x1 after res2, and after blocks 1, 3 (res3) and 1, 3, 5 (res4) the non-local
  block: theta on x, phi and g on x max-pooled 1x2x2, BatchMatMul, scale dim_inner^-0.5,
  softmax over the keys, BatchMatMul with g, `_out` conv, SpatialBN, sum with x.
"""

import pickle
import struct

import numpy as np
import torch
import torch.nn.functional as F

# obtain_arc(2): use_temp_convs of the stem and of res2..res5 (1: a 3x1x1 branch2a).
USE_TEMP_CONVS = ([2], [1, 1, 1], [1, 0, 1, 0], [1, 0, 1, 0, 1, 0], [0, 1, 0])
BN_EPSILON = 1.0000001e-5  # cfg.MODEL.BN_EPSILON and cfg.NONLOCAL.BN_EPSILON


def has_nonlocal(stage: int, index: int, with_nonlocal: bool) -> bool:
  """`res_stage_nonlocal` with LAYER_MOD 2 in res3 and res4: after every other block."""
  return with_nonlocal and stage in (3, 4) and index % 2 == 1


def random_blobs(depths=(3, 4, 6, 3), width=64, with_nonlocal=True, classes=400, seed=0):
  rng = np.random.default_rng(seed)
  blobs = {}

  def conv(name, cout, cin, t, k, bias=False):
    fan_in = cin * t * k * k
    blobs[f"{name}_w"] = rng.normal(0, (2 / fan_in) ** 0.5, (cout, cin, t, k, k)).astype(np.float32)
    if bias:
      blobs[f"{name}_b"] = rng.normal(0, 0.01, cout).astype(np.float32)

  def bn(name, c, scale=(0.5, 1.5)):
    blobs[f"{name}_s"] = rng.uniform(*scale, c).astype(np.float32)
    blobs[f"{name}_b"] = rng.uniform(-0.2, 0.2, c).astype(np.float32)
    blobs[f"{name}_rm"] = rng.uniform(-0.2, 0.2, c).astype(np.float32)
    blobs[f"{name}_riv"] = rng.uniform(0.5, 1.5, c).astype(np.float32)

  conv("conv1", width, 3, 1 + 2 * USE_TEMP_CONVS[0][0], 7)
  bn("res_conv1_bn", width)
  cin = width
  for stage, depth in zip((2, 3, 4, 5), depths):
    inner = width * 2 ** (stage - 2)
    for i in range(depth):
      prefix = f"res{stage}_{i}"
      temp = USE_TEMP_CONVS[stage - 1][i % len(USE_TEMP_CONVS[stage - 1])]
      conv(f"{prefix}_branch2a", inner, cin, 1 + 2 * temp, 1)
      bn(f"{prefix}_branch2a_bn", inner)
      conv(f"{prefix}_branch2b", inner, inner, 1, 3)
      bn(f"{prefix}_branch2b_bn", inner)
      conv(f"{prefix}_branch2c", 4 * inner, inner, 1, 1)
      # Small scales on the residual branch, as trained networks have, keep the activations of
      # 16 random blocks in float32's comfortable range.
      bn(f"{prefix}_branch2c_bn", 4 * inner, scale=(0.1, 0.3))
      if i == 0:
        conv(f"{prefix}_branch1", 4 * inner, cin, 1, 1)
        bn(f"{prefix}_branch1_bn", 4 * inner)
      cin = 4 * inner
      if has_nonlocal(stage, i, with_nonlocal):
        name = f"nonlocal_conv{stage}_{i}"
        for which in ("theta", "phi", "g"):
          conv(f"{name}_{which}", cin // 2, cin, 1, 1, bias=True)
        conv(f"{name}_out", cin, cin // 2, 1, 1, bias=True)
        bn(f"{name}_bn", cin, scale=(0.1, 0.3))
  blobs["pred_w"] = rng.normal(0, 0.01, (classes, cin)).astype(np.float32)
  blobs["pred_b"] = np.zeros(classes, np.float32)
  for name in [n for n in blobs if not n.endswith(("_rm", "_riv"))]:
    blobs[f"{name}_momentum"] = np.zeros_like(blobs[name])
  blobs["lr"] = np.array([0.0001], np.float32)
  blobs["model_iter"] = 400000
  return blobs


class _Python2Pickler(pickle._Pickler):
  """Pickles as Python 2's cPickle with protocol 2: every string (blob names, dtype codes,
  array data: all Python 2 `str`) as SHORT_BINSTRING / BINSTRING, numpy's reconstruction
  functions as `numpy.core.multiarray` globals."""

  dispatch = dict(pickle._Pickler.dispatch)

  def save_python2_str(self, obj):
    data = obj.encode("latin1") if isinstance(obj, str) else obj
    if len(data) < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
    else:
      self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
    self.memoize(obj)

  dispatch[bytes] = dispatch[str] = save_python2_str

  def save_global(self, obj, name=None):
    name = name or obj.__name__
    module = obj.__module__.replace("numpy._core", "numpy.core")
    self.write(pickle.GLOBAL + module.encode() + b"\n" + name.encode() + b"\n")
    self.memoize(obj)


def write_python2_pickle(obj, path) -> None:
  """`obj` the way the release's files were saved."""
  with open(path, "wb") as f:
    _Python2Pickler(f, protocol=2).dump(obj)


def forward(blobs, clips, depths=(3, 4, 6, 3)):
  """The release's network on `clips` `[B, 3, T, H, W]` -> res5 averaged, `[B, 2048]`."""
  w = {k: torch.from_numpy(np.asarray(v)) for k, v in blobs.items() if isinstance(v, np.ndarray)}

  def spatial_bn(x, name):
    return F.batch_norm(
      x,
      w[f"{name}_rm"],
      w[f"{name}_riv"],
      w[f"{name}_s"],
      w[f"{name}_b"],
      training=False,
      eps=BN_EPSILON,
    )

  def conv_bn(x, name, stride, pads):
    return spatial_bn(F.conv3d(x, w[f"{name}_w"], stride=stride, padding=pads), f"{name}_bn")

  def nonlocal_block(x, name):
    n, _, t, h, wd = x.shape
    inner = w[f"{name}_theta_w"].shape[0]
    theta = F.conv3d(x, w[f"{name}_theta_w"], w[f"{name}_theta_b"])
    pooled = F.max_pool3d(x, (1, 2, 2), (1, 2, 2))
    phi = F.conv3d(pooled, w[f"{name}_phi_w"], w[f"{name}_phi_b"])
    g = F.conv3d(pooled, w[f"{name}_g_w"], w[f"{name}_g_b"])
    theta, phi, g = (v.reshape(n, inner, -1) for v in (theta, phi, g))
    affinity = torch.bmm(theta.transpose(1, 2), phi) * inner**-0.5  # trans_a=1
    p = torch.softmax(affinity, dim=2)
    y = torch.bmm(g, p.transpose(1, 2)).reshape(n, inner, t, h, wd)  # trans_b=1
    out = F.conv3d(y, w[f"{name}_out_w"], w[f"{name}_out_b"])
    return x + spatial_bn(out, f"{name}_bn")

  with torch.no_grad():
    x = F.conv3d(clips, w["conv1_w"], stride=(1, 2, 2), padding=(USE_TEMP_CONVS[0][0], 3, 3))
    x = spatial_bn(x, "res_conv1_bn").relu()
    x = F.max_pool3d(x, (1, 3, 3), (1, 2, 2), 0)
    for stage, depth in zip((2, 3, 4, 5), depths):
      for i in range(depth):
        prefix = f"res{stage}_{i}"
        stride = 2 if i == 0 and stage > 2 else 1
        temp = USE_TEMP_CONVS[stage - 1][i % len(USE_TEMP_CONVS[stage - 1])]
        out = conv_bn(x, f"{prefix}_branch2a", 1, (temp, 0, 0)).relu()
        out = conv_bn(out, f"{prefix}_branch2b", (1, stride, stride), (0, 1, 1)).relu()
        out = conv_bn(out, f"{prefix}_branch2c", 1, 0)
        shortcut = (
          conv_bn(x, f"{prefix}_branch1", (1, stride, stride), 0)
          if f"{prefix}_branch1_w" in w
          else x
        )
        x = (out + shortcut).relu()
        if f"nonlocal_conv{stage}_{i}_theta_w" in w:
          x = nonlocal_block(x, f"nonlocal_conv{stage}_{i}")
      if stage == 2:
        x = F.max_pool3d(x, (2, 1, 1), (2, 1, 1))
    return x.mean((2, 3, 4)).numpy()
