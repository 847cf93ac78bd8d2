"""The paper's networks in Flax NNX: see `resnet3d` for the architecture and its variants,
`kinetics_weights` and `torchvision_weights` for the pretrained weights they start from."""

from reid_jax.models.kinetics_weights import load_kinetics_i3d
from reid_jax.models.layers import num_params
from reid_jax.models.nonlocal_block import NonLocalBlock
from reid_jax.models.resnet3d import VARIANTS, Architecture, ReIDNet, create_model
from reid_jax.models.torchvision_weights import load_torchvision_resnet50

MODEL_NAMES = tuple(VARIANTS)

__all__ = [
  "Architecture",
  "MODEL_NAMES",
  "NonLocalBlock",
  "ReIDNet",
  "create_model",
  "load_kinetics_i3d",
  "load_torchvision_resnet50",
  "num_params",
]
