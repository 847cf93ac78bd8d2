"""Loads the public Kinetics-400 I3D ResNet-50 checkpoints into `resnet3d50` / `resnet3d50_nl`.

The paper fine-tunes the Non-local Networks' I3D ResNet-50 pre-trained on Kinetics (its Tables 2
and 3). Three public families of files hold those weights (`weight_files` finds which from the
content):

- Caffe2 pickles of the Non-local release (facebookresearch/video-nonlocal-net, also served by
  the PySlowFast model zoo): `i3d_baseline_8x8_IN_pretrain_400k.pkl` (no non-local blocks) and
  `i3d_nonlocal_8x8_IN_pretrain_400k.pkl` (five). Their network max-pools the stem without
  padding, so they need `stem_pool_padding=0`.
- PySlowFast checkpoints (`.pyth`, `{'model_state': ...}`), with or without non-local blocks.
- pytorchvideo's hub checkpoint `I3D_8x8_R50.pyth` (no non-local blocks).

The result computes what the original network computes on the same input (tested against
pytorchvideo's network and against a transcription of the Caffe2 release's definition). Every
Kinetics checkpoint was trained on RGB clips normalised as `(x / 255 - 0.45) / 0.225`
(`reid_jax.data.normalize`, `'kinetics'`): the trainer uses that normalisation for a model
initialised here and records it in its checkpoints.
"""

from __future__ import annotations

import os
import re

from reid_jax.models import weight_files
from reid_jax.models.resnet3d import ReIDNet

NORMALIZATION = "kinetics"

# Tensor names of each family (`weight_files.Naming`).
NAMINGS = {
  "caffe2": weight_files.Naming(
    {
      "stem_conv": "conv1_w",
      "stem_bn": "res_conv1_bn_",
      "conv": "res{res}_{block}_branch2{abc}_w",
      "bn": "res{res}_{block}_branch2{abc}_bn_",
      "downsample_conv": "res{res}_{block}_branch1_w",
      "downsample_bn": "res{res}_{block}_branch1_bn_",
      "nonlocal": "nonlocal_conv{res}_{block}_{proj}_",
      "nonlocal_bn": "nonlocal_conv{res}_{block}_bn_",
    },
    ("s", "b", "rm", "riv"),
    "w",
    "b",
  ),
  "pyslowfast": weight_files.Naming(
    {
      "stem_conv": "s1.pathway0_stem.conv.weight",
      "stem_bn": "s1.pathway0_stem.bn.",
      "conv": "s{res}.pathway0_res{block}.branch2.{abc}.weight",
      "bn": "s{res}.pathway0_res{block}.branch2.{abc}_bn.",
      "downsample_conv": "s{res}.pathway0_res{block}.branch1.weight",
      "downsample_bn": "s{res}.pathway0_res{block}.branch1_bn.",
      "nonlocal": "s{res}.pathway0_nonlocal{block}.conv_{proj}.",
      "nonlocal_bn": "s{res}.pathway0_nonlocal{block}.bn.",
    },
    weight_files.TORCH_BN_SUFFIXES,
  ),
  "pytorchvideo": weight_files.Naming(
    {  # no non-local blocks
      "stem_conv": "blocks.0.conv.weight",
      "stem_bn": "blocks.0.norm.",
      "conv": "blocks.{ptv}.res_blocks.{block}.branch2.conv_{abc}.weight",
      "bn": "blocks.{ptv}.res_blocks.{block}.branch2.norm_{abc}.",
      "downsample_conv": "blocks.{ptv}.res_blocks.{block}.branch1_conv.weight",
      "downsample_bn": "blocks.{ptv}.res_blocks.{block}.branch1_norm.",
    },
    weight_files.TORCH_BN_SUFFIXES,
  ),
}

# What a family's files hold besides the network: classifier, optimiser and counters.
_IGNORED = {
  "caffe2": lambda k: k.startswith("pred_") or k.endswith("_momentum") or k in ("lr", "model_iter"),
  "pyslowfast": lambda k: k.startswith("head.") or k.endswith("num_batches_tracked"),
  "pytorchvideo": lambda k: k.startswith("blocks.6.") or k.endswith("num_batches_tracked"),
}
_NONLOCAL_KEY = re.compile(r"^nonlocal_conv\d|\.pathway0_nonlocal\d")

# The stem max-pool's padding of each family's network.
_STEM_POOL_PADDING = {"caffe2": 0, "pyslowfast": 1, "pytorchvideo": 1}


