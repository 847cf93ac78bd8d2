"""LS-VID: the converter on a tiny download in the real layout, its protocols, and bad input."""

import inspect
import json
import os
import shutil
import tracemalloc

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from data_prep import build as build_lib
from data_prep import built, datasets
from data_prep.dataset import LayoutError
from reid_jax.data.tracklets import tracklet_table
from reid_jax.evaluation.protocols import protocol_sets

# Per tracklet: (pid, name prefix `<f0>_<tracklet>_<cam>`, frame numbers, whether the list line
# keeps the trailing `_`). Frame numbers are not zero-padded, so name order ('10' < '8') differs
# from frame order; two tracklets of person 0 share a folder, and a glob of the first prefix
# (`..._1`, listed without `_`) would also match the frames of the second (`..._10_`).
TRAIN = (
  (0, "0000_0001_1", (8, 9, 10, 11), False),
  (0, "0000_0001_10", (3, 4, 5), True),
  (1, "0001_0002_07", (20, 21), True),
)
TEST = (
  (0, "0000_0003_02", (9, 10, 11), True),
  (0, "0000_0004_15", (1, 2, 3, 4), True),
  (1, "0001_0005_02", (5, 6), False),
  (1, "0001_0006_04", (7, 8, 9, 10, 11), True),
  (2, "0002_0007_04", (30, 31, 32), True),
)
QUERY = (4, 1, 3)  # 1-based rows of TEST, unsorted as in the download
MATLAB_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5"


def _frame_path(root, split, pid, prefix, number):
  return os.path.join(root, "LS-VID", f"tracklet_{split}", f"{pid:04d}", f"{prefix}_{number}.jpg")


def info_rows(test=TEST):
  """`info_test` as MATLAB holds it ([N, 4]: start, end, pid, cam), ranges over all frames."""
  rows, start = [], 1
  for pid, prefix, numbers, _ in test:
    rows.append([start, start + len(numbers) - 1, pid, int(prefix.split("_")[2])])
    start += len(numbers)
  return np.array(rows, np.float64)


def write_info(root, rows, query, hdf5=True):
  """Writes `LS-VID/test/data/info_test.mat`: MATLAB 7.3 (HDF5, arrays transposed) or 5."""
  path = os.path.join(root, "LS-VID", "test", "data", "info_test.mat")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rows = np.asarray(rows, np.float64)
  query = np.asarray(query, np.float64).reshape(1, -1)
  if not hdf5:
    scipy.io.savemat(path, {"info_test": rows, "query": query})
    return path
  with h5py.File(path, "w", userblock_size=512) as f:
    f.create_dataset("info_test", data=rows.T)
    f.create_dataset("query", data=query)  # (1, Q), as in the download
  with open(path, "r+b") as f:
    f.write(MATLAB_HEADER.ljust(128, b" "))
  return path


def write_lsvid(root, train=TRAIN, test=TEST, query=QUERY, rows=None, images=True):
  """Writes `<root>/LS-VID/` with the given tracklets; frames' grey level is 3 x frame number.

  With `images=False` the frames are empty files (the layout check never opens them).
  """
  base = os.path.join(root, "LS-VID")
  os.makedirs(os.path.join(base, "list_sequence"), exist_ok=True)
  for split, tracklets in (("train", train), ("test", test)):
    lines = []
    for pid, prefix, numbers, underscore in tracklets:
      lines.append(f"tracklet_{split}/{pid:04d}/{prefix}{'_' if underscore else ''} {pid}\n")
      for number in numbers:
        path = _frame_path(root, split, pid, prefix, number)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if images:
          Image.fromarray(np.full((16, 8, 3), 3 * number, np.uint8)).save(path)
        else:
          open(path, "wb").close()
    with open(os.path.join(base, "list_sequence", f"list_seq_{split}.txt"), "w") as f:
      f.writelines(lines)
  # The val list is not converted: its folder is absent on purpose.
  with open(os.path.join(base, "list_sequence", "list_seq_val.txt"), "w") as f:
    f.write("tracklet_val/0000/0000_0001_03_ 0\n")
  write_info(root, info_rows(test) if rows is None else rows, query)
  return str(root)


def _list(root, split):
  return os.path.join(root, "LS-VID", "list_sequence", f"list_seq_{split}.txt")


def _info(root):
  return os.path.join(root, "LS-VID", "test", "data", "info_test.mat")


