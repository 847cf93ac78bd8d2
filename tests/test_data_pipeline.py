"""Input pipelines: P x K sampling, temporal stride, clip-wide augmentation, determinism,
multi-process slices, resume; the built evaluation set through the chunk stream.

Frames of the test datasets carry their position in the tracklet as their grey level (3 * i), so
the frames a clip was built from can be read back from the decoded pixels.
"""

import numpy as np
import pytest

from data_prep import build as build_lib
from reid_jax import data
from reid_jax.data import sampling
from reid_jax.inference import chunks

import download_layouts

HEIGHT, WIDTH = 16, 8
# (split, pid, tracklet, camid, length): pids 1-3 have one tracklet each of lengths that exercise
# the full stride (80), a reduced stride (30) and fewer frames than T (5); pid 6 shows a static
# textured image, to see crops and flips.
TRACKLETS = [
  ("train", 1, 1, 1, 80),
  ("train", 2, 1, 2, 30),
  ("train", 3, 1, 1, 5),
  ("train", 4, 1, 1, 20),
  ("train", 4, 2, 2, 21),
  ("train", 5, 1, 1, 9),
  ("train", 5, 2, 2, 10),
  ("train", 5, 3, 3, 11),
  ("train", 6, 1, 1, 12),
  ("query", 7, 1, 1, 9),
  ("query", 8, 1, 2, 16),
  ("gallery", 7, 2, 2, 3),
  ("gallery", 8, 2, 3, 17),
  ("gallery", 9, 1, 1, 8),
  ("gallery", 10, 1, 2, 1),
]
PATTERN = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3)).astype(np.uint8)


def _frame(pid, camid, i):
  return PATTERN if pid == 6 else np.full((HEIGHT, WIDTH, 3), 3 * i, np.uint8)


@pytest.fixture(scope="module")
def duke(tmp_path_factory):
  root = tmp_path_factory.mktemp("duke")
  download_layouts.write_duke(str(root), TRACKLETS, _frame)
  build_lib.build("duke", str(root), str(root / "data"))
  return str(root / "data")


def _train(data_dir, **kwargs):
  args = dict(P=6, K=2, height=HEIGHT, width=WIDTH, process_index=0, process_count=1)
  return data.make_train_iterator(data_dir, "duke", **{**args, **kwargs})


def _positions(clips):
  """Frame positions read back from grey levels: `[..., T]`."""
  return np.round(clips.mean(axis=(-3, -2, -1)) / 3).astype(int)


# ---------------------------------------------------------------------------------------------
# Sampler (numpy only)


def _sampler(num_tracklets=(1, 3, 5, 2), P=3, K=4, seed=0):
  rows = np.split(np.arange(sum(num_tracklets)), np.cumsum(num_tracklets)[:-1])
  return sampling.TrainSampler(
    identity_tracklets=tuple(rows),
    num_frames=np.full(sum(num_tracklets), 100),
    P=P,
    K=K,
    T=8,
    stride=8,
    seed=seed,
    crop_range=(32, 16),
  )


def test_sampler_is_p_by_k_and_an_epoch_visits_every_identity():
  sampler = _sampler()
  assert data.steps_per_epoch(4, 3) == 2
  seen = []
  for step in range(2):
    batch = sampler.batch(step)
    labels = batch["labels"].reshape(3, 4)
    assert (labels == labels[:, :1]).all() and len(set(labels[:, 0])) == 3
    for label, rows in zip(labels[:, 0], batch["tracklets"].reshape(3, 4)):
      assert set(rows) <= set(sampler.identity_tracklets[label])
      if len(sampler.identity_tracklets[label]) >= 4:
        assert len(set(rows)) == 4  # without replacement when there are enough
    seen += list(labels[:, 0])
  assert set(seen) == {0, 1, 2, 3}


def test_sampler_is_a_pure_function_of_seed_and_step():
  a, b = _sampler(), _sampler()
  for step in (0, 5, 17):
    for key, value in a.batch(step).items():
      np.testing.assert_array_equal(value, b.batch(step)[key])
  assert not np.array_equal(a.batch(3)["crops"], _sampler(seed=1).batch(3)["crops"])


def test_clip_positions():
  rng = np.random.default_rng(0)
  for _ in range(20):
    positions = sampling.clip_positions(80, 8, 8, rng)
    assert (np.diff(positions) == 8).all() and 0 <= positions[0] <= 80 - 57
  assert (np.diff(sampling.clip_positions(30, 8, 8, rng)) == 4).all()  # (30 - 1) // 7
  np.testing.assert_array_equal(sampling.clip_positions(5, 8, 8, rng), [0, 0, 1, 1, 2, 3, 3, 4])


