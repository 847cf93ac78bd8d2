r"""`export`: time to export, artifact sizes, and the feature time per clip of each form.

    python bench/export.py [--config configs/synthetic.py] [--batch 16]
    python bench/export.py --config configs/mars.py --batch 4

Builds the config's model with random weights (times and sizes do not depend on them), exports
it as `export` mode does (jax.export serialization, a jax2tf SavedModel, CPU, and the ONNX file
with its onnxruntime check at batches 1 and 3), and times in one run, after a warm-up each, a
batch of uint8 clips through: the jitted feature function (what evaluation runs), the
deserialized `jax.export`, the SavedModel's `serving_default` and onnxruntime's CPU session.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _size_mib(path: str) -> float:
  if os.path.isfile(path):
    return os.path.getsize(path) / 2**20
  return sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(path) for n in ns) / 2**20


def _time(fn, repeats: int) -> float:
  fn()
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default=os.path.join(REPO, "configs", "synthetic.py"))
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  import jax
  import numpy as np
  import random_model  # the sibling module (bench/ is no package)
  import tensorflow as tf

  from reid_jax import export as export_lib

  config, model = random_model.build(args.config)
  d = config.data
  clip_shape = (d.num_frames, d.height, d.width, 3)
  fn = model.serving_function()

  folder = tempfile.mkdtemp(prefix="reid_jax_export_bench_")
  start = time.perf_counter()
  with open(os.path.join(folder, "features.jax_export"), "wb") as f:
    f.write(export_lib.export_jax(fn, clip_shape, ("cpu",)))
  jax_export_s = time.perf_counter() - start
  start = time.perf_counter()
  export_lib.export_saved_model(fn, clip_shape, ("cpu",), os.path.join(folder, "saved_model"))
  saved_model_s = time.perf_counter() - start
  onnx_path = os.path.join(folder, "features.onnx")
  start = time.perf_counter()
  onnx_check = export_lib.export_onnx(fn, clip_shape, onnx_path)
  onnx_s = time.perf_counter() - start
  import onnxruntime as ort

  session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])

  clips = np.random.default_rng(0).integers(0, 256, (args.batch, *clip_shape), dtype=np.uint8)
  jitted = jax.jit(fn)
  exported = export_lib.load_exported(folder)
  serve = tf.saved_model.load(os.path.join(folder, "saved_model")).signatures["serving_default"]
  tf_clips = tf.constant(clips)
  times = {
    "jitted": _time(lambda: jitted(clips).block_until_ready(), args.repeats),
    "jax.export": _time(lambda: exported(clips), args.repeats),
    "SavedModel": _time(lambda: serve(clips=tf_clips)["features"].numpy(), args.repeats),
    "ONNX": _time(lambda: session.run(["features"], {"clips": clips}), args.repeats),
  }
  reference = np.asarray(jitted(clips))
  for name, out in (
    ("jax.export", exported(clips)),
    ("SavedModel", serve(clips=tf_clips)["features"].numpy()),
    ("ONNX", session.run(["features"], {"clips": clips})[0]),
  ):
    err = export_lib.relative_difference(out, reference)
    print(f"{name} max relative difference to jitted: {err:.2e}")

  print(
    f"\n{config.model.name}, clips {'x'.join(map(str, clip_shape[:3]))}, batch {args.batch}, "
    f"{os.cpu_count()} CPUs"
  )
  print(f"  export: jax.export {jax_export_s:.1f} s ({_size_mib(os.path.join(folder, 'features.jax_export')):.1f} MiB), "
        f"SavedModel {saved_model_s:.1f} s ({_size_mib(os.path.join(folder, 'saved_model')):.1f} MiB), "
        f"ONNX {onnx_s:.1f} s with its check ({_size_mib(onnx_path):.1f} MiB, opset {onnx_check['opset']}, "
        f"check at batches 1 and 3: {onnx_check['max_relative_difference']:.1e})")  # fmt: skip
  for name, seconds in times.items():
    print(
      f"  {name:<11} {1000 * seconds / args.batch:8.1f} ms per clip "
      f"({times['jitted'] / seconds:.2f}x the jitted model's speed)"
    )


if __name__ == "__main__":
  main()
