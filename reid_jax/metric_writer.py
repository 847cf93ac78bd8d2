"""The run's metrics: TensorBoard summaries (clu's `SummaryWriter`) and JSON lines, process 0 only.

`<workdir>/metrics.jsonl` holds one JSON object per write (`{"step": 300, "train/loss": ...}`),
flushed at once, so a script or a person can follow a run without TensorBoard.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
from clu import metric_writers
from clu.metric_writers import interface

from data_prep.files import atomic_write


class JsonLinesWriter(interface.MetricWriter):
  """Scalars, texts and hyperparameters as JSON lines; arrays (images, videos, audio,
  histograms, summaries) are TensorBoard's and are not written here."""

  def __init__(self, path: str, *, keep_through_step: int = 0):
    """Appends to `path`, first dropping the records of steps after `keep_through_step` (a
    resumed run writes those steps again; without this they would stand twice)."""
    if os.path.exists(path):
      with open(path) as f:
        lines = f.readlines()
      kept = [line for line in lines if _step(line) <= keep_through_step]
      if len(kept) < len(lines) or (kept and not kept[-1].endswith("\n")):
        with atomic_write(path) as f:
          f.writelines(line if line.endswith("\n") else line + "\n" for line in kept)
    self._file = open(path, "a")

  def _write(self, record: Mapping[str, Any]) -> None:
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, interface.Scalar]):
    self._write({"step": int(step), **{k: float(v) for k, v in scalars.items()}})

  def write_texts(self, step: int, texts: Mapping[str, str]):
    self._write({"step": int(step), **texts})

  def write_hparams(self, hparams: Mapping[str, Any]):
    self._write({"hparams": dict(hparams)})

  def write_summaries(self, step, values, metadata=None):
    del step, values, metadata

  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def _step(line: str) -> float:
  """A record's step (-1 without one); a line cut short by a crash counts as past every step,
  so it is dropped rather than glued to the next record."""
  try:
    return int(json.loads(line).get("step", -1))
  except (ValueError, AttributeError):
    return float("inf")


def create_writer(workdir: str, start_step: int = 0) -> metric_writers.MetricWriter:
  """TensorBoard in `<workdir>/tensorboard` and `<workdir>/metrics.jsonl` on process 0; on the
  other processes a writer that writes nothing. A run (re)starting at `start_step` drops the
  JSON records of later steps, which it writes again."""
  if jax.process_index() != 0:
    return metric_writers.MultiWriter([])
  return metric_writers.MultiWriter(
    [
      metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard")),
      JsonLinesWriter(os.path.join(workdir, "metrics.jsonl"), keep_through_step=start_step),
    ]
  )
