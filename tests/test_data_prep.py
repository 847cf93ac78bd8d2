"""Dataset converters: each layout, stats.json, atomic and idempotent builds, bad input."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import scipy.io

from data_prep import build as build_lib
from data_prep import built, datasets, layout, synthetic
from data_prep.dataset import LayoutError

import download_layouts


def _tiny_mars(path, **overrides):
  kwargs = dict(
    identities=3,
    test_identities=3,
    cameras=3,
    min_len=3,
    max_len=6,
    height=16,
    width=8,
    junk=1,
    distractors=1,
    seed=1,
  )
  synthetic.generate(str(path), **{**kwargs, **overrides})
  return str(path)


def _index(data_dir, dataset, view):
  with np.load(os.path.join(data_dir, dataset, "index", f"{view}.npz")) as f:
    return dict(f)


@pytest.fixture(scope="module")
def mars(tmp_path_factory):
  manual = _tiny_mars(tmp_path_factory.mktemp("mars_download"))
  data_dir = str(tmp_path_factory.mktemp("data"))
  build_lib.build("mars", manual, data_dir)
  return manual, data_dir


def test_mars_matches_the_info_files(mars):
  manual, data_dir = mars
  info = os.path.join(manual, "info")
  test_rows = scipy.io.loadmat(os.path.join(info, "tracks_test_info.mat"))["track_test_info"]
  queries = scipy.io.loadmat(os.path.join(info, "query_IDX.mat"))["query_IDX"].ravel() - 1
  queries = queries.astype(int)
  index = _index(data_dir, "mars", "eval")
  np.testing.assert_array_equal(index["pids"], test_rows[:, 2])
  np.testing.assert_array_equal(index["camids"], test_rows[:, 3])
  lengths = test_rows[:, 1] - test_rows[:, 0] + 1
  np.testing.assert_array_equal(np.diff(index["frame_start"]), lengths)
  assert set(index["pids"].tolist()) >= {-1, 0}  # junk and distractors kept and labelled
  roles = np.full(len(test_rows), built.ROLE_GALLERY)
  roles[queries] = built.ROLE_QUERY
  np.testing.assert_array_equal(index["roles"], roles)
  # The indexed byte range of a frame is exactly the JPEG file of the download.
  with open(os.path.join(info, "test_name.txt")) as f:
    names = f.read().split()
  last = len(names) - 1
  shard = os.path.join(data_dir, "mars", str(index["shards"][index["frame_shard"][last]]))
  with open(shard, "rb") as f:
    f.seek(index["frame_offset"][last])
    stored = f.read(index["frame_length"][last])
  with open(os.path.join(manual, "bbox_test", names[last][:4], names[last]), "rb") as f:
    assert stored == f.read()


def test_mars_stats_json(mars):
  manual, data_dir = mars
  info = os.path.join(manual, "info")
  with open(os.path.join(data_dir, "mars", "stats.json")) as f:
    stats = json.load(f)
  assert stats["protocol"] == "mars" and stats["person_split"] is None
  stats = stats["splits"]
  assert set(stats) == {"train", "query", "gallery"}
  for split, mat in (("train", "train"), ("gallery", "test")):  # the gallery: all test rows
    rows = scipy.io.loadmat(os.path.join(info, f"tracks_{mat}_info.mat"))[f"track_{mat}_info"]
    lengths = rows[:, 1] - rows[:, 0] + 1
    assert stats[split] == dict(
      tracklets=len(rows),
      identities=len(set(rows[rows[:, 2] > 0, 2])),
      frames=int(lengths.sum()),
      cameras=len(set(rows[:, 3])),
      min_len=int(lengths.min()),
      mean_len=round(float(lengths.mean()), 2),
      max_len=int(lengths.max()),
    )
  queries = scipy.io.loadmat(os.path.join(info, "query_IDX.mat"))["query_IDX"]
  assert stats["query"]["tracklets"] == queries.size


def test_rebuild_is_a_no_op(mars, capsys):
  manual, data_dir = mars
  shard = os.path.join(data_dir, "mars", "1.0.0", "mars-train.tfrecord-00000-of-00001")
  before = os.stat(shard).st_mtime_ns
  build_lib.build("mars", manual, data_dir)
  assert "already built" in capsys.readouterr().out
  assert os.stat(shard).st_mtime_ns == before


def test_a_build_of_an_earlier_version_still_counts_as_built(mars, tmp_path, capsys):
  """Its stats.json held only the splits; the index format is unchanged."""
  manual, data_dir = mars
  old = tmp_path / "data"
  shutil.copytree(os.path.join(data_dir, "mars"), old / "mars")
  with open(old / "mars" / "stats.json") as f:
    splits = json.load(f)["splits"]
  with open(old / "mars" / "stats.json", "w") as f:
    json.dump(splits, f)
  build_lib.build("mars", manual, str(old))
  out = capsys.readouterr().out
  assert "already built" in out and "\ngallery " in out


def test_a_split_beyond_the_write_buffer_is_spread_over_buckets_in_order(tmp_path, monkeypatch):
  """TFDS writes a split larger than its memory buffer through 1,000 temporary buckets, each
  read back whole: the build's keys must spread the tracklets over them, in canonical order."""
  from tensorflow_datasets.core import shuffle

  buckets = []
  get_bucket_number = shuffle.get_bucket_number

  def spy(hkey, num_buckets, max_hkey=None):
    buckets.append(get_bucket_number(hkey, num_buckets, max_hkey))
    return buckets[-1]

  monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 0)  # every split takes the bucket path
  monkeypatch.setattr(shuffle, "get_bucket_number", spy)
  manual = _tiny_mars(tmp_path / "download")
  build_lib.build("mars", manual, str(tmp_path / "data"))
  index = _index(tmp_path / "data", "mars", "train")
  assert len(buckets) == len(index["pids"]) + len(_index(tmp_path / "data", "mars", "eval")["pids"])
  train_buckets = buckets[: len(index["pids"])]
  assert train_buckets == sorted(train_buckets) and len(set(train_buckets)) == len(train_buckets)
  with open(os.path.join(manual, "info", "train_name.txt")) as f:
    first = f.read().split()[0]
  assert index["frame_numbers"][0] == int(first.split("F")[1][:-4])


