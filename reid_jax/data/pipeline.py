"""tf.data input pipelines for training and evaluation.

Shape of both pipelines: a Python generator yields, per step, this process's rows of the global
batch as encoded JPEG bytes read straight from the shards (`FrameReader`) plus what
`sampling` decided (crop, flip, masks); tf.data then unbatches, decodes and augments clips in
parallel (`num_parallel_calls=AUTOTUNE`, order kept) and rebatches. The Python part is a few
memory copies per clip; the decoding, where the time goes, runs in TensorFlow's thread pool
outside the GIL. Only the T frames of a clip are ever decoded.

Clips are uint8 `[b, T, H, W, 3]`; `normalize_clips` runs on the accelerator.

Training augmentation: a clip is cropped at one random offset from its frames scaled up by 1/8
and flipped or not, the same for all its frames (two well-known codebases draw these per frame,
which breaks the motion a 3D network is meant to see). Scaling and cropping are one bilinear
`crop_and_resize` per frame with the box mapped back into the source image, which equals resizing
to the upscaled size and cropping (pixel-centre aligned, as `tf.image.resize`) without building
the larger image. Frames of one tracklet may differ in size (DukeMTMC-VideoReID), so each frame
is mapped with its own size.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from reid_jax.data import sampling
from reid_jax.data import tracklets as tracklets_lib

# tf.data only decodes JPEGs here; keep TensorFlow off any GPU so that JAX owns its memory.
tf.config.set_visible_devices([], 'GPU')

TrackletTable = tracklets_lib.TrackletTable


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # pylint: disable=g-import-not-at-top

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f'process_index {process_index} not in [0, {process_count})')
    return process_index, process_count


def _local_rows(global_batch: int, process_index: int, process_count: int) -> slice:
    if global_batch % process_count:
        raise ValueError(
            f'global batch {global_batch} is not divisible by {process_count} processes'
        )
    local = global_batch // process_count
    return slice(process_index * local, (process_index + 1) * local)


def _training_pool(index: dict[str, np.ndarray], split_index: int) -> np.ndarray:
    """Rows of the train index used for training (iLIDS-VID / PRID2011: that split's people)."""
    splits = index['person_split_role']
    if not splits.shape[1]:
        return np.arange(len(index['pids']))
    if not 0 <= split_index < splits.shape[1]:
        raise ValueError(f'split_index {split_index} not in [0, {splits.shape[1]})')
    return np.flatnonzero(splits[:, split_index] == 0)


def train_info(data_dir: str, dataset: str, *, split_index: int = 0) -> dict[str, int]:
    """`num_classes`, `num_tracklets`, `num_identities` of the training pool.

    `split_index` selects the person split for iLIDS-VID and PRID2011 (ignored otherwise).
    """
    index = tracklets_lib.load_index(data_dir, dataset, 'train')
    rows = _training_pool(index, split_index)
    num_ids = len(np.unique(index['pids'][rows]))
    return dict(num_classes=num_ids, num_tracklets=len(rows), num_identities=num_ids)


def _decode(jpeg: tf.Tensor) -> tf.Tensor:
    return tf.io.decode_jpeg(jpeg, channels=3)


def _to_uint8(images: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.uint8)


def _crop_box(shape, offset, flip, height, width, up_height, up_width) -> tf.Tensor:
    """Normalised `crop_and_resize` box of an `up_height x up_width` crop at `offset`."""
    src_h = tf.cast(shape[0], tf.float32)
    src_w = tf.cast(shape[1], tf.float32)
    offset = tf.cast(offset, tf.float32)

    def span(first, size, src, up):
        # Output pixel i sits at upscaled pixel first + i, i.e. at source coordinate
        # (first + i + 0.5) * src / up - 0.5; crop_and_resize wants the ends over (src - 1).
        lo = (first + 0.5) * src / up - 0.5
        hi = (first + size - 0.5) * src / up - 0.5
        return lo / tf.maximum(src - 1, 1), hi / tf.maximum(src - 1, 1)

    y1, y2 = span(offset[0], height, src_h, up_height)
    x1, x2 = span(offset[1], width, src_w, up_width)
    # crop_and_resize mirrors the crop when x1 > x2.
    x1, x2 = tf.cond(flip, lambda: (x2, x1), lambda: (x1, x2))
    # The outermost sample can fall a fraction of a pixel outside the image, where
    # crop_and_resize would write black instead of clamping as tf.image.resize does.
    return tf.clip_by_value(tf.stack([y1, x1, y2, x2]), 0.0, 1.0)


def _train_clip_fn(num_frames: int, height: int, width: int):
    up_height, up_width = sampling.upscaled_size(height, width)

    def clip_fn(row):
        frames = []
        for t in range(num_frames):
            image = _decode(row['frames'][t])
            box = _crop_box(tf.shape(image), row['crops'], row['flips'], height, width,
                            up_height, up_width)
            frames.append(tf.image.crop_and_resize(image[None], box[None], [0], [height, width]))
        return dict(
            clips=_to_uint8(tf.concat(frames, axis=0)),
            labels=row['labels'],
            camids=row['camids'],
        )

    return clip_fn


def _eval_clip_fn(num_frames: int, height: int, width: int):
    def clip_fn(row):
        frames = [tf.image.resize(_decode(row['frames'][t]), [height, width])
                  for t in range(num_frames)]
        return dict(
            clips=_to_uint8(tf.stack(frames)),
            frame_mask=row['frame_mask'],
            tracklet=row['tracklet'],
            valid=row['valid'],
        )

    return clip_fn


def _pipeline(batches, signature: dict, clip_fn, local_batch: int) -> Iterator[dict]:
    """Decodes each row of each generated batch in parallel, keeping order and batch bounds."""
    ds = tf.data.Dataset.from_generator(batches, output_signature=signature)
    ds = ds.unbatch()
    ds = ds.map(clip_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds.as_numpy_iterator()


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
) -> Iterator[dict[str, np.ndarray]]:
    """Endless identity-balanced training batches for this process, from global step `start_step`.

    The global batch of step s (P identities x K tracklets, see `sampling`) is a pure function of
    `(seed, s)`: the same on any number of processes, and resuming at s replays nothing. Process
    i yields rows `[i * B_local, (i + 1) * B_local)` of it, `B_local = P * K / process_count`.

    Args:
        data_dir: where `python -m data_prep.build` wrote the dataset.
        dataset: mars, ilidsvid, prid2011 or duke.
        P, K: identities per batch and tracklets per identity.
        num_frames, stride: T frames every `stride` frames per clip.
        height, width: clip frame size (crops of the frames scaled up by 1/8).
        seed: sampling and augmentation seed.
        start_step: global step of the first batch.
        split_index: person split (iLIDS-VID, PRID2011) whose train people are used.
        process_index, process_count: default `jax.process_index()`, `jax.process_count()`.

    Yields:
        `clips uint8 [B_local, T, H, W, 3]`, `labels int32 [B_local]` (0..num_classes-1, in
        order of pid), `camids int32 [B_local]`.
    """
    process_index, process_count = _process(process_index, process_count)
    rows = _local_rows(P * K, process_index, process_count)
    index = tracklets_lib.load_index(data_dir, dataset, 'train')
    pool = _training_pool(index, split_index)
    pids = index['pids'][pool]
    labels = np.unique(pids, return_inverse=True)[1]
    up_height, up_width = sampling.upscaled_size(height, width)
    sampler = sampling.TrainSampler(
        identity_tracklets=tuple(np.flatnonzero(labels == c) for c in range(labels.max() + 1)),
        num_frames=np.diff(index['frame_start'])[pool],
        P=P, K=K, T=num_frames, stride=stride, seed=seed,
        crop_range=(up_height - height, up_width - width),
    )
    first_frame = index['frame_start'][pool]
    camids = index['camids'][pool].astype(np.int32)
    reader = tracklets_lib.FrameReader(data_dir, dataset, index)

    def batches():
        for step in itertools.count(start_step):
            batch = {k: v[rows] for k, v in sampler.batch(step).items()}
            tracklets = batch['tracklets']
            yield dict(
                frames=reader(first_frame[tracklets][:, None] + batch['positions']),
                crops=batch['crops'],
                flips=batch['flips'],
                labels=batch['labels'],
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


def make_eval_iterator(
    data_dir: str,
    dataset: str,
    *,
    batch_size: int,
    num_frames: int = 8,
    height: int = 256,
    width: int = 128,
    split_index: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> tuple[Iterator[dict[str, np.ndarray]], TrackletTable]:
    """Every frame of every evaluation tracklet, in chunks of `num_frames` (see `eval_chunks`).

    `batch_size` is the global number of chunks per step; every process yields the same number
    of batches of `batch_size / process_count` rows (process i: rows `[i * b, (i + 1) * b)` of
    each global batch). Frames are resized to `height x width`, no crop or flip.

    The eval set is MARS: all test tracklets; Duke: query then gallery; iLIDS-VID and PRID2011:
    all tracklets of both cameras, the same for every split (`TrackletTable.person_split_role`
    says who is a test person where); `split_index` is only checked to name one of those splits.

    Returns:
        The iterator of `clips uint8 [b, T, H, W, 3]`, `frame_mask bool [b, T]`, `tracklet int32
        [b]` (row in the table, -1 for padding) and `valid bool [b]`; and the TrackletTable.
    """
    process_index, process_count = _process(process_index, process_count)
    rows = _local_rows(batch_size, process_index, process_count)
    index = tracklets_lib.load_index(data_dir, dataset, 'eval')
    table = tracklets_lib.tracklet_table(index)
    if table.person_split_role is not None:
        _training_pool(index, split_index)  # validates split_index
    chunks = sampling.eval_chunks(table.num_frames, num_frames, batch_size)
    frames = index['frame_start'][np.maximum(chunks['tracklet'], 0)][:, None] + chunks['positions']
    reader = tracklets_lib.FrameReader(data_dir, dataset, index)

    def batches():
        for start in range(0, len(frames), batch_size):
            step_rows = slice(start + rows.start, start + rows.stop)
            yield dict(
                frames=reader(frames[step_rows]),
                frame_mask=chunks['frame_mask'][step_rows],
                tracklet=chunks['tracklet'][step_rows],
                valid=chunks['valid'][step_rows],
            )

    local = rows.stop - rows.start
    signature = dict(
        frames=tf.TensorSpec([local, num_frames], tf.string),
        frame_mask=tf.TensorSpec([local, num_frames], tf.bool),
        tracklet=tf.TensorSpec([local], tf.int32),
        valid=tf.TensorSpec([local], tf.bool),
    )
    return _pipeline(batches, signature, _eval_clip_fn(num_frames, height, width), local), table
