"""What an evaluation leaves on disk: metrics.json, the CMC curve, ranked results, attention."""

import json
import os

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from reid_jax.distances import pairwise_distances  # noqa: E402
from reid_jax.evaluation.protocols import protocol_sets  # noqa: E402
from reid_jax.evaluation.ranking import is_junk  # noqa: E402

DPI = 100
CMC_SIZE = (6.4, 4.8)  # inches: 640 x 480 pixels
FRAMES_SHOWN = 8
_BORDER = 4
_TITLE_PIXELS = 24
_GREEN, _RED, _GREY = (0, 170, 0), (220, 0, 0), (128, 128, 128)


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
  with open(path + ".tmp", "w") as f:
    json.dump(_scalars(results), f, indent=1)
  os.replace(path + ".tmp", path)
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
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return path


def _strip(frames: np.ndarray, colour, count: int = FRAMES_SHOWN) -> np.ndarray:
  """Up to `count` frames evenly spread over the tracklet, side by side, in a coloured frame."""
  frames = np.asarray(frames, np.uint8)
  picked = frames[np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)]
  h, w = picked.shape[1:3]
  strip = np.zeros((h + 2 * _BORDER, count * w + 2 * _BORDER, 3), np.uint8)
  strip[...] = 255
  strip[:, : len(picked) * w + 2 * _BORDER] = colour
  strip[_BORDER : _BORDER + h, _BORDER : _BORDER + len(picked) * w] = np.concatenate(picked, axis=1)
  return strip


def ranked_sheet_pixels(strip_shape, num_strips: int) -> np.ndarray:
  """(width, height) in pixels of a ranked-results sheet: strips plus a title line each."""
  return np.array([max(strip_shape[1] + 40, 400), num_strips * (strip_shape[0] + _TITLE_PIXELS)])


def plot_ranked_results(path: str, query_row: int, ranked_rows, table, frames_fn, distances) -> str:
  """The query's frames, then each top-k gallery tracklet, green = same person, red = not.

  `ranked_rows` are table rows in rank order, `distances` their distances to the query.
  """
  pids, camids = np.asarray(table.pids), np.asarray(table.camids)
  rows = [(query_row, _GREY, f"query  pid {pids[query_row]}  cam {camids[query_row]}")]
  for rank, (row, dist) in enumerate(zip(ranked_rows, distances), start=1):
    colour = _GREEN if pids[row] == pids[query_row] else _RED
    rows.append((row, colour, f"#{rank}  pid {pids[row]}  cam {camids[row]}  d={dist:.3g}"))
  strips = [_strip(frames_fn(int(r)), c) for r, c, _ in rows]
  fig = plt.figure(figsize=ranked_sheet_pixels(strips[0].shape, len(strips)) / DPI, dpi=DPI)
  axes = fig.subplots(len(strips), 1)
  for ax, strip, (_, _, text) in zip(axes, strips, rows):
    ax.imshow(strip)
    ax.set_axis_off()
    ax.set_title(text, fontsize=8, loc="left")
  fig.subplots_adjust(left=0.01, right=0.99, top=0.98, bottom=0.01, hspace=0.35)
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return path


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
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return path


def chosen_queries(query_rows: np.ndarray, count: int) -> np.ndarray:
  """`count` queries evenly spread over the query list (deterministic)."""
  return query_rows[np.linspace(0, len(query_rows) - 1, min(count, len(query_rows))).astype(int)]


def write_report(
  workdir: str,
  results: dict,
  *,
  features=None,
  table=None,
  config=None,
  frames_fn=None,
  attention_fn=None,
  metric=None,
  num_queries: int = 4,
  top_k: int = 10,
) -> dict:
  """Writes metrics.json and cmc.png; with features + table + frames_fn, ranked_q<row>.png for
  `num_queries` queries; with attention_fn (non-local models), attention_q<row>.png.

  Args:
    workdir: output folder (created).
    results: `run_protocol` output.
    features, table: [N, D] features and TrackletTable of the evaluation set.
    config: the run's config; only `config.eval.metric` is read (else `metric`, else euclidean).
    frames_fn: `tracklet row -> uint8 [n, H, W, 3]` frames.
    attention_fn: `tracklet row -> (clip uint8 [T, H, W, 3], attention list)` from the model's
      `return_attention=True` output; the deepest block is drawn.
  The sheets rank by the plain metric (not re-ranked), junk left out as in the metrics; the
  attention picture is drawn for the first chosen query only.

  Returns:
    {name: path} of the files written.
  """
  os.makedirs(workdir, exist_ok=True)
  written = {
    "metrics": write_metrics(workdir, results),
    "cmc": plot_cmc(os.path.join(workdir, "cmc.png"), results),
  }
  if features is None or table is None:
    return written
  metric = metric or (config.eval.metric if config is not None else "euclidean")
  split = results.get("splits", [0])[0]
  query_rows, gallery_rows = protocol_sets(results["protocol"], table, split)
  features = np.asarray(features)
  pids, camids = np.asarray(table.pids), np.asarray(table.camids)
  for i, q in enumerate(chosen_queries(query_rows, num_queries)):
    if frames_fn is not None:
      dist = np.asarray(pairwise_distances(features[q][None], features[gallery_rows], metric))[0]
      # Show what the metrics rank: junk is left out.
      keep = ~is_junk(pids[q], camids[q], pids[gallery_rows], camids[gallery_rows])
      order = np.flatnonzero(keep)[np.argsort(dist[keep], kind="stable")[:top_k]]
      written[f"ranked_q{q}"] = plot_ranked_results(
        os.path.join(workdir, f"ranked_q{q}.png"),
        q,
        gallery_rows[order],
        table,
        frames_fn,
        dist[order],
      )
    if attention_fn is not None and i == 0:
      clip, attention = attention_fn(int(q))
      written[f"attention_q{q}"] = plot_attention(
        os.path.join(workdir, f"attention_q{q}.png"), clip, attention[-1]
      )
  return written
