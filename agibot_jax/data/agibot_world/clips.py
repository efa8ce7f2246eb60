"""Where clips are cut in an episode, and how their frames are fitted to 16:9.

Clip k of an episode holds output frames n = k·stride + j (j < clip_frames) of one grid that subsamples the
episode uniformly: output frame n is source frame floor(n·step + 1/2), step = source fps / output fps
(1 without --fps). All views and the depth use the same source indices. A clip exists only when its last
source frame is inside the episode (the training loader needs every frame of a clip).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

ASPECTS = ("stretch", "pad", "crop")
_WIDE = 16 / 9


@dataclasses.dataclass(frozen=True)
class Grid:
  clip_frames: int
  stride: int  # output frames between the starts of consecutive clips
  step: float  # source frames per output frame (>= 1)

  def __post_init__(self):
    if self.clip_frames < 1 or self.stride < 1:
      raise ValueError(f"clip_frames and stride must be >= 1, got {self.clip_frames}, {self.stride}")
    if not self.step >= 1:
      raise ValueError(f"output fps above the source fps (step {self.step:g} < 1) would repeat frames")

  def source_frame(self, n: int) -> int:
    return math.floor(n * self.step + 0.5)

  def indices(self, k: int) -> np.ndarray:
    """Source frames of clip k, int64 (clip_frames,)."""
    return np.array([self.source_frame(k * self.stride + j) for j in range(self.clip_frames)], np.int64)

  def num_clips(self, num_frames: int) -> int:
    """How many clips fit in an episode of `num_frames` source frames."""
    k = 0
    while self.source_frame(k * self.stride + self.clip_frames - 1) < num_frames:
      k += 1
    return k

  def frames_needed(self) -> int:
    """Source frames an episode needs for one clip."""
    return self.source_frame(self.clip_frames - 1) + 1


def _even(x: float) -> int:
  return 2 * round(x / 2)


def fitted_hw(h: int, w: int, aspect: str) -> tuple[int, int]:
  """Frame size after `fit_aspect`: unchanged for stretch (the loader's resize stretches), else 16:9 rounded
  to even sizes (H.264 yuv420p)."""
  if aspect == "stretch" or math.isclose(w / h, _WIDE, rel_tol=1e-3):
    return h, w
  narrow = w / h < _WIDE
  if aspect == "pad":
    return (h, max(w, _even(h * _WIDE))) if narrow else (max(h, _even(w / _WIDE)), w)
  if aspect == "crop":
    return (min(h, _even(w / _WIDE)), w) if narrow else (h, min(w, _even(h * _WIDE)))
  raise ValueError(f"aspect must be one of {ASPECTS}, got {aspect!r}")


def fit_aspect(x_THWC: np.ndarray, aspect: str) -> np.ndarray:
  """Frames fitted to 16:9: stretch keeps them; pad adds zero (black / invalid depth) bars on both sides
  (the odd pixel right or below); crop keeps the centre."""
  h, w = x_THWC.shape[1:3]
  th, tw = fitted_hw(h, w, aspect)
  if (th, tw) == (h, w):
    return x_THWC
  if aspect == "pad":
    top, left = (th - h) // 2, (tw - w) // 2
    out = np.zeros((x_THWC.shape[0], th, tw) + x_THWC.shape[3:], x_THWC.dtype)
    out[:, top:top + h, left:left + w] = x_THWC
    return out
  top, left = (h - th) // 2, (w - tw) // 2
  return np.ascontiguousarray(x_THWC[:, top:top + th, left:left + tw])
