"""Sample videos and frame strips laid out like the reference's `EveryNDrawSampleMultiviewVideo` (training.md §9.8).

Layout. Each row is one decoded multiview clip; the caller orders the rows as the callback does: the samples
(num_cond_frames outer, guidance inner: n=0 g=0,3,5 then n=1 g=0,3,5), then the input video, then the control
pixels. Within a row the batch items (at most `n_viz_sample`) and, inside each item, the views (head, left,
right) sit side by side along width; rows are stacked along height.

- mp4: every frame of that grid, width capped at 2048 px by a bilinear resize (height int(H·scale)), values
  (x+1)/2 clamped to [0, 1] and truncated to uint8 (as the reference's `astype`), padded to even size by edge
  replication, H.264 (libx264) at fps 10, quality 5. Written with imageio-ffmpeg; OpenCV's MPEG-4 writer is the
  fallback (GPU boxes have no imageio-ffmpeg).
- jpg `<stem>_<n>frames.jpg`: n = 12 evenly spaced frames (index round(i·(T−1)/11); all T of a shorter clip) of
  each batch item placed along width, rows along height, shrunk to at most 4096 px on the longer side (the
  reference resizes to 1024 px, which leaves a tiny clip's rows a few pixels tall), rounded to uint8.
- TensorBoard image (`tensorboard_image`): 4 evenly spaced frames, at most 2048 px on the longer side, so a row
  stays readable at real resolutions.
With `row_labels` and `view_names`, the mp4 and the images get a label column on the left (what each row is) and a
header naming each view (batch items repeat the views), drawn after any resize so the text keeps its size.
"""

from __future__ import annotations

import os
import pathlib

import cv2
import numpy as np

from agibot_jax import video_io as video

MAX_VIDEO_WIDTH = 2048
STRIP_MAX_SIDE = 4096
STRIP_FRAMES = 12
TB_FRAMES = 4
TB_SIZE = 2048
FPS = 10
QUALITY = 5
N_VIZ_SAMPLE = 3


def sample_file_base(tag: str, iteration: int, num_views: int = 3, replica_id: int = 0) -> str:
  """The reference's file stem, e.g. `ema_ReplicateID0000_Sample_Iter000000200_3views`."""
  return f"{tag}_ReplicateID{replica_id:04d}_Sample_Iter{iteration:09d}_{num_views}views"


def _rows_BVTHWC(rows: list[np.ndarray], n_viz_sample: int) -> np.ndarray:
  """Stacks rows of (B, V, T, H, W, 3) or (V, T, H, W, 3) in [-1, 1] into (N, b, V, T, H, W, 3) in [0, 1]."""
  if not rows:
    raise ValueError("no rows to draw")
  batched = []
  for i, row in enumerate(rows):
    row = np.asarray(row, np.float32)
    if row.ndim == 5:
      row = row[None]
    if row.ndim != 6 or row.shape[-1] != 3:
      raise ValueError(f"row {i}: expected (B, V, T, H, W, 3) or (V, T, H, W, 3), got {row.shape}")
    if batched and row.shape != batched[0].shape:
      raise ValueError(f"row {i}: shape {row.shape} differs from row 0's {batched[0].shape}")
    batched.append(row[:n_viz_sample])
  return (1.0 + np.clip(np.stack(batched), -1.0, 1.0)) / 2.0


def video_grid(rows: list[np.ndarray], *, n_viz_sample: int = N_VIZ_SAMPLE) -> np.ndarray:
  """(T, N·H, b·V·W, 3) float32 in [0, 1]: rows along height, batch items then views along width."""
  x = _rows_BVTHWC(rows, n_viz_sample)
  n, b, v, t, h, w, c = x.shape
  return x.transpose(3, 0, 4, 1, 2, 5, 6).reshape(t, n * h, b * v * w, c)


def frame_strip(
    rows: list[np.ndarray], *, n_frames: int = STRIP_FRAMES, n_viz_sample: int = N_VIZ_SAMPLE
) -> np.ndarray:
  """(N·H, b·n_frames·V·W, 3) float32 in [0, 1]: n_frames evenly spaced frames, batch then time along width."""
  x = _rows_BVTHWC(rows, n_viz_sample)
  num_t = x.shape[3]
  # Python's round (half to even) picks the frames, as in the reference.
  x = x[:, :, :, [round(i * (num_t - 1) / max(1, n_frames - 1)) for i in range(n_frames)]]
  n, b, v, t, h, w, c = x.shape
  return x.transpose(0, 4, 1, 3, 2, 5, 6).reshape(n * h, b * t * v * w, c)