def test_failed_build_leaves_nothing(tmp_path):
  manual = _tiny_mars(tmp_path / "download")
  with open(os.path.join(manual, "info", "test_name.txt")) as f:
    name = f.read().split()[-1]
  corrupt = os.path.join(manual, "bbox_test", name[:4], name)
  with open(corrupt, "rb") as f:
    data = f.read()
  with open(corrupt, "wb") as f:
    f.write(data[: len(data) // 2])  # truncated JPEG
  data_dir = tmp_path / "data"
  with pytest.raises(LayoutError, match=corrupt):
    build_lib.build("mars", manual, str(data_dir))
  assert os.listdir(data_dir) == []


def test_ilidsvid(tmp_path):
  lengths = lambda person, cam: 3 + person + cam
  ls_set = download_layouts.write_ilidsvid(str(tmp_path), 6, download_layouts.grey_frame(), lengths)
  build_lib.build("ilidsvid", str(tmp_path), str(tmp_path / "data"))
  index = _index(tmp_path / "data", "ilidsvid", "eval")
  np.testing.assert_array_equal(index["pids"], np.repeat(np.arange(1, 7), 2))
  np.testing.assert_array_equal(index["camids"], np.tile([1, 2], 6))
  np.testing.assert_array_equal(index["roles"], np.tile([1, 2], 6))  # query cam1, gallery cam2
  np.testing.assert_array_equal(
    np.diff(index["frame_start"]), [lengths(p, c) for p in range(1, 7) for c in (1, 2)]
  )
  for split, row in enumerate(ls_set):
    test_people = set(row[:3].tolist())
    expected = [int(p in test_people) for p in index["pids"]]
    np.testing.assert_array_equal(index["person_split_role"][:, split], expected)
  np.testing.assert_array_equal(index["frame_numbers"][:4], [100, 107, 114, 121])
  with open(tmp_path / "data" / "ilidsvid" / "stats.json") as f:
    stats = json.load(f)
  assert stats["protocol"] == "ilidsvid" and stats["person_split"] == 0
  stats = stats["splits"]
  test0 = set(ls_set[0][:3].tolist())
  assert stats["train"]["identities"] == 3 and stats["train"]["tracklets"] == 6
  assert stats["query"]["tracklets"] == 3 and stats["gallery"]["cameras"] == 1
  assert stats["query"]["frames"] == sum(lengths(p, 1) for p in test0)


@pytest.mark.parametrize("with_json", [False, True])
def test_prid2011(tmp_path, with_json):
  # person 3 is too short in cam_b; person 201 is beyond the 200 shared people.
  lengths = lambda person, cam: 21 if (person, cam) == (3, 2) else 22 + person % 3
  people = [1, 2, 3, 4, 5, 201]
  kept = ["person_0001", "person_0002", "person_0004", "person_0005"]
  splits = [dict(test=kept[k % 2 :: 2], train=kept[1 - k % 2 :: 2]) for k in range(10)]
  download_layouts.write_prid2011(
    str(tmp_path), people, download_layouts.grey_frame(4, 4), lengths, splits if with_json else None
  )
  build_lib.build("prid2011", str(tmp_path), str(tmp_path / "data"))
  index = _index(tmp_path / "data", "prid2011", "eval")
  np.testing.assert_array_equal(index["pids"], [1, 1, 2, 2, 4, 4, 5, 5])
  roles = index["person_split_role"][::2]
  assert (roles.sum(0) == 2).all()  # 50/50 in every split
  if with_json:
    np.testing.assert_array_equal(roles[:, 0], [1, 0, 1, 0])
    np.testing.assert_array_equal(roles[:, 1], [0, 1, 0, 1])
  else:  # seeded: the same splits on every build
    again = list(datasets.get("prid2011").read(str(tmp_path)))
    np.testing.assert_array_equal(roles, [t.person_split_role for t in again[::2]])


def test_duke_orders_frames_by_number(tmp_path):
  tracklets = [
    ("train", 1, 1, 2, 6),
    ("train", 7, 3, 1, 4),
    ("query", 9, 1, 3, 5),
    ("gallery", 9, 2, 4, 5),
    ("gallery", 12, 1, 3, 3),
  ]
  # 9990, 9993, ..., 10005: name order ('F10002' < 'F9990') differs from frame order.
  download_layouts.write_duke(
    str(tmp_path), tracklets, download_layouts.grey_frame(), frame_number=lambda i: 9990 + 3 * i
  )
  build_lib.build("duke", str(tmp_path), str(tmp_path / "data"))
  train = _index(tmp_path / "data", "duke", "train")
  evaluation = _index(tmp_path / "data", "duke", "eval")
  np.testing.assert_array_equal(train["pids"], [1, 7])
  np.testing.assert_array_equal(train["frame_numbers"][:6], 9990 + 3 * np.arange(6))
  np.testing.assert_array_equal(evaluation["pids"], [9, 9, 12])
  np.testing.assert_array_equal(evaluation["camids"], [3, 4, 3])
  np.testing.assert_array_equal(evaluation["roles"], [1, 2, 2])
  with open(tmp_path / "data" / "duke" / "stats.json") as f:
    stats = json.load(f)["splits"]
  assert stats["gallery"] == dict(
    tracklets=2, identities=2, frames=8, cameras=2, min_len=3, mean_len=4.0, max_len=5
  )


# ---------------------------------------------------------------------------------------------
# Bad input: each case fails with a LayoutError naming the offending file, before any build.


def _expect_error(dataset, manual, path_in_message):
  with pytest.raises(LayoutError) as error:
    build_lib.check_layout(datasets.get(dataset), str(manual))
  assert str(path_in_message) in str(error.value)
  return str(error.value)


def test_missing_mat_file(tmp_path):
  manual = _tiny_mars(tmp_path)
  os.remove(os.path.join(manual, "info", "query_IDX.mat"))
  path = os.path.join(manual, "info", "query_IDX.mat")
  assert "missing file" in _expect_error("mars", manual, path)


def test_missing_image(tmp_path):
  manual = _tiny_mars(tmp_path)
  with open(os.path.join(manual, "info", "train_name.txt")) as f:
    name = f.read().split()[2]
  path = os.path.join(manual, "bbox_train", name[:4], name)
  os.remove(path)
  assert "missing file" in _expect_error("mars", manual, path)


def test_corrupt_image(tmp_path):
  path = tmp_path / "frame.jpg"
  path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  with pytest.raises(LayoutError, match="corrupt image: " + str(path)):
    layout.encode_frame(str(path))


def test_png_frames_become_jpeg(tmp_path):
  path = str(tmp_path / "frame.png")
  download_layouts._save(path, np.full((8, 4, 3), 90, np.uint8))
  assert layout.encode_frame(path)[:2] == b"\xff\xd8"


def test_mat_with_wrong_shape(tmp_path):
  manual = _tiny_mars(tmp_path)
  path = os.path.join(manual, "info", "tracks_train_info.mat")
  rows = scipy.io.loadmat(path)["track_train_info"]
  scipy.io.savemat(path, {"track_train_info": rows[:, :3]})
  assert "(N, 4)" in _expect_error("mars", manual, path)


def test_ilidsvid_splits_with_wrong_shape(tmp_path):
  download_layouts.write_ilidsvid(str(tmp_path), 4, download_layouts.grey_frame(), lambda p, c: 2)
  path = tmp_path / "i-LIDS-VID" / "train-test people splits" / "train_test_splits_ilidsvid.mat"
  scipy.io.savemat(path, {"ls_set": np.ones((10, 3))})
  _expect_error("ilidsvid", tmp_path, path)


def test_name_that_does_not_parse(tmp_path):
  manual = _tiny_mars(tmp_path)
  names_path = os.path.join(manual, "info", "train_name.txt")
  with open(names_path) as f:
    names = f.read().split()
  names[1] = "frame_0002.jpg"
  with open(names_path, "w") as f:
    f.write("\n".join(names))
  assert "'frame_0002.jpg'" in _expect_error("mars", manual, names_path)


def test_duke_name_that_does_not_parse(tmp_path):
  download_layouts.write_duke(str(tmp_path), [("train", 1, 1, 2, 3)], download_layouts.grey_frame())
  folder = tmp_path / "DukeMTMC-VideoReID" / "train" / "0001" / "0001"
  shutil.copy(next(folder.iterdir()), folder / "snapshot.jpg")
  _expect_error("duke", tmp_path, folder)


def test_tracklet_with_two_pids_mars(tmp_path):
  manual = _tiny_mars(tmp_path)
  path = os.path.join(manual, "info", "tracks_train_info.mat")
  rows = scipy.io.loadmat(path)["track_train_info"]
  other = np.flatnonzero(rows[:, 2] != rows[0, 2])[0]
  rows[other - 1, 1] = rows[other, 0]  # swallows the first frame of the next pid's tracklet
  scipy.io.savemat(path, {"track_train_info": rows})
  assert "two pids" in _expect_error("mars", manual, path)


def test_tracklet_with_two_pids_duke(tmp_path):
  download_layouts.write_duke(
    str(tmp_path), [("train", 1, 1, 2, 3), ("train", 2, 1, 2, 3)], download_layouts.grey_frame()
  )
  base = tmp_path / "DukeMTMC-VideoReID" / "train"
  stray = next((base / "0002" / "0001").iterdir())
  shutil.move(stray, base / "0001" / "0001" / stray.name)
  message = _expect_error("duke", tmp_path, base / "0001" / "0001" / stray.name)
  assert "two pids" in message


def test_a_new_build_removes_the_debris_of_an_interrupted_one(tmp_path, capsys):
  import socket

  manual = _tiny_mars(tmp_path / "download")
  data_dir = tmp_path / "data"
  host = socket.gethostname()
  dead = _dead_pid()
  debris = data_dir / f".mars.incomplete-{host}-{dead}-abc"
  running = data_dir / f".mars.incomplete-{host}-{os.getpid()}-def"  # a live process's
  elsewhere = data_dir / ".mars.incomplete-otherhost-123-ghi"
  for folder in (debris, running, elsewhere):
    (folder / "mars").mkdir(parents=True)
  build_lib.build("mars", manual, str(data_dir))
  assert not debris.exists() and running.exists() and elsewhere.exists()
  out = capsys.readouterr().out
  assert f"Removed {debris}, left by an interrupted build." in out
  assert f"Left {running}" in out and f"Left {elsewhere}" in out


def _dead_pid() -> int:
  """The pid of a process that has ended."""
  process = subprocess.Popen(["true"])
  process.wait()
  return process.pid


def _built_copy(mars, tmp_path):
  _, data_dir = mars
  copy = tmp_path / "data"
  shutil.copytree(os.path.join(data_dir, "mars"), copy / "mars")
  return copy, copy / "mars" / "1.0.0" / "mars-test.tfrecord-00000-of-00001"


def test_shards_are_recorded_and_verify_passes(mars, tmp_path, capsys):
  copy, shard = _built_copy(mars, tmp_path)
  records = json.loads((copy / "mars" / "index" / "shards.json").read_text())
  assert records["1.0.0/mars-test.tfrecord-00000-of-00001"]["bytes"] == shard.stat().st_size
  build_lib.verify("mars", str(copy))
  assert "all 2 shards match their checksums" in capsys.readouterr().out


def test_a_truncated_shard_is_named_when_the_index_is_loaded(mars, tmp_path):
  copy, shard = _built_copy(mars, tmp_path)
  with open(shard, "r+b") as f:
    f.truncate(shard.stat().st_size // 2)
  with pytest.raises(ValueError, match=rf"{shard} has \d+ bytes, the build wrote \d+"):
    built.load_index(str(copy), "mars", "eval")
  with pytest.raises(ValueError, match=rf"{shard}: \d+ bytes.*frame \d+ of eval tracklet \d+"):
    build_lib.verify("mars", str(copy))


def test_changed_bytes_are_named_with_the_tracklet_whose_frame_broke(mars, tmp_path):
  copy, shard = _built_copy(mars, tmp_path)
  index = built.load_index(str(copy), "mars", "eval")
  row = 3
  frame = index["frame_start"][row] + 1  # the second frame of tracklet 3
  with open(shard, "r+b") as f:
    f.seek(index["frame_offset"][frame])
    f.write(b"\x00" * 16)  # its JPEG header: no longer an image
  built.load_index(str(copy), "mars", "eval")  # the size is unchanged: the cheap check passes
  with pytest.raises(ValueError) as error:
    build_lib.verify("mars", str(copy))
  message = str(error.value)
  assert f"{shard}: its contents changed (SHA-256)" in message
  expected = (
    f"frame {index['frame_numbers'][frame]} of eval tracklet {row} (pid {index['pids'][row]}, "
    f"camera {index['camids'][row]}, tracklet id {index['tracklet_ids'][row]})"
  )
  assert expected in message
