"""TensorFlow Datasets builders for the four video re-id datasets (manual downloads).

Each tracklet is one example: its JPEG frames in frame-number order, the frame numbers, pid,
camera, tracklet id, role (train / query / gallery), its row `index` in the canonical order of
`data_prep.layouts`, and for iLIDS-VID and PRID2011 the 10 person splits. The output is a standard
TFDS dataset: `tfds.builder_from_directory('<data_dir>/<dataset>/1.0.0')` reads it without this
code. `disable_shuffling` keeps the canonical order in the shards (easier to inspect; the training
pipeline samples tracklets itself, so TFDS's write-time shuffle would buy nothing).

Use `python -m data_prep.build`, which wraps these builders with the random-access frame index
and statistics the input pipeline needs, and makes the whole build atomic.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from data_prep import layouts

_INSTRUCTIONS = {
  "mars": "Download MARS (bbox_train.zip, bbox_test.zip and the info/ folder from "
  "https://github.com/liangzheng06/MARS-evaluation) and unzip them into one folder holding "
  "bbox_train/, bbox_test/ and info/; pass that folder as the manual directory.",
  "ilidsvid": "Download and unpack iLIDS-VID.tar; pass the folder holding i-LIDS-VID/ (or "
  'i-LIDS-VID/ itself, with sequences/ and "train-test people splits/") as the manual directory.',
  "prid2011": "Download and unpack prid_2011.zip; pass the folder holding prid_2011/ (or "
  "prid_2011/ itself, with multi_shot/) as the manual directory. Put splits_prid2011.json there "
  f"to use the usual splits; without it 10 random splits with seed {layouts.PRID_SPLIT_SEED} "
  "are made.",
  "duke": "Download and unpack DukeMTMC-VideoReID.zip; pass the folder holding train/, query/ "
  "and gallery/ (or its parent) as the manual directory.",
}


class _TrackletBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """One example per tracklet; subclasses name the dataset."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
      "frames": tfds.features.Sequence(
        tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
      ),
      "frame_numbers": tfds.features.Tensor(shape=(None,), dtype=np.int64),
      "pid": np.int64,
      "camid": np.int64,
      "tracklet_id": np.int64,
      "role": tfds.features.ClassLabel(names=layouts.ROLES),
      "index": np.int64,
    }
    if self.name in ("ilidsvid", "prid2011"):
      features["person_split_role"] = tfds.features.Tensor(
        shape=(layouts.NUM_PERSON_SPLITS,), dtype=np.int8
      )
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.__doc__,
      features=tfds.features.FeaturesDict(features),
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    tracklets = layouts.read_layout(self.name, str(dl_manager.manual_dir))
    return {
      split: self._generate_examples([t for t in tracklets if t.split == split])
      for split in layouts.SPLITS[self.name]
    }

  def _generate_examples(self, tracklets):
    for index, t in enumerate(tracklets):
      example = {
        "frames": [layouts.encode_frame(p) for p in t.frames],
        "frame_numbers": np.asarray(t.frame_numbers, np.int64),
        "pid": t.pid,
        "camid": t.camid,
        "tracklet_id": t.tracklet_id,
        "role": t.role,
        "index": index,
      }
      if t.person_split_role is not None:
        example["person_split_role"] = np.asarray(t.person_split_role, np.int8)
      yield index, example


class Mars(_TrackletBuilder, skip_registration=True):
  """MARS (Zheng et al. 2016): 1,261 people, 6 cameras, 20,478 tracklets."""

  name = "mars"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS["mars"]


class Ilidsvid(_TrackletBuilder, skip_registration=True):
  """iLIDS-VID (Wang et al. 2014): 300 people, 2 cameras, one tracklet per person and camera."""

  name = "ilidsvid"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS["ilidsvid"]


class Prid2011(_TrackletBuilder, skip_registration=True):
  """PRID2011 multi-shot (Hirzer et al. 2011): the 178 people usable for video re-id."""

  name = "prid2011"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS["prid2011"]


class Duke(_TrackletBuilder, skip_registration=True):
  """DukeMTMC-VideoReID (Wu et al. 2018): 1,812 people, 8 cameras, 4,832 tracklets."""

  name = "duke"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS["duke"]


BUILDERS = {cls.name: cls for cls in (Mars, Ilidsvid, Prid2011, Duke)}
