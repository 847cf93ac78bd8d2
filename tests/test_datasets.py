"""The dataset registry: every module declares a consistent dataset, and everything reads it."""

import ast
import os
import subprocess
import sys

import pytest

from data_prep import builders, datasets
from reid_jax import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", datasets.NAMES)
def test_each_dataset_declares_a_consistent_dataset(name):
  dataset = datasets.get(name)
  assert dataset.name == name
  assert set(dataset.views) == {"train", "eval"}
  for view, splits in dataset.views.items():
    assert splits and set(splits) <= set(dataset.splits), (view, splits)
  assert dataset.protocols and dataset.instructions and dataset.description
  assert bool(dataset.person_splits) == any(p.person_splits for p in dataset.protocols)
  assert builders.builder_class(name).name == name


def test_protocol_names_are_unique_across_datasets():
  names = datasets.protocol_names()
  assert len(names) == len(set(names))
  for dataset in datasets.NAMES:
    for protocol in datasets.get(dataset).protocols:
      assert datasets.protocol(protocol.name) is protocol


def test_unknown_dataset_and_protocol_are_named():
  with pytest.raises(ValueError, match="'market'.*mars"):
    datasets.get("market")
  with pytest.raises(ValueError, match="'cuhk'.*mars_no_query_in_gallery"):
    datasets.protocol("cuhk")


def test_data_prep_never_imports_reid_jax():
  folder = os.path.join(REPO, "data_prep")
  for root, _, files in os.walk(folder):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(root, name)
      with open(path) as f:
        tree = ast.parse(f.read(), path)
      for node in ast.walk(tree):
        modules = []
        if isinstance(node, ast.Import):
          modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
          modules = [node.module or ""]
        for module in modules:
          assert module.split(".")[0] != "reid_jax", f"{path}:{node.lineno} imports {module}"


def test_validate_takes_datasets_and_protocols_from_the_registry():
  config = config_lib.default_config()
  config.dataset.name = "duke"
  config_lib.validate(config, num_devices=1)
  assert config_lib.protocol(config) == "duke"
  config.eval.protocol = "ilidsvid"  # another dataset's protocol
  with pytest.raises(
    ValueError, match=r"config.eval.protocol: 'ilidsvid' is not a protocol of duke"
  ):
    config_lib.validate(config, num_devices=1)
  config = config_lib.default_config()
  config.dataset.name = "market"
  with pytest.raises(ValueError, match="config.dataset.name: 'market'"):
    config_lib.validate(config, num_devices=1)


def test_validate_checks_the_person_split_index():
  config = config_lib.split_dataset_finetuning("prid2011")
  config.dataset.split_index = 9
  config_lib.validate(config, num_devices=1)
  config.dataset.split_index = 10
  with pytest.raises(
    ValueError, match=r"config.dataset.split_index: prid2011 has person splits 0..9"
  ):
    config_lib.validate(config, num_devices=1)


def test_build_help_lists_every_dataset_with_its_instructions():
  out = subprocess.run(
    [sys.executable, "-m", "data_prep.build", "--help"],
    cwd=REPO,
    check=True,
    capture_output=True,
    text=True,
  ).stdout
  for name in datasets.NAMES:
    assert f"{name}: " in out
    assert datasets.get(name).instructions.split()[0] in out
