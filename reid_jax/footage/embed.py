"""`embed` mode: one feature per tracklet of a user's footage, computed as evaluation computes it.

The tracklets (`sources.discover`) go through the one chunk stream (`reid_jax.inference.chunks`)
as a `FootageTracklets` source: each is cut into consecutive T-frame chunks (the last one
repeating its own frames), the chunks of many tracklets are batched, and a tracklet's feature is
the mean of its chunk features, so memory does not grow with track length. Videos and runs of
tracklet folders are read in parallel threads and the next batch is prepared while the device
computes; sources are shared out between processes, and every process ends with all features.

Everything that can be checked without the model is checked before it is restored: the layout,
the track files, the videos' containers (`videos.probe_video`), that every frame file decodes,
and that the output can be written. Damage only the decoder sees shows while embedding: the run
stops naming the video and the frame, or with `skip_bad` leaves those boxes out and embeds again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import jax
import numpy as np

from data_prep.errors import UserError
from data_prep.files import atomic_write, check_writable
from reid_jax.footage.sources import FootageTracklets, check_frames, discover
from reid_jax.footage.tracks import FootageError, Track
from reid_jax.footage.videos import VideoDamaged
from reid_jax.inference import features as features_lib
from reid_jax.inference import model as model_lib

log = logging.getLogger("reid_jax")

EMBEDDING_KEYS = (
  "features",
  "names",
  "cameras",
  "sources",
  "timed",
  "num_frames",
  "first_frame",
  "last_frame",
  "meta",
)


class NotEmbeddings(UserError, ValueError):
  """A file given as embeddings that `embed` did not write, or none at all."""


def write_embeddings(path: str, features: np.ndarray, tracks: Sequence[Track], meta: dict) -> None:
  """The `.npz` of the embeddings, written whole or not at all."""
  with atomic_write(path, "wb") as f:
    np.savez(
      f,
      features=np.asarray(features, np.float32),
      names=np.array([t.name for t in tracks]),
      cameras=np.array([t.camera for t in tracks]),
      sources=np.array([os.path.abspath(t.source) for t in tracks]),
      timed=np.array([t.timed for t in tracks]),
      num_frames=np.array([t.num_frames for t in tracks], np.int64),
      first_frame=np.array([t.frame_numbers[0] for t in tracks], np.int64),
      last_frame=np.array([t.frame_numbers[-1] for t in tracks], np.int64),
      meta=np.array(json.dumps(meta)),
    )


def load_embeddings(path: str) -> dict:
  """An `embed` output: its arrays, and `meta` as a dict."""
  if not os.path.isfile(path):
    raise NotEmbeddings(f"{path}: no embeddings file (write one with --config.mode=embed)")
  try:
    with np.load(path) as f:
      missing = [k for k in EMBEDDING_KEYS if k not in f]
      if missing:
        raise NotEmbeddings(
          f"{path}: not an embeddings file of this version (no {missing}): embed again"
        )
      out = {k: f[k] for k in EMBEDDING_KEYS}
  except (OSError, ValueError) as e:
    if isinstance(e, NotEmbeddings):
      raise
    raise NotEmbeddings(f"{path}: not an embeddings file ({e})") from None
  out["meta"] = json.loads(str(out["meta"]))
  if "fingerprint" not in out["meta"]:
    raise NotEmbeddings(f"{path}: records no model fingerprint (an earlier version): embed again")
  return out


def embed_tracks(model, tracks: Sequence[Track], data_config, *, progress=None) -> np.ndarray:
  """`[N, D]` features of `tracks` (the same on every process) by `model` (an
  `InferenceModel`), with the clip shape and batch of `data_config` (`config.data`)."""
  source = FootageTracklets(list(tracks))
  return features_lib.tracklet_features(model, source, data_config, progress=progress)


def _footage(e, damaged: dict) -> tuple[list[Track], object]:
  """The tracks to embed, every check done: discovered, their frames decodable, strided."""
  tracks, skipped = discover(
    e.input,
    tracks=e.tracks,
    min_length=e.min_length,
    skip_bad=e.skip_bad,
    min_visibility=e.min_visibility,
    damaged=damaged,
  )
  tracks = check_frames(tracks, skip_bad=e.skip_bad, skipped=skipped)
  if not tracks:
    raise FootageError(f"{e.input}: no tracklet left to embed")
  return [t.every(e.frame_stride) for t in tracks], skipped


def run(config, workdir: str) -> str:
  """`embed` mode: writes `config.embed.output` (default `<workdir>/embeddings.npz`); returns its
  path."""
  from tqdm import tqdm

  e, d = config.embed, config.data
  output = e.output or os.path.join(workdir, "embeddings.npz")
  damaged: dict[str, tuple[int, str]] = {}
  tracks, skipped = _footage(e, damaged)
  skipped.log()
  check_writable(output)
  checkpoint = model_lib.find_checkpoint(config, workdir)
  model = model_lib.restore(config, workdir, checkpoint=checkpoint)
  while True:
    total = sum(t.num_frames for t in tracks)
    log.info("Embedding %d tracklets (%d frames) from %s", len(tracks), total, e.input)
    try:
      with tqdm(
        total=total, unit="frame", disable=jax.process_index() != 0, mininterval=2.0
      ) as progress:
        features = embed_tracks(model, tracks, d, progress=progress)
      break
    except VideoDamaged as damage:
      if not e.skip_bad:
        raise
      # Only the decoder saw it: leave those boxes out, as if the container had shown it.
      log.warning("%s; embedding again without those boxes", damage)
      damaged[damage.video] = (damage.frame, damage.reason)
      tracks, skipped = _footage(e, damaged)
      skipped.log()
  meta = dict(
    step=model.step,
    model=config.model.name,
    fingerprint=model.fingerprint,
    normalization=model.normalization,
    num_frames=d.num_frames,
    height=d.height,
    width=d.width,
    input=os.path.abspath(e.input),
    tracks=os.path.abspath(e.tracks) if e.tracks else "",
    skip_bad=bool(e.skip_bad),
    min_visibility=float(e.min_visibility),
    frame_stride=int(e.frame_stride),
    damaged={video: frame for video, (frame, _) in damaged.items()},
  )
  if jax.process_index() == 0:
    write_embeddings(output, features, tracks, meta)
    log.info("Wrote %s: features %s", output, features.shape)
  return output
