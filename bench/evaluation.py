"""Evaluation speed and memory at MARS scale: this package against the PyTorch codebases' numpy.

    .venv/bin/python bench/evaluation.py                 # 512-d and 2048-d, with re-ranking
    .venv/bin/python bench/evaluation.py --dims=512 --no-rerank

1980 queries x 11310 gallery tracklets (re-ranking: over all 13290), MARS-like labels (6
cameras, 10% junk pid -1, 10% distractors pid 0). Features are random small integers, so every
squared distance is an exact integer in float32 on both sides (identical distance matrices, many
ties): the numbers must then agree exactly, ties included, whatever the summation order.

Each measurement runs in its own process (peak RSS is per process), in the same run, so the
ratios are fair on a shared, noisy machine. The numpy side is torchreid's `eval_func` loop as
published (per query: argsort, junk mask, cumsum, a Python list for precision@k) with AGW's mINP
lines, changed only where its results would otherwise differ: a stable argsort (ties in gallery
order) and pid -1 treated as junk. The re-ranking reference is the authors' numpy code
(`re_ranking`, dense N x N), fed the squared distances it would compute itself, with a stable
argsort.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NUM_QUERIES, NUM_GALLERY, NUM_IDS, NUM_CAMERAS = 1980, 11310, 625, 6


def make_problem(dim: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  q_pids = rng.integers(1, NUM_IDS + 1, NUM_QUERIES)
  g_pids = rng.integers(1, NUM_IDS + 1, NUM_GALLERY)
  kind = rng.random(NUM_GALLERY)
  g_pids[kind < 0.1] = -1
  g_pids[(kind >= 0.1) & (kind < 0.2)] = 0
  q_camids = rng.integers(1, NUM_CAMERAS + 1, NUM_QUERIES)
  g_camids = rng.integers(1, NUM_CAMERAS + 1, NUM_GALLERY)
  query = rng.integers(-8, 9, (NUM_QUERIES, dim)).astype(np.float32)
  gallery = rng.integers(-8, 9, (NUM_GALLERY, dim)).astype(np.float32)
  return query, gallery, q_pids, g_pids, q_camids, g_camids


def numpy_distances(x, y):
  """torchreid's euclidean_squared_distance, in numpy float32."""
  return (np.sum(x * x, 1)[:, None] + np.sum(y * y, 1)[None, :] - 2 * x @ y.T).astype(np.float32)


