"""The trainer end to end on a tiny synthetic MARS: train, resume after SIGTERM, eval, extract."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from reid_jax import config as config_lib
from reid_jax import sharding, train
from reid_jax.checkpoints import CheckpointWriter, checksums, latest_meta
from reid_jax.data import prepare
from reid_jax.evaluation import runner
from reid_jax.inference import model as model_lib

from tiny_training import tiny_config, tiny_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, timeout: int, env=None) -> subprocess.CompletedProcess:
  """`python -m reid_jax.main ARGS` from the repository, its output captured as text."""
  return subprocess.run(
    [sys.executable, "-m", "reid_jax.main", *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def saved_arrays(workdir, step):
  with ocp.CheckpointManager(
    os.path.join(workdir, "checkpoints"),
    item_names=("state", "meta"),
    options=ocp.CheckpointManagerOptions(read_only=True),
  ) as manager:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))

  def host(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)  # the dropout RNG's state
    return np.asarray(x)

  return {k: host(v) for k, v in jax.tree_util.tree_flatten_with_path(restored["state"])[0]}


def test_validation_names_the_field():
  config = config_lib.default_config()
  with pytest.raises(ValueError, match=r"config.data.P: .* 32 x 4 clips does not divide over 3"):
    config_lib.validate(config, num_devices=3)
  assert config_lib.train_batch_size(config) == 128
  with pytest.raises(AttributeError, match="batch_size"):  # P x K, not a field of its own
    _ = config.data.batch_size
  config = config_lib.default_config()
  config.model.name = "resnet3d101"
  with pytest.raises(ValueError, match=r"config.model.name: unknown model 'resnet3d101'"):
    config_lib.validate(config, num_devices=1)
  config = config_lib.default_config()
  config.data.num_frames = 7
  with pytest.raises(ValueError, match=r"config.data.num_frames"):
    config_lib.validate(config, num_devices=1)
  config = config_lib.default_config()
  config.data.height, config.data.width = 32, 16
  with pytest.raises(
    ValueError,
    match=r"config.model.nonlocal_pool: 32x16 clips give a 2x1 map "
    r"in res4, too small",
  ):
    config_lib.validate(config, num_devices=1)
  for field, value, message in (
    ("optim.decay_start_epoch", 300, r"need 0 <= decay_start_epoch \(300\) < total_epochs"),
    ("loss.triplet_metric", "cosin", r"'cosin' is not one of \('euclidean', 'cosine'\)"),
    ("model.attention_impl", "flash", r"'flash' is not one of \('einsum', 'xla', 'cudnn'\)"),
  ):
    config = config_lib.default_config()
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=rf"config.{field}: {message}"):
      config_lib.validate(config, num_devices=1)
  config = config_lib.default_config()
  config.dataset.synthetic.identities, config.dataset.synthetic.cameras = 8, 12
  with pytest.raises(ValueError, match=r"config.dataset.synthetic.cameras: must be in 2..9"):
    config_lib.validate(config, num_devices=1)
  config = config_lib.default_config()
  config.model.stem_pool_padding = 2
  with pytest.raises(ValueError, match=r"config.model.stem_pool_padding: must be 0 or 1"):
    config_lib.validate(config, num_devices=1)
  config = config_lib.default_config()
  config.init.kinetics_i3d, config.init.torchvision_resnet50 = "a.pkl", "b.pth"
  with pytest.raises(
    ValueError,
    match=r"config.init.torchvision_resnet50: at most one "
    r"initialisation, got init.kinetics_i3d and ",
  ):
    config_lib.validate(config, num_devices=1)


def test_missing_dataset_is_a_clear_error(tmp_path):
  from data_prep.built import DatasetNotBuilt

  config = tiny_config(tmp_path / "nothing", **{"dataset.synthetic.identities": 0})
  with pytest.raises(DatasetNotBuilt, match="manual_dir"):
    prepare.prepare_dataset(config, str(tmp_path))


TOTAL_STEPS = 10  # the tiny config: 5 epochs x 2 steps


@pytest.fixture(scope="module")
def straight_run(data_dir, tmp_path_factory):
  """One tiny run straight through: its workdir and final evaluation."""
  workdir = tmp_path_factory.mktemp("straight")
  return workdir, train.train_and_evaluate(tiny_config(data_dir), str(workdir))


def final_eval_line(workdir) -> dict:
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [line for line in lines if "eval/rank1" in line][-1]


def test_training_records_its_final_evaluation(straight_run):
  workdir, results = straight_run
  assert results["protocol"] == "mars" and results["step"] == TOTAL_STEPS
  recorded = final_eval_line(workdir)
  assert recorded["step"] == TOTAL_STEPS
  for key in ("rank1", "rank5", "mAP", "mINP"):
    assert recorded[f"eval/{key}"] == pytest.approx(results[key], rel=1e-6)


def test_killed_run_resumes_to_the_same_parameters(data_dir, straight_run, tmp_path):
  """A run SIGTERMed mid-way and restarted ends with the straight run's weights, bit for bit."""
  straight, _ = straight_run
  resumed = tmp_path / "resumed"
  cmd = [
    sys.executable,
    "-m",
    "reid_jax.main",
    "--config=configs/synthetic.py",
    f"--workdir={resumed}",
    *tiny_flags(data_dir),
  ]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  proc = subprocess.Popen(
    cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  log_file = resumed / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if log_file.exists() and any(
      json.loads(line)["step"] >= 2 for line in log_file.read_text().splitlines()
    ):
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.1)
  output = proc.communicate(timeout=300)[0]
  assert proc.returncode == train.PREEMPTED_EXIT_STATUS == 75, output
  assert "Stopping at step" in output, output
  assert "Preempted: exiting with status 75; the same command resumes from step" in output
  stopped_at = max(int(d.name) for d in (resumed / "checkpoints").iterdir() if d.name.isdigit())
  assert 2 <= stopped_at < TOTAL_STEPS

  train.train_and_evaluate(tiny_config(data_dir), str(resumed))
  records = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
  logged = [r["step"] for r in records if "train/loss" in r]
  assert logged == list(range(1, TOTAL_STEPS + 1))  # each step once, replayed ones included
  a, b = saved_arrays(straight, TOTAL_STEPS), saved_arrays(resumed, TOTAL_STEPS)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=jax.tree_util.keystr(key))


