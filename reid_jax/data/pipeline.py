"""The tf.data training pipeline: P x K clips, cropped and flipped.

A Python generator yields, per step, this process's rows of the global batch as encoded JPEG
bytes read straight from the shards (`FrameReader`) plus what `sampling` decided (crop, flip);
tf.data then unbatches, decodes and augments clips in parallel (`num_parallel_calls=AUTOTUNE`,
order kept) and rebatches. The Python part is a few memory copies per clip; the decoding, where
the time goes, runs in TensorFlow's thread pool outside the GIL. Only the T frames of a clip are
ever decoded. (Evaluation reads the built dataset through the chunk stream,
`reid_jax.data.tracklets.BuiltTracklets`.)

Clips are uint8 `[b, T, H, W, 3]`; `normalize_clips` runs on the accelerator.

Training augmentation: a clip is cropped at one random offset from its frames scaled up by 1/8
and flipped or not, the same for all its frames (two well-known codebases draw these per frame,
which breaks the motion a 3D network is meant to see). A crop of the scaled-up frame is the
matching window of the source frame resized to the output size, so the pipeline decodes only
that window (`decode_and_crop_jpeg`) and resizes once, never building the larger image; the
window is rounded to whole source pixels (under half a pixel of shift). Frames of one tracklet
may differ in size (DukeMTMC-VideoReID), so each frame gets its own window, at the same relative
position. Measured on 2 cores, this is about twice as fast as one `crop_and_resize` per frame.
"""

from __future__ import annotations

import atexit
import itertools
import threading
import weakref

import numpy as np
import tensorflow as tf

from data_prep import built
from reid_jax.data import sampling
from reid_jax.data import tracklets as tracklets_lib
from reid_jax.data.frames import resize_frame


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return process_index, process_count


def _local_rows(global_batch: int, process_index: int, process_count: int) -> slice:
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
  local = global_batch // process_count
  return slice(process_index * local, (process_index + 1) * local)


def _training_pool(index: dict[str, np.ndarray], split_index: int) -> np.ndarray:
  """Rows of the train index used for training (with person splits: that split's people)."""
  splits = index["person_split_role"]
  if not splits.shape[1]:
    return np.arange(len(index["pids"]))
  if not 0 <= split_index < splits.shape[1]:
    raise ValueError(f"split_index {split_index} not in [0, {splits.shape[1]})")
  return np.flatnonzero(splits[:, split_index] == 0)


def train_info(data_dir: str, dataset: str, *, split_index: int = 0) -> dict[str, int]:
  """`num_classes`, `num_tracklets`, `num_identities` of the training pool.

  `split_index` selects the person split of datasets that have them (ignored otherwise).
  """
  index = built.load_index(data_dir, dataset, "train")
  rows = _training_pool(index, split_index)
  num_ids = len(np.unique(index["pids"][rows]))
  return dict(num_classes=num_ids, num_tracklets=len(rows), num_identities=num_ids)


def _crop_windows(jpegs, offset, height, width, up_height, up_width) -> tf.Tensor:
  """`[T, 4]` windows `[y, x, h, w]` in each source frame of the `height x width` crop at
  `offset` in the frame scaled to `up_height x up_width`, rounded to whole source pixels."""
  # Computed for all frames at once: per-frame arithmetic would cost more in op dispatch than
  # in arithmetic.
  source = tf.cast(tf.stack([tf.io.extract_jpeg_shape(j)[:2] for j in jpegs]), tf.float32)
  scale = source / tf.constant([up_height, up_width], tf.float32)
  size = tf.minimum(tf.round(tf.constant([height, width], tf.float32) * scale), source)
  start = tf.minimum(tf.round(tf.cast(offset, tf.float32) * scale), source - size)
  return tf.cast(tf.concat([start, size], 1), tf.int32)


def _train_clip_fn(num_frames: int, height: int, width: int):
  up_height, up_width = sampling.upscaled_size(height, width)

  def clip_fn(row):
    jpegs = [row["frames"][t] for t in range(num_frames)]
    windows = _crop_windows(jpegs, row["crops"], height, width, up_height, up_width)
    clip = tf.stack(
      [
        resize_frame(tf.io.decode_and_crop_jpeg(jpeg, windows[t], channels=3), height, width)
        for t, jpeg in enumerate(jpegs)
      ]
    )
    clip = tf.cond(row["flips"], lambda: tf.reverse(clip, axis=[2]), lambda: clip)
    return dict(clips=clip, labels=row["labels"], camids=row["camids"])

  return clip_fn


