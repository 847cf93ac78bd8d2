"""One run per workdir: a second run fails naming the holder; a dead run's lock is taken over."""

import json
import logging
import os
import subprocess
import sys

import pytest

from reid_jax.workdir_lock import WorkdirLock, WorkdirLocked

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
  with WorkdirLock(str(tmp_path), "train"):
    holder = json.loads((tmp_path / ".lock").read_text())
    assert holder["pid"] == os.getpid() and holder["mode"] == "train"
    with pytest.raises(WorkdirLocked, match=rf"in use by another run .*\"pid\": {os.getpid()}"):
      WorkdirLock(str(tmp_path), "eval").__enter__()
  # Released: empty, and free to take.
  assert (tmp_path / ".lock").read_text() == ""
  with WorkdirLock(str(tmp_path), "eval"):
    pass


def test_the_lock_of_a_dead_run_is_taken_over(tmp_path, caplog):
  # A run killed with -9 leaves its file, but no lock: the OS released that with the process.
  (tmp_path / ".lock").write_text('{"host": "h", "pid": 999999, "mode": "train"}')
  with caplog.at_level(logging.WARNING, logger="reid_jax"):
    with WorkdirLock(str(tmp_path), "train"):
      assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
  assert "Taking over the lock of a run that is gone" in caplog.text and "999999" in caplog.text


def test_a_second_run_on_a_locked_workdir_fails_with_one_line(tmp_path):
  with WorkdirLock(str(tmp_path), "train"):
    result = subprocess.run(
      [
        sys.executable,
        "-m",
        "reid_jax.main",
        "--config=configs/synthetic.py",
        f"--workdir={tmp_path}",
        "--config.mode=eval",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
    )
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {tmp_path} is in use by another run") and "Traceback" not in (
    result.stderr
  )
  assert not (tmp_path / "data").exists()  # nothing was prepared
