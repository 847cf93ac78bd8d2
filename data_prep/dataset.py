"""What a dataset module declares (`Dataset`), and what its layout reader yields (`Tracklet`).

Each module of `data_prep.datasets` defines one `DATASET`: everything this project knows about
that dataset lives there, and the converter, the input pipeline, `config.validate` and the
evaluation protocols all read it through the registry (`data_prep.datasets.get`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping

from data_prep.errors import UserError


class LayoutError(UserError, ValueError):
  """The download does not have the expected layout; the message names the offending file."""


@dataclasses.dataclass(frozen=True)
class Tracklet:
  """One tracklet of a download: what becomes one TFDS example."""

  split: str  # TFDS split it is written to
  frames: tuple[str, ...]  # image paths, in frame-number order
  frame_numbers: tuple[int, ...]
  pid: int
  camid: int  # 1-based
  tracklet_id: int
  role: str  # one of data_prep.format.ROLES
  person_split_role: tuple[int, ...] | None = None  # per split: 0 train person, 1 test person


@dataclasses.dataclass(frozen=True)
class Protocol:
  """Which tracklets of the evaluation set are queries and which the gallery.

  Queries are the tracklets whose role is `query`. The gallery is every tracklet, queries
  included (`queries_in_gallery`, as MARS's and LS-VID's official code), or the others. With
  `person_splits`, both are restricted to the test people of one person split, and results are
  means over the splits. The ranking rule (`reid_jax.evaluation.ranking`) is the same for all.
  """

  name: str
  queries_in_gallery: bool
  description: str
  person_splits: bool = False


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Everything about one dataset.

  Attributes:
    name: the `--dataset` / `config.dataset.name` value.
    description: one line: the dataset and its size.
    instructions: what to download and which folder to pass as the manual directory.
    read: the layout reader: the manual directory -> its tracklets, in a canonical order,
      raising LayoutError naming the file for anything unexpected. It may be a generator: the
      converter runs it once to check the whole layout before writing, then once per split.
    splits: the TFDS splits the tracklets are written to (`Tracklet.split`).
    views: per view of `data_prep.format.VIEWS`, the TFDS splits it is made of.
    protocols: the evaluation protocols, the default first.
    person_splits: the number of person splits (0 when the dataset has a fixed train/test split).
    non_identity_pids: pids that are not people (MARS's junk -1 and distractors 0): not counted
      as identities in `stats.json`.
  """

  name: str
  description: str
  instructions: str
  read: Callable[[str], Iterable[Tracklet]]
  splits: tuple[str, ...]
  views: Mapping[str, tuple[str, ...]]
  protocols: tuple[Protocol, ...]
  person_splits: int = 0
  non_identity_pids: tuple[int, ...] = ()

  @property
  def default_protocol(self) -> Protocol:
    return self.protocols[0]

  def protocol(self, name: str) -> Protocol:
    for protocol in self.protocols:
      if protocol.name == name:
        return protocol
    names = [p.name for p in self.protocols]
    raise ValueError(f"{name!r} is not a protocol of {self.name}; choose one of {names}")

  def check_split_index(self, index: int) -> None:
    """Raises ValueError unless `index` names a person split (datasets without any accept all,
    since they ignore it)."""
    if self.person_splits and not 0 <= index < self.person_splits:
      raise ValueError(f"{self.name} has person splits 0..{self.person_splits - 1}, got {index}")


def camera_pair_protocol(name: str, query_camera: str, gallery_camera: str) -> Protocol:
  """The protocol of a two-camera dataset with person splits (iLIDS-VID, PRID2011)."""
  return Protocol(
    name,
    queries_in_gallery=False,
    person_splits=True,
    description=f"per person split: its test people seen by {query_camera} are the queries, the "
    f"same people seen by {gallery_camera} the gallery; mean and std over the splits",
  )
