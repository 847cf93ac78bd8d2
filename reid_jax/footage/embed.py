"""`embed` mode: one feature per tracklet of a user's footage, computed as evaluation computes it.

Each tracklet is cut into consecutive T-frame chunks (the last one repeating its own frames), the
chunks of many tracklets are batched, and a tracklet's feature is the mean of its chunk features
(`reid_jax.evaluation.extraction`), so memory does not grow with track length. Frames are resized
by the evaluation pipeline's own function; video frames are decoded in one sequential pass per
video and cropped to each box first. Sources (videos, tracklet folders) are shared out between
processes; every process runs the same number of global batches, and the per-tracklet sums are
all-reduced, so every process ends with all features.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence

import jax
import numpy as np

from reid_jax.footage.sources import FootageError, Track, crop

log = logging.getLogger("reid_jax")


def _decode_image(path: str) -> np.ndarray:
  import tensorflow as tf

  try:
    data = tf.io.read_file(path)
    return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
  except Exception as e:  # TensorFlow raises several types for bad files.
    raise FootageError(f"{path}: unreadable frame ({type(e).__name__})") from None


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  from reid_jax.data import pipeline

  return np.asarray(pipeline.resize_frame(image, height, width))


def _padded_chunk(frames: list[np.ndarray], T: int) -> np.ndarray:
  """T frames: `frames` (at most T), repeated cyclically as the evaluation's last chunk is."""
  return np.stack([frames[t % len(frames)] for t in range(T)])


def _folder_chunks(track: Track, row: int, T: int, height: int, width: int, progress):
  for start in range(0, track.num_frames, T):
    frames = [_resize(_decode_image(p), height, width) for p in track.paths[start : start + T]]
    progress.update(len(frames))
    yield _padded_chunk(frames, T), row


def _video_chunks(tracks: Sequence[tuple[int, Track]], T: int, height: int, width: int, progress):
  """Chunks of every track of one video, from one sequential decoding pass."""
  import av

  video = tracks[0][1].source
  boxes_at: dict[int, list[tuple[int, int]]] = {}  # frame -> [(track position, box position)]
  for k, (_, track) in enumerate(tracks):
    for i, frame in enumerate(track.frame_numbers):
      boxes_at.setdefault(int(frame), []).append((k, i))
  last = max(boxes_at)
  buffers: list[list[np.ndarray]] = [[] for _ in tracks]
  decoded = 0
  try:
    with av.open(video) as container:
      for decoded, frame in enumerate(container.decode(video=0), start=1):
        if decoded > last:
          break
        if decoded not in boxes_at:
          continue
        image = frame.to_ndarray(format="rgb24")
        for k, i in boxes_at[decoded]:
          row, track = tracks[k]
          where = f"{video} frame {decoded} ({track.name})"
          buffers[k].append(_resize(crop(image, track.boxes[i], where), height, width))
          if len(buffers[k]) == T or i == track.num_frames - 1:
            progress.update(len(buffers[k]))
            yield _padded_chunk(buffers[k], T), row
            buffers[k] = []
  except FootageError:
    raise
  except Exception as e:  # PyAV raises many types for damaged streams.
    raise FootageError(
      f"{video}: unreadable at frame {decoded + 1} ({type(e).__name__}: {e})"
    ) from None
  if decoded < last:
    raise FootageError(
      f"{video} has {decoded} frames, but its track file has boxes up to frame {last}"
    )


def sources_of(tracks: Sequence[Track]) -> list[list[tuple[int, Track]]]:
  """The tracks grouped by source (a video, or one tracklet folder), with their rows."""
  groups: dict[str, list[tuple[int, Track]]] = {}
  for row, track in enumerate(tracks):
    groups.setdefault(track.source, []).append((row, track))
  return list(groups.values())


def local_sources(tracks, process_index: int, process_count: int):
  """This process's share of the sources: every `process_count`-th, from `process_index`."""
  return sources_of(tracks)[process_index::process_count]


