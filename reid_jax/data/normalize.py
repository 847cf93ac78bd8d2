"""Pixel normalisation, applied on the accelerator.

The input pipelines emit uint8 clips (4x fewer bytes to move host -> device than float32); the
jitted train and eval steps call `normalize_clips` on device with the statistics the model's
initial weights were trained with:

- `imagenet`: torchvision's ImageNet mean and std, for 2D-initialised models (torchvision,
  torchreid, fast-reid ResNet-50s) and models trained from scratch;
- `kinetics`: `(x / 255 - 0.45) / 0.225` on every channel, for the Kinetics I3D checkpoints
  (video-nonlocal-net, PySlowFast, pytorchvideo).

The trainer derives the name from the initialisation and records it in every checkpoint;
evaluation, extraction and fine-tuning read it from there, never from the command line.
"""

import numpy as np

NORMALIZATIONS = {
  "imagenet": (
    np.array([0.485, 0.456, 0.406], np.float32),
    np.array([0.229, 0.224, 0.225], np.float32),
  ),
  "kinetics": (np.full(3, 0.45, np.float32), np.full(3, 0.225, np.float32)),
}


def normalize_clips(clips, normalization: str):
  """`(clips / 255 - mean) / std` as float32, channels last, with the named statistics.

  Works on numpy arrays, jax arrays and tracers alike (numpy constants broadcast into either).

  Args:
      clips: uint8 `[..., 3]` RGB, e.g. `[B, T, H, W, 3]`.
      normalization: a key of `NORMALIZATIONS`.
  """
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"unknown normalization {normalization!r}; one of {sorted(NORMALIZATIONS)}")
  mean, std = NORMALIZATIONS[normalization]
  # Folded into one multiply-add.
  return clips.astype(np.float32) * (1.0 / (255.0 * std)) - mean / std