@pytest.mark.parametrize(
  "name, mean, std",
  [
    ("imagenet", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ("kinetics", [0.45] * 3, [0.225] * 3),
  ],
)
def test_normalize_clips_on_numpy_and_jax(name, mean, std):
  import jax.numpy as jnp

  clips = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 5, 3)).astype(np.uint8)
  expected = (clips / 255.0 - np.array(mean)) / np.array(std)
  np.testing.assert_allclose(data.normalize_clips(clips, name), expected, atol=1e-5)
  out = data.normalize_clips(jnp.asarray(clips), name)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
  with pytest.raises(ValueError, match="unknown normalization 'imagnet'"):
    data.normalize_clips(clips, "imagnet")


# ---------------------------------------------------------------------------------------------
# Training pipeline


def test_train_batches(duke):
  assert data.train_info(duke, "duke") == dict(num_classes=6, num_tracklets=9, num_identities=6)
  batch = next(_train(duke))
  assert batch["clips"].shape == (12, 8, HEIGHT, WIDTH, 3) and batch["clips"].dtype == np.uint8
  labels = batch["labels"].reshape(6, 2)
  assert (labels == labels[:, :1]).all() and sorted(labels[:, 0]) == list(range(6))
  assert batch["labels"].dtype == np.int32 and batch["camids"].dtype == np.int32
  # Labels follow pid order: label 1 is pid 2, seen by camera 2 only.
  assert (batch["camids"][batch["labels"] == 1] == 2).all()


def test_temporal_stride_and_short_tracklets(duke):
  batch = next(_train(duke))
  positions = _positions(batch["clips"])
  for label, check in (
    (0, lambda p: (np.diff(p) == 8).all()),  # 80 frames: every 8th
    (1, lambda p: (np.diff(p) == 4).all()),  # 30 frames: largest stride that fits
    (2, lambda p: list(p) == [0, 0, 1, 1, 2, 3, 3, 4]),  # 5 frames: in order, repeated
  ):
    for p in positions[batch["labels"] == label]:
      assert check(p), (label, p)


def test_same_crop_and_flip_for_every_frame_of_a_clip(duke):
  it = _train(duke, P=6, K=4)
  firsts = []
  for _ in range(4):
    batch = next(it)
    for clip in batch["clips"][batch["labels"] == 5]:  # pid 6: one static image
      assert (clip == clip[:1]).all()
      firsts.append(clip[0])
  assert len({f.tobytes() for f in firsts}) > 1  # ...while crops and flips differ across clips


def test_crop_equals_resize_then_crop():
  import tensorflow as tf

  from reid_jax.data import pipeline

  height, width = 64, 32
  yy, xx = np.mgrid[0:80, 0:40]
  image = np.stack([yy * 3, xx * 6, (yy + xx) * 2], -1).astype(np.uint8)  # smooth, asymmetric
  jpeg = tf.io.encode_jpeg(image, quality=100)
  up_h, up_w = sampling.upscaled_size(height, width)
  reference = tf.image.resize(tf.io.decode_jpeg(jpeg), (up_h, up_w)).numpy()
  clip_fn = pipeline._train_clip_fn(2, height, width)
  for crop, flip in (((0, 0), False), ((5, 3), True), ((up_h - height, up_w - width), True)):
    row = dict(
      frames=tf.stack([jpeg, jpeg]),
      crops=tf.constant(crop, tf.int32),
      flips=tf.constant(flip),
      labels=tf.constant(0),
      camids=tf.constant(1),
    )
    clip = clip_fn(row)["clips"].numpy().astype(float)
    expected = reference[crop[0] : crop[0] + height, crop[1] : crop[1] + width]
    expected = expected[:, ::-1] if flip else expected
    # The source window is rounded to whole pixels: under half a source pixel of shift,
    # i.e. at most 3 grey levels of the steepest gradient; a wrong offset or flip is far more.
    assert np.abs(clip[0] - expected).max() <= 4, np.abs(clip[0] - expected).max()
    assert np.abs(clip[0] - expected).mean() <= 1.5
    assert (clip[0] == clip[1]).all()


def test_same_seed_same_batches_and_process_slices_concatenate(duke):
  whole = _train(duke, seed=3)
  halves = [_train(duke, seed=3, process_index=i, process_count=2) for i in range(2)]
  again = _train(duke, seed=3)
  other_seed = _train(duke, seed=4)
  for _ in range(2):
    batch = next(whole)
    parts = [next(h) for h in halves]
    repeat = next(again)
    for key in batch:
      np.testing.assert_array_equal(batch[key], repeat[key])
      np.testing.assert_array_equal(batch[key], np.concatenate([p[key] for p in parts]))
    assert not np.array_equal(batch["clips"], next(other_seed)["clips"])


