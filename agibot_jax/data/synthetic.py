"""A small synthetic multiview dataset in the exact Agibot layout (videos, captions, depth and seg controls).

Written by `python -m agibot_jax.data.make_example DIR` and by the embedded demo of the training job.
One world of moving shapes is filmed by up to three cameras looking at different, overlapping windows of it (by
position in the rig: the wide centre view, then closer views left and right; the agibot rig's head_color,
hand_left, hand_right), so the views are consistent. Depth is brighter for nearer shapes; seg paints each shape in a
fixed class colour.
The defaults fit configs/*.py:tiny (64x96, 9 frames; 96x144 has its aspect ratio) and are valid for any resolution
after resizing.

Appearance (`APPEARANCES`):
  random   every shape draws its colour, depth, size and kind (square or disc): a control map says where the
           shapes are, not what they look like.
  control  shape i belongs to class i mod 5, and the class fixes its colour (the seg colour), depth, size and kind
           (`_CLASSES`); the background is a fixed function of the camera. Each control then determines the frames
           of its view: seg by the class colours, depth by the class depth levels, edge by the outlines (kind and
           apparent size differ between classes), vis by construction. For learning runs whose samples should be
           predictable from the control alone.
Both draw the same motion from the same seed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import cv2
import numpy as np

from agibot_jax import registry, rig
from agibot_jax import video_io as video

# Camera by position in the rig: (centre x, centre y) in world units of the frame size, zoom (>1 = closer).
_CAMERAS = ((0.0, 0.0, 1.0), (-0.35, 0.15, 1.6), (0.35, 0.15, 1.6))
_SEEN_BY = ("a wide camera", "a wide camera and a closer camera on the left", "a head camera and two hand cameras")
_SEG_COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 80, 230], [230, 200, 40], [200, 60, 220]], np.uint8)
APPEARANCES = ("random", "control")
# appearance="control": (depth, radius, square) of each class; its colour is its seg colour. Apparent radius
# (radius / depth) falls from 0.11 to 0.05 of the frame's shorter side with the class, so outlines tell classes apart.
_CLASSES = ((1.2, 0.132, True), (1.8, 0.171, False), (2.4, 0.192, True), (3.0, 0.195, False), (3.6, 0.18, True))


def _world(rng: np.random.Generator, num_shapes: int, appearance: str) -> list[dict]:
  shapes = [{"pos": rng.uniform(-0.6, 0.6, 2), "vel": rng.uniform(-0.04, 0.04, 2), "depth": rng.uniform(1.0, 4.0),
             "radius": rng.uniform(0.08, 0.16), "square": bool(rng.integers(2)),
             "colour": tuple(int(c) for c in rng.integers(60, 255, 3))} for _ in range(num_shapes)]
  if appearance == "control":
    for i, shape in enumerate(shapes):
      depth, radius, square = _CLASSES[i % len(_CLASSES)]
      shape.update(depth=depth, radius=radius, square=square,
                   colour=tuple(int(c) for c in _SEG_COLOURS[i % len(_SEG_COLOURS)]))
  return shapes


def _render(shapes: list[dict], t: int, cam: tuple[float, float, float], h: int, w: int):
  """RGB, depth and seg frames (H, W, 3) uint8 of one camera at time t."""
  cx, cy, zoom = cam
  scale = zoom * min(h, w)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  wx, wy = (xx - w / 2) / scale + cx, (yy - h / 2) / scale + cy
  rgb = np.stack([100 + 60 * np.sin(3 * wx), 90 + 50 * np.cos(2 * wy), 120 + 40 * np.sin(2 * (wx + wy))], -1)
  rgb = np.clip(rgb, 0, 255).astype(np.uint8)
  depth = np.full((h, w, 3), 20, np.uint8)
  seg = np.zeros((h, w, 3), np.uint8)
  for i in sorted(range(len(shapes)), key=lambda j: -shapes[j]["depth"]):  # far to near
    s = shapes[i]
    # Bounce inside the world square [-1, 1]^2.
    p = (s["pos"] + t * s["vel"] + 1.0) % 4.0
    p = np.where(p > 2.0, 4.0 - p, p) - 1.0
    centre = (int(round((p[0] - cx) * scale + w / 2)), int(round((p[1] - cy) * scale + h / 2)))
    r = max(2, int(round(s["radius"] * scale / s["depth"] * 2)))
    near = int(255 - 50 * s["depth"])
    for img, colour in ((rgb, s["colour"]), (depth, (near,) * 3), (seg, tuple(int(c) for c in _SEG_COLOURS[i % 5]))):
      if s["square"]:
        cv2.rectangle(img, (centre[0] - r, centre[1] - r), (centre[0] + r, centre[1] + r), colour, -1)
      else:
        cv2.circle(img, centre, r, colour, -1)
  return rgb, depth, seg


def _check_args(height: int, width: int, appearance: str, views: Sequence[str]) -> None:
  if not 1 <= len(views) <= len(_CAMERAS):
    raise ValueError(f"views must be 1 to {len(_CAMERAS)} camera names, got {tuple(views)}")
  if height % 2 or width % 2:
    raise ValueError(f"height and width must be even for yuv420p mp4, got {height}x{width}")
  if appearance not in APPEARANCES:
    raise ValueError(f"appearance must be one of {APPEARANCES}, got {appearance!r}")


def write_sample(out_dir: str, index: int, frames: int = 16, height: int = 96, width: int = 160, fps: float = 16.0,
                 seed: int = 0, appearance: str = "random", views: Sequence[str] = rig.AGIBOT.names) -> str:
  """Writes sample `index` of the dataset of `seed` (videos, depth and seg, captions) for the cameras `views`;
  returns its id."""
  _check_args(height, width, appearance, views)
  sid = f"synthetic_{index:03d}"
  rng = np.random.default_rng([seed, index])
  shapes = _world(rng, int(rng.integers(3, 6)), appearance)
  prompt = (f"A synthetic tabletop scene in which {len(shapes)} coloured shapes drift and bounce "
            f"slowly across a smoothly shaded background, seen by {_SEEN_BY[len(views) - 1]}.")
  for view, cam in zip(views, _CAMERAS):
    rendered = [_render(shapes, t, cam, height, width) for t in range(frames)]
    for folder, k in (("videos", 0), (registry.control("depth").key, 1), (registry.control("seg").key, 2)):
      video.write_video(os.path.join(out_dir, folder, view, f"{sid}.mp4"), np.stack([r[k] for r in rendered]), fps)
    cap_path = os.path.join(out_dir, "captions", view, f"{sid}.json")
    os.makedirs(os.path.dirname(cap_path), exist_ok=True)
    with open(cap_path, "w", encoding="utf-8") as f:
      json.dump({"caption": prompt}, f)
  return sid


def write_example(out_dir: str, num_samples: int = 2, frames: int = 16, height: int = 96, width: int = 144,
                  fps: float = 16.0, seed: int = 0, appearance: str = "random",
                  views: Sequence[str] = rig.AGIBOT.names) -> list[str]:
  """Writes the dataset (samples 0..num_samples-1, `write_sample`) for the cameras `views` (1 to 3, e.g. a rig's
  names); returns the sample ids. Sizes must be even (H.264 yuv420p)."""
  _check_args(height, width, appearance, views)
  return [write_sample(out_dir, n, frames, height, width, fps, seed, appearance, views) for n in range(num_samples)]
