"""Temporally separable inflated ResNet-50 with non-local blocks, and its 2D baseline.

One network class covers the paper's three ablation variants (Table 2):

| name            | temporal convs            | temporal pool | non-local blocks            |
|-----------------|---------------------------|---------------|-----------------------------|
| `resnet50_tp`   | none (2D per frame)       | no            | none                        |
| `resnet3d50`    | stem 5, I3D block layout  | 2x1x1 after res2 | none                     |
| `resnet3d50_nl` | stem 5, I3D block layout  | 2x1x1 after res2 | res3 blocks 1,3; res4 blocks 1,3,5 |

The I3D layout (Non-local paper) gives a 3-tap temporal kernel to res2 blocks [3,3,3], res3
[3,1,3,1], res4 [3,1,3,1,3,1], res5 [1,3,1]; for other depths the per-stage patterns [3],
[3,1], [3,1], [1,3] repeat. Each 3 puts a temporal conv in front of the block's 3x3 conv; the
stem's 7x7 conv gets a 5-tap one.

Shapes for the paper's 8 x 256 x 128 clips (T x H x W), with the default `last_stride=2`:
stem 8x128x64 -> max-pool 8x64x32 -> res2 8x64x32 (256 ch) -> temporal pool 4x64x32 ->
res3 4x32x16 (512) -> res4 4x16x8 (1024) -> res5 4x8x4 (2048) -> global average pool.
The non-local blocks thus attend over 2048 (res3) and 512 (res4) positions.

Head (paper Fig. 3b): global average pool -> bottleneck (dense, BatchNorm, LeakyReLU 0.1,
Dropout 0.5) -> classifier. `features` is the bottleneck output before dropout (dropout only
regularises the classifier; at evaluation the two are the same).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from reid_jax.models import layers
from reid_jax.models.nonlocal_block import NonLocalBlock

# Per-stage temporal kernel patterns of the I3D ResNet-50 (repeated cyclically over a stage).
I3D_TEMPORAL_PATTERN = ((3,), (3, 1), (3, 1), (1, 3))
STEM_TEMPORAL_KERNEL = 5
RESNET50_DEPTHS = (3, 4, 6, 3)


@dataclasses.dataclass(frozen=True)
class Architecture:
  """Everything that fixes the network's structure; `create_model` overrides any field."""
  stage_depths: tuple[int, ...] = RESNET50_DEPTHS
  width: int = 64                     # channels after the stem; stage i has width * 2**i
  inflate: bool = True                # temporal convs (False: 2D network per frame)
  temporal_pool: bool = True          # 2x1x1 max-pool after res2
  nonlocal_stages: tuple[int, ...] = (1, 2)  # res3, res4 (0-based stages); blocks 1, 3, 5, ...
  nonlocal_inner_ratio: float = 0.5   # theta/phi/g width C/2
  nonlocal_scale: bool = False        # 1/sqrt(d) on the attention logits (paper: none)
  nonlocal_pool: bool = False         # 1x2x2 max-pool of phi and g
  attention_impl: str = "einsum"      # "einsum" | "xla" | "cudnn"
  last_stride: int = 2                # stride of res5 (1 keeps a 16x8 map)
  bottleneck_dim: int = 512
  dropout_rate: float = 0.5
  leaky_relu_slope: float = 0.1
  remat: bool = False                 # recompute each residual block in the backward pass
  dtype: jnp.dtype = jnp.float32      # compute dtype (bfloat16 on accelerators)
  param_dtype: jnp.dtype = jnp.float32

  def temporal_kernel(self, stage: int, block: int) -> int:
    if not self.inflate:
      return 1
    pattern = I3D_TEMPORAL_PATTERN[min(stage, len(I3D_TEMPORAL_PATTERN) - 1)]
    return pattern[block % len(pattern)]

  def has_nonlocal(self, stage: int, block: int) -> bool:
    return stage in self.nonlocal_stages and block % 2 == 1

  def stage_stride(self, stage: int) -> int:
    """Spatial stride of a stage's first block: 1 for res2, `last_stride` for res5, else 2."""
    if stage == 0:
      return 1
    return self.last_stride if stage == len(self.stage_depths) - 1 else 2

  @property
  def feature_dim(self) -> int:
    return self.width * 2 ** (len(self.stage_depths) - 1) * Bottleneck.expansion


