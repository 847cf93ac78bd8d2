"""The I3D ResNet-50 (with non-local blocks) in PyTorch, under PySlowFast's module names.

A PyTorch peer of `reid_jax.models.ReIDNet`'s backbone, written from PySlowFast's definition of
the I3D and I3D-NL ResNet-50 (`slowfast/models/resnet_helper.py`, `stem_helper.py`,
`nonlocal_helper.py`): NCTHW `Conv3d` layers, BatchNorm3d, the stem's 1x3x3 max-pool, the
2x1x1 pool after res2 (`pathway0_pool`), and non-local blocks that max-pool x by 1x2x2 before
phi and g and scale the logits by d^-0.5. Its `state_dict()` is therefore a PySlowFast
checkpoint's `model_state` (`s1.pathway0_stem.conv.weight`, `s2.pathway0_res0.branch2.a.weight`,
`s3.pathway0_nonlocal1.conv_theta.weight`, ...).

`bench/torch_reference.py` times it with the re-id head and losses beside the JAX step;
`tests/test_pretrained.py` writes its weights as a PySlowFast file and checks that
`load_kinetics_i3d` reproduces its forward pass. It reads the layout (temporal kernels,
non-local positions, strides) from an `Architecture`, so it also builds the 2D baseline.
"""

import torch
import torch.nn.functional as F
from torch import nn


def bn3d(channels: int, zero: bool = False) -> nn.BatchNorm3d:
  bn = nn.BatchNorm3d(channels)  # eps 1e-5, as ours and PySlowFast's
  if zero:
    nn.init.zeros_(bn.weight)
  return bn


class Stem(nn.Module):
  def __init__(self, width: int, temporal_kernel: int, pool_padding: int):
    super().__init__()
    self.conv = nn.Conv3d(
      3,
      width,
      (temporal_kernel, 7, 7),
      stride=(1, 2, 2),
      padding=(temporal_kernel // 2, 3, 3),
      bias=False,
    )
    self.bn = bn3d(width)
    self.pool_padding = pool_padding

  def forward(self, x):
    x = F.relu(self.bn(self.conv(x)))
    return F.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, self.pool_padding, self.pool_padding))