def eval_func(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
  """torchreid's eval_func (+ AGW's mINP), stable argsort and pid -1 junk."""
  num_q, num_g = distmat.shape
  indices = np.argsort(distmat, axis=1, kind="stable")
  matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
  all_cmc, all_AP, all_INP = [], [], []
  num_valid_q = 0.0
  for q_idx in range(num_q):
    q_pid, q_camid = q_pids[q_idx], q_camids[q_idx]
    order = indices[q_idx]
    remove = ((g_pids[order] == q_pid) & (g_camids[order] == q_camid)) | (g_pids[order] == -1)
    keep = np.invert(remove)
    raw_cmc = matches[q_idx][keep]
    if not np.any(raw_cmc):
      continue
    cmc = raw_cmc.cumsum()
    pos_idx = np.where(raw_cmc == 1)
    pos_max_idx = np.max(pos_idx)
    all_INP.append(cmc[pos_max_idx] / (pos_max_idx + 1.0))
    cmc[cmc > 1] = 1
    all_cmc.append(cmc[:max_rank])
    num_valid_q += 1.0
    num_rel = raw_cmc.sum()
    tmp_cmc = raw_cmc.cumsum()
    tmp_cmc = [x / (i + 1.0) for i, x in enumerate(tmp_cmc)]
    tmp_cmc = np.asarray(tmp_cmc) * raw_cmc
    all_AP.append(tmp_cmc.sum() / num_rel)
  all_cmc = np.asarray(all_cmc).astype(np.float32).sum(0) / num_valid_q
  return all_cmc, np.mean(all_AP), np.mean(all_INP)


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
  """The authors' re-ranking (via torchreid), given squared distances; stable argsort."""
  original_dist = np.concatenate(
    [np.concatenate([q_q_dist, q_g_dist], axis=1), np.concatenate([q_g_dist.T, g_g_dist], axis=1)],
    axis=0,
  ).astype(np.float32)
  original_dist = np.transpose(1.0 * original_dist / np.max(original_dist, axis=0))
  V = np.zeros_like(original_dist).astype(np.float32)
  initial_rank = np.argsort(original_dist, kind="stable").astype(np.int32)
  query_num = q_g_dist.shape[0]
  gallery_num = q_g_dist.shape[0] + q_g_dist.shape[1]
  all_num = gallery_num
  for i in range(all_num):
    forward_k_neigh_index = initial_rank[i, : k1 + 1]
    backward_k_neigh_index = initial_rank[forward_k_neigh_index, : k1 + 1]
    fi = np.where(backward_k_neigh_index == i)[0]
    k_reciprocal_index = forward_k_neigh_index[fi]
    k_reciprocal_expansion_index = k_reciprocal_index
    for j in range(len(k_reciprocal_index)):
      candidate = k_reciprocal_index[j]
      candidate_forward_k_neigh_index = initial_rank[candidate, : int(np.around(k1 / 2.0)) + 1]
      candidate_backward_k_neigh_index = initial_rank[
        candidate_forward_k_neigh_index, : int(np.around(k1 / 2.0)) + 1
      ]
      fi_candidate = np.where(candidate_backward_k_neigh_index == candidate)[0]
      candidate_k_reciprocal_index = candidate_forward_k_neigh_index[fi_candidate]
      if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > 2.0 / 3 * len(
        candidate_k_reciprocal_index
      ):
        k_reciprocal_expansion_index = np.append(
          k_reciprocal_expansion_index, candidate_k_reciprocal_index
        )
    k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
    weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
    V[i, k_reciprocal_expansion_index] = 1.0 * weight / np.sum(weight)
  original_dist = original_dist[:query_num,]
  if k2 != 1:
    V_qe = np.zeros_like(V, dtype=np.float32)
    for i in range(all_num):
      V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
    V = V_qe
    del V_qe
  del initial_rank
  invIndex = []
  for i in range(gallery_num):
    invIndex.append(np.where(V[:, i] != 0)[0])
  jaccard_dist = np.zeros_like(original_dist, dtype=np.float32)
  for i in range(query_num):
    temp_min = np.zeros(shape=[1, gallery_num], dtype=np.float32)
    indNonZero = np.where(V[i, :] != 0)[0]
    indImages = [invIndex[ind] for ind in indNonZero]
    for j in range(len(indNonZero)):
      temp_min[0, indImages[j]] = temp_min[0, indImages[j]] + np.minimum(
        V[i, indNonZero[j]], V[indImages[j], indNonZero[j]]
      )
    jaccard_dist[i] = 1 - temp_min / (2.0 - temp_min)
  final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
  del original_dist, V, jaccard_dist
  final_dist = final_dist[:query_num, query_num:]
  return final_dist


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn, repeats):
  """(seconds of the first call, median seconds of `repeats` further calls, last result)."""
  start = time.perf_counter()
  result = fn()
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - start)
  return first, float(np.median(times)) if times else first, result


def _summary(cmc, mean_ap, mean_inp):
  return dict(cmc=[float(c) for c in cmc[:20]], mAP=float(mean_ap), mINP=float(mean_inp))


def part_ours(dim: int, rerank: bool, repeats: int) -> dict:
  from reid_jax.evaluation import evaluate, ranking

  query, gallery, q_pids, g_pids, q_camids, g_camids = make_problem(dim)
  labels = (q_pids, g_pids, q_camids, g_camids)
  out = {}
  if not rerank:
    distmat = numpy_distances(query, gallery)

    def from_distances():
      return ranking.summarize(ranking.rank_statistics_from_distances(distmat, *labels), 50)

    first, median, res = _timed(from_distances, repeats)
    out["metrics_from_distmat"] = dict(
      first_s=first, median_s=median, **_summary(res["cmc"], res["mAP"], res["mINP"])
    )
  first, median, res = _timed(
    lambda: evaluate(query, gallery, *labels, metric="euclidean", rerank=rerank), repeats
  )
  out["evaluate_from_features"] = dict(
    first_s=first, median_s=median, **_summary(res["cmc"], res["mAP"], res["mINP"])
  )
  out["peak_rss_mib"] = _peak_rss_mib()
  return out