def _conv_kernel(value, kernel_shape):
  """`[out, in, t, h, w]` -> `[t, h, w, in, out]` (the kernel's shape is checked later)."""
  del kernel_shape
  return value.transpose(2, 3, 4, 1, 0) if value.ndim == 5 else value


def _projection_kernel(value):
  """A 1x1x1 conv `[out, in, 1, 1, 1]` -> a dense kernel `[in, out]`."""
  return value[:, :, 0, 0, 0].T if value.shape[2:] == (1, 1, 1) else value


def load_kinetics_i3d(model: ReIDNet, path: str | os.PathLike) -> ReIDNet:
  """Loads a Kinetics I3D ResNet-50 checkpoint (any family above) into `model`, in place.

  Args:
    model: `resnet3d50` for a checkpoint without non-local blocks, `resnet3d50_nl` for one with
      them, built with the structure the checkpoint was trained with: `stem_pool_padding=0`
      for the Caffe2 release's files (1, the default, for the others), and for non-local
      checkpoints `nonlocal_pool=True` and `nonlocal_scale=True` (the defaults). Any
      `last_stride` and head; the file's classifier is not used.
    path: the checkpoint.
  Returns:
    `model`, whose backbone now computes what the original network computes.
  Raises:
    ValueError naming the structural setting or the key (missing, unexpected or of the wrong
    shape) that does not match; the model is then left untouched.
  """
  weights = weight_files.read_weight_file(path)
  family, path = weights.family, weights.path
  if family not in NAMINGS:
    raise ValueError(
      f"{path} is a 2D ResNet-50 ({family} names), not a Kinetics I3D "
      f"checkpoint: inflate it with load_torchvision_resnet50"
    )
  if family == "pyslowfast":  # recent PySlowFast names the non-local BatchNorm `norm`
    weights.tensors = {
      re.sub(r"(pathway0_nonlocal\d+)\.norm\.", r"\1.bn.", k): v for k, v in weights.tensors.items()
    }
  _check_structure(model, weights)
  target = weight_files.build_target(
    model, weights, NAMINGS[family], _conv_kernel, _projection_kernel
  )
  target.assign(model, ignore=_IGNORED[family])
  return model


def _check_structure(model: ReIDNet, weights: weight_files.WeightFile) -> None:
  """The settings that change what the network computes without changing any tensor's shape."""
  arch, family, path = model.arch, weights.family, weights.path
  described = f"{path} ({family} I3D checkpoint)"
  if not arch.inflate:
    raise ValueError(
      f"{described} needs an inflated model (resnet3d50 or resnet3d50_nl), "
      f"not a 2D one (inflate=False)"
    )
  if not arch.temporal_pool:
    raise ValueError(
      f"{described}: its network max-pools time 2x1x1 after res2; the model has temporal_pool=False"
    )
  if arch.stem_pool_padding != _STEM_POOL_PADDING[family]:
    raise ValueError(
      f"{described}: its network pads the stem max-pool by "
      f"{_STEM_POOL_PADDING[family]}; build the model with stem_pool_padding="
      f"{_STEM_POOL_PADDING[family]} (config.model.stem_pool_padding), it has "
      f"{arch.stem_pool_padding}"
    )
  file_nonlocal = sorted(k for k in weights.tensors if _NONLOCAL_KEY.search(k))
  model_nonlocal = any(
    block.nonlocal_block is not None for blocks in model.stages for block in blocks
  )
  if file_nonlocal and not model_nonlocal:
    raise ValueError(
      f"{described} has non-local blocks ({file_nonlocal[0]!r}, ...) and the "
      f"model has none: load it into resnet3d50_nl"
    )
  if model_nonlocal and not file_nonlocal:
    raise ValueError(
      f"{described} has no non-local blocks and the model has some: load it "
      f"into resnet3d50, or use a non-local checkpoint "
      f"(i3d_nonlocal_8x8_IN_pretrain_400k.pkl)"
    )
  if file_nonlocal:
    for field, meaning in (
      ("nonlocal_pool", "max-pool x by 1x2x2 before phi and g"),
      ("nonlocal_scale", "scale the attention logits by d^-0.5"),
    ):
      if not getattr(arch, field):
        raise ValueError(
          f"{described}: its non-local blocks {meaning}; the model has "
          f"{field}=False (config.model.{field})"
        )