class BottleneckTransform(nn.Module):
  """`branch2`: a (k_t x 1 x 1), b (1 x 3 x 3, the stride), c (1 x 1 x 1)."""

  def __init__(self, cin: int, planes: int, stride: int, temporal_kernel: int):
    super().__init__()
    self.a = nn.Conv3d(
      cin, planes, (temporal_kernel, 1, 1), padding=(temporal_kernel // 2, 0, 0), bias=False
    )
    self.a_bn = bn3d(planes)
    self.b = nn.Conv3d(
      planes, planes, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False
    )
    self.b_bn = bn3d(planes)
    self.c = nn.Conv3d(planes, 4 * planes, 1, bias=False)
    self.c_bn = bn3d(4 * planes)

  def forward(self, x):
    x = F.relu(self.a_bn(self.a(x)))
    x = F.relu(self.b_bn(self.b(x)))
    return self.c_bn(self.c(x))


class ResBlock(nn.Module):
  def __init__(self, cin: int, planes: int, stride: int, temporal_kernel: int):
    super().__init__()
    if stride != 1 or cin != 4 * planes:
      self.branch1 = nn.Conv3d(cin, 4 * planes, 1, stride=(1, stride, stride), bias=False)
      self.branch1_bn = bn3d(4 * planes)
    else:
      self.branch1 = None
    self.branch2 = BottleneckTransform(cin, planes, stride, temporal_kernel)

  def forward(self, x):
    shortcut = x if self.branch1 is None else self.branch1_bn(self.branch1(x))
    return F.relu(self.branch2(x) + shortcut)


class Nonlocal(nn.Module):
  """Embedded-Gaussian block: optional 1x2x2 pool of x before phi and g, optional d^-0.5."""

  def __init__(self, dim: int, pool: bool = True, scale: bool = True):
    super().__init__()
    self.dim_inner = dim // 2
    self.conv_theta, self.conv_phi, self.conv_g = (
      nn.Conv3d(dim, self.dim_inner, 1) for _ in range(3)
    )
    self.conv_out = nn.Conv3d(self.dim_inner, dim, 1)
    self.bn = bn3d(dim, zero=True)
    self.pool, self.scale = pool, scale

  def forward(self, x):
    n, _, t, h, w = x.shape
    theta = self.conv_theta(x).flatten(2)  # [N, C', THW]
    keys_in = F.max_pool3d(x, (1, 2, 2), (1, 2, 2)) if self.pool else x
    phi, g = self.conv_phi(keys_in).flatten(2), self.conv_g(keys_in).flatten(2)
    logits = torch.einsum("nct,ncp->ntp", theta, phi)
    if self.scale:
      logits = logits * self.dim_inner**-0.5
    y = torch.einsum("ntp,ncp->nct", torch.softmax(logits, dim=2), g)
    return x + self.bn(self.conv_out(y.reshape(n, self.dim_inner, t, h, w)))


class ResStage(nn.Module):
  def __init__(self, arch, stage: int, cin: int):
    super().__init__()
    planes = arch.width * 2**stage
    self.names = []
    for i in range(arch.stage_depths[stage]):
      stride = arch.stage_stride(stage) if i == 0 else 1
      self.add_module(
        f"pathway0_res{i}", ResBlock(cin, planes, stride, arch.temporal_kernel(stage, i))
      )
      self.names.append(f"pathway0_res{i}")
      cin = 4 * planes
      if arch.has_nonlocal(stage, i):
        self.add_module(
          f"pathway0_nonlocal{i}", Nonlocal(cin, pool=arch.nonlocal_pool, scale=arch.nonlocal_scale)
        )
        self.names.append(f"pathway0_nonlocal{i}")

  def forward(self, x):
    for name in self.names:
      x = getattr(self, name)(x)
    return x


class StemStage(nn.Module):
  def __init__(self, arch):
    super().__init__()
    self.pathway0_stem = Stem(arch.width, arch.stem_temporal_kernel, arch.stem_pool_padding)

  def forward(self, x):
    return self.pathway0_stem(x)


class I3D(nn.Module):
  """Clips `[B, 3, T, H, W]` (normalised) -> the last stage's map `[B, 2048, T', H', W']`."""

  def __init__(self, arch):
    super().__init__()
    self.s1 = StemStage(arch)
    cin = arch.width
    for stage in range(len(arch.stage_depths)):
      self.add_module(f"s{stage + 2}", ResStage(arch, stage, cin))
      cin = 4 * arch.width * 2**stage
    self.temporal_pool = arch.temporal_pool
    self.num_stages = len(arch.stage_depths)
    self.feature_dim = cin

  def forward(self, x):
    x = self.s1(x)
    for stage in range(self.num_stages):
      x = getattr(self, f"s{stage + 2}")(x)
      if stage == 0 and self.temporal_pool:
        x = F.max_pool3d(x, (2, 1, 1), (2, 1, 1))  # PySlowFast's pathway0_pool
    return x


def randomise_batch_norms(net: nn.Module, seed: int = 0) -> nn.Module:
  """Random affine parameters and running statistics in every BatchNorm (zero-initialised
  ones included), so a comparison exercises all of them; returns `net` in eval mode."""
  generator = torch.Generator().manual_seed(seed)

  def uniform(t, low, high):
    t.copy_(torch.rand(t.shape, generator=generator) * (high - low) + low)

  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, nn.modules.batchnorm._BatchNorm):
        uniform(module.weight, 0.5, 1.5)
        uniform(module.bias, -0.2, 0.2)
        uniform(module.running_mean, -0.2, 0.2)
        uniform(module.running_var, 0.5, 1.5)
  return net.eval()
