"""Retrieval: the block planner, and the exact top k over a gallery sharded over devices and
processes against a brute-force ranking and against one device."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from reid_jax import retrieval, sharding
from reid_jax.distances import pairwise_distances


def _same_group(q, g):
  return q["group"] == g["group"]


def _grouped(cameras):
  """The exclusion of pairs of one camera, as `top_k`'s keyword arguments."""
  q, g = retrieval.group_codes(cameras, cameras)
  return dict(exclude=_same_group, query_labels=dict(group=q), gallery_labels=dict(group=g))


def _problem(seed=0, num=37, dim=6):
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(num, dim)).astype(np.float32)
  features[5] = features[9]  # a tie: gallery order decides
  features[20] = features[9]
  cameras = np.array(["a", "b", "c"])[rng.integers(0, 3, num)]
  return features, cameras


def test_block_shape_keeps_blocks_within_the_budget():
  rows, columns = retrieval.block_shape(1000, 5000, budget=16 * 5000 * 100)
  assert columns == 5000 and rows == 96  # whole rows: 100 fit, so 11 blocks of 96 (91 used)
  assert retrieval.block_shape(45, 150, budget=1) == (8, 150)  # at least a multiple of 8
  rows, columns = retrieval.block_shape(3000, 10**6, split_columns=True, min_columns=7)
  assert rows == retrieval.MAX_BLOCK_ROWS and rows * columns <= retrieval.MAX_BLOCK_PAIRS
  assert retrieval.block_shape(5, 10**6, split_columns=True, budget=16, min_columns=7) == (8, 7)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_top_k_in_blocks_equals_a_brute_force_ranking(metric):
  features, cameras = _problem()
  dist = np.array(pairwise_distances(features, features, metric))
  dist[cameras[:, None] == cameras[None, :]] = np.inf  # the same file: no same-camera pairs
  expected = np.argsort(dist, axis=1, kind="stable")[:, :5]
  # A tiny budget: gallery blocks of k = 5 rows, several per device.
  d, i = retrieval.top_k(features, features, 5, metric=metric, budget=16 * 64, **_grouped(cameras))
  np.testing.assert_array_equal(i, expected)
  np.testing.assert_allclose(d, np.take_along_axis(dist, expected, 1), rtol=1e-5, atol=1e-6)
  # Another file: every pair counts; a k beyond the gallery pads with -1 and inf.
  d, i = retrieval.top_k(features[:7], features, 40, metric=metric, budget=16 * 64)
  full = np.asarray(pairwise_distances(features[:7], features, metric))
  np.testing.assert_array_equal(i[:, :37], np.argsort(full, axis=1, kind="stable"))
  assert (i[:, 37:] == -1).all() and np.isinf(d[:, 37:]).all()


def _not_allowed(q, g):
  return g["allowed"] == 0


def test_an_excluded_gallery_item_is_never_ranked():
  features, _ = _problem()
  allowed = np.ones(len(features), np.int32)
  allowed[[3, 9]] = 0
  _, i = retrieval.top_k(
    features[:4],
    features,
    36,
    exclude=_not_allowed,
    query_labels={},
    gallery_labels=dict(allowed=allowed),
  )
  assert not np.isin(i, [3, 9]).any() and (i[:, 35:] == -1).all()


def test_within_finds_every_pair_under_the_threshold():
  features, cameras = _problem(seed=2, num=53)
  dist = np.array(pairwise_distances(features[:11], features, "euclidean"))
  dist[(cameras[:11, None] == cameras[None, :])] = np.inf
  threshold = float(np.quantile(dist[np.isfinite(dist)], 0.3))
  q, g, d = retrieval.within(
    features[:11], features, threshold, budget=16 * 64, **_grouped_within(cameras)
  )
  want_q, want_g = np.nonzero(dist <= threshold)
  assert sorted(zip(q.tolist(), g.tolist())) == sorted(zip(want_q.tolist(), want_g.tolist()))
  np.testing.assert_allclose(d, dist[q, g], rtol=1e-5)
  assert all(np.diff(d[q == 0]) >= 0)  # by query, then distance


def _grouped_within(cameras):
  q, g = retrieval.group_codes(cameras[:11], cameras)
  return dict(exclude=_same_group, query_labels=dict(group=q), gallery_labels=dict(group=g))


def test_four_devices_rank_as_one():
  assert jax.device_count() == 4  # tests/conftest.py
  features, cameras = _problem(seed=1, num=101)
  kwargs = dict(budget=16 * 128, **_grouped(cameras))
  one = retrieval.top_k(features, features, 9, mesh=sharding.make_mesh(jax.devices()[:1]), **kwargs)
  four = retrieval.top_k(features, features, 9, mesh=sharding.make_mesh(), **kwargs)
  np.testing.assert_array_equal(four[1], one[1])
  np.testing.assert_allclose(four[0], one[0], rtol=1e-6)


_WORKER = textwrap.dedent("""
    import sys
    import jax
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(f'127.0.0.1:{sys.argv[1]}', 2, int(sys.argv[2]))
    import numpy as np
    sys.path.insert(0, sys.argv[4])
    from test_retrieval import _grouped, _problem
    from reid_jax import retrieval

    assert jax.device_count() == 4 and jax.local_device_count() == 2
    features, cameras = _problem(seed=1, num=101)
    d, i = retrieval.top_k(features, features, 9, budget=16 * 128, **_grouped(cameras))
    np.savez(sys.argv[3], d=d, i=i)
""")


def test_two_processes_rank_as_one_device(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # each process compiles for itself (see multiprocess)
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(tests_dir), env.get("PYTHONPATH", "")])
  port = str(20000 + (os.getpid() + 7) % 20000)
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", _WORKER, port, str(p), str(tmp_path / f"{p}.npz"), tests_dir], env=env
    )
    for p in range(2)
  ]
  assert [p.wait(timeout=180) for p in procs] == [0, 0]
  features, cameras = _problem(seed=1, num=101)
  d, i = retrieval.top_k(
    features,
    features,
    9,
    budget=16 * 128,
    mesh=sharding.make_mesh(jax.devices()[:1]),
    **_grouped(cameras),
  )
  for p in range(2):
    with np.load(tmp_path / f"{p}.npz") as got:
      np.testing.assert_array_equal(got["i"], i)
      np.testing.assert_allclose(got["d"], d, rtol=1e-6)


def test_group_codes_share_one_numbering():
  a, b = retrieval.group_codes(["north", "south"], np.array(["south", "east", "south"]))
  assert a.tolist() == [1, 2] and b.tolist() == [2, 0, 2]
  (pairs,) = retrieval.group_codes([(1, 2), (1, 3), (1, 2)])
  assert pairs.tolist() == [0, 1, 0]