VARIANTS = {
    "resnet50_tp": dict(inflate=False, temporal_pool=False, nonlocal_stages=()),
    "resnet3d50": dict(inflate=True, temporal_pool=True, nonlocal_stages=()),
    "resnet3d50_nl": dict(inflate=True, temporal_pool=True, nonlocal_stages=(1, 2)),
}


class Bottleneck(nnx.Module):
  """torchvision's ResNet v1.5 bottleneck (stride on the 3x3), with an optional temporal conv
  in front of the 3x3 and an optional non-local block after the residual sum."""
  expansion = 4

  def __init__(self, in_features: int, planes: int, *, stride: int, temporal_kernel: int,
               with_nonlocal: bool, arch: Architecture, rngs: nnx.Rngs):
    kw = dict(dtype=arch.dtype, param_dtype=arch.param_dtype)
    out_features = planes * self.expansion
    self.conv1 = layers.SpatialConv(in_features, planes, 1, rngs=rngs, **kw)
    self.bn1 = layers.batch_norm(planes, rngs=rngs, **kw)
    self.conv2_t = (layers.TemporalConv(planes, temporal_kernel, rngs=rngs, **kw)
                    if temporal_kernel > 1 else None)
    self.conv2 = layers.SpatialConv(planes, planes, 3, stride=stride, rngs=rngs, **kw)
    self.bn2 = layers.batch_norm(planes, rngs=rngs, **kw)
    self.conv3 = layers.SpatialConv(planes, out_features, 1, rngs=rngs, **kw)
    self.bn3 = layers.batch_norm(out_features, rngs=rngs, **kw)
    if stride != 1 or in_features != out_features:
      self.downsample_conv = layers.SpatialConv(in_features, out_features, 1, stride=stride,
                                                rngs=rngs, **kw)
      self.downsample_bn = layers.batch_norm(out_features, rngs=rngs, **kw)
    else:
      self.downsample_conv = self.downsample_bn = None
    self.nonlocal_block = NonLocalBlock(
        out_features, inner_ratio=arch.nonlocal_inner_ratio, scale_attention=arch.nonlocal_scale,
        pool_phi_g=arch.nonlocal_pool, attention_impl=arch.attention_impl, rngs=rngs,
        **kw) if with_nonlocal else None

  def __call__(self, x, *, return_attention: bool = False):  # [B, T, H, W, C]
    out = jax.nn.relu(self.bn1(self.conv1(x)))
    if self.conv2_t is not None:
      out = self.conv2_t(out)
    out = jax.nn.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    shortcut = x if self.downsample_conv is None else self.downsample_bn(self.downsample_conv(x))
    out = jax.nn.relu(out + shortcut)
    attention = None
    if self.nonlocal_block is not None:
      if return_attention:
        out, attention = self.nonlocal_block(out, return_attention=True)
      else:
        out = self.nonlocal_block(out)
    return out, attention


class Head(nnx.Module):
  """Bottleneck (dense, BatchNorm, LeakyReLU, Dropout) and identity classifier, in float32."""

  def __init__(self, in_features: int, num_classes: int, arch: Architecture, rngs: nnx.Rngs):
    self.leaky_relu_slope = arch.leaky_relu_slope
    self.fc = nnx.Linear(in_features, arch.bottleneck_dim, kernel_init=layers.conv_kernel_init,
                         param_dtype=arch.param_dtype, rngs=rngs)
    self.bn = layers.batch_norm(arch.bottleneck_dim, dtype=jnp.float32,
                                param_dtype=arch.param_dtype, rngs=rngs)
    self.dropout = nnx.Dropout(arch.dropout_rate, rngs=rngs)
    self.classifier = nnx.Linear(arch.bottleneck_dim, num_classes,
                                 kernel_init=nnx.initializers.normal(0.001),
                                 param_dtype=arch.param_dtype, rngs=rngs)

  def __call__(self, pooled):  # [B, D] float32
    features = jax.nn.leaky_relu(self.bn(self.fc(pooled)), self.leaky_relu_slope)
    logits = self.classifier(self.dropout(features))
    return features, logits


