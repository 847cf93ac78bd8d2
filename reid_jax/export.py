"""`export` mode: the trained feature function for serving, with its preprocessing inside.

    <workdir>/export/step_<N>/
      features.jax_export   jax.export serialization (StableHLO): uint8 clips [b, T, H, W, 3] RGB
                            -> float32 features [b, D], b symbolic; reload with
                            `jax.export.deserialize(bytes).call(clips)`
      saved_model/          the same function as a TensorFlow SavedModel (jax2tf), signature
                            `serving_default`: input `clips`, output `features`
      features.onnx         the same function in ONNX (jax2onnx, opset `ONNX_OPSET`), input
                            `clips`, output `features`, dynamic batch (`export.formats` onnx)
      serving.json          what a caller must know: each form and its platforms, the input and
                            how frames become it (the crop rule), frames per clip, how a
                            tracklet's feature is formed, the metric, a threshold

`config.export.formats` picks the forms (default jax_export and saved_model). The input
normalisation the model was trained with is inside every form, so a caller feeds the cropped
frames as they are and cannot feed the wrong preprocessing. The weights are constants of the
program (`InferenceModel.serving_function`). The ONNX file is checked with onnxruntime against
the jitted function before it is kept. The folder is written under a temporary name and renamed
when complete.

jax2tf's SavedModel holds the program as one `XlaCallModule` op, which runs in TensorFlow on the
exported platforms but which tf2onnx cannot convert: ONNX comes from the JAX function directly.
"""

from __future__ import annotations

import json
import logging
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from data_prep.errors import UserError, require
from data_prep.files import atomic_directory, check_writable

log = logging.getLogger("reid_jax")

PLATFORMS = ("cpu", "cuda", "tpu")
FORMATS = ("jax_export", "saved_model", "onnx")
ONNX_OPSET = 23
# The ONNX file is kept only if onnxruntime's features of random clips match the jitted
# function's this closely (largest difference over the largest feature magnitude).
ONNX_TOLERANCE = 1e-4


class ExportExists(UserError, FileExistsError):
  """The export folder of this step exists already."""


def _choices_of(text: str, choices: tuple[str, ...]) -> tuple[str, ...]:
  """The comma-separated names of `text`, each one of `choices`; ValueError otherwise."""
  names = tuple(n.strip() for n in text.split(",") if n.strip())
  if not names or [n for n in names if n not in choices]:
    raise ValueError(f"{text!r}; choose from {', '.join(choices)}")
  return names


def platforms_of(text: str) -> tuple[str, ...]:
  """The platforms of `config.export.platforms` (comma separated); ValueError naming the
  unknown ones."""
  return _choices_of(text, PLATFORMS)


def formats_of(text: str) -> tuple[str, ...]:
  """The forms of `config.export.formats` (comma separated); ValueError naming the unknown
  ones, MissingExtra when onnx is asked for and its converter is not installed."""
  formats = _choices_of(text, FORMATS)
  if "onnx" in formats:
    for module in ("jax2onnx", "onnxruntime"):
      require(module, "onnx", "export.formats onnx")
  return formats


def export_jax(fn, clip_shape, platforms) -> bytes:
  """The serialized `jax.export` of `fn` for uint8 clips of `clip_shape` (T, H, W, 3) and a
  symbolic batch."""
  (batch,) = jax.export.symbolic_shape("b")
  spec = jax.ShapeDtypeStruct((batch, *clip_shape), jnp.uint8)
  return bytes(jax.export.export(jax.jit(fn), platforms=platforms)(spec).serialize())


def export_saved_model(fn, clip_shape, platforms, path: str) -> None:
  """`fn` as a TensorFlow SavedModel with a `serving_default` signature: `clips` -> `features`."""
  import tensorflow as tf
  from jax.experimental import jax2tf

  T, H, W, C = clip_shape
  converted = jax2tf.convert(
    fn,
    polymorphic_shapes=[f"(b, {T}, {H}, {W}, {C})"],
    with_gradient=False,
    native_serialization_platforms=platforms,
  )
  module = tf.Module()
  # The signature's spec is not enforced on the shape of a loaded SavedModel's inputs, and the
  # program's own shape assertion is unreadable: `ensure_shape` names the expected shape.
  module.features = tf.function(
    lambda clips: {"features": converted(tf.ensure_shape(clips, [None, T, H, W, C]))},
    input_signature=[tf.TensorSpec([None, T, H, W, C], tf.uint8, name="clips")],
    autograph=False,
  )
  tf.saved_model.save(
    module, path, signatures={"serving_default": module.features.get_concrete_function()}
  )