def test_eval_restores_a_step_and_reproduces_its_numbers(data_dir, straight_run):
  """eval of the last step gives exactly the training run's final evaluation; of an earlier
  step, that step's numbers, and the report files."""
  workdir, results = straight_run
  again = runner.run_eval(tiny_config(data_dir, mode="eval"), str(workdir))
  assert again["step"] == TOTAL_STEPS
  for key in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP"):
    assert again[key] == results[key], key
  earlier = runner.run_eval(tiny_config(data_dir, mode="eval", **{"eval.step": 4}), str(workdir))
  assert earlier["step"] == 4
  assert json.loads((workdir / "metrics.json").read_text())["mAP"] == earlier["mAP"]
  assert (workdir / "cmc.png").exists() and list(workdir.glob("attention_q*.png"))


def test_extract_writes_the_features_eval_scores(data_dir, straight_run):
  """The extracted features, scored with the run's protocol, give the run's final numbers."""
  from reid_jax import data as data_lib
  from reid_jax import evaluation

  workdir, results = straight_run
  path = runner.run_extract(tiny_config(data_dir, mode="extract"), str(workdir))
  assert path.endswith(f"features_step{TOTAL_STEPS}.npz")
  with np.load(path) as saved:
    features = saved["features"]
    table = data_lib.TrackletTable(**{k: saved[k] for k in saved.files if k != "features"})
  assert features.shape == (len(table.pids), 16)
  scored = evaluation.run_protocol("mars", features, table)
  assert scored["rank1"] == results["rank1"] and scored["mAP"] == pytest.approx(results["mAP"])


