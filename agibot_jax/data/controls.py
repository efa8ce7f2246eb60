"""Control maps computed from the video at load time: `edge` (Canny) and `vis` (blur chain), spec §2.1–§2.2.

`compute` dispatches by the control's `agibot_jax.registry` entry.

Both take the already-resized RGB frames of all views of one sample, `frames_THWC` uint8 (T, H, W, 3) with
the views stacked on T, and return a map of the same shape and dtype. Training (`rng` given) draws the
random parameters once per sample, shared by every frame and view; inference uses a named preset.
"""

from __future__ import annotations

import importlib

import cv2
import numpy as np

from agibot_jax import registry
from agibot_jax.data import resize

PRESETS = ("none", "very_low", "low", "medium", "high", "very_high")

# Canny (t_lower, t_upper) per preset; "none" behaves like "very_low" in the reference.
EDGE_PRESETS = {
    "none": (20, 50), "very_low": (20, 50), "low": (50, 100), "medium": (100, 200),
    "high": (200, 300), "very_high": (300, 400),
}
# Vis presets: (pre-blur downsize factor, final bicubic down-up factor).
VIS_PRESETS = {
    "none": (1, 1), "very_low": (1, 4), "low": (4, 4), "medium": (2, 10),
    "high": (1, 16), "very_high": (4, 16),
}
_VIS_BILATERAL = (30, 150, 100)  # inference bilateral: diameter, sigmaColor, sigmaSpace


def edge_thresholds(rng: np.random.Generator | None, preset: str = "medium") -> tuple[int, int]:
  """Training: t_lower ∈ [20, 100), t_upper = t_lower + [50, 150); inference: the preset's pair."""
  if rng is None:
    if preset not in EDGE_PRESETS:
      raise ValueError(f"edge preset must be one of {PRESETS}, got {preset!r}")
    return EDGE_PRESETS[preset]
  lower = int(rng.integers(20, 100))
  return lower, lower + int(rng.integers(50, 150))


def edge(frames_THWC: np.ndarray, rng: np.random.Generator | None = None, preset: str = "medium") -> np.ndarray:
  """Canny on each RGB frame (aperture 3, L1 gradient, no pre-blur), 0/255 replicated to 3 channels."""
  lower, upper = edge_thresholds(rng, preset)
  out = np.empty_like(frames_THWC)
  for t, frame in enumerate(frames_THWC):
    out[t] = cv2.Canny(np.ascontiguousarray(frame), lower, upper)[..., None]
  return out


def vis_params(rng: np.random.Generator | None, preset: str = "medium") -> dict:
  """Parameters of the blur chain.

  Training draws (reference ranges, once per sample): pre-blur downsize d ∈ {1,2,3,4}; blur combination
  bilateral (p=0.3) / gaussian (0.5) / bilateral then gaussian (0.2); bilateral diameter [15, 50),
  sigmaColor [100, 300), sigmaSpace [50, 150), 1 iteration; gaussian ksize [21, 29] bumped to odd,
  sigma U(10.5, 14.5); down-up factor s ∈ [4, 17] (the reference's randint(4, 16 + 1) includes 17).
  """
  if rng is None:
    if preset not in VIS_PRESETS:
      raise ValueError(f"vis preset must be one of {PRESETS}, got {preset!r}")
    downsize, downup = VIS_PRESETS[preset]
    return {"identity": preset == "none", "downsize": downsize, "bilateral": _VIS_BILATERAL,
            "gaussian": None, "downup": downup}
  downsize = int(rng.choice([1, 2, 3, 4]))
  combo = int(rng.choice(3, p=[0.3, 0.5, 0.2]))
  bilateral = gaussian = None
  if combo in (0, 2):
    bilateral = (int(rng.integers(15, 50)), int(rng.integers(100, 300)), int(rng.integers(50, 150)))
  if combo in (1, 2):
    ksize = int(rng.integers(21, 30))
    gaussian = (ksize + 1 - ksize % 2, float(rng.uniform(10.5, 14.5)))
  return {"identity": False, "downsize": downsize, "bilateral": bilateral, "gaussian": gaussian,
          "downup": int(rng.integers(4, 18))}


def vis(frames_THWC: np.ndarray, rng: np.random.Generator | None = None, preset: str = "medium") -> np.ndarray:
  """Blur chain: INTER_AREA downsize → bilateral and/or gaussian → INTER_LINEAR back → bicubic-AA down-up."""
  p = vis_params(rng, preset)
  if p["identity"]:
    return frames_THWC.copy()
  _, h, w, _ = frames_THWC.shape
  d = p["downsize"]
  blurred = np.empty_like(frames_THWC)
  for t, frame in enumerate(frames_THWC):
    small = cv2.resize(np.ascontiguousarray(frame), (w // d, h // d), interpolation=cv2.INTER_AREA)
    if p["bilateral"] is not None:
      small = cv2.bilateralFilter(small, *p["bilateral"])
    if p["gaussian"] is not None:
      ksize, sigma = p["gaussian"]
      small = cv2.GaussianBlur(small, (ksize, ksize), sigmaX=sigma)
    blurred[t] = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
  s = p["downup"]
  # Each resize rounds to uint8 in between, as torchvision does on a uint8 tensor.
  down = resize.resize_uint8(blurred, (int(h / s), int(w / s)), "bicubic")
  return resize.resize_uint8(down, (h, w), "bicubic")


def compute(control_type: str, frames_THWC: np.ndarray, rng: np.random.Generator | None,
            preset: str = "medium") -> np.ndarray:
  """The computed control `control_type` of the frames, by its registry entry's `compute` function."""
  control = registry.control(control_type)
  if control.from_files:
    raise ValueError(f"control {control_type!r} is read from files, not computed")
  module, _, name = control.compute.partition(":")
  return getattr(importlib.import_module(module), name)(frames_THWC, rng, preset)