@pytest.fixture(scope="module")
def lsvid(tmp_path_factory):
  manual = write_lsvid(tmp_path_factory.mktemp("lsvid_download"))
  data_dir = str(tmp_path_factory.mktemp("data"))
  build_lib.build("lsvid", manual, data_dir)
  return manual, data_dir


@pytest.mark.parametrize(
  "view, split, tracklets, roles",
  [
    ("train", "train", TRAIN, [built.ROLE_TRAIN] * len(TRAIN)),
    (
      "eval",
      "test",
      TEST,
      [built.ROLE_QUERY if i + 1 in QUERY else built.ROLE_GALLERY for i in range(len(TEST))],
    ),
  ],
)
def test_index_matches_the_lists(lsvid, view, split, tracklets, roles):
  manual, data_dir = lsvid
  index = built.load_index(data_dir, "lsvid", view)
  np.testing.assert_array_equal(index["pids"], [t[0] for t in tracklets])
  np.testing.assert_array_equal(index["camids"], [int(t[1].split("_")[2]) for t in tracklets])
  np.testing.assert_array_equal(index["tracklet_ids"], [int(t[1].split("_")[1]) for t in tracklets])
  np.testing.assert_array_equal(index["roles"], roles)
  np.testing.assert_array_equal(np.diff(index["frame_start"]), [len(t[2]) for t in tracklets])
  numbers = [n for t in tracklets for n in sorted(t[2])]
  np.testing.assert_array_equal(index["frame_numbers"], numbers)
  # Every indexed byte range is exactly the JPEG file of that frame, in frame-number order.
  paths = [_frame_path(manual, split, t[0], t[1], n) for t in tracklets for n in sorted(t[2])]
  for row, path in enumerate(paths):
    shard = os.path.join(data_dir, "lsvid", str(index["shards"][index["frame_shard"][row]]))
    with open(shard, "rb") as f:
      f.seek(index["frame_offset"][row])
      stored = f.read(index["frame_length"][row])
    with open(path, "rb") as f:
      assert stored == f.read(), path


def test_stats_json(lsvid):
  _, data_dir = lsvid
  with open(os.path.join(data_dir, "lsvid", "stats.json")) as f:
    stats = json.load(f)
  assert stats["protocol"] == "lsvid" and stats["person_split"] is None
  splits = stats["splits"]
  # pid 0 is a person; the val list is not converted; the gallery holds the queries too.
  assert splits["train"]["tracklets"] == 3 and splits["train"]["identities"] == 2
  assert splits["train"]["cameras"] == 3 and splits["train"]["frames"] == 9
  assert splits["query"]["tracklets"] == 3 and splits["query"]["identities"] == 2
  assert splits["gallery"] == dict(
    tracklets=5, identities=3, frames=17, cameras=3, min_len=2, mean_len=3.4, max_len=5
  )


def test_protocols(lsvid):
  _, data_dir = lsvid
  table = tracklet_table(built.load_index(data_dir, "lsvid", "eval"))
  queries, gallery = protocol_sets("lsvid", table)
  np.testing.assert_array_equal(queries, [0, 2, 3])
  np.testing.assert_array_equal(gallery, [0, 1, 2, 3, 4])
  queries, gallery = protocol_sets("lsvid_no_query_in_gallery", table)
  np.testing.assert_array_equal(queries, [0, 2, 3])
  np.testing.assert_array_equal(gallery, [1, 4])
  assert datasets.get("lsvid").default_protocol.name == "lsvid"


def test_root_is_the_download_or_its_parent_and_mat_5_reads_the_same(tmp_path):
  manual = write_lsvid(tmp_path)
  read = datasets.get("lsvid").read
  expected = list(read(manual))
  assert list(read(os.path.join(manual, "LS-VID"))) == expected
  write_info(manual, info_rows(), QUERY, hdf5=False)
  assert not h5py.is_hdf5(_info(manual))
  assert list(read(manual)) == expected


