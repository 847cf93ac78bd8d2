"""Reading other frameworks' ResNet-50 checkpoints, and writing their tensors into a `ReIDNet`.

Formats, found from the content (never the file name):

| family        | container                                       | stem conv key                    |
|---------------|-------------------------------------------------|----------------------------------|
| `caffe2`      | pickle `{'blobs': {name: ndarray}}` (Python 2)  | `conv1_w`                        |
| `pyslowfast`  | `torch.save({'model_state': ...})`              | `s1.pathway0_stem.conv.weight`   |
| `pytorchvideo`| `torch.save({'model_state': ...})`              | `blocks.0.conv.weight`           |
| `torchvision` | a state dict, or `{'state_dict'}` (torchreid), `{'model'}` with `backbone.` (fast-reid) | `conv1.weight` |

The first three are the Kinetics I3D checkpoints (`kinetics_weights`), the last the 2D ResNet-50s
that are inflated (`torchvision_weights`). Pickles are read with an unpickler that admits numpy
arrays and nothing else, since unpickling can run arbitrary code; PyTorch files with
`torch.load(weights_only=True)`, which is as strict.

Every loader goes through `Target.assign`: all tensors are checked (presence, no extras, shape)
before any is written, so a failed load leaves the model untouched.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Callable, Iterator, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_prep.errors import require

BN_FIELDS = ("scale", "bias", "mean", "var")

# Keys of the files' stem conv, one per family, in the order they are looked for.
_STEM_KEYS = {
  "caffe2": "conv1_w",
  "pyslowfast": "s1.pathway0_stem.conv.weight",
  "pytorchvideo": "blocks.0.conv.weight",
  "torchvision": "conv1.weight",
}
KINETICS_FAMILIES = ("caffe2", "pyslowfast", "pytorchvideo")


@dataclasses.dataclass
class WeightFile:
  """A checkpoint's tensors as numpy arrays, its family and where it came from."""

  path: str
  family: str
  tensors: dict[str, np.ndarray]


def read_weight_file(path: str | os.PathLike) -> WeightFile:
  """Reads any of the families above; raises naming `path` if it is none of them."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weights file not found: {path}")
  raw = None
  with open(path, "rb") as f:
    if f.read(4) != b"PK\x03\x04":  # not a zip: torch.save's format since PyTorch 1.6
      f.seek(0)
      try:
        # Caffe2 pickles were written by Python 2: latin1 maps its byte strings to str
        # losslessly.
        raw = _NumpyOnlyUnpickler(f, encoding="latin1").load()
      except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
      except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError):
        raw = None  # not a pickle of arrays: perhaps PyTorch's legacy format
  if isinstance(raw, Mapping) and ("blobs" in raw or _STEM_KEYS["caffe2"] in raw):
    blobs = raw.get("blobs", raw)
    tensors = {str(k): np.asarray(v) for k, v in blobs.items() if isinstance(v, np.ndarray)}
    return WeightFile(path, "caffe2", tensors)
  state = _unwrap_state_dict(path, _torch_load(path))
  for family in ("pyslowfast", "pytorchvideo", "torchvision"):
    if _STEM_KEYS[family] in state:
      return WeightFile(path, family, state)
  raise ValueError(
    f"{path} is not a ResNet-50 checkpoint this project reads: none of "
    f"{sorted(_STEM_KEYS.values())} in it (first keys: {sorted(state)[:5]})"
  )


class UnsafePickleError(pickle.UnpicklingError):
  """A pickle names a global other than those that rebuild numpy arrays."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Resolves the few globals a pickled ndarray needs and refuses every other one."""

  _ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    # Python 3 pickles of protocol 2 store bytes as `_codecs.encode(str, 'latin1')`.
    ("_codecs", "encode"),
  }

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise UnsafePickleError(
        f"refuses to load {module}.{name}: a weights pickle may hold numpy arrays only"
      )
    if module.startswith("numpy.core"):
      module = "numpy._core" + module.removeprefix("numpy.core")  # numpy 2's name
    return super().find_class(module, name)


def _torch_load(path: str):
  torch = require("torch", "torch", f"reading {path} (a PyTorch weights file)")
  # Training checkpoints of the re-id codebases hold numpy scalars (e.g. torchreid's `rank1`).
  numeric = np.typecodes["AllInteger"] + np.typecodes["AllFloat"] + "?"
  numpy_scalars = [np._core.multiarray.scalar, np.dtype, *{type(np.dtype(c)) for c in numeric}]
  try:
    with torch.serialization.safe_globals(numpy_scalars):
      return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for a bad file
    raise ValueError(f"{path} is not a readable weights file: {e}") from e


def _unwrap_state_dict(path: str, raw) -> dict[str, np.ndarray]:
  """The tensors of a PyTorch checkpoint, whatever the training framework wrapped them in."""
  for wrapper in ("model_state", "state_dict", "model"):  # PySlowFast / ptv, torchreid, fast-reid
    if isinstance(raw, Mapping) and isinstance(raw.get(wrapper), Mapping):
      raw = raw[wrapper]
      break
  if not isinstance(raw, Mapping):
    raise ValueError(f"{path} holds a {type(raw).__name__}, not a state dict")
  state = {}
  for key, value in raw.items():
    if not hasattr(value, "numpy"):
      raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
    key = key.removeprefix("module.")  # saved from nn.DataParallel
    state[key.removeprefix("backbone.")] = value.detach().cpu().numpy()  # fast-reid
  return state


# --- the model side ---------------------------------------------------------------------------