def test_a_checkpoint_of_another_width_is_named(data_dir, straight_run):
  workdir, _ = straight_run
  wider = tiny_config(data_dir, mode="eval", **{"model.width": 8})
  with pytest.raises(
    config_lib.NetworkMismatch,
    match=r"config.model.width is 8, but the checkpoint in .*checkpoints was trained with 4",
  ):
    runner.run_eval(wider, str(workdir))


def test_initial_weights_fix_the_network_and_normalisation_of_every_later_run(
  data_dir, tmp_path, monkeypatch
):
  """Kinetics weights -> 'kinetics' normalisation in the checkpoints, in eval, and in a
  fine-tuning run from them (its initial checkpoint checked once); a config that builds another
  network is refused."""
  import caffe2_i3d

  blobs = caffe2_i3d.random_blobs(depths=(1, 2, 2, 1), width=4, with_nonlocal=False)
  caffe2_i3d.write_python2_pickle({"blobs": blobs}, tmp_path / "i3d_baseline.pkl")
  kinetics = {
    "model.name": "resnet3d50",
    "model.stem_pool_padding": 0,
    "optim.total_epochs": 1,
    "optim.decay_start_epoch": 0,
  }

  missing = tiny_config(data_dir, **kinetics, **{"init.kinetics_i3d": str(tmp_path / "no.pkl")})
  with pytest.raises(
    train.state_lib.MissingInitWeights,
    match=r"config.init.kinetics_i3d: .*no.pkl does not "
    r"exist; the Kinetics I3D checkpoints are",
  ):
    train.train_and_evaluate(missing, str(tmp_path / "missing"))

  first = tmp_path / "kinetics"
  config = tiny_config(
    data_dir, **kinetics, **{"init.kinetics_i3d": str(tmp_path / "i3d_baseline.pkl")}
  )
  train.train_and_evaluate(config, str(first))
  meta = latest_meta(first / "checkpoints")
  assert meta["normalization"] == "kinetics"
  (tmp_path / "i3d_baseline.pkl").unlink()  # eval needs the checkpoint only
  model = model_lib.restore(tiny_config(data_dir, **kinetics, mode="eval"), str(first))
  assert model.normalization == "kinetics"
  with pytest.raises(
    ValueError,
    match=r"config.model.stem_pool_padding is 1, but the "
    r"checkpoint in .* was trained with 0",
  ):
    runner.run_eval(
      tiny_config(data_dir, **{**kinetics, "model.stem_pool_padding": 1}, mode="eval"), str(first)
    )

  finetune = {**kinetics, "init.checkpoint": str(first / "checkpoints")}
  checked = []
  damage = checksums.damage
  monkeypatch.setattr(checksums, "damage", lambda *a: checked.append(a) or damage(*a))
  train.train_and_evaluate(tiny_config(data_dir, **finetune), str(tmp_path / "finetuned"))
  monkeypatch.undo()
  assert [step for _, step in checked] == [meta["step"]]  # its files are hashed once
  meta = latest_meta(tmp_path / "finetuned" / "checkpoints")
  assert meta["normalization"] == "kinetics"
  with pytest.raises(ValueError, match=r"config.model.stem_pool_padding is 1"):
    train.train_and_evaluate(
      tiny_config(data_dir, **{**finetune, "model.stem_pool_padding": 1}), str(tmp_path / "refused")
    )


def test_non_finite_loss_stops_the_run_naming_the_step(data_dir, tmp_path):
  config = tiny_config(
    data_dir, **{"optim.base_lr": 1e30, "optim.total_epochs": 2, "optim.decay_start_epoch": 1}
  )
  with pytest.raises(FloatingPointError, match=r"at step \d+"):
    train.train_and_evaluate(config, str(tmp_path / "nan"))


def test_non_finite_gradient_norm_stops_the_run_naming_the_step():
  metrics = {"loss": np.float32(2.0), "grad_norm": np.float32(np.inf)}
  metrics.update(softmax_loss=np.float32(1.5), triplet_loss=np.float32(0.5))
  with pytest.raises(FloatingPointError, match=r"gradient norm inf at step 7"):
    train._flush_metrics([(7, metrics)], writer=None, schedule=None)


