"""What an evaluation leaves on disk: metrics.json, the CMC curve, ranked sheets, attention.

Every file is written whole or not at all (`data_prep.files`). `write_report` is called by every
process of a run: the ranked sheets' top k is computed by all of them together
(`reid_jax.retrieval.top_k`), and process 0 writes the files.
"""

import json
import os

import jax
import matplotlib

matplotlib.use("Agg")  # files only: no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from data_prep.files import atomic_write  # noqa: E402
from reid_jax import ranked_sheets, retrieval  # noqa: E402
from reid_jax.evaluation.protocols import protocol_sets  # noqa: E402
from reid_jax.evaluation.ranking import is_junk  # noqa: E402

DPI = 100
CMC_SIZE = (6.4, 4.8)  # inches: 640 x 480 pixels


def save_figure(fig, path: str) -> str:
  """A matplotlib figure to the PNG file `path` (closing it); returns `path`."""
  with atomic_write(path, "wb") as f:
    fig.savefig(f, format="png", dpi=DPI)
  plt.close(fig)
  return path


def _scalars(results: dict) -> dict:
  out = {}
  for key, value in results.items():
    if isinstance(value, (str, bool, int, float, np.integer, np.floating)):
      out[key] = value.item() if isinstance(value, np.generic) else value
    elif key in ("cmc", "splits", "per_split"):
      out[key] = np.asarray(value).tolist() if key == "cmc" else value
  return out


def write_metrics(workdir: str, results: dict) -> str:
  """metrics.json: every scalar of `results` (fractions in [0, 1]) plus the CMC curve."""
  path = os.path.join(workdir, "metrics.json")
  with atomic_write(path) as f:
    json.dump(_scalars(results), f, indent=1)
  return path


def plot_cmc(path: str, results: dict) -> str:
  cmc = np.asarray(results["cmc"])
  ranks = np.arange(1, len(cmc) + 1)
  fig, ax = plt.subplots(figsize=CMC_SIZE, dpi=DPI)
  label = f"rank-1 {100 * results['rank1']:.1f}%, mAP {100 * results['mAP']:.1f}%"
  ax.plot(ranks, 100 * cmc, marker=".", label=label)
  ax.set(
    xlabel="rank",
    ylabel="matching rate (%)",
    xlim=(1, len(cmc)),
    ylim=(0, 100),
    title=f"CMC, protocol {results['protocol']}"
    + (" + re-ranking" if results.get("rerank") else ""),
  )
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right")
  return save_figure(fig, path)


def ranked_sheet(path: str, query_row: int, ranked_rows, distances, table, frames_fn) -> str:
  """The query's frames, then each ranked gallery tracklet (`ranked_rows` in rank order, at
  `distances`): green = the query's person, red = not (`reid_jax.ranked_sheets`)."""
  pids, camids = np.asarray(table.pids), np.asarray(table.camids)
  rows = [
    ranked_sheets.Row(
      frames_fn(int(query_row)), f"query  pid {pids[query_row]}  cam {camids[query_row]}"
    )
  ]
  for rank, (row, dist) in enumerate(zip(ranked_rows, distances), start=1):
    rows.append(
      ranked_sheets.Row(
        frames_fn(int(row)),
        f"#{rank}  pid {pids[row]}  cam {camids[row]}  d={dist:.3g}",
        verdict=bool(pids[row] == pids[query_row]),
      )
    )
  return ranked_sheets.write(path, rows)


def plot_attention(
  path: str, clip: np.ndarray, attention: dict, query_position=(0.0, 0.35, 0.5)
) -> str:
  """Like the paper's Fig. 6: where one position of one frame attends in every frame.

  Args:
    clip: uint8 [T, H, W, 3], the frames the model saw.
    attention: one non-local block's `{'weights': [1, Nq, Nk], 'query_grid': (t, h, w),
      'key_grid': (t, h, w)}` (positions flattened in t, h, w order).
    query_position: (frame, y, x) of the query as fractions of the query grid.
  """
  clip = np.asarray(clip)
  qt, qh, qw = attention["query_grid"]
  kt, kh, kw = attention["key_grid"]
  t, y, x = (min(int(f * n), n - 1) for f, n in zip(query_position, (qt, qh, qw)))
  weights = np.asarray(attention["weights"])[0, (t * qh + y) * qw + x].reshape(kt, kh, kw)
  num_frames, height, width = clip.shape[:3]
  # At least ~4 inches wide so the title fits when T' is small (short demo clips).
  fig, axes = plt.subplots(1, kt, figsize=(max(1.6 * kt, 4.2), 3.6), dpi=DPI, squeeze=False)
  for k, ax in enumerate(axes[0]):
    frame = clip[min(int((k + 0.5) * num_frames / kt), num_frames - 1)]
    ax.imshow(frame)
    ax.imshow(
      weights[k],
      cmap="jet",
      alpha=0.45,
      extent=(0, width, height, 0),
      vmin=0,
      vmax=weights.max(),
      interpolation="bilinear",
    )
    py, px = np.unravel_index(np.argmax(weights[k]), (kh, kw))
    ax.plot((px + 0.5) * width / kw, (py + 0.5) * height / kh, "w+", markersize=12, mew=2)
    if k == t * kt // qt:
      ax.plot(
        (x + 0.5) * width / qw,
        (y + 0.5) * height / qh,
        marker="*",
        color="yellow",
        markersize=16,
        markeredgecolor="black",
      )
    ax.set_axis_off()
    ax.set_title(f"key frame {k}", fontsize=8)
  fig.suptitle("non-local attention of the starred position\n(+ = strongest per frame)", fontsize=9)
  fig.subplots_adjust(top=0.8)  # room for the two-line title above the frame titles
  return save_figure(fig, path)


