"""`export` mode: the trained feature function for serving, with its preprocessing inside.

    <workdir>/export/step_<N>/
      features.jax_export   jax.export serialization (StableHLO): uint8 clips [b, T, H, W, 3] RGB
                            -> float32 features [b, D], b symbolic; reload with
                            `jax.export.deserialize(bytes).call(clips)`
      saved_model/          the same function as a TensorFlow SavedModel (jax2tf), signature
                            `serving_default`: input `clips`, output `features`
      serving.json          what a caller must know: input shape and dtype, channel order, frames
                            per clip, how a tracklet's feature is formed, the metric, a threshold

The input normalisation the model was trained with is inside both, so a caller feeds the decoded
frames as they are (resized to H x W) and cannot feed the wrong preprocessing. The weights are
constants of the program (`InferenceModel.serving_function`). The folder is written under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from data_prep.errors import UserError
from data_prep.files import atomic_directory, check_writable

log = logging.getLogger("reid_jax")

PLATFORMS = ("cpu", "cuda", "tpu")


class ExportExists(UserError, FileExistsError):
  """The export folder of this step exists already."""


def platforms_of(text: str) -> tuple[str, ...]:
  """The platforms of `config.export.platforms` (comma separated); ValueError naming the
  unknown ones."""
  platforms = tuple(p.strip() for p in text.split(",") if p.strip())
  unknown = [p for p in platforms if p not in PLATFORMS]
  if not platforms or unknown:
    raise ValueError(f"{text!r}; choose from {', '.join(PLATFORMS)}")
  return platforms


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
  module.features = tf.function(
    lambda clips: {"features": converted(clips)},
    input_signature=[tf.TensorSpec([None, T, H, W, C], tf.uint8, name="clips")],
    autograph=False,
  )
  tf.saved_model.save(
    module, path, signatures={"serving_default": module.features.get_concrete_function()}
  )


def serving_info(config, model, dim: int, calibration: dict | None) -> dict:
  d = config.data
  info = {
    "model": config.model.name,
    "step": model.step,
    "input": {
      "name": "clips",
      "shape": ["batch", d.num_frames, d.height, d.width, 3],
      "dtype": "uint8",
      "channels": "RGB",
      "values": "0..255, decoded frames resized to height x width (bilinear); the model's "
      f"normalisation ({model.normalization}) is applied inside",
    },
    "output": {"name": "features", "shape": ["batch", dim], "dtype": "float32"},
    "frames_per_clip": d.num_frames,
    "tracklet_feature": "mean of the clip features over consecutive chunks of "
    f"{d.num_frames} frames of the tracklet, the last chunk filled by repeating its own frames "
    "in order",
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
  with atomic_directory(final) as tmp:
    with open(os.path.join(tmp, "features.jax_export"), "wb") as f:
      f.write(export_jax(fn, clip_shape, platforms))
    export_saved_model(fn, clip_shape, platforms, os.path.join(tmp, "saved_model"))
    with open(os.path.join(tmp, "serving.json"), "w") as f:
      json.dump(serving_info(config, model, int(dim), calibration), f, indent=1)
  log.info("Exported step %d (%s) to %s", model.step, ", ".join(platforms), final)
  return final


def load_exported(folder: str):
  """The `jax.export` function of an export folder: `clips uint8 [b, T, H, W, 3] -> [b, D]`."""
  with open(os.path.join(folder, "features.jax_export"), "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  return lambda clips: np.asarray(exported.call(clips))
