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
constants of the program. The folder is written under a temporary name and renamed when
complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger("reid_jax")

PLATFORMS = ("cpu", "cuda", "tpu")


def feature_function(setup):
  """`clips uint8 [b, T, H, W, 3] -> float32 [b, D]`: the model of `setup` in evaluation mode,
  its input normalisation and weights (as host constants) inside."""
  from reid_jax import state as state_lib

  graphdef, normalization = setup.graphdef, setup.normalization
  state = jax.device_get(setup.state)

  def features(clips):
    model, _, inputs = state_lib.bind(graphdef, normalization, state, clips, train=False)
    return model(inputs)["features"].astype(jnp.float32)

  return features


def platforms_of(config) -> tuple[str, ...]:
  platforms = tuple(p.strip() for p in config.export.platforms.split(",") if p.strip())
  unknown = [p for p in platforms if p not in PLATFORMS]
  if not platforms or unknown:
    raise ValueError(
      f"config.export.platforms: {config.export.platforms!r}; choose from {', '.join(PLATFORMS)}"
    )
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


def serving_info(config, setup, step: int, dim: int, workdir: str) -> dict:
  d = config.data
  info = {
    "model": config.model.name,
    "step": step,
    "input": {
      "name": "clips",
      "shape": ["batch", d.num_frames, d.height, d.width, 3],
      "dtype": "uint8",
      "channels": "RGB",
      "values": "0..255, decoded frames resized to height x width (bilinear); the model's "
      f"normalisation ({setup.normalization}) is applied inside",
    },
    "output": {"name": "features", "shape": ["batch", dim], "dtype": "float32"},
    "frames_per_clip": d.num_frames,
    "tracklet_feature": "mean of the clip features over consecutive chunks of "
    f"{d.num_frames} frames of the tracklet, the last chunk filled by repeating its own frames "
    "in order",
    "metric": config.eval.metric,
  }
  threshold_path = os.path.join(workdir, "threshold.json")
  if os.path.isfile(threshold_path):
    with open(threshold_path) as f:
      calibration = json.load(f)
    if calibration.get("metric") == config.eval.metric:
      info["threshold"] = calibration
  return info


def export(config, workdir: str) -> str:
  """`export` mode: restores the checkpoint as `embed` does and writes
  `<workdir>/export/step_<N>/`; returns that folder."""
  from reid_jax import config as config_lib
  from reid_jax import state as state_lib

  config_lib.validate(config, num_devices=jax.device_count())
  platforms = platforms_of(config)
  setup, step = state_lib.restore_model(config, workdir)
  final = os.path.join(workdir, "export", f"step_{step}")
  if os.path.exists(final):
    raise FileExistsError(f"{final} exists; remove it to export step {step} again")
  d = config.data
  clip_shape = (d.num_frames, d.height, d.width, 3)
  fn = feature_function(setup)
  dim = jax.eval_shape(fn, jax.ShapeDtypeStruct((1, *clip_shape), jnp.uint8)).shape[-1]
  if jax.process_index() != 0:
    return final
  tmp = os.path.join(workdir, "export", f".step_{step}.tmp-{os.getpid()}")
  os.makedirs(tmp)
  try:
    with open(os.path.join(tmp, "features.jax_export"), "wb") as f:
      f.write(export_jax(fn, clip_shape, platforms))
    export_saved_model(fn, clip_shape, platforms, os.path.join(tmp, "saved_model"))
    with open(os.path.join(tmp, "serving.json"), "w") as f:
      json.dump(serving_info(config, setup, step, int(dim), workdir), f, indent=1)
    os.rename(tmp, final)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  log.info("Exported step %d (%s) to %s", step, ", ".join(platforms), final)
  return final


def load_exported(folder: str):
  """The `jax.export` function of an export folder: `clips uint8 [b, T, H, W, 3] -> [b, D]`."""
  with open(os.path.join(folder, "features.jax_export"), "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  return lambda clips: np.asarray(exported.call(clips))
