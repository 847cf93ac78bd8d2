"""The I3D ResNet-50 with non-local blocks (Wang et al., CVPR 2018), and its 2D baseline.

One network class covers the paper's three ablation variants (Table 2):

| name            | temporal kernels                  | temporal pool    | non-local blocks                 |
|-----------------|-----------------------------------|------------------|----------------------------------|
| `resnet50_tp`   | none (2D ResNet-50 per frame)     | no               | none                             |
| `resnet3d50`    | stem 5x7x7, I3D bottleneck layout | 2x1x1 after res2 | none                             |
| `resnet3d50_nl` | stem 5x7x7, I3D bottleneck layout | 2x1x1 after res2 | res3 blocks 1,3; res4 blocks 1,3,5 |

This is the network of the public Kinetics-400 I3D checkpoints (video-nonlocal-net, PySlowFast,
pytorchvideo; `load_kinetics_i3d`), which the paper fine-tunes. Its "temporally separable"
convolution (paper section 3.1) is the I3D bottleneck: the block's first conv, a 1x1 in the 2D
network, is inflated to `k_t x 1 x 1` (C_in -> planes) and followed by the `1 x 3 x 3` conv
(stride on the 3x3, ResNet v1.5). `k_t` per block: res2 [3,3,3], res3 [3,1,3,1], res4
[3,1,3,1,3,1], res5 [1,3,1]; for other depths the per-stage patterns [3], [3,1], [3,1], [1,3]
repeat. The stem is a full 5x7x7 conv (stride 1x2x2) and a 1x3x3 max-pool (stride 1x2x2).

Shapes for the paper's 8 x 256 x 128 clips (T x H x W), with the default `last_stride=2`:
stem 8x128x64 -> max-pool 8x64x32 -> res2 8x64x32 (256 ch) -> temporal pool 4x64x32 ->
res3 4x32x16 (512) -> res4 4x16x8 (1024) -> res5 4x8x4 (2048) -> global average pool.
The non-local blocks attend from 2048 (res3) and 512 (res4) positions to a quarter as many
(1x2x2-pooled keys, the release's default; `nonlocal_pool=False` attends to all).
With `stem_pool_padding=0` (what the Caffe2 release computes) res2 is 8x63x31 and res3 onwards
are unchanged.

Head (paper Fig. 3b): global average pool -> bottleneck (dense, BatchNorm, LeakyReLU 0.1,
Dropout 0.5) -> classifier. `features` is the bottleneck output before dropout (dropout only
regularises the classifier; at evaluation the two are the same).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from data_prep.errors import FieldError
from reid_jax.models import layers
from reid_jax.models.cpu_conv import CONV_GRADS
from reid_jax.models.nonlocal_block import ATTENTION_IMPLS, NonLocalBlock

# Per-stage temporal kernels of the bottlenecks' first convs in the I3D ResNet-50 (repeated
# cyclically over a stage) and of the stem.
I3D_TEMPORAL_PATTERN = ((3,), (3, 1), (3, 1), (1, 3))
I3D_STEM_TEMPORAL_KERNEL = 5
RESNET50_DEPTHS = (3, 4, 6, 3)


# Compute dtypes: parameters stay float32 whatever the compute dtype.
DTYPES = ("float32", "bfloat16", "float16")
CUDNN_MAX_HEAD_DIM = 256  # cuDNN's fused attention on Hopper and later (128 before)


@dataclasses.dataclass(frozen=True)
class Architecture:
  """Everything that fixes the network's structure; `create_model` overrides any field.

  An impossible structure is refused when the object is made (`FieldError` naming the field);
  `check_clip` says whether a clip shape fits it.
  """

  stage_depths: tuple[int, ...] = RESNET50_DEPTHS
  width: int = 64  # channels after the stem; stage i has width * 2**i
  inflate: bool = True  # I3D temporal kernels (False: 2D network per frame)
  temporal_pool: bool = True  # 2x1x1 max-pool after res2
  stem_pool_padding: int = 1  # 1: PySlowFast, pytorchvideo, torchvision; 0: Caffe2 release
  nonlocal_stages: tuple[int, ...] = (1, 2)  # res3, res4 (0-based stages); blocks 1, 3, 5, ...
  nonlocal_inner_ratio: float = 0.5  # theta/phi/g width C/2
  nonlocal_scale: bool = True  # d^-0.5 on the attention logits (False: paper's Eq. 5)
  nonlocal_pool: bool = True  # 1x2x2 max-pool of x before phi and g (False: Fig. 5)
  attention_impl: str = "einsum"  # "einsum" | "xla" | "cudnn"
  # Kernel gradients of the convolutions: "auto" (tap-wise matmuls on CPUs, XLA's elsewhere;
  # `reid_jax.models.cpu_conv`) | "xla" (XLA's everywhere). The forward computes the same sums
  # either way (on CPUs "auto"'s k_t x 1 x 1 forward is one wider matmul, rounded otherwise).
  conv_grads: str = "auto"
  last_stride: int = 2  # stride of res5 (1 keeps a 16x8 map)
  bottleneck_dim: int = 512
  dropout_rate: float = 0.5
  leaky_relu_slope: float = 0.1
  remat: bool = False  # recompute each residual block in the backward pass
  dtype: jnp.dtype = jnp.float32  # compute dtype (bfloat16 on accelerators)
  param_dtype: jnp.dtype = jnp.float32

  def __post_init__(self):
    for key in ("stage_depths", "nonlocal_stages"):
      object.__setattr__(self, key, tuple(getattr(self, key)))
    depths = self.stage_depths
    if not (len(depths) == 4 and all(isinstance(n, int) and n >= 1 for n in depths)):
      raise FieldError(
        "stage_depths",
        f"the network has 4 stages (res2..res5) of at least one block each, got {depths}",
      )
    for stage in self.nonlocal_stages:
      if not (0 <= stage < len(depths) and depths[stage] >= 2):
        raise FieldError(
          "nonlocal_stages",
          f"stage {stage} cannot hold non-local blocks (they follow blocks 1, 3, ... of a "
          f"stage): stage_depths is {depths}",
        )
    if self.stem_pool_padding not in (0, 1):
      raise FieldError("stem_pool_padding", f"must be 0 or 1, got {self.stem_pool_padding}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise FieldError("attention_impl", f"{self.attention_impl!r} is not one of {ATTENTION_IMPLS}")
    if self.conv_grads not in CONV_GRADS:
      raise FieldError("conv_grads", f"{self.conv_grads!r} is not one of {CONV_GRADS}")
    for key in ("dtype", "param_dtype"):
      value = getattr(self, key)
      if jnp.dtype(value).name not in DTYPES:
        raise FieldError(key, f"{jnp.dtype(value).name!r} is not one of {DTYPES}")
      object.__setattr__(self, key, jnp.dtype(value))
    if self.attention_impl == "cudnn":
      self._check_cudnn_attention()
    for key in ("width", "bottleneck_dim", "last_stride"):
      if not (isinstance(getattr(self, key), int) and getattr(self, key) >= 1):
        raise FieldError(key, f"must be a positive integer, got {getattr(self, key)!r}")
    if not 0 <= self.dropout_rate < 1:
      raise FieldError("dropout_rate", f"must lie in [0, 1), got {self.dropout_rate}")

  def nonlocal_widths(self) -> dict[int, int]:
    """The inner (theta, phi, g) width of the non-local blocks of each of their stages: the
    attention's single head dimension."""
    return {
      stage: max(1, int(self.width * 2**stage * Bottleneck.expansion * self.nonlocal_inner_ratio))
      for stage in self.nonlocal_stages
    }

  def _check_cudnn_attention(self) -> None:
    """cuDNN's fused attention (jax.nn.dot_product_attention's cudnn implementation) takes
    bfloat16 or float16 inputs and a head dimension that is a multiple of 8, at most 256 (on
    Hopper and later GPUs; 128 before). JAX would refuse either only when tracing on a GPU."""
    if self.dtype.name not in ("bfloat16", "float16"):
      raise FieldError(
        "attention_impl", f"cudnn attention needs dtype bfloat16 or float16, got {self.dtype.name}"
      )
    for stage, inner in self.nonlocal_widths().items():
      if inner > CUDNN_MAX_HEAD_DIM or inner % 8:
        raise FieldError(
          "attention_impl",
          f"cudnn attention takes a head dimension that is a multiple of 8 and at most "
          f"{CUDNN_MAX_HEAD_DIM}; the non-local blocks of res{stage + 2} have {inner}: use xla",
        )

  def check_clip(self, num_frames: int, height: int, width: int) -> None:
    """Raises FieldError (`num_frames`, or the field of the network that does not fit) when
    clips of `num_frames x height x width` cannot go through this network."""
    if self.temporal_pool and num_frames % 2:
      raise FieldError(
        "num_frames", f"the 3D models halve T after res2, so it must be even, got {num_frames}"
      )
    if self.nonlocal_pool:
      sizes = self.feature_map_sizes(height, width)
      for stage in self.nonlocal_stages:
        if min(sizes[stage]) < 2:
          raise FieldError(
            "nonlocal_pool",
            f"{height}x{width} clips give a {sizes[stage][0]}x{sizes[stage][1]} map in "
            f"res{stage + 2}, too small to pool keys by 1x2x2: larger data.height/width, or "
            f"nonlocal_pool=False",
          )

  def temporal_kernel(self, stage: int, block: int) -> int:
    """`k_t` of the first conv of block `block` of stage `stage` (0-based: res2 is stage 0)."""
    if not self.inflate:
      return 1
    pattern = I3D_TEMPORAL_PATTERN[min(stage, len(I3D_TEMPORAL_PATTERN) - 1)]
    return pattern[block % len(pattern)]

  @property
  def stem_temporal_kernel(self) -> int:
    return I3D_STEM_TEMPORAL_KERNEL if self.inflate else 1

  def has_nonlocal(self, stage: int, block: int) -> bool:
    return stage in self.nonlocal_stages and block % 2 == 1

  def stage_stride(self, stage: int) -> int:
    """Spatial stride of a stage's first block: 1 for res2, `last_stride` for res5, else 2."""
    if stage == 0:
      return 1
    return self.last_stride if stage == len(self.stage_depths) - 1 else 2

  def feature_map_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
    """(H, W) of each stage's output for `height x width` frames."""

    def out(n, kernel, stride, pad):
      return (n + 2 * pad - kernel) // stride + 1

    h, w = (out(n, 7, 2, 3) for n in (height, width))  # stem conv
    h, w = (out(n, 3, 2, self.stem_pool_padding) for n in (h, w))
    sizes = []
    for stage in range(len(self.stage_depths)):
      stride = self.stage_stride(stage)
      h, w = out(h, 3, stride, 1), out(w, 3, stride, 1)
      sizes.append((h, w))
    return sizes

  @property
  def feature_dim(self) -> int:
    return self.width * 2 ** (len(self.stage_depths) - 1) * Bottleneck.expansion


