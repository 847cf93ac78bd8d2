"""Named protocols: who is query, who is gallery, and the averaging over person splits."""

import dataclasses

import numpy as np
import pytest

from reid_jax.evaluation import evaluate, protocol_sets, protocols, run_protocol


@dataclasses.dataclass(frozen=True)
class Table:  # the fields of reid_jax.data.TrackletTable that protocols read
  pids: np.ndarray
  camids: np.ndarray
  is_query: np.ndarray
  person_split_role: np.ndarray | None = None


def mars_like_table():
  # Person 1: query (cam 1) + gallery (cam 2). Person 2: two queries in cams 1 and 3, nothing
  # else, so only the official protocol (queries in the gallery) gives them a match.
  # Person 3: query with a same-camera gallery tracklet only (junk). Junk -1 and distractor 0.
  pids = np.array([1, 1, 2, 2, 3, 3, -1, 0, 0])
  camids = np.array([1, 2, 1, 3, 1, 1, 2, 3, 4])
  is_query = np.array([1, 0, 1, 1, 1, 0, 0, 0, 0], bool)
  return Table(pids, camids, is_query)


def test_mars_protocols_differ_only_in_the_gallery():
  table = mars_like_table()
  q, g = protocol_sets("mars", table)
  np.testing.assert_array_equal(q, [0, 2, 3, 4])
  np.testing.assert_array_equal(g, np.arange(9))
  q2, g2 = protocol_sets("mars_no_query_in_gallery", table)
  np.testing.assert_array_equal(q2, q)
  np.testing.assert_array_equal(g2, [1, 5, 6, 7, 8])
  features = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
  official = run_protocol("mars", features, table, max_rank=5)
  common = run_protocol("mars_no_query_in_gallery", features, table, max_rank=5)
  assert official["protocol"] == "mars" and common["protocol"] == "mars_no_query_in_gallery"
  assert official["num_valid_queries"] == 3  # persons 1 and both of person 2
  assert common["num_valid_queries"] == 1  # person 1 only
  for key in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP"):
    assert 0 <= official[key] <= 1


def split_table(num_people=12, seed=0):
  rng = np.random.default_rng(seed)
  pids = np.repeat(np.arange(1, num_people + 1), 2)
  camids = np.tile([1, 2], num_people)
  roles = np.zeros((num_people, 10), np.int8)
  for s in range(10):
    roles[rng.permutation(num_people)[: num_people // 2], s] = 1
  return Table(pids, camids, camids == 1, np.repeat(roles, 2, axis=0))


@pytest.mark.parametrize("name", ["ilidsvid", "prid2011"])
def test_split_protocols_average_over_splits(name):
  table = split_table()
  rng = np.random.default_rng(1)
  features = [rng.normal(size=(24, 3)).astype(np.float32) for _ in range(10)]
  result = run_protocol(name, features, table, max_rank=6)
  rank1, maps = [], []
  for s in range(10):
    q, g = protocol_sets(name, table, s)
    assert (table.camids[q] == 1).all() and (table.camids[g] == 2).all()
    assert (
      set(table.pids[q])
      == set(table.pids[g])
      == set(table.pids[table.person_split_role[:, s] == 1])
    )
    direct = evaluate(
      features[s][q],
      features[s][g],
      table.pids[q],
      table.pids[g],
      table.camids[q],
      table.camids[g],
      max_rank=6,
    )
    rank1.append(direct["cmc"][0])
    maps.append(direct["mAP"])
  assert result["splits"] == list(range(10)) and len(result["per_split"]) == 10
  assert result["rank1"] == pytest.approx(np.mean(rank1), abs=1e-12)
  assert result["rank1_std"] == pytest.approx(np.std(rank1), abs=1e-12)
  assert result["mAP"] == pytest.approx(np.mean(maps), abs=1e-12)
  assert result["num_queries"] == 6
  one_split = run_protocol(name, features[3], table, max_rank=6, splits=[3])
  assert one_split["rank1"] == pytest.approx(rank1[3]) and one_split["rank1_std"] == 0


def test_unknown_protocol_raises():
  with pytest.raises(ValueError, match="unknown protocol"):
    protocol_sets("market", mars_like_table())


def test_ten_split_mean_from_the_extracted_files(tmp_path):
  """`eval` with `split_features`: the 10 models' `extract` files, each scored on its own split,
  give `run_protocol`'s mean; a missing file or another evaluation set is named."""
  from reid_jax import config as config_lib
  from reid_jax.data import TrackletTable
  from reid_jax.evaluation import runner

  people = split_table()
  table = TrackletTable(
    pids=people.pids,
    camids=people.camids,
    tracklet_ids=np.arange(len(people.pids)),
    num_frames=np.full(len(people.pids), 8),
    is_query=people.is_query,
    person_split_role=people.person_split_role,
  )
  rng = np.random.default_rng(2)
  features = [rng.normal(size=(24, 3)).astype(np.float32) for _ in range(10)]
  paths = []
  for s, f in enumerate(features):  # what `extract` writes
    paths.append(str(tmp_path / f"split{s}.npz"))
    np.savez(paths[-1], features=f, **dataclasses.asdict(table))
  config = config_lib.split_dataset_finetuning("ilidsvid")
  config.eval.split_features = ",".join(paths)
  results = runner.score_split_features(config, str(tmp_path))
  expected = run_protocol("ilidsvid", features, table, max_rank=config.eval.max_rank)
  for key in ("rank1", "rank1_std", "mAP", "mAP_std"):
    assert results[key] == expected[key], key
  assert (tmp_path / "metrics.json").exists()

  config.eval.split_features = ",".join([*paths[:9], str(tmp_path / "nowhere.npz")])
  with pytest.raises(FileNotFoundError, match="nowhere.npz"):
    runner.score_split_features(config, str(tmp_path))
  np.savez(
    tmp_path / "other.npz",
    features=features[0],
    **{**dataclasses.asdict(table), "pids": table.pids[::-1].copy()},
  )
  config.eval.split_features = ",".join([*paths[:9], str(tmp_path / "other.npz")])
  with pytest.raises(ValueError, match="other.npz holds another evaluation set"):
    runner.score_split_features(config, str(tmp_path))


def test_format_metrics_prints_every_reported_metric_and_split_stds():
  results = {k: 0.5 for k in protocols.REPORTED_METRICS}
  line = protocols.format_metrics(results)
  assert line.startswith("rank-1 50.00%  rank-5 50.00%") and line.endswith("mINP 50.00%")
  assert line.count("%") == len(protocols.REPORTED_METRICS)
  results["mAP_std"] = 0.012
  assert "mAP 50.00% (std 1.20)" in protocols.format_metrics(results)
