"""What to read, decided in numpy: the P x K training sampler.

It is a pure function of `(seed, step)`, so
- every process of a multi-host job computes the same global batch and keeps its own contiguous
  slice of rows, with no communication;
- resuming at step s costs one permutation of the identities, not replaying s steps;
- the tf.data graph only decodes and augments what was decided here.

Training batch at global step s (epoch e = s // steps_per_epoch, j = s % steps_per_epoch):
- identities: rows j*P .. j*P+P-1 of a permutation of all training identities drawn from
  (seed, e), wrapping to the start of the same permutation in the last step of an epoch, so an
  epoch visits every identity at least once and each batch holds P distinct identities;
- per identity K tracklets, without replacement when it has K or more, with replacement otherwise;
- per tracklet T frame positions `start + stride * t`, with `start` uniform over the positions
  where all T fit. A tracklet too short for that uses the largest stride that fits
  (`(n - 1) // (T - 1)`), and one shorter than T frames repeats frames in temporal order
  (0, 0, 1, 1, ...), so a clip never jumps backwards in time;
- per clip one crop offset in the image scaled up by 1/8 and one flip, for all its frames.
Rows are identity-major: row p*K + k is the k-th tracklet of the p-th identity.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# Training crops come from the clip scaled up by this factor (the paper's "scaled up by 1/8").
UPSCALE = 1.125


def steps_per_epoch(num_identities: int, P: int) -> int:
  """Steps of one epoch: `ceil(num_identities / P)`, every identity at least once per epoch."""
  if not 0 < P <= num_identities:
    raise ValueError(f"need 0 < P <= number of identities ({num_identities}), got P={P}")
  return math.ceil(num_identities / P)


def upscaled_size(height: int, width: int) -> tuple[int, int]:
  """The size training crops of `height` x `width` are taken from."""
  return round(height * UPSCALE), round(width * UPSCALE)


def clip_positions(length: int, T: int, stride: int, rng: np.random.Generator) -> np.ndarray:
  """T frame positions in `[0, length)` for one training clip (see the module docstring)."""
  if length < T:
    return np.arange(T) * length // T
  stride = min(stride, (length - 1) // (T - 1)) if T > 1 else 1
  span = stride * (T - 1) + 1
  return int(rng.integers(0, length - span + 1)) + stride * np.arange(T)


@dataclasses.dataclass(frozen=True)
class TrainSampler:
  """The P x K sampler over one training pool.

  Attributes:
      identity_tracklets: per label (0..C-1) the rows of its tracklets.
      num_frames: `[N]` length of each row's tracklet.
  """

  identity_tracklets: tuple[np.ndarray, ...]
  num_frames: np.ndarray
  P: int
  K: int
  T: int
  stride: int
  seed: int
  crop_range: tuple[int, int]  # (max vertical, max horizontal) crop offset

  def __post_init__(self):
    steps_per_epoch(len(self.identity_tracklets), self.P)  # validates P

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """The global batch of `step`: `tracklets [P*K]`, `labels [P*K]`, `positions [P*K, T]`,
    `crops [P*K, 2]` (offsets in the upscaled image), `flips [P*K]`."""
    num_ids = len(self.identity_tracklets)
    epoch, j = divmod(step, steps_per_epoch(num_ids, self.P))
    order = np.random.default_rng([self.seed, 0, epoch]).permutation(num_ids)
    labels = order[(j * self.P + np.arange(self.P)) % num_ids]
    rng = np.random.default_rng([self.seed, 1, step])
    tracklets = []
    for label in labels:
      own = self.identity_tracklets[label]
      tracklets.append(rng.choice(own, self.K, replace=len(own) < self.K))
    tracklets = np.concatenate(tracklets)
    positions = np.stack(
      [clip_positions(self.num_frames[t], self.T, self.stride, rng) for t in tracklets]
    )
    batch = len(tracklets)
    return dict(
      tracklets=tracklets,
      labels=np.repeat(labels, self.K).astype(np.int32),
      positions=positions,
      crops=np.stack(
        [
          rng.integers(0, self.crop_range[0] + 1, batch),
          rng.integers(0, self.crop_range[1] + 1, batch),
        ],
        axis=1,
      ).astype(np.int32),
      flips=rng.random(batch) < 0.5,
    )
