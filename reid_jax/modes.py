"""The modes of `python -m reid_jax.main`: `--config.mode=NAME` runs `MODES[NAME]`.

This registry is the one list of modes: the config's checks, `--help` and the docs derive from
it. A mode is a function `run(config, workdir)` in its own module, imported only when it runs,
so a run loads only what its mode needs. `run_mode` validates the config once, takes the
workdir's lock on process 0, and runs the mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import textwrap


@dataclasses.dataclass(frozen=True)
class Mode:
  """One mode: what it does (one line, for `--help`) and where its `run(config, workdir)` is."""

  summary: str
  target: str  # "module:function"

  @property
  def run(self):
    module, function = self.target.split(":")
    return getattr(importlib.import_module(module), function)


MODES = {
  "train": Mode(
    "train the config's model (the default); resumes from the workdir's checkpoints and "
    "evaluates every train.eval_every_epochs and at the end",
    "reid_jax.train:run",
  ),
  "eval": Mode(
    "restore --config.eval.step (default the newest) and write metrics.json, cmc.png and "
    "ranked sheets; with --config.eval.split_features, the mean over person splits",
    "reid_jax.evaluation.runner:run_eval",
  ),
  "extract": Mode(
    "per-tracklet features of the evaluation set to <workdir>/features_step<N>.npz",
    "reid_jax.evaluation.runner:run_extract",
  ),
  "calibrate": Mode(
    "the distance that separates same-person from different-person pairs of the evaluation "
    "set: threshold.json, pairs.png, roc.png",
    "reid_jax.evaluation.calibrate:run",
  ),
  "embed": Mode(
    "one feature per tracklet of your own footage (--config.embed.input) to "
    "<workdir>/embeddings.npz",
    "reid_jax.footage.embed:run",
  ),
  "search": Mode(
    "the nearest gallery tracklets of every query tracklet of embeddings: search/ranking.csv, "
    "matches.csv and ranked sheets",
    "reid_jax.footage.search:run",
  ),
  "export": Mode(
    "the feature function for serving (jax.export and a SavedModel) to <workdir>/export/step_<N>/",
    "reid_jax.export:run",
  ),
}
NAMES = tuple(MODES)


def describe(indent: str = "  ", columns: int = 100) -> str:
  """One entry per mode (its name, then its summary wrapped), for `--help` and docstrings."""
  width = max(map(len, MODES))
  return "\n".join(
    textwrap.fill(
      mode.summary,
      columns,
      initial_indent=f"{indent}{name:<{width}}  ",
      subsequent_indent=" " * (len(indent) + width + 2),
    )
    for name, mode in MODES.items()
  )


def run_mode(config, workdir: str):
  """Validates `config` (over this run's devices), then runs `config.mode` in `workdir`, with
  the workdir's lock held by process 0 until it ends. Returns what the mode returns."""
  import jax

  from reid_jax import config as config_lib
  from reid_jax import workdir_lock

  config_lib.validate(config, num_devices=jax.device_count())
  lock = workdir_lock.WorkdirLock(workdir, config.mode) if jax.process_index() == 0 else None
  with lock or contextlib.nullcontext():
    return MODES[config.mode].run(config, workdir)
