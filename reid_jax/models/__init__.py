"""The paper's networks in Flax NNX: see `resnet3d` for the architecture and its variants,
`kinetics_weights` and `torchvision_weights` for the pretrained weights they start from.

The weight loaders are loaded on first use (PEP 562 `__getattr__`): restoring a trained model
for inference never needs them.
"""

import importlib

from reid_jax.models.layers import num_params
from reid_jax.models.nonlocal_block import NonLocalBlock
from reid_jax.models.resnet3d import VARIANTS, Architecture, ReIDNet, architecture, create_model

MODEL_NAMES = tuple(VARIANTS)
_LOADERS = {
  "load_kinetics_i3d": "reid_jax.models.kinetics_weights",
  "load_torchvision_resnet50": "reid_jax.models.torchvision_weights",
}

__all__ = [
  "Architecture",
  "MODEL_NAMES",
  "NonLocalBlock",
  "ReIDNet",
  "architecture",
  "create_model",
  "num_params",
  *_LOADERS,
]


def __getattr__(name):
  if name in _LOADERS:
    return getattr(importlib.import_module(_LOADERS[name]), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
