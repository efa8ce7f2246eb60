"""The evaluation report: a JSON document and an HTML page beside it (metric tables and a frame grid per sample).

The JSON (`agibot_jax.eval`):
  {"checkpoint", "step", "weights", "control_type", "settings": {...},
   "validation": {metric: value},                       (agibot_jax/evaluation/validation.py)
   "metrics": {metric: mean over the scored samples},   (agibot_jax/evaluation/scoring.py)
   "samples": [{"sample_id", "scores": {metric: value}, "image": file name of its frame grid}]}
The HTML page shows the same numbers and the grid images (paths relative to the page, so the folder can move).
A sample's grid (`frame_grid`) has one row per (view, video) (per view: generated, ground truth, control) and a
column per frame, so the three can be compared frame by frame; each row and column is labelled. Every file is
written atomically (a temporary file renamed into place).
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from agibot_jax import utils
from agibot_jax.sampling import video_out

GRID_FRAMES = 4  # columns of a sample's frame grid: frames evenly spaced over the clip
GRID_CELL_WIDTH = 256  # pixels of one frame in the grid
VIDEO_NAMES = ("generated", "ground truth", "control")  # what agibot_jax.eval puts in a sample's grid, in order


def frame_grid(videos_VTHWC: Sequence[np.ndarray], *, num_frames: int = GRID_FRAMES,
               cell_width: int = GRID_CELL_WIDTH, view_names: Sequence[str] | None = None,
               video_names: Sequence[str] = VIDEO_NAMES) -> np.ndarray:
  """uint8 RGB (rows·H', num_frames·cell_width, 3) of uint8 videos (V, T, H, W, 3) of one shape: a row per (view,
  video), view-major, and a column per frame (`num_frames` evenly spaced), each frame resized to `cell_width`.
  With `view_names`, a label column names each row's view and video and a header each column's frame."""
  shapes = {v.shape for v in videos_VTHWC}
  if len(shapes) != 1 or len(next(iter(shapes))) != 5:
    raise ValueError(f"frame_grid needs videos of one (V, T, H, W, 3) shape, got {sorted(shapes)}")
  num_views, num_t, h, w, _ = videos_VTHWC[0].shape
  cell_hw = (max(1, round(h * cell_width / w)), cell_width)
  frames = np.linspace(0, num_t - 1, min(num_frames, num_t)).round().astype(int)
  interpolation = cv2.INTER_AREA if cell_width < w else cv2.INTER_LINEAR
  rows = [np.concatenate([cv2.resize(video[v, t], cell_hw[::-1], interpolation=interpolation) for t in frames], 1)
          for v in range(num_views) for video in videos_VTHWC]
  grid = np.concatenate(rows, 0)
  if view_names is None:
    return grid
  row_labels = [f"{view} {what}" for view in view_names for what in video_names[:len(videos_VTHWC)]]
  return video_out.label(grid[None], row_labels=row_labels, column_labels=[f"frame {t}" for t in frames])[0]


def _table(values: Mapping[str, float], header: str) -> str:
  rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>" for k, v in values.items())
  return f"<table><tr><th>{html.escape(header)}</th><th>value</th></tr>{rows}</table>"


def to_html(report: Mapping) -> str:
  """The report as a self-contained HTML page (images by relative path)."""
  step = "" if report["step"] is None else f"step {report['step']}, "
  title = f"{report['control_type']} control: {report['checkpoint']} ({step}{report['weights']} weights)"
  settings = ", ".join(f"{k}={v}" for k, v in report["settings"].items())
  parts = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(settings)}</p>"]
  if report["validation"]:
    parts += ["<h2>Validation loss</h2>", _table(report["validation"], "metric")]
  parts += [f"<h2>Sample metrics (mean of {len(report['samples'])} samples)</h2>", _table(report["metrics"], "metric")]
  for sample in report["samples"]:
    means = {k: v for k, v in sample["scores"].items() if "/" not in k}
    parts += [f"<h3>{html.escape(sample['sample_id'])}</h3>",
              "<p>per view, rows: generated, ground truth, control; columns: frames</p>",
              f'<img src="{html.escape(sample["image"])}" style="max-width:100%">', _table(means, "metric")]
  style = ("body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;margin:1em 0} "
           "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}")
  return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
          f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def write_report(json_path: str, report: Mapping) -> str:
  """Writes the JSON at `json_path` and the HTML page beside it (same stem, .html); returns the HTML path."""
  html_path = os.path.splitext(json_path)[0] + ".html"
  os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
  utils.atomic_write(json_path, lambda f: f.write(json.dumps(report, indent=2) + "\n"), mode="w")
  utils.atomic_write(html_path, lambda f: f.write(to_html(report)), mode="w")
  return html_path
