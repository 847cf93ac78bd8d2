"""Pixel normalisation, applied on the accelerator.

The input pipelines emit uint8 clips (4x fewer bytes to move host -> device than float32); the
jitted train and eval steps call `normalize_clips` on device. The statistics are ImageNet's, the
ones every pretrained backbone here (torchvision ResNet-50, Kinetics I3D) was trained with.
"""

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

# (x / 255 - mean) / std folded into one multiply-add.
_SCALE = 1.0 / (255.0 * IMAGENET_STD)
_SHIFT = IMAGENET_MEAN / IMAGENET_STD


def normalize_clips(clips):
    """`(clips / 255 - IMAGENET_MEAN) / IMAGENET_STD` as float32, channels last.

    Works on numpy arrays, jax arrays and tracers alike (numpy constants broadcast into either).

    Args:
        clips: uint8 `[..., 3]` RGB, e.g. `[B, T, H, W, 3]`.
    """
    return clips.astype(np.float32) * _SCALE - _SHIFT