def test_reader_streams_one_folder_at_a_time(tmp_path, monkeypatch):
  manual = write_lsvid(tmp_path, images=False)
  listed = []
  listdir = os.listdir
  monkeypatch.setattr(os, "listdir", lambda path: listed.append(path) or listdir(path))
  tracklets = datasets.get("lsvid").read(manual)
  assert inspect.isgenerator(tracklets)
  first = next(tracklets)
  # Only the first tracklet's folder has been listed when it is yielded.
  assert listed == [os.path.dirname(first.frames[0])]
  rest = list(tracklets)
  folders = [os.path.dirname(t.frames[0]) for t in [first, *rest]]
  assert listed == list(dict.fromkeys(folders))  # each folder once, lines grouped by folder
  assert len(rest) == len(TRAIN) + len(TEST) - 1
  # Only the latest listing is kept: folders that come back are listed again.
  shutil.rmtree(os.path.join(manual, "LS-VID"))
  order = (TEST[0], TEST[2], TEST[1])
  write_lsvid(manual, test=order, query=(1,), images=False)
  listed.clear()
  list(datasets.get("lsvid").read(manual))
  assert [os.path.basename(p) for p in listed[-3:]] == ["0000", "0001", "0000"]


def test_layout_check_memory_does_not_grow_with_the_frames(tmp_path):
  """check_layout's peak Python memory on 16 tracklets of 300 frames, against 4 of them."""

  def peak(num_tracklets):
    train = [(pid, f"{pid:04d}_0001_03", range(300), True) for pid in range(num_tracklets)]
    manual = write_lsvid(tmp_path / str(num_tracklets), train=train, images=False)
    build_lib.check_layout(datasets.get("lsvid"), manual)  # imports, caches
    tracemalloc.start()
    try:
      counts = build_lib.check_layout(datasets.get("lsvid"), manual)
      assert counts == {"train": num_tracklets, "test": len(TEST)}
      return tracemalloc.get_traced_memory()[1]
    finally:
      tracemalloc.stop()

  small, large = peak(4), peak(16)
  # Holding the 12 x 300 extra frame paths would take over 400 kB.
  assert large - small < 50_000, (small, large)


# ---------------------------------------------------------------------------------------------
# Bad input: each case fails with a LayoutError naming the offending file, before any build.


def _expect_error(manual, *in_message):
  with pytest.raises(LayoutError) as error:
    build_lib.check_layout(datasets.get("lsvid"), str(manual))
  for text in in_message:
    assert str(text) in str(error.value)
  return str(error.value)


def _replace_line(path, number, text):
  with open(path) as f:
    lines = f.readlines()
  lines[number - 1] = text + "\n"
  with open(path, "w") as f:
    f.writelines(lines)


@pytest.mark.parametrize(
  "line",
  [
    "tracklet_train/0000/0000_0001_10_  0",  # two spaces
    "tracklet_train/0000/0000_0001_10_\t0",
    "tracklet_train/0000/0000_0001_10_",
    "tracklet_train/0000/0000_0001_10_ x",
    "tracklet_train/0000/0000_0001_10_ 0 1",
  ],
)
def test_malformed_line(tmp_path, line):
  manual = write_lsvid(tmp_path)
  _replace_line(_list(manual, "train"), 2, line)
  assert "<path prefix> <pid>" in _expect_error(manual, f"{_list(manual, 'train')}:2")


@pytest.mark.parametrize(
  "prefix",
  ["tracklet_train/0000/0000_0003_02_", "0000/0000_0003_02_", "tracklet_test/../x/0000_0003_02"],
)
def test_prefix_outside_the_split_folder(tmp_path, prefix):
  manual = write_lsvid(tmp_path)
  _replace_line(_list(manual, "test"), 1, f"{prefix} 0")
  assert "tracklet_test/" in _expect_error(manual, f"{_list(manual, 'test')}:1")


def test_line_listed_twice(tmp_path):
  manual = write_lsvid(tmp_path)
  _replace_line(_list(manual, "test"), 2, "tracklet_test/0000/0000_0003_02 0")
  assert "line 1" in _expect_error(manual, f"{_list(manual, 'test')}:2")


@pytest.mark.parametrize("split, row", [("train", 0), ("test", 2)])
def test_prefix_without_frames(tmp_path, split, row):
  manual = write_lsvid(tmp_path)
  pid, prefix, numbers, _ = (TRAIN if split == "train" else TEST)[row]
  for number in numbers:
    # Train row 0 is `..._1`: the frames of `..._10_` beside it must not be taken for its own.
    os.remove(_frame_path(manual, split, pid, prefix, number))
  assert "no frames" in _expect_error(manual, f"{_list(manual, split)}:{row + 1}")