def label(frames_THWC: np.ndarray, *, row_labels: list[str] | None, column_labels: list[str] | None) -> np.ndarray:
  """Adds a left column naming each of the N equal-height rows and a header naming each of the equal-width columns.

  frames: (T, H, W, 3), float in [0, 1] or uint8, with H = N·row height and W = (number of columns)·column width.
  """
  if not row_labels and not column_labels:
    return frames_THWC
  t, h, w, _ = frames_THWC.shape
  white = (255,) * 3 if frames_THWC.dtype == np.uint8 else (1.0,) * 3
  font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1
  text_h = cv2.getTextSize("Ag", font, scale, thick)[0][1] + 6
  left = max((cv2.getTextSize(s, font, scale, thick)[0][0] for s in row_labels), default=0) + 8 if row_labels else 0
  top = text_h if column_labels else 0
  band = np.zeros((h + top, w + left, 3), frames_THWC.dtype)
  for i, text in enumerate(row_labels or ()):
    row_h = h // len(row_labels)
    cv2.putText(band, text, (4, top + i * row_h + row_h // 2 + text_h // 3), font, scale, white, thick, cv2.LINE_AA)
  for j, text in enumerate(column_labels or ()):
    col_w = w // len(column_labels)
    cv2.putText(band, text, (left + j * col_w + 4, text_h - 4), font, scale, white, thick, cv2.LINE_AA)
  out = np.empty((t,) + band.shape, frames_THWC.dtype)
  out[:] = band
  out[:, top:, left:] = frames_THWC
  return out


def _view_columns(view_names: list[str] | None, rows: list[np.ndarray], n_viz_sample: int, n_frames: int = 1):
  """Column labels for a grid whose columns are (batch item, frame, view)."""
  if not view_names:
    return None
  items = min(_rows_BVTHWC(rows[:1], n_viz_sample).shape[1], n_viz_sample)
  return [v for _ in range(items * n_frames) for v in view_names]


def tensorboard_image(rows: list[np.ndarray], *, row_labels: list[str] | None = None,
                      view_names: list[str] | None = None, n_viz_sample: int = N_VIZ_SAMPLE) -> np.ndarray:
  """(H, W, 3) uint8: TB_FRAMES evenly spaced frames of every row, longer side at most TB_SIZE, labelled."""
  strip = shrink_longer_side(frame_strip(rows, n_frames=TB_FRAMES, n_viz_sample=n_viz_sample), TB_SIZE)
  strip = label(strip[None], row_labels=row_labels,
                column_labels=_view_columns(view_names, rows, n_viz_sample, TB_FRAMES))[0]
  return np.clip(strip * 255.0 + 0.5, 0, 255).astype(np.uint8)


def cap_width(frames_THWC: np.ndarray, max_width: int = MAX_VIDEO_WIDTH) -> np.ndarray:
  """Bilinear (half-pixel, no antialias) downscale to `max_width` keeping the aspect; unchanged if narrower."""
  t, h, w, _ = frames_THWC.shape
  if w <= max_width:
    return frames_THWC
  new_h = int(h * max_width / w)
  return np.stack([cv2.resize(f, (max_width, new_h), interpolation=cv2.INTER_LINEAR) for f in frames_THWC])


def _pad_even(frames_THWC: np.ndarray) -> np.ndarray:
  """H.264 in yuv420p needs even sides: replicate the last row/column where odd."""
  _, h, w, _ = frames_THWC.shape
  return np.pad(frames_THWC, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def shrink_longer_side(image_HWC: np.ndarray, size: int) -> np.ndarray:
  """Scales an image down (antialiased) so its longer side is at most `size` (new sides truncated, as the
  reference's `resize_image`); a smaller image is returned as is."""
  h, w, _ = image_HWC.shape
  ratio = size / max(h, w)
  if ratio >= 1:
    return image_HWC
  return cv2.resize(image_HWC, (int(ratio * w), int(ratio * h)), interpolation=cv2.INTER_AREA)


def write_jpeg(path: str | os.PathLike, image_HWC: np.ndarray) -> None:
  """Writes a [0, 1] float RGB image as JPEG (quality 75, PIL's default), atomically."""
  image = np.clip(np.asarray(image_HWC, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
  video.write_image(str(path), image, (cv2.IMWRITE_JPEG_QUALITY, 75))


def save_sample_outputs(
    out_dir: str | os.PathLike,
    file_base: str,
    rows: list[np.ndarray],
    *,
    fps: int = FPS,
    max_width: int = MAX_VIDEO_WIDTH,
    n_viz_sample: int = N_VIZ_SAMPLE,
    backend: str = "auto",
    row_labels: list[str] | None = None,
    view_names: list[str] | None = None,
) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes `<file_base>.mp4` and `<file_base>_<n>frames.jpg` (module docstring) under out_dir, each atomically (a
  temporary name, then renamed): an interrupted command leaves no half file under either name.

  Args:
    rows: decoded clips in [-1, 1], each (B, V, T, H, W, 3) or (V, T, H, W, 3), all the same shape.
    row_labels, view_names: optional labels of the rows and of the views (module docstring).

  Returns:
    (mp4 path, jpg path).
  """
  if row_labels is not None and len(row_labels) != len(rows):
    raise ValueError(f"{len(row_labels)} row labels for {len(rows)} rows")
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  n_frames = min(STRIP_FRAMES, np.shape(rows[0])[-4])
  jpg_path = out_dir / f"{file_base}_{n_frames}frames.jpg"
  strip = shrink_longer_side(frame_strip(rows, n_frames=n_frames, n_viz_sample=n_viz_sample), STRIP_MAX_SIDE)
  strip = label(strip[None], row_labels=row_labels,
                column_labels=_view_columns(view_names, rows, n_viz_sample, n_frames))[0]
  write_jpeg(jpg_path, strip)
  frames = (cap_width(video_grid(rows, n_viz_sample=n_viz_sample), max_width) * 255.0).astype(np.uint8)
  # Labelled after the width cap, on uint8 frames: no second full-size float copy of the video.
  frames = label(frames, row_labels=row_labels, column_labels=_view_columns(view_names, rows, n_viz_sample))
  mp4_path = out_dir / f"{file_base}.mp4"
  video.write_video(str(mp4_path), _pad_even(frames), fps, quality=QUALITY, backend=backend)
  return mp4_path, jpg_path