class ExportCheckFailed(UserError, ValueError):
  """A converted form does not compute the model's features."""


def _random_clips(batch: int, clip_shape, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (batch, *clip_shape), dtype=np.uint8)


def relative_difference(got, reference) -> float:
  """Largest absolute difference over the largest magnitude of `reference`."""
  reference = np.asarray(reference, np.float64)
  return float(np.abs(np.asarray(got, np.float64) - reference).max() / np.abs(reference).max())


def export_onnx(fn, clip_shape, path: str) -> dict:
  """`fn` as an ONNX file at `path` (opset `ONNX_OPSET`): `clips` uint8 [batch, T, H, W, 3]
  -> `features` float32 [batch, D], batch dynamic.

  Before the file is written, onnxruntime runs it on random clips at batch 1 and 3 beside the
  jitted `fn`; a relative difference above `ONNX_TOLERANCE` is an ExportCheckFailed and no file.
  Returns the check's record (for serving.json).
  """
  jax2onnx = require("jax2onnx", "onnx", "the onnx export")
  ort = require("onnxruntime", "onnx", "the onnx export")
  # The converter logs a line for each of its bundled example plugins whose own libraries
  # (equinox, dm-pix) are absent, and onnx_ir one for each shape-only value: none concern the
  # model. Their errors still show.
  quiet = [logging.getLogger(name) for name in ("jax2onnx", "onnx_ir")]
  levels = [logger.level for logger in quiet]
  for logger in quiet:
    logger.setLevel(logging.ERROR)
  try:
    with warnings.catch_warnings():
      # Its Flax plugins read `Variable.value`, which Flax deprecates.
      warnings.filterwarnings("ignore", category=DeprecationWarning, module="jax2onnx")
      proto = jax2onnx.to_onnx(
        fn,
        [jax.ShapeDtypeStruct(("batch", *clip_shape), jnp.uint8)],
        model_name="reid_jax_features",
        opset=ONNX_OPSET,
        input_names=["clips"],
        output_names=["features"],
      )
  finally:
    for logger, level in zip(quiet, levels):
      logger.setLevel(level)
  data = proto.SerializeToString()
  session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
  jitted = jax.jit(fn)
  worst = 0.0
  for seed, batch in enumerate((1, 3)):
    clips = _random_clips(batch, clip_shape, seed)
    (got,) = session.run(["features"], {"clips": clips})
    difference = relative_difference(got, jitted(clips))
    if not difference <= ONNX_TOLERANCE:
      raise ExportCheckFailed(
        f"{path}: the ONNX conversion's features differ from the model's by {difference:.3g} "
        f"(relative, batch {batch}; at most {ONNX_TOLERANCE} is kept); nothing was written"
      )
    worst = max(worst, difference)
  with open(path, "wb") as f:
    f.write(data)
  return {
    "opset": ONNX_OPSET,
    "converter": f"jax2onnx {_version('jax2onnx')}",
    "checked_with": f"onnxruntime {ort.__version__}, CPUExecutionProvider, batches 1 and 3",
    "max_relative_difference": worst,
  }


def _version(distribution: str) -> str:
  import importlib.metadata

  return importlib.metadata.version(distribution)


# How the person boxes of a frame become the model's input (reid_jax.footage.sources.pixel_box
# and reid_jax.data.frames.resize_frame), for a caller that crops its own frames.
CROP_RULE = (
  "a box (left, top, width, height) in pixels is cut with its edges rounded outwards (left and "
  "top floored, right = left + width and bottom = top + height ceiled) and clipped to the frame; "
  "the cut is resized to height x width, the aspect ratio not kept, by TensorFlow's bilinear "
  "tf.image.resize (half-pixel centres, no antialiasing), rounded to uint8 (+0.5, truncated); a "
  "cut already height x width is used as it is. Dataset frames (MARS and the others) are whole "
  "frames resized the same way"
)