def test_missing_folder(tmp_path):
  manual = write_lsvid(tmp_path)
  folder = os.path.dirname(_frame_path(manual, "test", 2, TEST[4][1], 30))
  shutil.rmtree(folder)
  _expect_error(manual, f"missing folder: {folder}", f"{_list(manual, 'test')}:5")


@pytest.mark.parametrize("file", ["test", "info"])
def test_missing_test_list_or_info_file(tmp_path, file):
  manual = write_lsvid(tmp_path)
  path = _list(manual, "test") if file == "test" else _info(manual)
  os.remove(path)
  assert "missing file" in _expect_error(manual, path)


def test_missing_train_list(tmp_path):
  # It marks the download's root, so both places it may lie are named.
  manual = write_lsvid(tmp_path)
  os.remove(_list(manual, "train"))
  message = _expect_error(manual, os.path.join(manual, "list_sequence", "list_seq_train.txt"))
  assert "missing file" in message and os.path.join(manual, "LS-VID") in message


@pytest.mark.parametrize("name", ["0000_0003_02_snapshot.jpg", "0000_0003_02_9.png"])
def test_name_that_does_not_parse(tmp_path, name):
  manual = write_lsvid(tmp_path)
  folder = os.path.dirname(_frame_path(manual, "test", 0, TEST[0][1], 9))
  shutil.copy(os.path.join(folder, "0000_0003_02_9.jpg"), os.path.join(folder, name))
  _expect_error(manual, folder, repr(name))


def test_two_frames_with_one_number(tmp_path):
  manual = write_lsvid(tmp_path)
  folder = os.path.dirname(_frame_path(manual, "test", 0, TEST[0][1], 9))
  shutil.copy(
    os.path.join(folder, "0000_0003_02_9.jpg"), os.path.join(folder, "0000_0003_02_09.jpg")
  )
  assert "share a frame number" in _expect_error(manual, f"{_list(manual, 'test')}:1")


@pytest.mark.parametrize("camera", ["00", "16"])
def test_camera_outside_1_to_15(tmp_path, camera):
  # Frames of one tracklet share their prefix, camera included, so a tracklet cannot mix cameras;
  # the camera must be one of the 15.
  test = (*TEST[:4], (2, f"0002_0007_{camera}", (30, 31), True))
  manual = write_lsvid(tmp_path, test=test)
  pattern = _frame_path(manual, "test", 2, test[4][1], "*")[: -len(".jpg")]
  assert "not one of 1..15" in _expect_error(manual, pattern, f"{_list(manual, 'test')}:5")


def _rows_with(row, column, value):
  rows = info_rows()
  rows[row, column] = value
  return rows


@pytest.mark.parametrize(
  "rows, message",
  [
    (info_rows()[:-1], "info_test has 4 rows"),
    (np.vstack([info_rows(), [[40, 41, 2, 4]]]), "info_test has 6 rows"),
    (_rows_with(1, 2, 5), "row 2 of info_test has pid 5"),
    (_rows_with(3, 3, 5), "row 4 of info_test has camera 5"),
    (_rows_with(0, 3, 2.5), "must hold integers"),
    (info_rows()[:, :3], "expected (N, 4)"),
  ],
)
def test_info_test_that_does_not_match_the_test_list(tmp_path, rows, message):
  manual = write_lsvid(tmp_path, rows=rows)
  assert message in _expect_error(manual, _info(manual))


@pytest.mark.parametrize(
  "query, message",
  [((0, 2), "1..5"), ((1, 6), "1..5"), ((3, 1, 3), "twice"), ((1.5,), "integers"), ((), "(1, Q)")],
)
def test_bad_queries(tmp_path, query, message):
  manual = write_lsvid(tmp_path, query=query)
  assert message in _expect_error(manual, _info(manual))


@pytest.mark.parametrize("fault", ["layout", "corrupt frame"])
def test_failed_build_leaves_data_dir_empty(tmp_path, fault):
  manual = write_lsvid(tmp_path / "download")
  if fault == "layout":
    write_info(manual, _rows_with(4, 2, 1), QUERY)
    path = _info(manual)
  else:  # found only when frames are encoded, after the train split is written
    path = _frame_path(manual, "test", 2, TEST[4][1], 32)
    with open(path, "rb") as f:
      data = f.read()
    with open(path, "wb") as f:
      f.write(data[: len(data) // 2])
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  with pytest.raises(LayoutError, match=str(path)):
    build_lib.build("lsvid", manual, str(data_dir))
  assert os.listdir(data_dir) == []
