"""The package as pip installs it (not editable): its modules, datasets and default config."""

import glob
import os
import shutil
import subprocess
import sys
import zipfile

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
  # Every module of the packages is in the wheel (an editable install in this environment would
  # hide a missing subpackage from the import below).
  with zipfile.ZipFile(wheel) as f:
    packaged = set(f.namelist())
  for name in tracked:
    if name.endswith(".py") and name.split("/")[0] in ("reid_jax", "data_prep", "configs"):
      assert name.replace("configs/", "reid_jax/configs/", 1) in packaged, name
  target = tmp_path / "site"
  subprocess.run(
    [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), wheel],
    check=True,
    capture_output=True,
  )
  # Run outside the checkout, with the installed copy first on the path.
  env = dict(os.environ, PYTHONPATH=str(target))
  out = subprocess.run(
    [
      sys.executable,
      "-c",
      "import reid_jax.main as m; from data_prep import datasets; "
      "[datasets.get(n) for n in datasets.NAMES]; print(m._DEFAULT_CONFIG)",
    ],
    cwd=tmp_path,
    env=env,
    check=True,
    capture_output=True,
    text=True,
  ).stdout.strip()
  assert out == str(target / "reid_jax" / "configs" / "synthetic.py")
  assert os.path.isfile(out)