def test_a_host_array_in_the_train_step_is_an_error(data_dir, tmp_path, monkeypatch):
  monkeypatch.setattr(sharding, "global_batch", lambda local, batch_sharding: local)
  with pytest.raises(Exception, match="Disallowed host-to-device transfer"):
    train.train_and_evaluate(tiny_config(data_dir), str(tmp_path / "guarded"))


def test_preemption_stop_writes_the_pending_metrics(data_dir, tmp_path, monkeypatch):
  """Metrics wait on device for the next log step; a preemption stop must write them first."""
  calls = []

  def preempted_at_step_3(self):
    calls.append(None)
    return len(calls) == 3

  monkeypatch.setattr(CheckpointWriter, "preemption_requested", preempted_at_step_3)
  workdir = tmp_path / "preempted"
  config = tiny_config(data_dir, **{"train.log_every_steps": 100})
  assert train.train_and_evaluate(config, str(workdir)) == {"preempted_at_step": 3}
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [line["step"] for line in lines if "train/loss" in line] == [3]


def test_report_pictures_show_the_pixels_evaluation_feeds_the_model(data_dir):
  from reid_jax.data import BuiltTracklets
  from reid_jax.inference import chunks

  config = tiny_config(data_dir)
  d = config.data
  source = BuiltTracklets(str(data_dir), "mars")
  batch = next(
    chunks.chunk_batches(
      source, num_frames=d.num_frames, height=d.height, width=d.width, batch_size=16
    )
  )
  first_chunk = int(np.flatnonzero(batch["tracklet"] == 0)[0])  # frames 0..T-1 of tracklet 0
  frames = source.frames(0, d.height, d.width)
  np.testing.assert_array_equal(frames[: d.num_frames], batch["clips"][first_chunk])


def test_the_run_log_holds_the_runs_own_lines(tmp_path):
  """A fresh run (dataset generated and converted, then trained) prints its own log and the
  dataset table, not TensorFlow's start-up notices nor TFDS's download messages."""
  config_flags = tiny_flags(
    tmp_path / "data", **{"optim.total_epochs": 1, "optim.decay_start_epoch": 0}
  )
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  result = run_main(
    "--config=configs/synthetic.py",
    f"--workdir={tmp_path / 'run'}",
    *config_flags,
    env=env,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr
  lines = (result.stdout + result.stderr).splitlines()
  run_line = re.compile(r"^\d\d:\d\d:\d\d |^(split|train|query|gallery) |^mars, protocol mars$")
  assert [line for line in lines if not run_line.match(line)] == []
  assert any("protocol mars: rank-1" in line for line in lines)


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"stage_depths": (3,)}, r"config.model.stage_depths: the network has 4 stages .* got \(3,\)"),
    ({"stage_depths": (1, 2, 0, 1)}, r"config.model.stage_depths: .* got \(1, 2, 0, 1\)"),
    ({"stage_depths": (1, 1, 2, 1)}, r"config.model.nonlocal_stages: stage 1 cannot hold"),
    ({"nonlocal_stages": (4,)}, r"config.model.nonlocal_stages: stage 4 cannot hold"),
  ],
)
def test_validate_rejects_structures_that_do_not_fit(overrides, message):
  config = config_lib.default_config()
  config.init.kinetics_i3d = ""
  for field, value in overrides.items():
    config.model[field] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate(config, num_devices=1)