def test_resume_from_a_step(duke):
  it = _train(duke)
  batches = [next(it) for _ in range(3)]
  resumed = _train(duke, start_step=2)
  for key, value in next(resumed).items():
    np.testing.assert_array_equal(value, batches[2][key])
  resumed.close()
  with pytest.raises(StopIteration):
    next(resumed)


# ---------------------------------------------------------------------------------------------
# Evaluation pipeline


def _eval(data_dir, **kwargs):
  """The evaluation set's chunk batches (of one process of `process_count`), and its table."""
  source = data.BuiltTracklets(data_dir, "duke")
  args = dict(num_frames=8, height=HEIGHT, width=WIDTH, batch_size=4)
  return list(chunks.chunk_batches(source, **{**args, **kwargs})), source.table


def test_eval_covers_every_frame_once(duke):
  batches, table = _eval(duke)
  eval_tracklets = [t for t in TRACKLETS if t[0] != "train"]
  np.testing.assert_array_equal(table.pids, [t[1] for t in eval_tracklets])
  np.testing.assert_array_equal(table.num_frames, [t[4] for t in eval_tracklets])
  np.testing.assert_array_equal(table.is_query, [t[0] == "query" for t in eval_tracklets])
  assert table.person_split_role is None
  seen = [[] for _ in range(len(table))]
  for batch in batches:
    assert batch["clips"].shape == (4, 8, HEIGHT, WIDTH, 3)
    positions = _positions(batch["clips"])
    for row in range(4):
      if not batch["valid"][row]:
        assert batch["tracklet"][row] == -1
        continue
      tracklet = batch["tracklet"][row]
      # A chunk is T consecutive frames; the last one of a tracklet repeats its own frames.
      real = positions[row][: min(8, table.num_frames[tracklet] - positions[row][0])]
      np.testing.assert_array_equal(positions[row], np.resize(real, 8))
      seen[tracklet] += list(real)
  for n, frames in zip(table.num_frames, seen):
    assert sorted(frames) == list(range(n))
  assert len(batches) == -(-sum(-(-n // 8) for n in table.num_frames) // 4)


def test_eval_processes_run_the_same_steps_and_share_every_chunk_once(duke):
  whole, _ = _eval(duke)
  parts = [_eval(duke, batch_size=8, process_index=i, process_count=2)[0] for i in range(2)]
  assert len(parts[0]) == len(parts[1])  # every process runs the same global steps
  chunks_of = lambda batches: sorted(
    (int(t), tuple(_positions(c)))
    for b in batches
    for t, c, v in zip(b["tracklet"], b["clips"], b["valid"])
    if v
  )
  assert chunks_of(parts[0] + parts[1]) == chunks_of(whole)
  # Tracklets are shared out whole.
  mine = [{int(t) for b in part for t in b["tracklet"][b["valid"]]} for part in parts]
  assert not mine[0] & mine[1] and mine[0] and mine[1]


# ---------------------------------------------------------------------------------------------
# iLIDS-VID: person splits


def test_ilidsvid_split_index_selects_train_people(tmp_path):
  ls_set = download_layouts.write_ilidsvid(
    str(tmp_path),
    6,
    lambda pid, camid, i: np.full((HEIGHT, WIDTH, 3), 40 * pid, np.uint8),
    lambda person, cam: 4,
  )
  build_lib.build("ilidsvid", str(tmp_path), str(tmp_path / "data"))
  data_dir = str(tmp_path / "data")
  for split in (0, 3):
    info = data.train_info(data_dir, "ilidsvid", split_index=split)
    assert info == dict(num_classes=3, num_tracklets=6, num_identities=3)
    batch = next(
      data.make_train_iterator(
        data_dir,
        "ilidsvid",
        P=3,
        K=2,
        num_frames=4,
        height=HEIGHT,
        width=WIDTH,
        split_index=split,
        process_index=0,
        process_count=1,
      )
    )
    pids = np.round(batch["clips"].mean(axis=(1, 2, 3, 4)) / 40).astype(int)
    assert set(pids) == set(ls_set[split][3:].tolist())  # the second half: train people
  table = data.BuiltTracklets(data_dir, "ilidsvid").table
  assert table.person_split_role.shape == (12, 10)
  np.testing.assert_array_equal(table.is_query, table.camids == 1)