VARIANTS = {
  "resnet50_tp": dict(inflate=False, temporal_pool=False, nonlocal_stages=()),
  "resnet3d50": dict(inflate=True, temporal_pool=True, nonlocal_stages=()),
  "resnet3d50_nl": dict(inflate=True, temporal_pool=True, nonlocal_stages=(1, 2)),
}


class Bottleneck(nnx.Module):
  """The I3D bottleneck: `k_t x 1 x 1` conv (C_in -> planes), `1 x 3 x 3` conv (the block's
  spatial stride), `1 x 1 x 1` conv (-> 4 planes), each with BatchNorm; a projection shortcut
  where the shape changes; an optional non-local block after the residual sum."""

  expansion = 4

  def __init__(
    self,
    in_features: int,
    planes: int,
    *,
    stride: int,
    temporal_kernel: int,
    with_nonlocal: bool,
    arch: Architecture,
    rngs: nnx.Rngs,
  ):
    kw = dict(dtype=arch.dtype, param_dtype=arch.param_dtype, rngs=rngs)
    conv_kw = dict(kw, conv_grads=arch.conv_grads)
    out_features = planes * self.expansion
    self.conv1 = layers.Conv3D(in_features, planes, (temporal_kernel, 1, 1), **conv_kw)
    self.bn1 = layers.batch_norm(planes, **kw)
    self.conv2 = layers.Conv3D(planes, planes, (1, 3, 3), stride=stride, **conv_kw)
    self.bn2 = layers.batch_norm(planes, **kw)
    self.conv3 = layers.Conv3D(planes, out_features, (1, 1, 1), **conv_kw)
    self.bn3 = layers.batch_norm(out_features, **kw)
    if stride != 1 or in_features != out_features:
      self.downsample_conv = layers.Conv3D(
        in_features, out_features, (1, 1, 1), stride=stride, **conv_kw
      )
      self.downsample_bn = layers.batch_norm(out_features, **kw)
    else:
      self.downsample_conv = self.downsample_bn = None
    self.nonlocal_block = (
      NonLocalBlock(
        out_features,
        inner_ratio=arch.nonlocal_inner_ratio,
        scale_attention=arch.nonlocal_scale,
        pool_phi_g=arch.nonlocal_pool,
        attention_impl=arch.attention_impl,
        **kw,
      )
      if with_nonlocal
      else None
    )

  def __call__(self, x, *, return_attention: bool = False):  # [B, T, H, W, C]
    out = jax.nn.relu(self.bn1(self.conv1(x)))
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
    self.fc = nnx.Linear(
      in_features,
      arch.bottleneck_dim,
      kernel_init=layers.conv_kernel_init,
      param_dtype=arch.param_dtype,
      rngs=rngs,
    )
    self.bn = layers.batch_norm(
      arch.bottleneck_dim, dtype=jnp.float32, param_dtype=arch.param_dtype, rngs=rngs
    )
    self.dropout = nnx.Dropout(arch.dropout_rate, rngs=rngs)
    self.classifier = nnx.Linear(
      arch.bottleneck_dim,
      num_classes,
      kernel_init=nnx.initializers.normal(0.001),
      param_dtype=arch.param_dtype,
      rngs=rngs,
    )

  def __call__(self, pooled):  # [B, D] float32
    features = jax.nn.leaky_relu(self.bn(self.fc(pooled)), self.leaky_relu_slope)
    logits = self.classifier(self.dropout(features))
    return features, logits


