"""Per-tracklet feature averaging of chunk features: padding rows, sharded features, several
processes."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from reid_jax.inference.features import extract_features

NUM_TRACKLETS, T, H, W, D = 7, 2, 4, 2, 5


def fake_eval_batches(batch_size, seed=0):
  """Chunks of 7 tracklets of different lengths (1..4 chunks) in fixed-size batches.

  The last batch is padded with rows (tracklet -1, valid False) whose clips are garbage, and one
  extra invalid row carries a real tracklet id: neither may count.
  """
  rng = np.random.default_rng(seed)
  chunks = [
    (t, rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8))
    for t in range(NUM_TRACKLETS)
    for _ in range(1 + t % 4)
  ]
  rows = [(t, clip, True) for t, clip in chunks] + [
    (3, np.full((T, H, W, 3), 255, np.uint8), False)
  ]
  rows += [(-1, np.full((T, H, W, 3), 255, np.uint8), False)] * (-len(rows) % batch_size)
  batches = []
  for start in range(0, len(rows), batch_size):
    part = rows[start : start + batch_size]
    batches.append(
      dict(
        clips=np.stack([c for _, c, _ in part]),
        frame_mask=np.ones((len(part), T), bool),
        tracklet=np.array([t for t, _, _ in part], np.int32),
        valid=np.array([v for _, _, v in part]),
      )
    )
  expected = np.zeros((NUM_TRACKLETS, D))
  projection = linear_weights()
  for t in range(NUM_TRACKLETS):
    expected[t] = np.mean([c.reshape(-1) @ projection for tt, c in chunks if tt == t], axis=0)
  return batches, expected


def linear_weights():
  return np.random.default_rng(42).normal(size=(T * H * W * 3, D)).astype(np.float32)


def linear_features(clips):
  return np.asarray(clips, np.float32).reshape(len(clips), -1) @ linear_weights()


def test_averages_valid_chunks_per_tracklet():
  batches, expected = fake_eval_batches(batch_size=3)
  got = extract_features(linear_features, iter(batches), NUM_TRACKLETS)
  assert got.shape == (NUM_TRACKLETS, D)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)


def test_sharded_feature_fn_over_all_devices():
  mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  batch_sharding = NamedSharding(mesh, P("data"))
  weights = linear_weights()
  project = jax.jit(
    lambda clips: clips.astype(np.float32).reshape(clips.shape[0], -1) @ weights,
    out_shardings=batch_sharding,
  )
  feature_fn = lambda clips: project(jax.make_array_from_process_local_data(batch_sharding, clips))
  batches, expected = fake_eval_batches(batch_size=2 * jax.device_count())
  got = extract_features(feature_fn, iter(batches), NUM_TRACKLETS)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)


def test_missing_tracklet_raises():
  batches, _ = fake_eval_batches(batch_size=3)
  with pytest.raises(ValueError, match="received no chunk"):
    extract_features(linear_features, iter(batches), NUM_TRACKLETS + 1)


_WORKER = textwrap.dedent("""
    import sys
    import jax
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(f'127.0.0.1:{sys.argv[1]}', 2, int(sys.argv[2]))
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    sys.path.insert(0, sys.argv[4])
    from test_features import fake_eval_batches, linear_weights, NUM_TRACKLETS
    from reid_jax.inference.features import extract_features

    mesh = jax.make_mesh((jax.device_count(),), ('data',),
                         axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, P('data'))
    weights = linear_weights()
    project = jax.jit(lambda c: c.astype(np.float32).reshape(c.shape[0], -1) @ weights,
                      out_shardings=sharding)
    batches, expected = fake_eval_batches(batch_size=8)
    me = jax.process_index()
    local = [{k: v[4 * me:4 * me + 4] for k, v in b.items()} for b in batches]  # this process' rows
    got = extract_features(
        lambda clips: project(jax.make_array_from_process_local_data(sharding, clips)),
        iter(local), NUM_TRACKLETS)
    np.save(sys.argv[3], got)
""")


def test_two_processes_end_with_the_same_features(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(tests_dir), env.get("PYTHONPATH", "")])
  port = str(20000 + os.getpid() % 20000)
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", _WORKER, port, str(i), str(tmp_path / f"{i}.npy"), tests_dir], env=env
    )
    for i in range(2)
  ]
  assert [p.wait(timeout=120) for p in procs] == [0, 0]
  _, expected = fake_eval_batches(batch_size=8)
  for i in range(2):
    np.testing.assert_allclose(np.load(tmp_path / f"{i}.npy"), expected, rtol=1e-5, atol=1e-3)
