"""Video probing, decoding and writing (imageio-ffmpeg or OpenCV; no torch, no decord).

The reference decodes with decord (ffmpeg underneath) into RGB uint8. Here two switchable backends:
  "imageio": imageio-ffmpeg piping rgb24 frames out of the ffmpeg binary.
  "opencv":  cv2.VideoCapture (BGR, converted to RGB).
  "auto":    imageio when importable, else OpenCV (the GPU box has only OpenCV).
Both use ffmpeg's H.264 decoder; their YUV→RGB conversions differ by a few levels on some pixels, so a
dataset should be decoded with one backend throughout.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import cv2
import numpy as np

BACKENDS = ("auto", "imageio", "opencv")


class VideoError(RuntimeError):
  """A video file could not be opened or decoded; the message names the file."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """Container metadata of one video file."""
  path: str
  num_frames: int
  fps: float
  height: int
  width: int


def resolve_backend(backend: str) -> str:
  if backend not in BACKENDS:
    raise ValueError(f"video_backend must be one of {BACKENDS}, got {backend!r}")
  if backend == "auto":
    return "imageio" if importlib.util.find_spec("imageio_ffmpeg") is not None else "opencv"
  return backend


def probe(path: str) -> VideoInfo:
  """Frame count, fps and size from the container metadata (cheap), plus one decoded frame.

  Raises:
    VideoError: the file is missing, cannot be opened, reports no frames/fps, or its first frame does not
      decode (a truncated or corrupt file).
  """
  if not os.path.isfile(path):
    raise VideoError(f"{path}: file not found")
  cap = cv2.VideoCapture(path)
  try:
    if not cap.isOpened():
      raise VideoError(f"{path}: cannot open video (unreadable or corrupt)")
    num_frames = int(round(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if num_frames <= 0 or not fps > 0 or width <= 0 or height <= 0:
      raise VideoError(f"{path}: corrupt video metadata (frames={num_frames}, fps={fps}, size={width}x{height})")
    ok, _ = cap.read()
    if not ok:
      raise VideoError(f"{path}: first frame does not decode (corrupt video)")
  finally:
    cap.release()
  return VideoInfo(path=path, num_frames=num_frames, fps=fps, height=height, width=width)


def read_frames(path: str, start: int, num_frames: int, backend: str = "auto") -> np.ndarray:
  """Decodes frames [start, start + num_frames) of `path`.

  Returns:
    frames_THWC: uint8 (num_frames, H0, W0, 3), RGB.
  Raises:
    VideoError: the file ends before frame start + num_frames - 1 or does not decode.
  """
  backend = resolve_backend(backend)
  stop = start + num_frames
  frames = (_read_imageio if backend == "imageio" else _read_opencv)(path, stop)
  if len(frames) < stop:
    raise VideoError(f"{path}: decoded {len(frames)} frames, need {stop} (start {start} + {num_frames} frames)")
  return np.stack(frames[start:stop])


def _read_imageio(path: str, stop: int) -> list[np.ndarray]:
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top

  try:
    gen = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24", output_params=["-frames:v", str(stop)])
    meta = next(gen)
    width, height = meta["size"]
    frames = [np.frombuffer(buf, np.uint8).reshape(height, width, 3) for buf in gen]
  except (OSError, RuntimeError, StopIteration) as e:
    raise VideoError(f"{path}: cannot decode with imageio-ffmpeg: {e}") from e
  return frames


def _read_opencv(path: str, stop: int) -> list[np.ndarray]:
  cap = cv2.VideoCapture(path)
  if not cap.isOpened():
    raise VideoError(f"{path}: cannot open video (unreadable or corrupt)")
  frames = []
  try:
    while len(frames) < stop:
      ok, bgr = cap.read()
      if not ok:
        break
      frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
  finally:
    cap.release()
  return frames


def write_video(path: str, frames_THWC: np.ndarray, fps: float, *, quality: int | None = None,
                backend: str = "auto") -> str:
  """Writes RGB uint8 frames (T, H, W, 3) as mp4; returns the backend used ("imageio_ffmpeg" or "opencv").

  imageio-ffmpeg writes H.264/yuv420p: near-lossless (crf 12) by default, or at imageio's `quality` (0..10).
  OpenCV's pip wheels carry no H.264 encoder (licensing), so its fallback writes MPEG-4 part 2 (`mp4v`).
  """
  frames_THWC = np.ascontiguousarray(frames_THWC, dtype=np.uint8)
  t, h, w, c = frames_THWC.shape
  if c != 3:
    raise ValueError(f"{path}: expected RGB frames (T, H, W, 3), got {frames_THWC.shape}")
  if backend not in ("auto", "imageio_ffmpeg", "opencv"):
    raise ValueError(f"backend must be auto, imageio_ffmpeg or opencv, got {backend!r}")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if backend == "imageio_ffmpeg" or (backend == "auto" and importlib.util.find_spec("imageio_ffmpeg") is not None):
    import imageio_ffmpeg  # pylint: disable=g-import-not-at-top

    settings = dict(output_params=["-crf", "12"]) if quality is None else dict(quality=quality)
    writer = imageio_ffmpeg.write_frames(path, (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         macro_block_size=1, ffmpeg_log_level="error", **settings)
    writer.send(None)
    for frame in frames_THWC:
      writer.send(frame)
    writer.close()
    return "imageio_ffmpeg"
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
  if not writer.isOpened():
    raise VideoError(f"{path}: OpenCV cannot open an mp4 writer")
  for frame in frames_THWC:
    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  writer.release()
  return "opencv"
