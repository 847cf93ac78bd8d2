"""Inflates a 2D ResNet-50 with torchvision's tensor names into any variant.

Three kinds of files have those names: torchvision's ImageNet weights (`resnet50-0676ba61.pth`,
the paper's "ImageNet" initialisation), and the 2D image re-id models of torchreid
(`{'state_dict': ...}`, plus `classifier.*` / `fc.*` heads) and fast-reid (`{'model': ...}`,
`backbone.` prefix, `heads.*`), the paper's "ReID" initialisation. Heads are skipped and named
in one log line; every other tensor must be there, with its shape.

A 2D `k x k` kernel W becomes the `t x k x k` kernel of the inflated network (the stem's 5x7x7,
the bottleneck's first 3x1x1 conv) by the paper's rule, `mean`: each of the t planes is W / t,
so on a static clip the network computes what the 2D one computes, away from the temporal
borders; or by `center`: W on the centre plane, zeros elsewhere, exact at the borders too. The
non-local blocks and the re-id head keep their own initialisation (the blocks start as the
identity). These files were trained on ImageNet-normalised RGB (`'imagenet'` in
`reid_jax.data.normalize`); a fast-reid file that records other pixel statistics is refused.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from reid_jax.data.normalize import NORMALIZATIONS
from reid_jax.models import weight_files
from reid_jax.models.resnet3d import ReIDNet

NORMALIZATION = "imagenet"
TEMPORAL_INIT_RULES = ("mean", "center")


log = logging.getLogger("reid_jax")


# A 2D ResNet has no non-local blocks: the model's keep their initialisation.
NAMING = weight_files.Naming(
  {
    "stem_conv": "conv1.weight",
    "stem_bn": "bn1.",
    "conv": "layer{layer}.{block}.conv{n}.weight",
    "bn": "layer{layer}.{block}.bn{n}.",
    "downsample_conv": "layer{layer}.{block}.downsample.0.weight",
    "downsample_bn": "layer{layer}.{block}.downsample.1.",
  },
  weight_files.TORCH_BN_SUFFIXES,
)


def _is_head(key: str) -> bool:
  """Tensors of the 2D network's classifier or re-id head (torchvision, torchreid, fast-reid)."""
  return key.split(".")[0] in ("fc", "classifier", "heads", "pixel_mean", "pixel_std")


def inflate_kernel(value: np.ndarray, kernel_shape, rule: str) -> np.ndarray:
  """A 2D conv weight `[out, in, h, w]` -> a `[t, h, w, in, out]` kernel by `rule`."""
  if value.ndim != 4:
    return value  # the shape check names it
  t = kernel_shape[0]
  plane = value.transpose(2, 3, 1, 0)
  if rule == "mean":
    return np.broadcast_to(plane / t, (t, *plane.shape))
  kernel = np.zeros((t, *plane.shape), value.dtype)
  kernel[t // 2] = plane
  return kernel


def load_torchvision_resnet50(
  model: ReIDNet, path: str | os.PathLike, *, temporal_init: str = "mean"
) -> ReIDNet:
  """Loads a 2D ResNet-50 (torchvision, torchreid or fast-reid file) into `model`, in place.

  Args:
    model: any variant from `create_model` with the ResNet-50 stage depths.
    path: the file. Wrappers (`state_dict`, `model`) and `module.` / `backbone.` prefixes are
      accepted; head tensors are skipped and logged.
    temporal_init: `mean` (each of the t planes is W / t, the paper's rule) or `center`.
  Returns:
    `model`, updated.
  Raises:
    ValueError naming the key for a missing, unexpected or wrongly shaped tensor, or the pixel
    statistics of a fast-reid model trained without ImageNet's; the model is then untouched.
  """
  if temporal_init not in TEMPORAL_INIT_RULES:
    raise ValueError(f"temporal_init must be one of {TEMPORAL_INIT_RULES}, got {temporal_init!r}")
  weights = weight_files.read_weight_file(path)
  if weights.family != "torchvision":
    raise ValueError(
      f"{weights.path} is a Kinetics I3D checkpoint ({weights.family}), not a 2D "
      f"ResNet-50: load it with load_kinetics_i3d"
    )
  if model.arch.stem_pool_padding != 1:
    raise ValueError(
      f"{weights.path}: a torchvision ResNet-50 pads its stem max-pool by 1; the "
      f"model has stem_pool_padding={model.arch.stem_pool_padding} "
      f"(config.model.stem_pool_padding)"
    )
  _check_pixel_statistics(weights)
  target = weight_files.build_target(
    model, weights, NAMING, lambda value, shape: inflate_kernel(value, shape, temporal_init)
  )
  target.assign(model, ignore=lambda k: _is_head(k) or k.endswith("num_batches_tracked"))
  heads = sorted(k for k in weights.tensors if _is_head(k))
  if heads:
    log.info("%s: skipped %d head tensors: %s", weights.path, len(heads), ", ".join(heads))
  return model


def _check_pixel_statistics(weights: weight_files.WeightFile) -> None:
  """fast-reid files store the pixel statistics (0-255 scale, RGB) their model was trained with."""
  mean, std = NORMALIZATIONS[NORMALIZATION]
  for key, imagenet in (("pixel_mean", 255 * mean), ("pixel_std", 255 * std)):
    if key in weights.tensors:
      value = weights.tensors[key].reshape(-1)
      if value.shape != imagenet.shape or not np.allclose(value, imagenet, atol=0.01):
        raise ValueError(
          f"{weights.path}: {key} is {value.tolist()}, not ImageNet's "
          f"{imagenet.round(3).tolist()}; this project normalises 2D-initialised "
          f"models with ImageNet's statistics"
        )
