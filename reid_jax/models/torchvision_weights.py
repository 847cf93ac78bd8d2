"""Loads a torchvision ResNet-50 state dict into any variant, inflating 2D kernels to 3D.

Spatial convolutions and BatchNorms take the 2D weights as they are; each temporal conv is set
to the identity split over its taps (`mean`, the paper's rule) or on its centre tap (`center`),
so the inflated network computes what the 2D network computes on a static clip. Non-local
blocks and the head keep their own initialisation (`fc.*` of the file is not used).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from reid_jax.models import layers
from reid_jax.models.resnet3d import ReIDNet

_BN_FIELDS = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
# Keys a torchvision file holds that have no counterpart here by design.
_UNUSED_KEYS = ("fc.weight", "fc.bias")


def _expected_keys(model: ReIDNet) -> dict[str, str]:
  """torchvision key -> attribute path in `model`, for every conv and BatchNorm tensor."""
  mapping = {"conv1.weight": "conv1.conv.kernel"}
  bns = {"bn1": "bn1"}
  for stage, blocks in enumerate(model.stages, start=1):
    for index, block in enumerate(blocks):
      prefix = f"layer{stage}.{index}"
      for n in (1, 2, 3):
        mapping[f"{prefix}.conv{n}.weight"] = f"{prefix}.conv{n}.conv.kernel"
        bns[f"{prefix}.bn{n}"] = f"{prefix}.bn{n}"
      if block.downsample_conv is not None:
        mapping[f"{prefix}.downsample.0.weight"] = f"{prefix}.downsample_conv.conv.kernel"
        bns[f"{prefix}.downsample.1"] = f"{prefix}.downsample_bn"
  for torch_name, path in bns.items():
    for torch_field, field in _BN_FIELDS.items():
      mapping[f"{torch_name}.{torch_field}"] = f"{path}.{field}"
  return mapping


def _variable(model: nnx.Module, path: str) -> nnx.Variable:
  node = model
  for part in path.split("."):
    node = getattr(node, part)
  return node


def _read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"torchvision ResNet-50 weights not found: {path}")
  try:
    import torch  # deferred: only this loader needs PyTorch
  except ImportError as e:
    raise ImportError(f"reading {path} needs PyTorch (`pip install torch`)") from e
  try:
    raw = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for a bad file
    raise ValueError(f"{path} is not a readable PyTorch state dict: {e}") from e
  if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
    raw = raw["state_dict"]  # training checkpoints wrap the weights
  if not isinstance(raw, Mapping):
    raise ValueError(f"{path} holds a {type(raw).__name__}, not a state dict")
  state = {}
  for key, value in raw.items():
    if not hasattr(value, "numpy"):
      raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
    state[key.removeprefix("module.")] = value.detach().cpu().numpy()
  return state


def load_torchvision_resnet50(model: ReIDNet, path: str | os.PathLike, *,
                              temporal_init: str = "mean") -> ReIDNet:
  """Loads torchvision ResNet-50 weights (`torch.save(resnet50().state_dict(), path)`) in place.

  Args:
    model: any variant from `create_model` with the ResNet-50 stage depths.
    path: the `.pth` file. A `{'state_dict': ...}` wrapper and a `module.` prefix are accepted.
    temporal_init: `mean` (each of the k taps is I/k) or `center` (centre tap I, others 0).
  Returns:
    `model`, updated.
  Raises:
    ValueError naming the key for a missing, unexpected or wrongly shaped tensor.
  """
  layers.temporal_identity_kernel(1, 1, temporal_init)  # validates the rule before any I/O
  state = _read_state_dict(path)
  mapping = _expected_keys(model)
  missing = sorted(set(mapping) - set(state))
  if missing:
    raise ValueError(f"{path}: missing key {missing[0]!r} ({len(missing)} missing in all)")
  unexpected = sorted(k for k in state if k not in mapping and k not in _UNUSED_KEYS
                      and not k.endswith("num_batches_tracked"))
  if unexpected:
    raise ValueError(f"{path}: unexpected key {unexpected[0]!r} "
                     f"({len(unexpected)} unexpected in all); is this a ResNet-50 state dict?")

  updates = {}
  for key, target in mapping.items():
    value = state[key]
    if value.ndim == 4:  # conv: [O, I, kh, kw] -> [kh, kw, I, O]
      value = value.transpose(2, 3, 1, 0)
    variable = _variable(model, target)
    if value.shape != variable.shape:
      raise ValueError(f"{path}: key {key!r} has shape {value.shape} (as {target}), "
                       f"the model expects {variable.shape}")
    updates[target] = value
  for target, value in updates.items():  # nothing changes unless every tensor fits
    variable = _variable(model, target)
    variable.set_value(jnp.asarray(value, variable[...].dtype))

  for temporal in _temporal_convs(model):
    k, c, _ = temporal.kernel.shape
    temporal.kernel.set_value(
        layers.temporal_identity_kernel(k, c, temporal_init, temporal.kernel[...].dtype))
  return model


def _temporal_convs(model: ReIDNet):
  if model.conv1_t is not None:
    yield model.conv1_t
  for blocks in model.stages:
    for block in blocks:
      if block.conv2_t is not None:
        yield block.conv2_t
