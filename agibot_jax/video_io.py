"""Video probing, decoding and writing (imageio-ffmpeg or OpenCV; no torch, no decord).

The reference decodes with decord (ffmpeg underneath) into RGB uint8. Here two switchable backends:
  "imageio": imageio-ffmpeg piping rgb24 frames out of the ffmpeg binary.
  "opencv":  cv2.VideoCapture (BGR, converted to RGB).
  "auto":    imageio when importable, else OpenCV (the GPU box has only OpenCV).
Both use ffmpeg's H.264 decoder; their YUV→RGB conversions differ by a few levels on some pixels, so a
dataset should be decoded with one backend throughout. A file that stops decoding (truncated, or corrupt
mid-stream: imageio-ffmpeg stops at the first decoder error instead of concealing it) yields fewer frames than
asked for and raises VideoError; `verify` decodes a file as far as training reads it, without keeping the frames.

FFmpeg is started without imageio-ffmpeg's `preexec_fn=os.setpgrp` (IMAGEIO_FFMPEG_NO_PREVENT_SIGINT, its own
switch): a `preexec_fn` makes the forked child run Python before it execs FFmpeg, and in a process with other threads
(Orbax's savers, grain's prefetch) that child can deadlock on a lock another thread held at the fork. The decoding
then never returns (the training run hangs), and the child, a copy of the training process with its signal handlers,
ignores SIGTERM and outlives even a `kill -9` of the run. Without it FFmpeg shares the process group, so a terminal's
Ctrl-C reaches it too; the training loop stops the run with its checkpoint then (agibot_jax/training/loop.py).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import os
import re
from collections.abc import Iterator

import cv2
import numpy as np

from agibot_jax import utils

os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")  # read by imageio-ffmpeg at each start of FFmpeg
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
  try:  # OpenCV would only say that it cannot open it, after logging a warning
    open(path, "rb").close()
  except OSError as e:
    raise VideoError(f"{path}: cannot read the file ({e.strerror or e})") from e
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
    VideoError: the file ends, or stops decoding, before frame start + num_frames - 1.
  """
  stop = start + num_frames
  frames, decoded = [], 0
  for frame in _frames(path, stop, resolve_backend(backend)):
    if decoded >= start:
      frames.append(frame)
    decoded += 1
  if decoded < stop:
    raise VideoError(_too_few_frames(path, decoded, stop))
  return np.stack(frames)


def verify(path: str, num_frames: int, backend: str = "auto") -> None:
  """Decodes frames [0, num_frames) of `path` without keeping them; raises VideoError unless every one decodes.

  This is what `read_frames` would meet: a file corrupt mid-stream fails here, not in a training batch.
  """
  decoded = sum(1 for _ in _frames(path, num_frames, resolve_backend(backend)))
  if decoded < num_frames:
    raise VideoError(_too_few_frames(path, decoded, num_frames))


def _too_few_frames(path: str, decoded: int, needed: int) -> str:
  return f"{path}: decoded {decoded} frames, need {needed} (the file ends or stops decoding at frame {decoded})"


def _frames(path: str, stop: int, backend: str) -> Iterator[np.ndarray]:
  """Frames 0..stop-1 of `path` (fewer when it ends or stops decoding), RGB uint8 (H0, W0, 3)."""
  if backend == "imageio":
    return _frames_imageio(path, stop)
  return opencv_frames(path, stop=stop)


def _frames_imageio(path: str, stop: int) -> Iterator[np.ndarray]:
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top

  try:
    # ffmpeg conceals a corrupt packet by default (damaged frames, no error); here the first decoder error ends the
    # decode, so a corrupt file yields fewer frames than it claims.
    gen = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24", input_params=["-err_detect", "explode"],
                                     output_params=["-xerror", "-frames:v", str(stop)])
    meta = next(gen)
    width, height = meta["size"]
    for buf in gen:
      yield np.frombuffer(buf, np.uint8).reshape(height, width, 3)
  except (OSError, RuntimeError, StopIteration) as e:
    raise VideoError(f"{path}: cannot decode with imageio-ffmpeg: {_ffmpeg_reason(e)}") from e