class ReIDNet(nnx.Module):
  """Clip `[B, T, H, W, 3]` (normalised RGB) -> `{'pooled', 'features', 'logits'}`."""

  def __init__(self, arch: Architecture, *, num_classes: int, rngs: nnx.Rngs):
    kw = dict(dtype=arch.dtype, param_dtype=arch.param_dtype)
    self.arch = arch
    self.conv1 = layers.Conv3D(
      3,
      arch.width,
      (arch.stem_temporal_kernel, 7, 7),
      stride=2,
      conv_grads=arch.conv_grads,
      rngs=rngs,
      **kw,
    )
    self.bn1 = layers.batch_norm(arch.width, rngs=rngs, **kw)
    in_features = arch.width
    for stage, depth in enumerate(arch.stage_depths):
      planes = arch.width * 2**stage
      blocks = []
      for block in range(depth):
        blocks.append(
          Bottleneck(
            in_features,
            planes,
            stride=arch.stage_stride(stage) if block == 0 else 1,
            temporal_kernel=arch.temporal_kernel(stage, block),
            with_nonlocal=arch.has_nonlocal(stage, block),
            arch=arch,
            rngs=rngs,
          )
        )
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
    x = jax.nn.relu(self.bn1(self.conv1(clips)))
    x = layers.max_pool_spatial(x, 3, 2, self.arch.stem_pool_padding)
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


def architecture(name: str, **overrides) -> Architecture:
  """The `Architecture` of one of `VARIANTS` with `overrides` (any of its fields); FieldError
  names an unknown model, an unknown field or an impossible value."""
  if name not in VARIANTS:
    raise FieldError("name", f"unknown model {name!r}; choose one of {tuple(VARIANTS)}")
  fields = {f.name for f in dataclasses.fields(Architecture)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise FieldError(
      unknown[0], f"unknown model field(s) {unknown}; valid fields: {sorted(fields)}"
    )
  return Architecture(**{**VARIANTS[name], **overrides})


def create_model(name: str, *, num_classes: int, rngs: nnx.Rngs, **overrides) -> ReIDNet:
  """Builds one of `VARIANTS` (`resnet50_tp`, `resnet3d50`, `resnet3d50_nl`).

  `overrides` set any `Architecture` field, e.g. `stage_depths=(1, 1, 2, 1), width=8` for a tiny
  network of the same structure, or `dtype=jnp.bfloat16` for accelerators.
  """
  if num_classes < 1:
    raise ValueError(f"num_classes must be positive, got {num_classes}")
  return ReIDNet(architecture(name, **overrides), num_classes=num_classes, rngs=rngs)
