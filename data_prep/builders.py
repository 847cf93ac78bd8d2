"""TensorFlow Datasets builders for the datasets of `data_prep.datasets` (manual downloads).

Each tracklet is one example: its JPEG frames in frame-number order, the frame numbers, pid,
camera, tracklet id, role (train / query / gallery), its row `index` in the canonical order of the
dataset's layout reader, and for datasets with person splits the role of its person in each. The
output is a standard TFDS dataset: `tfds.builder_from_directory('<data_dir>/<dataset>/1.0.0')`
reads it without this code. `disable_shuffling` keeps the canonical order in the shards (easier to
inspect; the training pipeline samples tracklets itself, so TFDS's write-time shuffle would buy
nothing).

Use `python -m data_prep.build`, which wraps these builders with the random-access frame index
and statistics the input pipeline needs, and makes the whole build atomic.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow_datasets as tfds

from data_prep import built, datasets, layout
from data_prep.dataset import Dataset


class _TrackletBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """One example per tracklet; `builder_class` makes one subclass per dataset."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  DATASET: Dataset

  def __init__(self, *, tracklets_per_split: dict[str, int] | None = None, **kwargs):
    """`tracklets_per_split` (as `data_prep.build.check_layout` counts them) saves a pass of the
    reader per split; without it the reader counts them first."""
    super().__init__(**kwargs)
    self._tracklets_per_split = tracklets_per_split or {}

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
      "frames": tfds.features.Sequence(
        tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
      ),
      "frame_numbers": tfds.features.Tensor(shape=(None,), dtype=np.int64),
      "pid": np.int64,
      "camid": np.int64,
      "tracklet_id": np.int64,
      "role": tfds.features.ClassLabel(names=built.ROLES),
      "index": np.int64,
    }
    if self.DATASET.person_splits:
      features["person_split_role"] = tfds.features.Tensor(
        shape=(self.DATASET.person_splits,), dtype=np.int8
      )
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.DATASET.description,
      features=tfds.features.FeaturesDict(features),
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    manual_dir = str(dl_manager.manual_dir)
    return {split: self._generate_examples(manual_dir, split) for split in self.DATASET.splits}

  def _generate_examples(self, manual_dir, split):
    # The reader runs once per split, so a streaming reader keeps one tracklet in memory.
    count = self._tracklets_per_split.get(split)
    if count is None:
      count = sum(t.split == split for t in self.DATASET.read(manual_dir))
    # With shuffling disabled TFDS writes examples in key order, and a split larger than its
    # 1 GB buffer goes to 1,000 temporary buckets by key range, each read back whole: keys
    # spread over the whole 128-bit range keep each bucket a thousandth of the split.
    spacing = 2**128 // max(count, 1)
    index = 0
    for t in self.DATASET.read(manual_dir):
      if t.split != split:
        continue
      example = {
        "frames": [layout.encode_frame(p) for p in t.frames],
        "frame_numbers": np.asarray(t.frame_numbers, np.int64),
        "pid": t.pid,
        "camid": t.camid,
        "tracklet_id": t.tracklet_id,
        "role": t.role,
        "index": index,
      }
      if self.DATASET.person_splits:
        example["person_split_role"] = np.asarray(t.person_split_role, np.int8)
      yield index * spacing, example
      index += 1


@functools.cache
def builder_class(name: str) -> type[_TrackletBuilder]:
  """The TFDS builder class of the dataset called `name`."""
  dataset = datasets.get(name)
  return type(
    name.capitalize(),
    (_TrackletBuilder,),
    {
      "name": name,
      "DATASET": dataset,
      "MANUAL_DOWNLOAD_INSTRUCTIONS": dataset.instructions,
      "__doc__": dataset.description,
      "__module__": __name__,
    },
    skip_registration=True,
  )
