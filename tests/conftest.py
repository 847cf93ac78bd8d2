"""Test-wide settings: 4 CPU devices so sharded code paths run on a laptop."""

import os

# Must be set before JAX initialises its backends (i.e. before the first test imports it).
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Programs compiled by one test (or a subprocess it starts) are reused by the others.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/reid_jax_test_compilation_cache")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A tiny synthetic MARS, generated and built with the real converter, for trainer tests."""
  from reid_jax.data import prepare

  from tiny_training import tiny_config

  root = tmp_path_factory.mktemp("tiny_mars")
  prepare.prepare_dataset(tiny_config(root / "data"), str(root))
  return root / "data"