class NumpyBatches:
  """Iterator of dicts of numpy arrays over a tf.data pipeline fed by a Python generator.

  `close()` stops the pipeline and frees its threads and buffers. Open iterators are closed at
  interpreter exit: tf.data threads still calling into the generator while Python shuts down
  can deadlock the exit (seen here with a live training iterator: the process printed its
  results and never exited).
  """

  def __init__(self, ds: tf.data.Dataset, stop: threading.Event):
    self._iterator = iter(ds)
    self._stop = stop
    _OPEN_ITERATORS.add(self)

  def __iter__(self) -> NumpyBatches:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._iterator is None:
      raise StopIteration
    return {k: v.numpy() for k, v in next(self._iterator).items()}

  def close(self) -> None:
    """Stops the pipeline; later `next` calls raise StopIteration."""
    self._stop.set()
    self._iterator = None


_OPEN_ITERATORS: weakref.WeakSet[NumpyBatches] = weakref.WeakSet()


@atexit.register
def _close_open_iterators() -> None:
  for iterator in list(_OPEN_ITERATORS):
    iterator.close()


def _pipeline(batches, signature: dict, clip_fn, local_batch: int) -> NumpyBatches:
  """Decodes each row of each generated batch in parallel, keeping order and batch bounds."""
  stop = threading.Event()

  def stoppable_batches():
    for batch in batches():
      if stop.is_set():
        return
      yield batch

  ds = tf.data.Dataset.from_generator(stoppable_batches, output_signature=signature)
  ds = ds.unbatch()
  ds = ds.map(clip_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  # Parallelism comes from decoding many clips at once; splitting one resize over threads
  # only adds synchronisation (about 15% more clips per CPU-second measured here).
  options.threading.max_intra_op_parallelism = 1
  return NumpyBatches(ds.with_options(options), stop)


def make_train_iterator(
  data_dir: str,
  dataset: str,
  *,
  P: int,
  K: int,
  num_frames: int = 8,
  stride: int = 8,
  height: int = 256,
  width: int = 128,
  seed: int = 0,
  start_step: int = 0,
  split_index: int = 0,
  process_index: int | None = None,
  process_count: int | None = None,
) -> NumpyBatches:
  """Endless identity-balanced training batches for this process, from global step `start_step`.

  The global batch of step s (P identities x K tracklets, see `sampling`) is a pure function of
  `(seed, s)`: the same on any number of processes, and resuming at s replays nothing. Process
  i yields rows `[i * B_local, (i + 1) * B_local)` of it, `B_local = P * K / process_count`.

  Args:
      data_dir: where `python -m data_prep.build` wrote the dataset.
      dataset: a name of `data_prep.datasets`.
      P, K: identities per batch and tracklets per identity.
      num_frames, stride: T frames every `stride` frames per clip.
      height, width: clip frame size (crops of the frames scaled up by 1/8).
      seed: sampling and augmentation seed.
      start_step: global step of the first batch.
      split_index: person split whose train people are used (datasets with person splits).
      process_index, process_count: default `jax.process_index()`, `jax.process_count()`.

  Yields:
      `clips uint8 [B_local, T, H, W, 3]`, `labels int32 [B_local]` (0..num_classes-1, in
      order of pid), `camids int32 [B_local]`.
  """
  process_index, process_count = _process(process_index, process_count)
  rows = _local_rows(P * K, process_index, process_count)
  index = built.load_index(data_dir, dataset, "train")
  pool = _training_pool(index, split_index)
  pids = index["pids"][pool]
  labels = np.unique(pids, return_inverse=True)[1]
  up_height, up_width = sampling.upscaled_size(height, width)
  sampler = sampling.TrainSampler(
    identity_tracklets=tuple(np.flatnonzero(labels == c) for c in range(labels.max() + 1)),
    num_frames=np.diff(index["frame_start"])[pool],
    P=P,
    K=K,
    T=num_frames,
    stride=stride,
    seed=seed,
    crop_range=(up_height - height, up_width - width),
  )
  first_frame = index["frame_start"][pool]
  camids = index["camids"][pool].astype(np.int32)
  reader = tracklets_lib.FrameReader(data_dir, dataset, index)

  def batches():
    for step in itertools.count(start_step):
      batch = {k: v[rows] for k, v in sampler.batch(step).items()}
      tracklets = batch["tracklets"]
      yield dict(
        frames=reader(first_frame[tracklets][:, None] + batch["positions"]),
        crops=batch["crops"],
        flips=batch["flips"],
        labels=batch["labels"],
        camids=camids[tracklets],
      )

  local = rows.stop - rows.start
  signature = dict(
    frames=tf.TensorSpec([local, num_frames], tf.string),
    crops=tf.TensorSpec([local, 2], tf.int32),
    flips=tf.TensorSpec([local], tf.bool),
    labels=tf.TensorSpec([local], tf.int32),
    camids=tf.TensorSpec([local], tf.int32),
  )
  return _pipeline(batches, signature, _train_clip_fn(num_frames, height, width), local)