def num_chunks(group, T: int) -> int:
  return sum(-(-track.num_frames // T) for _, track in group)


def chunk_batches(
  groups, *, T: int, height: int, width: int, batch: int, num_batches: int, progress
) -> Iterator[dict]:
  """`num_batches` batches of `clips uint8 [batch, T, H, W, 3]`, `tracklet` (row, -1 for
  padding) and `valid`: the chunks of `groups`, then padding."""

  def chunks():
    for group in groups:
      first = group[0][1]
      if first.paths is not None:
        yield from _folder_chunks(first, group[0][0], T, height, width, progress)
      else:
        yield from _video_chunks(group, T, height, width, progress)

  stream = chunks()
  for _ in range(num_batches):
    clips = np.zeros((batch, T, height, width, 3), np.uint8)
    rows = np.full((batch,), -1, np.int32)
    for b in range(batch):
      item = next(stream, None)
      if item is None:
        break
      clips[b], rows[b] = item
    yield dict(clips=clips, tracklet=rows, valid=rows >= 0)
  if next(stream, None) is not None:
    raise RuntimeError("more chunks than planned")  # num_chunks and the streams disagree


def global_num_batches(local_batches: int) -> int:
  """The most batches any process has: every process runs that many global steps."""
  if jax.process_count() == 1:
    return local_batches
  from jax.experimental import multihost_utils

  return int(np.max(multihost_utils.process_allgather(np.array([local_batches]))))


def write_embeddings(path: str, features: np.ndarray, tracks: Sequence[Track], meta: dict) -> None:
  """The `.npz` of the embeddings, written whole or not at all."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}.npz"
  try:
    np.savez(
      tmp,
      features=np.asarray(features, np.float32),
      names=np.array([t.name for t in tracks]),
      cameras=np.array([t.camera for t in tracks]),
      num_frames=np.array([t.num_frames for t in tracks], np.int64),
      first_frame=np.array([t.frame_numbers[0] for t in tracks], np.int64),
      last_frame=np.array([t.frame_numbers[-1] for t in tracks], np.int64),
      meta=np.array(json.dumps(meta)),
    )
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def load_embeddings(path: str) -> dict:
  """An `embed` output: its arrays, and `meta` as a dict."""
  keys = ("features", "names", "cameras", "num_frames", "first_frame", "last_frame", "meta")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no embeddings file (write one with --config.mode=embed)")
  with np.load(path) as f:
    missing = [k for k in keys if k not in f]
    if missing:
      raise ValueError(f"{path}: not an embeddings file (no {missing})")
    out = {k: f[k] for k in keys}
  out["meta"] = json.loads(str(out["meta"]))
  return out


def embed_tracks(
  setup, tracks: Sequence[Track], data_config, *, feature_fn=None, show_progress=False
) -> np.ndarray:
  """`[N, D]` features of `tracks` (the same on every process) by the model of `setup`, with
  the clip shape and batch of `data_config` (`config.data`); `feature_fn` defaults to
  `state.make_feature_fn(setup)`."""
  from tqdm import tqdm

  from reid_jax import state as state_lib
  from reid_jax.evaluation.extraction import extract_features

  d = data_config
  process_index, process_count = jax.process_index(), jax.process_count()
  batch = d.eval_batch_size // process_count
  groups = local_sources(tracks, process_index, process_count)
  num_batches = global_num_batches(-(-sum(num_chunks(g, d.num_frames) for g in groups) // batch))
  feature_fn = feature_fn or state_lib.make_feature_fn(setup)
  with tqdm(
    total=sum(t.num_frames for g in groups for _, t in g),
    unit="frame",
    disable=not show_progress or process_index != 0,
    mininterval=2.0,
  ) as progress:
    batches = chunk_batches(
      groups,
      T=d.num_frames,
      height=d.height,
      width=d.width,
      batch=batch,
      num_batches=num_batches,
      progress=progress,
    )
    return extract_features(
      lambda clips: feature_fn(
        setup.state, jax.make_array_from_process_local_data(setup.batch_sharding, clips)
      ),
      batches,
      len(tracks),
    )


def embed(config, workdir: str) -> str:
  """`embed` mode: restores the checkpoint as `eval` does and writes `config.embed.output`
  (default `<workdir>/embeddings.npz`). The input is read and checked before the restore."""
  from reid_jax import config as config_lib
  from reid_jax import state as state_lib
  from reid_jax.footage.sources import discover

  config_lib.validate(config, num_devices=jax.device_count())
  e = config.embed
  tracks, skipped = discover(e.input, tracks=e.tracks, min_length=e.min_length, skip_bad=e.skip_bad)
  skipped.log()
  setup, step = state_lib.restore_model(config, workdir)
  d = config.data
  log.info(
    "Embedding %d tracklets (%d frames) from %s",
    len(tracks),
    sum(t.num_frames for t in tracks),
    e.input,
  )
  features = embed_tracks(setup, tracks, d, show_progress=True)
  output = e.output or os.path.join(workdir, "embeddings.npz")
  meta = dict(
    step=step,
    model=config.model.name,
    normalization=setup.normalization,
    num_frames=d.num_frames,
    height=d.height,
    width=d.width,
    input=os.path.abspath(e.input),
    tracks=os.path.abspath(e.tracks) if e.tracks else "",
    skip_bad=bool(e.skip_bad),
  )
  if jax.process_index() == 0:
    write_embeddings(output, features, tracks, meta)
    log.info("Wrote %s: features %s", output, features.shape)
  return output