def chosen_queries(query_rows: np.ndarray, count: int) -> np.ndarray:
  """`count` queries evenly spread over the query list (deterministic)."""
  return query_rows[np.linspace(0, len(query_rows) - 1, min(count, len(query_rows))).astype(int)]


def _junk(q: dict, g: dict):
  """The ranking's junk rule (`ranking.is_junk`) as a `retrieval.top_k` exclusion."""
  return is_junk(q["pid"], q["cam"], g["pid"], g["cam"])


def ranked_galleries(results: dict, features, table, queries, *, metric: str, top_k: int):
  """`(distances [q, k], table rows [q, k])` of the `top_k` nearest gallery tracklets of each
  of `queries` (table rows) under the results' protocol, ranked by the plain metric with junk
  left out as the metrics leave it (pid -1, and the query's pid in the query's camera). Every
  process must call it."""
  split = results.get("splits", [0])[0]
  _, gallery_rows = protocol_sets(results["protocol"], table, split)
  features = np.asarray(features)
  labels = lambda rows: dict(pid=np.asarray(table.pids)[rows], cam=np.asarray(table.camids)[rows])
  distances, positions = retrieval.top_k(
    features[queries],
    features[gallery_rows],
    min(top_k, len(gallery_rows)),
    metric=metric,
    exclude=_junk,
    query_labels=labels(queries),
    gallery_labels=labels(gallery_rows),
  )
  return distances, np.where(positions >= 0, gallery_rows[positions], -1)


def write_report(
  workdir: str,
  results: dict,
  *,
  features=None,
  table=None,
  frames_fn=None,
  attention_fn=None,
  metric: str = "euclidean",
  num_queries: int = 4,
  top_k: int = 10,
) -> dict:
  """Writes metrics.json and cmc.png; with features + table + frames_fn, ranked_q<row>.png for
  `num_queries` queries; with attention_fn (non-local models), attention_q<row>.png. Every
  process must call it; process 0 writes.

  Args:
    workdir: output folder (created).
    results: `run_protocol` output.
    features, table: [N, D] features and TrackletTable of the evaluation set.
    frames_fn: `tracklet row -> uint8 [n, H, W, 3]` frames.
    attention_fn: `tracklet row -> (clip uint8 [T, H, W, 3], attention list)` from the model's
      `return_attention=True` output; the deepest block is drawn.
    metric: the distance the sheets rank by (not re-ranked).
  The attention picture is drawn for the first chosen query only.

  Returns:
    {name: path} of the files written (on process 0; empty on the others).
  """
  writes = jax.process_index() == 0
  written = {}
  if writes:
    os.makedirs(workdir, exist_ok=True)
    written["metrics"] = write_metrics(workdir, results)
    written["cmc"] = plot_cmc(os.path.join(workdir, "cmc.png"), results)
  if features is None or table is None or frames_fn is None:
    return written
  split = results.get("splits", [0])[0]
  query_rows, _ = protocol_sets(results["protocol"], table, split)
  chosen = chosen_queries(query_rows, num_queries)
  distances, ranked = ranked_galleries(results, features, table, chosen, metric=metric, top_k=top_k)
  if not writes:
    return written
  for i, q in enumerate(chosen):
    keep = ranked[i] >= 0
    written[f"ranked_q{q}"] = ranked_sheet(
      os.path.join(workdir, f"ranked_q{q}.png"),
      q,
      ranked[i][keep],
      distances[i][keep],
      table,
      frames_fn,
    )
    if attention_fn is not None and i == 0:
      clip, attention = attention_fn(int(q))
      written[f"attention_q{q}"] = plot_attention(
        os.path.join(workdir, f"attention_q{q}.png"), clip, attention[-1]
      )
  return written