def serving_info(config, model, dim: int, forms: dict, calibration: dict | None) -> dict:
  """serving.json: `forms` maps each written form to its record (file, platforms, checks)."""
  d = config.data
  T = d.num_frames
  info = {
    "model": config.model.name,
    "step": model.step,
    "formats": forms,
    "input": {
      "name": "clips",
      "shape": ["batch", T, d.height, d.width, 3],
      "dtype": "uint8",
      "channels": "RGB",
      "values": "0..255, the person crops of decoded frames (see crop); the model's "
      f"normalisation ({model.normalization}) is applied inside",
      "crop": CROP_RULE,
    },
    "output": {"name": "features", "shape": ["batch", dim], "dtype": "float32"},
    "frames_per_clip": T,
    "tracklet_feature": f"a tracklet's n frames, in order (embed keeps every "
    f"embed.frame_stride-th frame; it was {config.embed.frame_stride} in this run's config), are "
    f"read as ceil(n / {T}) consecutive clips of {T} frames, the last one filled by repeating its "
    "own r real frames cyclically; the tracklet's feature is the mean of its clips' features, not "
    "normalised",
    "metric": config.eval.metric,
  }
  if calibration is not None:
    info["threshold"] = {k: v for k, v in calibration.items() if k != "path"}
  return info


def run(config, workdir: str) -> str:
  """`export` mode: restores the checkpoint and writes `<workdir>/export/step_<N>/`; returns
  that folder."""
  from reid_jax.evaluation.calibrate import read_threshold
  from reid_jax.inference import model as model_lib

  platforms = platforms_of(config.export.platforms)
  formats = formats_of(config.export.formats)
  checkpoint = model_lib.find_checkpoint(config, workdir)
  final = os.path.join(workdir, "export", f"step_{checkpoint.step}")
  if os.path.exists(final):
    raise ExportExists(f"{final} exists; remove it to export step {checkpoint.step} again")
  calibration = read_threshold(workdir, config.eval.metric)
  check_writable(final)
  model = model_lib.restore(config, workdir, checkpoint=checkpoint)
  d = config.data
  clip_shape = (d.num_frames, d.height, d.width, 3)
  fn = model.serving_function()
  dim = jax.eval_shape(fn, jax.ShapeDtypeStruct((1, *clip_shape), jnp.uint8)).shape[-1]
  if jax.process_index() != 0:
    return final
  forms = {}
  with atomic_directory(final) as tmp:
    if "jax_export" in formats:
      with open(os.path.join(tmp, "features.jax_export"), "wb") as f:
        f.write(export_jax(fn, clip_shape, platforms))
      forms["jax_export"] = {
        "file": "features.jax_export",
        "platforms": list(platforms),
        "call": "jax.export.deserialize(bytearray(data)).call(clips)",
      }
    if "saved_model" in formats:
      export_saved_model(fn, clip_shape, platforms, os.path.join(tmp, "saved_model"))
      forms["saved_model"] = {
        "folder": "saved_model",
        "platforms": list(platforms),
        "signature": "serving_default",
        "call": "tf.saved_model.load(folder).signatures['serving_default'](clips=clips)"
        "['features']",
        "note": "the program is one XlaCallModule op: TensorFlow runs it on these platforms; "
        "tf2onnx cannot convert it (use the onnx form)",
      }
    if "onnx" in formats:
      forms["onnx"] = {
        "file": "features.onnx",
        "platforms": "any ONNX runtime",
        **export_onnx(fn, clip_shape, os.path.join(tmp, "features.onnx")),
      }
    with open(os.path.join(tmp, "serving.json"), "w") as f:
      json.dump(serving_info(config, model, int(dim), forms, calibration), f, indent=1)
  log.info(
    "Exported step %d (%s; %s) to %s", model.step, ", ".join(formats), ", ".join(platforms), final
  )
  return final


def check_clips(clips, clip_shape) -> np.ndarray:
  """`clips` as a numpy array, or ValueError naming the expected dtype and shape."""
  clips = np.asarray(clips)
  expected = f"uint8 clips [batch, {', '.join(map(str, clip_shape))}]"
  if clips.dtype != np.uint8:
    raise ValueError(f"expected {expected}, got dtype {clips.dtype}")
  if clips.ndim != 1 + len(clip_shape) or tuple(clips.shape[1:]) != tuple(clip_shape):
    raise ValueError(f"expected {expected}, got shape {list(clips.shape)}")
  return clips


def load_exported(folder: str):
  """The `jax.export` function of an export folder: `clips uint8 [b, T, H, W, 3] -> [b, D]`;
  a wrong dtype or shape is a ValueError naming the expected one."""
  with open(os.path.join(folder, "features.jax_export"), "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  clip_shape = tuple(exported.in_avals[0].shape[1:])
  return lambda clips: np.asarray(exported.call(check_clips(clips, clip_shape)))