def _ffmpeg_reason(error: Exception) -> str:
  """imageio-ffmpeg's error in one line: its message and ffmpeg's first complaint, not ffmpeg's whole log."""
  head, _, ffmpeg_log = str(error).partition("=== stderr ===")
  lines = [head.strip().splitlines()[0]] if head.strip() else []
  lines += [ln.strip() for ln in ffmpeg_log.splitlines() if re.search(r"error|invalid|failed", ln, re.I)][:1]
  return "; ".join(lines) or type(error).__name__


def opencv_frames(url: str, *, start: int = 0, stop: int | None = None, label: str | None = None
                  ) -> Iterator[np.ndarray]:
  """RGB frames start..stop-1 of a video (to its end when stop is None), decoded with OpenCV; errors name `label`
  (default: the url)."""
  cap = cv2.VideoCapture(url)
  try:
    if not cap.isOpened():
      raise VideoError(f"{label or url}: cannot open video (unreadable or corrupt)")
    for _ in range(start):
      if not cap.grab():
        return
    for _ in itertools.count(start) if stop is None else range(start, stop):
      ok, bgr = cap.read()
      if not ok:
        return
      yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
  finally:
    cap.release()


def write_video(path: str, frames_THWC: np.ndarray, fps: float, *, quality: int | None = None,
                backend: str = "auto") -> str:
  """Writes RGB uint8 frames (T, H, W, 3) as mp4, atomically (`utils.atomic_path`); returns the backend used
  ("imageio_ffmpeg" or "opencv").

  imageio-ffmpeg writes H.264/yuv420p: near-lossless (crf 12) by default, or at imageio's `quality` (0..10).
  OpenCV's pip wheels carry no H.264 encoder (licensing), so its fallback writes MPEG-4 part 2 (`mp4v`).
  An interrupted or failed write leaves the previous file or none, never a partial one under `path`.
  """
  frames_THWC = np.ascontiguousarray(frames_THWC, dtype=np.uint8)
  if frames_THWC.ndim != 4 or frames_THWC.shape[-1] != 3:
    raise ValueError(f"{path}: expected RGB frames (T, H, W, 3), got {frames_THWC.shape}")
  t, h, w, _ = frames_THWC.shape
  if backend not in ("auto", "imageio_ffmpeg", "opencv"):
    raise ValueError(f"backend must be auto, imageio_ffmpeg or opencv, got {backend!r}")
  if backend == "auto":
    backend = "imageio_ffmpeg" if importlib.util.find_spec("imageio_ffmpeg") is not None else "opencv"
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with utils.atomic_path(path) as tmp:
    if backend == "imageio_ffmpeg":
      import imageio_ffmpeg  # pylint: disable=g-import-not-at-top

      settings = dict(output_params=["-crf", "12"]) if quality is None else dict(quality=quality)
      writer = imageio_ffmpeg.write_frames(tmp, (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                           macro_block_size=1, ffmpeg_log_level="error", **settings)
      writer.send(None)
      try:
        for frame in frames_THWC:
          writer.send(frame)
      finally:
        writer.close()
    else:
      writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
      if not writer.isOpened():
        raise VideoError(f"{path}: OpenCV cannot open an mp4 writer")
      try:
        for frame in frames_THWC:
          writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
      finally:
        writer.release()
    # Neither writer reports a failed encoder (imageio-ffmpeg ignores FFmpeg's exit status): a full disk would leave
    # an empty or cut file, renamed into place as if complete.
    try:
      written = probe(tmp).num_frames
    except VideoError:
      written = 0
    if written != t:
      raise VideoError(f"{path}: the encoder wrote {written} of {t} frames (a full disk? FFmpeg's message is above)")
  return backend


def write_image(path: str, image_HWC: np.ndarray, params: tuple[int, ...] = ()) -> None:
  """Writes a uint8 RGB image atomically, in the format of its extension (.jpg, .png; OpenCV `params`)."""
  ok, encoded = cv2.imencode(os.path.splitext(path)[1], cv2.cvtColor(image_HWC, cv2.COLOR_RGB2BGR), list(params))
  if not ok:
    raise ValueError(f"{path}: OpenCV cannot encode this image format")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  utils.atomic_write(path, lambda f: f.write(encoded.tobytes()))
