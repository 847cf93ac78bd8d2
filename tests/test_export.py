"""`export` mode: the jax.export, SavedModel and ONNX forms against the jitted model, each in a
process of its own runtime alone; their refusals of wrong input; serving.json."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from reid_jax import config as config_lib
from reid_jax import export as export_lib
from reid_jax import train
from reid_jax.inference import model as model_lib

from tiny_training import tiny_config

T, H, W = 4, 32, 16  # the tiny config's clips
ALL_FORMATS = {"export.formats": "jax_export,saved_model,onnx"}


@pytest.fixture(scope="module")
def exported(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("export_run")
  config = tiny_config(data_dir, **{"optim.total_epochs": 1, "optim.decay_start_epoch": 0})
  train.train_and_evaluate(config, str(workdir))
  (workdir / "threshold.json").write_text('{"metric": "euclidean", "threshold": 1.5}')
  folder = export_lib.run(tiny_config(data_dir, mode="export", **ALL_FORMATS), str(workdir))
  return workdir, folder


def _clips(batch, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (batch, T, H, W, 3), dtype=np.uint8)


def _jitted_features(data_dir, workdir, clips):
  """The model as evaluation runs it (InferenceModel.features, sharded over the device mesh)."""
  model = model_lib.restore(tiny_config(data_dir, mode="eval"), str(workdir))
  batch = -(-len(clips) // jax.device_count()) * jax.device_count()
  padded = np.concatenate([clips, np.zeros((batch - len(clips), *clips.shape[1:]), np.uint8)])
  return np.asarray(model.features(padded))[: len(clips)]


def test_the_folder_and_serving_json(exported):
  workdir, folder = exported
  assert folder == os.path.join(str(workdir), "export", "step_2")
  assert sorted(os.listdir(folder)) == [
    "features.jax_export",
    "features.onnx",
    "saved_model",
    "serving.json",
  ]
  with open(os.path.join(folder, "serving.json")) as f:
    info = json.load(f)
  forms = info["formats"]
  assert sorted(forms) == ["jax_export", "onnx", "saved_model"]
  assert forms["jax_export"]["platforms"] == forms["saved_model"]["platforms"] == ["cpu"]
  assert forms["onnx"]["file"] == "features.onnx" and forms["onnx"]["opset"] == 23
  assert forms["onnx"]["max_relative_difference"] <= 1e-4
  assert "onnxruntime" in forms["onnx"]["checked_with"]
  assert "clipped to the frame" in info["input"]["crop"]
  assert "aspect ratio not kept" in info["input"]["crop"]
  assert f"ceil(n / {T})" in info["tracklet_feature"]
  assert info["input"]["shape"] == ["batch", T, H, W, 3] and info["input"]["dtype"] == "uint8"
  assert info["input"]["channels"] == "RGB" and info["frames_per_clip"] == T
  assert info["output"] == {"name": "features", "shape": ["batch", 16], "dtype": "float32"}
  assert info["metric"] == "euclidean" and info["threshold"]["threshold"] == 1.5
  assert "imagenet" in info["input"]["values"]
  assert not [n for n in os.listdir(os.path.join(str(workdir), "export")) if n.startswith(".")]


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_jax_export_equals_the_jitted_model(data_dir, exported, batch):
  workdir, folder = exported
  clips = _clips(batch, seed=batch)
  got = export_lib.load_exported(folder)(clips)
  np.testing.assert_allclose(got, _jitted_features(data_dir, workdir, clips), rtol=1e-5, atol=1e-6)


_TF_ONLY = """
import sys
import numpy as np
import tensorflow as tf
assert not [m for m in sys.modules if m.startswith(("reid_jax", "flax"))]
model = tf.saved_model.load(sys.argv[1])
serve = model.signatures["serving_default"]
clips = np.load(sys.argv[2])
np.save(sys.argv[3], serve(clips=tf.constant(clips))["features"].numpy())
assert not [m for m in sys.modules if m.startswith(("reid_jax", "flax"))]
# The ops of the graph's functions: the whole network is one XlaCallModule.
from tensorflow.core.protobuf import saved_model_pb2
saved = saved_model_pb2.SavedModel()
saved.ParseFromString(open(sys.argv[1] + "/saved_model.pb", "rb").read())
library = saved.meta_graphs[0].graph_def.library.function
print(sorted({node.op for function in library for node in function.node_def}))
print(sum(node.op == "XlaCallModule" for function in library for node in function.node_def))
"""


def test_saved_model_in_a_tensorflow_only_process_equals_the_jitted_model(
  data_dir, exported, tmp_path
):
  workdir, folder = exported
  clips = _clips(5, seed=11)
  np.save(tmp_path / "clips.npy", clips)
  result = subprocess.run(
    [
      sys.executable,
      "-c",
      _TF_ONLY,
      os.path.join(folder, "saved_model"),
      str(tmp_path / "clips.npy"),
      str(tmp_path / "features.npy"),
    ],
    cwd=str(tmp_path),
    capture_output=True,
    text=True,
    env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  ops, calls = result.stdout.strip().splitlines()[-2:]
  assert int(calls) >= 1, ops
  assert not [op for op in ("Conv2D", "Conv3D", "MatMul", "Relu", "Softmax") if f"'{op}'" in ops]
  np.testing.assert_allclose(
    np.load(tmp_path / "features.npy"),
    _jitted_features(data_dir, workdir, clips),
    rtol=1e-5,
    atol=1e-6,
  )


_ORT_ONLY = """
import sys
import numpy as np
import onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
(clips,) = session.get_inputs()
(features,) = session.get_outputs()
print(clips.name, clips.shape, clips.type, features.name, features.shape, features.type)
for path in sys.argv[2:]:
  np.save(path + ".out.npy", session.run(["features"], {"clips": np.load(path)})[0])
