"""Head-camera depth: millimetre PNGs -> the 8-bit 3-channel control video of a clip.

Cosmos' own depth controls are Video-Depth-Anything disparity (near = large), min-max normalised once over
the whole clip (spec agibot_world_formats.md §3.5). The sensor depth follows that convention:
  valid pixels (depth > 0 mm):  v = 1 + 254 · (1/d - 1/d_far) / (1/d_near - 1/d_far), rounded
  invalid pixels (0):           v = 0
with d_near / d_far the smallest / largest valid depth of the clip (all frames, all pixels); a clip of one
valid depth is 255 where valid. So near is bright, the farthest valid pixel is 1, and invalid stays black
and distinct. Grey is copied to the three channels.
"""

from __future__ import annotations

import cv2
import numpy as np

from agibot_jax.data.agibot_world import source


class DepthError(ValueError):
  """A depth PNG is unreadable or not 16-bit millimetres; the message names it."""


def read_png(blob: source.Blob) -> np.ndarray:
  """One depth frame: uint16 (H, W) millimetres. Raises DepthError."""
  try:
    data = blob.read()
  except OSError as e:
    raise DepthError(f"{blob.label}: cannot read ({e})") from None
  img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
  if img is None:
    raise DepthError(f"{blob.label}: not a decodable PNG (corrupt)")
  if img.dtype != np.uint16 or img.ndim != 2:
    raise DepthError(f"{blob.label}: expected a 16-bit single-channel PNG of millimetres, got {img.dtype} "
                     f"{'x'.join(map(str, img.shape))}")
  return img


def to_video(depth_mm_THW: np.ndarray) -> np.ndarray:
  """uint16 millimetres (T, H, W) -> uint8 (T, H, W, 3), normalised over the clip (module docstring)."""
  valid = depth_mm_THW > 0
  if not valid.any():
    return np.zeros(depth_mm_THW.shape + (3,), np.uint8)
  near, far = int(depth_mm_THW.min(where=valid, initial=np.iinfo(np.uint16).max)), int(depth_mm_THW.max())
  # One entry per millimetre value: a 93-frame 640x480 clip maps through it without a float copy of itself.
  lut = np.zeros(far + 1, np.uint8)
  inv = 1.0 / np.arange(near, far + 1, dtype=np.float64)
  lut[near:] = 255 if near == far else np.rint(1 + 254 * (inv - 1 / far) / (1 / near - 1 / far))
  return np.repeat(lut[depth_mm_THW][..., None], 3, axis=-1)
