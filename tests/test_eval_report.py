"""The report: metrics.json fields, and pictures that are valid PNGs of the expected size."""

import json

import numpy as np
import pytest
from PIL import Image
from test_eval_protocols import mars_like_table

from reid_jax import ranked_sheets
from reid_jax.evaluation import report, run_protocol, write_report

H, W = 32, 16


def frames_fn(row):
  rng = np.random.default_rng(row)
  return rng.integers(0, 256, (3 + row % 5, H, W, 3), dtype=np.uint8)


def attention_fn(row):
  rng = np.random.default_rng(row)
  query_grid, key_grid = (4, 8, 4), (4, 4, 2)  # keys max-pooled 1x2x2, as the option allows
  logits = rng.normal(size=(1, np.prod(query_grid), np.prod(key_grid)))
  weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  attention = dict(weights=weights.astype(np.float32), query_grid=query_grid, key_grid=key_grid)
  return rng.integers(0, 256, (8, H, W, 3), dtype=np.uint8), [attention, attention]


def png_size(path):
  with Image.open(path) as image:
    assert image.format == "PNG"
    image.verify()
  with Image.open(path) as image:
    return image.size


def test_report_writes_metrics_and_pictures(tmp_path):
  table = mars_like_table()
  features = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
  results = run_protocol("mars", features, table, max_rank=8)
  written = write_report(
    str(tmp_path),
    results,
    features=features,
    table=table,
    frames_fn=frames_fn,
    attention_fn=attention_fn,
    num_queries=2,
    top_k=5,
  )
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics["protocol"] == "mars"
  for key in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP"):
    assert 0 <= metrics[key] <= 1 and metrics[key] == pytest.approx(results[key])
  assert len(metrics["cmc"]) == 8
  assert png_size(written["cmc"]) == (640, 480)
  ranked = [k for k in written if k.startswith("ranked_q")]
  attention = [k for k in written if k.startswith("attention_q")]
  assert len(ranked) == 2 and len(attention) == 1
  rows = 1 + 5  # the query and its top 5
  row_height = ranked_sheets.TEXT + ranked_sheets.CELL[1] + 2 * ranked_sheets.BORDER
  want = (
    ranked_sheets.FRAMES_SHOWN * ranked_sheets.CELL[0] + 2 * ranked_sheets.BORDER,
    rows * (row_height + ranked_sheets.GAP) - ranked_sheets.GAP,
  )
  for key in ranked:
    assert png_size(written[key]) == want
  width, height = png_size(written[attention[0]])
  assert (width, height) == (round(1.6 * 4 * report.DPI), round(3.6 * report.DPI))


def test_split_protocol_metrics_carry_std(tmp_path):
  from test_eval_protocols import split_table

  table = split_table()
  features = np.random.default_rng(1).normal(size=(24, 3)).astype(np.float32)
  results = run_protocol("ilidsvid", [features] * 10, table, max_rank=6)
  write_report(str(tmp_path), results)
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics["protocol"] == "ilidsvid" and "rank1_std" in metrics
  assert len(metrics["per_split"]) == 10


def test_ranked_sheets_rank_what_the_metrics_rank(tmp_path):
  """The sheets' top k: the gallery by distance, junk (pid -1, the query's pid in its camera)
  left out, as in the metrics; the colours say whether each is the query's person."""
  from reid_jax.distances import pairwise_distances

  table = mars_like_table()
  features = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
  results = run_protocol("mars", features, table, max_rank=8)
  queries = np.array([0, 2, 3, 4])
  distances, ranked = report.ranked_galleries(
    results, features, table, queries, metric="euclidean", top_k=9
  )
  dist = np.asarray(pairwise_distances(features[queries], features, "euclidean"))
  for i, q in enumerate(queries):
    junk = (table.pids == -1) | ((table.pids == table.pids[q]) & (table.camids == table.camids[q]))
    expected = [g for g in np.argsort(dist[i], kind="stable") if not junk[g]]
    got = ranked[i][ranked[i] >= 0]
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(distances[i][: len(got)], dist[i][got], rtol=1e-5)
  path = report.ranked_sheet(
    str(tmp_path / "sheet.png"), 0, ranked[0][:2], distances[0][:2], table, frames_fn
  )
  with Image.open(path) as sheet:
    pixels = np.asarray(sheet.convert("RGB"))
  for row, gallery in enumerate(ranked[0][:2], start=1):
    x, y = ranked_sheets.frame_origin(row, 0)
    same = table.pids[gallery] == table.pids[0]
    assert tuple(pixels[y - 2, x]) == ranked_sheets.COLOURS[bool(same)]
