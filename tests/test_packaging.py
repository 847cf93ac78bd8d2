"""The package as pip installs it (not editable): its modules, default config, console script,
and declared dependencies against what its code imports."""

import ast
import glob
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from data_prep.errors import EXTRAS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The modules only an extra provides; the runtime imports each inside the function needing it.
EXTRA_MODULES = {"av": "video", "torch": "torch", "jax2onnx": "onnx", "onnxruntime": "onnx"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  """The wheel of the tracked files, and the tracked file names."""
  tmp = tmp_path_factory.mktemp("wheel")
  # Built from a copy of the tracked files: a build in place would leave build/ in the checkout.
  source = tmp / "source"
  tracked = subprocess.run(
    ["git", "ls-files"], cwd=REPO, check=True, capture_output=True, text=True
  ).stdout.split()
  for name in tracked:
    (source / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.join(REPO, name), source / name)
  subprocess.run(
    [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    + ["-w", str(tmp / "wheel"), str(source)],
    check=True,
    capture_output=True,
  )
  return glob.glob(str(tmp / "wheel" / "*.whl"))[0], tracked


def _read(wheel_path: str, suffix: str) -> str:
  with zipfile.ZipFile(wheel_path) as f:
    (name,) = [n for n in f.namelist() if n.endswith(suffix)]
    return f.read(name).decode()


def test_an_installed_package_has_its_default_config_and_console_script(wheel, tmp_path):
  wheel_path, tracked = wheel
  # Every module of the packages is in the wheel (an editable install in this environment would
  # hide a missing subpackage from the import below).
  with zipfile.ZipFile(wheel_path) as f:
    packaged = set(f.namelist())
  for name in tracked:
    if name.endswith(".py") and name.split("/")[0] in ("reid_jax", "data_prep", "configs"):
      assert name.replace("configs/", "reid_jax/configs/", 1) in packaged, name
  entry_points = _read(wheel_path, ".dist-info/entry_points.txt")
  assert re.search(r"^reid-jax = reid_jax\.main:run$", entry_points, re.M), entry_points
  target = tmp_path / "site"
  subprocess.run(
    [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target)]
    + [wheel_path],
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
  # The console script pip wrote runs main (absl's --help exits with status 1).
  result = subprocess.run(
    [sys.executable, str(target / "bin" / "reid-jax"), "--help"],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
  )
  help_text = " ".join(result.stdout.split())
  assert "Trains, evaluates, and runs trained models" in help_text, help_text[:2000]
  for flag in ("--config:", "--workdir:", "--coordinator_address:"):
    assert flag in help_text


def _is_require(node) -> bool:
  if not isinstance(node, ast.Call) or not node.args:
    return False
  name = getattr(node.func, "id", getattr(node.func, "attr", None))
  return name == "require" and isinstance(node.args[0], ast.Constant)


def _third_party_imports(wheel_path: str) -> dict[str, set[tuple[str, bool]]]:
  """Top-level module -> {(file, imported at module level)} of every import in the wheel's code
  (`require` calls included) that is neither the standard library nor the package itself."""
  found = {}
  with zipfile.ZipFile(wheel_path) as f:
    for name in f.namelist():
      if not name.endswith(".py"):
        continue
      tree = ast.parse(f.read(name).decode(), name)
      module_level = {id(node) for node in tree.body}
      for node in ast.walk(tree):
        if isinstance(node, ast.Import):
          modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
          modules = [node.module]
        elif _is_require(node):  # data_prep.errors.require("module", extra, purpose)
          modules = [node.args[0].value]
        else:
          continue
        for module in modules:
          top = module.split(".")[0]
          if top not in sys.stdlib_module_names and top not in ("reid_jax", "data_prep"):
            found.setdefault(top, set()).add((name, id(node) in module_level))
  return found


def _requirements(metadata: str) -> list[Requirement]:
  return [Requirement(line.split(":", 1)[1]) for line in metadata.splitlines() if line.startswith("Requires-Dist:")]  # fmt: skip


def _declared(requirements: list[Requirement], extra: str = "") -> set[str]:
  """The distributions installed here for the base package (extra "") or one extra."""
  return {
    canonicalize_name(r.name)
    for r in requirements
    if r.marker is None or r.marker.evaluate({"extra": extra})
  }


def test_declared_dependencies_cover_every_third_party_import(wheel):
  wheel_path, _ = wheel
  requirements = _requirements(_read(wheel_path, ".dist-info/METADATA"))
  base = _declared(requirements)
  assert not {"torch", "torchvision", "av", "onnxruntime", "pytest"} & base, base
  extras = {e: _declared(requirements, e) - base for e in ("video", "torch", "onnx", "dev")}
  assert extras["torch"] == {"torch"} and extras["video"] == {"av"}
  distributions = importlib.metadata.packages_distributions()
  imports = _third_party_imports(wheel_path)
  assert {"jax", "flax", "tensorflow", "orbax", "torch", "av", "jax2onnx"} <= set(imports)
  for module, places in sorted(imports.items()):
    provided = {canonicalize_name(d) for d in distributions.get(module, [])}
    assert provided, f"{module} (imported by {sorted(places)}) is not installed here"
    if module in EXTRA_MODULES:
      extra = EXTRA_MODULES[module]
      # Never imported when a module loads, so the package imports without the extra.
      assert not [p for p, top in places if top], (module, places)
      if module == "jax2onnx":  # installed with --no-deps after the extra (EXTRAS says how)
        pinned = open(os.path.join(REPO, "requirements-nodeps.txt")).read()
        version = re.search(r"^jax2onnx==(\S+)$", pinned, re.M).group(1)
        assert f"--no-deps jax2onnx=={version}" in EXTRAS["onnx"]
      else:
        assert provided & extras[extra], (module, extra, extras[extra])
    else:
      assert provided & base, f"{module} ({sorted(places)[:3]}) is not a declared dependency"


def test_requirements_txt_pins_satisfy_the_declared_bounds(wheel):
  wheel_path, _ = wheel
  pins = {}
  for name in ("requirements.txt", "requirements-nodeps.txt"):
    for line in open(os.path.join(REPO, name)):
      if line.strip() and not line.startswith("#"):
        requirement = Requirement(line.strip())
        (spec,) = requirement.specifier
        pins[canonicalize_name(requirement.name)] = spec.version
  for requirement in _requirements(_read(wheel_path, ".dist-info/METADATA")):
    name = canonicalize_name(requirement.name)
    if name == "reid-jax" or (
      requirement.marker and not requirement.marker.evaluate({"extra": "dev"})
    ):
      continue  # the self-reference of dev; the TensorFlow of other platforms
    assert name in pins, f"{name} is declared but not pinned in requirements.txt"
    assert requirement.specifier.contains(pins[name]), (str(requirement), pins[name])


_WITHOUT_EXTRAS = """
import importlib, importlib.abc, os, sys, zipfile

class Absent(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("torch", "torchvision", "av", "jax2onnx", "onnxruntime", "onnx"):
      raise ImportError(f"No module named {name!r}")

sys.meta_path.insert(0, Absent())
with zipfile.ZipFile(sys.argv[1]) as f:
  names = [n for n in f.namelist() if n.endswith(".py") and not n.startswith("reid_jax/configs")]
for name in sorted(names):
  importlib.import_module(name[: -len(".py")].replace("/", ".").removesuffix(".__init__"))
from reid_jax.errors import MissingExtra
from reid_jax.models import weight_files
from reid_jax.footage import videos
with open("weights.pth", "wb") as f:
  f.write(b"PK\\x03\\x04" + bytes(60))  # torch.save's zip format
for call in (lambda: weight_files.read_weight_file("weights.pth"), lambda: videos.probe_video("cam.mp4")):
  try:
    call()
  except MissingExtra as e:
    print(e)
from data_prep import synthetic
try:
  synthetic.main(["--footage", "footage"])
except SystemExit as e:
  print(e)
print(len(names), "modules")
"""


def test_the_package_imports_without_its_extras_and_names_them_when_needed(wheel, tmp_path):
  wheel_path, _ = wheel
  result = subprocess.run(
    [sys.executable, "-c", _WITHOUT_EXTRAS, wheel_path],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    env=dict(os.environ, PYTHONPATH=REPO),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  torch_line, video_line, footage_line, count = result.stdout.strip().splitlines()[-4:]
  assert footage_line.startswith("error: writing the videos of footage needs av")
  assert torch_line.startswith("reading weights.pth (a PyTorch weights file) needs torch")
  assert torch_line.endswith(": pip install 'reid-jax[torch]'")
  assert video_line.startswith("reading cam.mp4 (a video) needs av")
  assert video_line.endswith(": pip install 'reid-jax[video]'")
  assert int(count.split()[0]) > 50