class ReIDNet(nnx.Module):
  """Clip `[B, T, H, W, 3]` (normalised RGB) -> `{'pooled', 'features', 'logits'}`."""

  def __init__(self, arch: Architecture, *, num_classes: int, rngs: nnx.Rngs):
    kw = dict(dtype=arch.dtype, param_dtype=arch.param_dtype)
    self.arch = arch
    self.conv1_t = (layers.TemporalConv(3, STEM_TEMPORAL_KERNEL, rngs=rngs, **kw)
                    if arch.inflate else None)
    self.conv1 = layers.SpatialConv(3, arch.width, 7, stride=2, rngs=rngs, **kw)
    self.bn1 = layers.batch_norm(arch.width, rngs=rngs, **kw)
    in_features = arch.width
    for stage, depth in enumerate(arch.stage_depths):
      planes = arch.width * 2 ** stage
      blocks = []
      for block in range(depth):
        blocks.append(Bottleneck(
            in_features, planes, stride=arch.stage_stride(stage) if block == 0 else 1,
            temporal_kernel=arch.temporal_kernel(stage, block),
            with_nonlocal=arch.has_nonlocal(stage, block), arch=arch, rngs=rngs))
        in_features = planes * Bottleneck.expansion
      setattr(self, f"layer{stage + 1}", nnx.List(blocks))
    self.head = Head(in_features, num_classes, arch, rngs)

  @property
  def stages(self):
    return [getattr(self, f"layer{i + 1}") for i in range(len(self.arch.stage_depths))]

  def backbone(self, clips, *, return_attention: bool = False):
    """Clip -> (feature map `[B, T', H', W', C]`, list of non-local attention dicts)."""
    if clips.ndim != 5 or clips.shape[-1] != 3:
      raise ValueError(f"expected clips [B, T, H, W, 3], got shape {clips.shape}")
    x = clips.astype(self.arch.dtype)
    if self.conv1_t is not None:
      x = self.conv1_t(x)
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    x = layers.max_pool_spatial(x, 3, 2)
    attentions = []
    for stage, blocks in enumerate(self.stages):
      for block in blocks:
        if self.arch.remat and not return_attention:
          x, attention = nnx.remat(_call_block)(block, x)
        else:
          x, attention = block(x, return_attention=return_attention)
        if attention is not None:
          attentions.append(attention)
      if stage == 0 and self.arch.temporal_pool:
        x = layers.max_pool_temporal(x)
    return x, attentions

  def __call__(self, clips, *, return_attention: bool = False):
    x, attentions = self.backbone(clips, return_attention=return_attention)
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))
    features, logits = self.head(pooled)
    out = {"pooled": pooled, "features": features, "logits": logits}
    if return_attention:
      out["attention"] = attentions
    return out


def _call_block(block, x):
  return block(x)


def create_model(name: str, *, num_classes: int, rngs: nnx.Rngs, **overrides) -> ReIDNet:
  """Builds one of `VARIANTS` (`resnet50_tp`, `resnet3d50`, `resnet3d50_nl`).

  `overrides` set any `Architecture` field, e.g. `stage_depths=(1, 1, 2, 1), width=8` for a tiny
  network of the same structure, or `dtype=jnp.bfloat16` for accelerators.
  """
  if name not in VARIANTS:
    raise ValueError(f"unknown model {name!r}; choose one of {sorted(VARIANTS)}")
  fields = {f.name for f in dataclasses.fields(Architecture)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"unknown model field(s) {unknown}; valid fields: {sorted(fields)}")
  if num_classes < 1:
    raise ValueError(f"num_classes must be positive, got {num_classes}")
  settings = {**VARIANTS[name], **overrides}
  for key in ("stage_depths", "nonlocal_stages"):
    if key in settings:
      settings[key] = tuple(settings[key])
  for key in ("dtype", "param_dtype"):
    if key in settings:
      settings[key] = jnp.dtype(settings[key])
  arch = Architecture(**settings)
  if not arch.stage_depths or min(arch.stage_depths) < 1:
    raise ValueError(f"stage_depths must be positive, got {arch.stage_depths}")
  return ReIDNet(arch, num_classes=num_classes, rngs=rngs)

