"""The trainer end to end on a tiny synthetic MARS: train, resume after SIGTERM, eval, extract."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from reid_jax import config as config_lib
from reid_jax import train
from tiny_training import tiny_config, tiny_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def saved_arrays(workdir, step):
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "meta"),
                             options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  def host(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)  # the dropout RNG's state
    return np.asarray(x)
  return {k: host(v) for k, v in jax.tree_util.tree_flatten_with_path(restored["state"])[0]}


def test_validation_names_the_field():
  config = config_lib.default_config()
  with pytest.raises(ValueError, match=r"config.data.batch_size: 128 is not P x K = 30 x 4"):
    config.data.P = 30
    config_lib.validate(config, num_devices=1)
  config = config_lib.default_config()
  with pytest.raises(ValueError, match=r"config.data.batch_size: .* does not divide over 3"):
    config_lib.validate(config, num_devices=3)
  config = config_lib.default_config()
  config.model.name = "resnet3d101"
  with pytest.raises(ValueError, match=r"config.model.name: unknown model 'resnet3d101'"):
    config_lib.validate(config, num_devices=1)
  config = config_lib.default_config()
  config.data.num_frames = 7
  with pytest.raises(ValueError, match=r"config.data.num_frames"):
    config_lib.validate(config, num_devices=1)


def test_missing_dataset_is_a_clear_error(tmp_path):
  config = tiny_config(tmp_path / "nothing", **{"dataset.synthetic.identities": 0})
  with pytest.raises(FileNotFoundError, match="manual_dir"):
    train.prepare_dataset(config, str(tmp_path))


def test_killed_run_resumes_to_the_same_parameters(data_dir, tmp_path):
  """One run straight through; another SIGTERMed mid-way and restarted: same final weights."""
  total = 10  # 5 epochs x 2 steps
  straight = tmp_path / "straight"
  results = train.train_and_evaluate(tiny_config(data_dir), str(straight))
  assert 0.0 <= results["rank1"] <= 1.0 and results["protocol"] == "mars"

  resumed = tmp_path / "resumed"
  cmd = [sys.executable, "-m", "reid_jax.main", "--config=configs/synthetic.py",
         f"--workdir={resumed}", *tiny_flags(data_dir)]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  log_file = resumed / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if log_file.exists() and any(json.loads(line)["step"] >= 2
                                 for line in log_file.read_text().splitlines()):
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.1)
  output = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, output
  assert "Stopping at step" in output, output
  stopped_at = max(int(d.name) for d in (resumed / "checkpoints").iterdir() if d.name.isdigit())
  assert 2 <= stopped_at < total

  train.train_and_evaluate(tiny_config(data_dir), str(resumed))
  a, b = saved_arrays(straight, total), saved_arrays(resumed, total)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=jax.tree_util.keystr(key))

  # eval restores any step and writes the report; extract writes per-tracklet features.
  config = tiny_config(data_dir, mode="eval", **{"eval.step": 4})
  restored = train.evaluate_checkpoint(config, str(straight))
  assert restored["step"] == 4
  metrics = json.loads((straight / "metrics.json").read_text())
  assert {"protocol", "rank1", "rank5", "rank10", "rank20", "mAP", "mINP"} <= metrics.keys()
  assert (straight / "cmc.png").exists() and list(straight.glob("attention_q*.png"))
  path = train.extract(tiny_config(data_dir, mode="extract"), str(straight))
  with np.load(path) as saved:
    assert saved["features"].shape == (len(saved["pids"]), 16)
    assert np.isfinite(saved["features"]).all()

  # A checkpoint of another shape is a clear error naming a variable.
  wider = tiny_config(data_dir, mode="eval", **{"model.width": 8})
  with pytest.raises(ValueError, match="first mismatch at"):
    train.evaluate_checkpoint(wider, str(straight))


def test_non_finite_loss_stops_the_run_naming_the_step(data_dir, tmp_path):
  config = tiny_config(data_dir, **{"optim.base_lr": 1e30, "optim.total_epochs": 2,
                                    "optim.decay_start_epoch": 1})
  with pytest.raises(FloatingPointError, match=r"at step \d+"):
    train.train_and_evaluate(config, str(tmp_path / "nan"))