@pytest.mark.parametrize("mode", ["eval", "extract", "calibrate", "embed", "export"])
def test_a_mode_needing_a_checkpoint_fails_before_the_dataset_is_touched(tmp_path, mode):
  from reid_jax import modes

  config = tiny_config(tmp_path / "data", mode=mode, **{"embed.input": REPO})
  if mode == "embed":  # footage is checked first: give it some
    from PIL import Image

    (tmp_path / "footage" / "t").mkdir(parents=True)
    Image.new("RGB", (8, 16)).save(tmp_path / "footage" / "t" / "1.png")
    config.embed.input = str(tmp_path / "footage")
  with pytest.raises(
    FileNotFoundError, match=rf"no checkpoint in .*checkpoints: config.mode={mode}"
  ):
    modes.MODES[mode].run(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def test_a_missing_step_is_named_with_the_steps_there(data_dir, straight_run):
  workdir, _ = straight_run
  config = tiny_config(data_dir, mode="eval", **{"eval.step": 7})
  with pytest.raises(
    FileNotFoundError, match=r"config.eval.step: no checkpoint of step 7 .*\[.*10\]"
  ):
    runner.run_eval(config, str(workdir))


def test_metrics_of_replayed_steps_are_written_once(tmp_path):
  """A run killed after step 6 but resumed from its step-4 checkpoint writes 5 and 6 again."""
  from reid_jax.metric_writer import JsonLinesWriter

  path = tmp_path / "metrics.jsonl"
  lines = [json.dumps({"hparams": {"lr": 1}})] + [
    json.dumps({"step": s, "train/loss": float(s)}) for s in range(1, 7)
  ]
  path.write_text("\n".join(lines) + '\n{"step": 7, "train/lo')  # a line cut by the kill
  writer = JsonLinesWriter(str(path), keep_through_step=4)
  for s in (5, 6):
    writer.write_scalars(s, {"train/loss": 10.0 * s})
  writer.close()
  steps = [json.loads(line).get("step") for line in path.read_text().splitlines()]
  assert steps == [None, 1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
  "args, line",
  [
    (
      ["--config.optim.base_rl=1"],
      "error: --config.optim.base_rl: config.optim has no field 'base_rl'; did you mean "
      "--config.optim.base_lr?",
    ),
    (
      ["--config=configs/synthetic.py", "--config.optim.bogus=1"],
      "error: --config.optim.bogus: config.optim has no field 'bogus'",
    ),
    (
      ["--config.model.stage_depths=1,1,1,1", "--config.model.stage_depths=2,2,2,2"],
      "error: --config.model.stage_depths is given more than once",
    ),
  ],
)
def test_a_bad_override_is_one_line(tmp_path, args, line):
  result = run_main(f"--workdir={tmp_path / 'run'}", *args, timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip() == line
  assert not (tmp_path / "run").exists()


def test_the_modes_and_their_help_come_from_the_registry():
  from reid_jax import modes

  result = run_main("--help", timeout=120)
  help_text = " ".join(result.stdout.split())  # (absl's --help exits with status 1)
  readme = open(os.path.join(REPO, "README.md")).read()
  for name, mode in modes.MODES.items():
    assert f"{name} {mode.summary}" in help_text
    assert callable(mode.run)
    assert f"| `{name}` |" in readme  # the README's table of modes
  config = config_lib.default_config()
  config.mode = "sample"
  with pytest.raises(
    config_lib.ConfigError, match=r"config.mode: 'sample' is not one of \('train'"
  ):
    config_lib.validate(config, num_devices=1)


@pytest.mark.parametrize(
  "flags, line",
  [
    (
      ["--config.mode=eval"],
      r"error: no checkpoint in \S+/checkpoints: config.mode=eval needs a trained run's workdir",
    ),
    (
      ["--config.init.kinetics_i3d=/nowhere/i3d.pkl", "--config.model.name=resnet3d50"],
      r"error: config.init.kinetics_i3d: /nowhere/i3d.pkl does not exist; the Kinetics I3D .*",
    ),
    (
      ["--config.data.eval_batch_size=7"],
      r"error: config.data.eval_batch_size: 7 does not divide over 2 devices",
    ),
  ],
)
def test_an_error_the_user_can_act_on_is_one_line(tmp_path, flags, line):
  """A UserError from anywhere in a run: one `error:` line on stderr, status 1, no traceback."""
  result = run_main(
    f"--workdir={tmp_path / 'run'}",
    *flags,
    env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2"),
    timeout=300,
  )
  assert result.returncode == 1, result.stderr
  assert "Traceback" not in result.stderr, result.stderr
  assert re.fullmatch(line, result.stderr.strip().splitlines()[-1]), result.stderr
