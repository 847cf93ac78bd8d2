"""A tiny training setup shared by the trainer tests: config overrides and command-line flags."""

import importlib.util
import os

SYNTHETIC_CONFIG = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "synthetic.py"
)

# A network of the paper's structure (non-local blocks in res3 and res4), 4 channels wide, on
# 4 x 32 x 16 clips of 8 synthetic identities: 2 steps per epoch at P=4, K=2.
TINY_OVERRIDES = {
  "dataset.synthetic.identities": 8,
  "dataset.synthetic.cameras": 2,
  "dataset.synthetic.tracklets_per_camera": 2,
  "dataset.synthetic.min_len": 8,
  "dataset.synthetic.max_len": 12,
  "dataset.synthetic.height": 32,
  "dataset.synthetic.width": 16,
  "dataset.synthetic.junk": 2,
  "dataset.synthetic.distractors": 2,
  "data.P": 4,
  "data.K": 2,
  "data.num_frames": 4,
  "data.stride": 2,
  "data.height": 32,
  "data.width": 16,
  "data.eval_batch_size": 16,
  "model.stage_depths": (1, 2, 2, 1),
  "model.width": 4,
  "model.bottleneck_dim": 16,
  # res4 is 2x1 at 32 x 16: too small to pool the non-local keys by 1x2x2.
  "model.nonlocal_pool": False,
  "optim.total_epochs": 5,
  "optim.decay_start_epoch": 3,
  "train.log_every_steps": 1,
  "train.checkpoint_every_steps": 4,
  # The tests' thresholds and distances are Euclidean (the demo ranks by cosine distance).
  "eval.metric": "euclidean",
  "eval.num_ranked_queries": 1,
  "eval.top_k": 3,
}


def load_config(path: str):
  """`get_config()` of the config file at `path`."""
  spec = importlib.util.spec_from_file_location("test_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def tiny_config(data_dir, **extra):
  """configs/synthetic.py with TINY_OVERRIDES, `extra` ("a.b": value) and the built data_dir:
  the same settings `python -m reid_jax.main --config=configs/synthetic.py tiny_flags(...)` uses."""
  config = load_config(SYNTHETIC_CONFIG)
  config.dataset.data_dir = str(data_dir)
  for key, value in {**TINY_OVERRIDES, **extra}.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def tiny_flags(data_dir, **extra) -> list[str]:
  """The same settings as `--config.*` flags for `python -m reid_jax.main`."""

  def fmt(v):
    return f"({','.join(map(str, v))})" if isinstance(v, tuple) else str(v)

  overrides = {**TINY_OVERRIDES, "dataset.data_dir": str(data_dir), **extra}
  return [f"--config.{k}={fmt(v)}" for k, v in overrides.items()]
