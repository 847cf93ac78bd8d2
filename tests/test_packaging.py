"""The package as pip installs it (not editable): its modules and its default config."""

import glob
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_an_installed_package_has_its_default_config(tmp_path):
  # Built from a copy of the tracked files: a build in place would leave build/ in the checkout.
  source = tmp_path / "source"
  tracked = subprocess.run(
    ["git", "ls-files"], cwd=REPO, check=True, capture_output=True, text=True
  ).stdout.split()
  for name in tracked:
    (source / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.join(REPO, name), source / name)
  subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "wheel",
      "--no-deps",
      "--no-build-isolation",
      "-q",
      "-w",
      str(tmp_path / "wheel"),
      str(source),
    ],
    check=True,
    capture_output=True,
  )
  wheel = glob.glob(str(tmp_path / "wheel" / "*.whl"))[0]
  target = tmp_path / "site"
  subprocess.run(
    [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), wheel],
    check=True,
    capture_output=True,
  )
  # Run outside the checkout, with the installed copy first on the path.
  env = dict(os.environ, PYTHONPATH=str(target))
  out = subprocess.run(
    [sys.executable, "-c", "import reid_jax.main as m; print(m._DEFAULT_CONFIG)"],
    cwd=tmp_path,
    env=env,
    check=True,
    capture_output=True,
    text=True,
  ).stdout.strip()
  assert out == str(target / "reid_jax" / "configs" / "synthetic.py")
  assert os.path.isfile(out)