def model_parts(model) -> Iterator[tuple[tuple, str]]:
  """`(role, attribute path)` of every conv, BatchNorm and non-local projection of a ReIDNet.

  Roles (stages 0-based, res2 = 0): `('stem_conv',)`, `('stem_bn',)`, `('conv', s, i, n)` and
  `('bn', s, i, n)` for n = 1, 2, 3, `('downsample_conv', s, i)`, `('downsample_bn', s, i)`,
  `('nonlocal', s, i, which)` for theta, phi, g, w_z, and `('nonlocal_bn', s, i)`.
  """
  yield ("stem_conv",), "conv1"
  yield ("stem_bn",), "bn1"
  for s, blocks in enumerate(model.stages):
    for i, block in enumerate(blocks):
      prefix = f"layer{s + 1}.{i}"
      for n in (1, 2, 3):
        yield ("conv", s, i, n), f"{prefix}.conv{n}"
        yield ("bn", s, i, n), f"{prefix}.bn{n}"
      if block.downsample_conv is not None:
        yield ("downsample_conv", s, i), f"{prefix}.downsample_conv"
        yield ("downsample_bn", s, i), f"{prefix}.downsample_bn"
      if block.nonlocal_block is not None:
        for which in ("theta", "phi", "g", "w_z"):
          yield ("nonlocal", s, i, which), f"{prefix}.nonlocal_block.{which}"
        yield ("nonlocal_bn", s, i), f"{prefix}.nonlocal_block.bn"


def variable(model, path: str) -> nnx.Variable:
  node = model
  for part in path.split("."):
    node = getattr(node, part)
  return node


@dataclasses.dataclass
class Target:
  """What a file must provide for a model: source key -> (variable path, transform)."""

  weights: WeightFile
  entries: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = dataclasses.field(
    default_factory=dict
  )

  def add(self, key: str, path: str, transform=None) -> None:
    self.entries[key] = (path, transform or np.asarray)

  def assign(self, model, *, ignore: Callable[[str], bool]) -> None:
    """Writes every entry into `model`, or raises before writing anything.

    Raises ValueError naming the first missing key, the first key of the file that is neither
    an entry nor ignored, or the first tensor whose transformed shape is not the variable's.
    """
    path, tensors = self.weights.path, self.weights.tensors
    missing = [k for k in self.entries if k not in tensors]
    if missing:
      raise ValueError(f"{path}: missing key {missing[0]!r} ({len(missing)} missing in all)")
    unexpected = sorted(k for k in tensors if k not in self.entries and not ignore(k))
    if unexpected:
      raise ValueError(
        f"{path}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected "
        f"in all); is it a checkpoint of another network?"
      )
    updates = []
    for key, (target, transform) in self.entries.items():
      var = variable(model, target)
      value = transform(tensors[key])
      if value.shape != var.shape:
        raise ValueError(
          f"{path}: key {key!r} of shape {tensors[key].shape} gives "
          f"{value.shape} for {target}, which is {var.shape}"
        )
      updates.append((var, value))
    for var, value in updates:
      var.set_value(jnp.asarray(value, var[...].dtype))


@dataclasses.dataclass(frozen=True)
class Naming:
  """A family's tensor names, as templates by role kind (see `model_parts`): a conv's key, or
  the prefix of a BatchNorm's or a non-local projection's keys, which the suffixes complete.
  A kind without a template is one the family's network does not have.

  Template fields: `res` (2-5, as res2..res5), `layer` (1-4, torchvision's), `ptv` (1, 3, 4, 5:
  pytorchvideo's block index, after the pool at 2), `block`, `n` (1-3) or `abc` (a-c) for the
  bottleneck's convs, `proj` (theta, phi, g, out) for the non-local projections.
  """

  templates: Mapping[str, str]
  bn_suffixes: tuple[str, str, str, str]  # scale, bias, mean, var
  weight_suffix: str = "weight"
  bias_suffix: str = "bias"

  def prefix(self, role: tuple) -> str | None:
    template = self.templates.get(role[0])
    if template is None or len(role) == 1:
      return template
    stage, block = role[1], role[2]
    fields = dict(
      res=stage + 2, layer=stage + 1, ptv=stage + 1 if stage == 0 else stage + 2, block=block
    )
    if role[0] in ("conv", "bn"):
      fields.update(n=role[3], abc="abc"[role[3] - 1])
    elif role[0] == "nonlocal":
      fields["proj"] = "out" if role[3] == "w_z" else role[3]
    return template.format(**fields)


TORCH_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var")


def build_target(
  model, weights: WeightFile, naming: Naming, conv_transform, projection_transform=None
) -> Target:
  """The `Target` of every part of `model` that `naming` names. `conv_transform(value, kernel
  shape)` maps a conv weight to the model's kernel layout; `projection_transform` a non-local
  projection's weight to a dense kernel."""
  target = Target(weights)
  for role, path in model_parts(model):
    name = naming.prefix(role)
    if name is None:
      continue
    if role[0].endswith("bn"):
      for field, suffix in zip(BN_FIELDS, naming.bn_suffixes):
        target.add(name + suffix, f"{path}.{field}")
    elif role[0] == "nonlocal":
      target.add(name + naming.weight_suffix, f"{path}.kernel", projection_transform)
      target.add(name + naming.bias_suffix, f"{path}.bias")
    else:
      shape = variable(model, f"{path}.kernel").shape
      target.add(name, f"{path}.kernel", lambda v, shape=shape: conv_transform(v, shape))
  return target