def part_numpy(dim: int, rerank: bool) -> dict:
  query, gallery, q_pids, g_pids, q_camids, g_camids = make_problem(dim)
  start = time.perf_counter()
  distmat = numpy_distances(query, gallery)
  out = dict(distances_s=time.perf_counter() - start)
  if rerank:
    start = time.perf_counter()
    distmat = re_ranking(distmat, numpy_distances(query, query), numpy_distances(gallery, gallery))
    out["rerank_s"] = time.perf_counter() - start
  start = time.perf_counter()
  res = eval_func(distmat, q_pids, g_pids, q_camids, g_camids)
  out["metrics_loop_s"] = time.perf_counter() - start
  out.update(_summary(*res))
  out["peak_rss_mib"] = _peak_rss_mib()
  return out


def _run_part(args, repeats: int) -> dict:
  proc = subprocess.run(
    [sys.executable, __file__, "--repeats", str(repeats), "--part", *args],
    capture_output=True,
    text=True,
    check=False,
  )
  if proc.returncode:
    raise RuntimeError(proc.stderr)
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _agreement(ours: dict, ref: dict) -> str:
  cmc = np.abs(np.subtract(ours["cmc"], ref["cmc"])).max()
  return (
    f"max |dCMC| {cmc:.1e}, |dmAP| {abs(ours['mAP'] - ref['mAP']):.1e}, "
    f"|dmINP| {abs(ours['mINP'] - ref['mINP']):.1e}"
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dims", default="512,2048")
  parser.add_argument("--no-rerank", action="store_true")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first")
  parser.add_argument("--part", nargs=3, metavar=("SIDE", "DIM", "RERANK"))
  args = parser.parse_args()
  if args.part:
    side, dim, rerank = args.part[0], int(args.part[1]), args.part[2] == "1"
    result = part_ours(dim, rerank, args.repeats) if side == "ours" else part_numpy(dim, rerank)
    print(json.dumps(result))
    return

  import jax

  print(
    f"MARS scale: {NUM_QUERIES} queries x {NUM_GALLERY} gallery; jax {jax.__version__} on "
    f"{jax.devices()[0].platform}, numpy {np.__version__}"
  )
  for dim in (int(d) for d in args.dims.split(",")):
    for rerank in (False,) if args.no_rerank else (False, True):
      flag = "1" if rerank else "0"
      # Re-ranking takes seconds per call: time it once after the compiling call.
      ours = _run_part(["ours", str(dim), flag], 1 if rerank else args.repeats)
      ref = _run_part(["numpy", str(dim), flag], 0)
      feats = ours["evaluate_from_features"]
      title = f"{dim}-d" + (", re-ranked (k1=20, k2=6, lambda=0.3)" if rerank else "")
      print(f"\n== {title}")
      if not rerank:
        dm = ours["metrics_from_distmat"]
        print(
          f"metrics from a distance matrix: ours {dm['median_s']:.3f} s (first call "
          f"{dm['first_s']:.2f} s) vs numpy loop {ref['metrics_loop_s']:.2f} s: "
          f"{ref['metrics_loop_s'] / dm['median_s']:.0f}x; {_agreement(dm, ref)}"
        )
        numpy_total = ref["distances_s"] + ref["metrics_loop_s"]
      else:
        numpy_total = ref["distances_s"] + ref["rerank_s"] + ref["metrics_loop_s"]
        print(
          f"numpy: distances {ref['distances_s']:.2f} s, re-ranking {ref['rerank_s']:.1f} s, "
          f"metrics loop {ref['metrics_loop_s']:.1f} s"
        )
      print(
        f"from features (distances + {'re-ranking + ' if rerank else ''}metrics): ours "
        f"{feats['median_s']:.3f} s (first call {feats['first_s']:.2f} s) vs numpy "
        f"{numpy_total:.2f} s: {numpy_total / feats['median_s']:.0f}x; "
        f"{_agreement(feats, ref)}"
      )
      print(f"peak RSS: ours {ours['peak_rss_mib']:.0f} MiB, numpy {ref['peak_rss_mib']:.0f} MiB")
      print(
        f"rank-1 {feats['cmc'][0]:.4f}  mAP {feats['mAP']:.6f}  mINP {feats['mINP']:.6f} "
        f"(ours) / rank-1 {ref['cmc'][0]:.4f}  mAP {ref['mAP']:.6f}  mINP {ref['mINP']:.6f} "
        "(numpy)"
      )


if __name__ == "__main__":
  main()