for bad in (np.zeros((1, 4, 32, 16, 3), np.float32), np.zeros((1, 4, 33, 16, 3), np.uint8)):
  try:
    session.run(["features"], {"clips": bad})
  except Exception as e:
    print("refused:", " ".join(str(e).split()))
assert not [m for m in sys.modules if m.startswith(("reid_jax", "flax", "jax", "tensorflow"))]
"""


def test_onnx_in_an_onnxruntime_only_process_equals_the_jitted_model(data_dir, exported, tmp_path):
  workdir, folder = exported
  paths = []
  for batch in (1, 3):
    paths.append(str(tmp_path / f"clips{batch}.npy"))
    np.save(paths[-1], _clips(batch, seed=20 + batch))
  result = subprocess.run(
    [sys.executable, "-c", _ORT_ONLY, os.path.join(folder, "features.onnx"), *paths],
    cwd=str(tmp_path),
    capture_output=True,
    text=True,
    env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[0] == (
    f"clips ['batch', {T}, {H}, {W}, 3] tensor(uint8) features ['batch', 16] tensor(float)"
  )
  # onnxruntime's own refusals name the expected type and dimension.
  assert "expected: (tensor(uint8))" in lines[1], lines[1]
  assert "index: 2 Got: 33 Expected: 32" in lines[2], lines[2]
  assert len(lines) == 3
  for path in paths:
    clips = np.load(path)
    np.testing.assert_allclose(
      np.load(path + ".out.npy"), _jitted_features(data_dir, workdir, clips), rtol=1e-4, atol=1e-5
    )


def test_each_form_refuses_a_wrong_dtype_or_shape_naming_the_expected_one(exported, tmp_path):
  import tensorflow as tf

  _, folder = exported
  call = export_lib.load_exported(folder)
  with pytest.raises(ValueError, match=r"expected uint8 clips \[batch, 4, 32, 16, 3\], got dtype"):
    call(_clips(2).astype(np.float32))
  with pytest.raises(ValueError, match=r"\[batch, 4, 32, 16, 3\], got shape \[2, 4, 16, 32, 3\]"):
    call(_clips(2).transpose(0, 1, 3, 2, 4))
  serve = tf.saved_model.load(os.path.join(folder, "saved_model")).signatures["serving_default"]
  with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a uint8 tensor"):
    serve(clips=tf.zeros((2, T, H, W, 3), tf.float32))
  with pytest.raises(
    tf.errors.InvalidArgumentError,
    match=r"\[2,4,16,32,3\] is not compatible with expected shape \[\?,4,32,16,3\]",
  ):
    serve(clips=tf.zeros((2, T, W, H, 3), tf.uint8))


def test_an_onnx_file_that_differs_from_the_model_is_not_kept(
  data_dir, exported, tmp_path, monkeypatch
):
  workdir, _ = exported
  run = tmp_path / "run"
  run.mkdir()
  os.symlink(workdir / "checkpoints", run / "checkpoints")
  monkeypatch.setattr(export_lib, "ONNX_TOLERANCE", -1.0)
  config = tiny_config(data_dir, mode="export", **ALL_FORMATS)
  with pytest.raises(export_lib.ExportCheckFailed, match="features differ from the model's"):
    export_lib.run(config, str(run))
  assert sorted(os.listdir(run / "export")) == []


def test_onnx_without_its_converter_names_the_install(data_dir, monkeypatch):
  from reid_jax.errors import MissingExtra

  monkeypatch.setitem(sys.modules, "jax2onnx", None)
  config = tiny_config(data_dir, mode="export", **ALL_FORMATS)
  with pytest.raises(MissingExtra, match=r"export.formats onnx needs jax2onnx .*reid-jax\[onnx\]"):
    config_lib.validate(config, num_devices=jax.device_count())


def test_exporting_a_step_twice_is_refused_and_platforms_are_checked(data_dir, exported):
  workdir, _ = exported
  with pytest.raises(export_lib.ExportExists, match="step_2 exists"):
    export_lib.run(tiny_config(data_dir, mode="export"), str(workdir))
  config = tiny_config(data_dir, mode="export", **{"export.platforms": "cpu,metal"})
  with pytest.raises(config_lib.ConfigError, match="config.export.platforms: 'cpu,metal'"):
    config_lib.validate(config, num_devices=jax.device_count())


def test_a_threshold_of_another_metric_is_refused_before_the_export(data_dir, exported, tmp_path):
  from reid_jax.evaluation.calibrate import ThresholdMismatch

  workdir, _ = exported
  run = tmp_path / "run"
  run.mkdir()
  os.symlink(workdir / "checkpoints", run / "checkpoints")
  (run / "threshold.json").write_text('{"metric": "cosine", "threshold": 0.5}')
  with pytest.raises(ThresholdMismatch, match="threshold on cosine distances"):
    export_lib.run(tiny_config(data_dir, mode="export"), str(run))
  assert sorted(os.listdir(run)) == ["checkpoints", "threshold.json"]


def test_one_serialization_for_cpu_cuda_and_tpu(data_dir, exported):
  """Lowered for the three platforms on this CPU-only machine; the CPU lowering runs here."""
  workdir, folder = exported
  model = model_lib.restore(tiny_config(data_dir, mode="eval"), str(workdir))
  data = export_lib.export_jax(model.serving_function(), (T, H, W, 3), ("cpu", "cuda", "tpu"))
  restored = jax.export.deserialize(bytearray(data))
  assert restored.platforms == ("cpu", "cuda", "tpu")
  clips = _clips(2, seed=5)
  np.testing.assert_allclose(
    np.asarray(restored.call(clips)), export_lib.load_exported(folder)(clips), rtol=1e-6
  )
