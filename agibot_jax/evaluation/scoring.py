"""Scores of one generated sample: adherence to its control and reconstruction of its ground-truth clip.

`score_sample` takes host uint8 videos (V, T, H, W, 3) (or (T, H, W, 3), one view) of equal shapes: the generated
video, the control map it was generated from and optionally the ground-truth clip. Views are scored separately;
the result holds every metric per view (`"edge_f1/head_color"`) and its mean over the views (`"edge_f1"`).
`aggregate` averages such dicts over samples. `score_rows` scores a batch in the sampler's layout (float rows in
[-1, 1]); `row_scorer` is its form for the in-training sample callback.

Control adherence, one metric function per control type in CONTROL_METRICS (`register` adds or replaces one, e.g.
a model-based depth or seg metric). Each maps the generated video the way the control was made, with the same
inference `preset`, and compares:
  edge   edge_{precision,recall,f1}: Canny of the generated video (controls.edge, the preset's thresholds)
         against the control's edge pixels (value > 127), matched within 2 px (metrics.edge_prf).
  vis    vis_ssim: the vis blur chain (controls.vis, the preset) applied to the generated video, SSIM against
         the control (metrics.ssim).
  depth  depth_edge_{precision,recall,f1}, a PROXY: the literature runs a depth estimator on the generated video;
         here the depth map's discontinuities (Canny with CONTROL_BOUNDARY_CANNY on the map) against the
         generated video's Canny edges (preset thresholds), as edge F1. An occlusion boundary is a depth step and,
         almost always, an image edge.
  seg    seg_boundary_{precision,recall,f1}, a PROXY: the literature runs a segmenter; here the region
         boundaries of the seg map (Canny with CONTROL_BOUNDARY_CANNY: where the segment colour changes)
         against the generated video's Canny edges, as edge F1. Compared with boundaries of a colour quantisation
         of the generated video, Canny needs no extra parameter and is the map the edge metric already uses.
The proxies' absolute values are low even for a perfect video: texture edges inside a region lower the
precision, and boundaries between regions of similar colour or depth lower the recall. On the reference's robot
example (480x640, first 40 frames) the ground-truth clip scores depth 0.44 and seg 0.38 against its own
controls, its mirror image 0.12 and 0.16 (edge, against the reference's own edge video of the clip: 0.98 and
0.33): compare checkpoints with the proxies, not with 1.

Reconstruction (ground truth given): `psnr` (dB, per frame, capped at 100, mean over frames) and `ssim`.

Conditioned frames: a sample generated with its first `num_cond_frames` latent frames given clean decodes them
to near copies of the ground truth, which is also what the control was computed from; they would inflate every
score, so all scores use only the later pixel frames. Latent frame 0 covers pixel frame 0 and each later latent
frame VAE_TEMPORAL_FACTOR (4, Wan2.1 VAE) pixel frames: n latent frames cover 1 + 4 (n - 1) pixel frames.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence

import cv2
import numpy as np

from agibot_jax import rig
from agibot_jax.data import controls
from agibot_jax.evaluation import metrics

VAE_TEMPORAL_FACTOR = 4
# Canny (lower, upper) finding the boundaries in a depth or seg map: with the L1 Sobel gradient a step of
# >= 25 grey levels (upper 100 / 4) starts a boundary. Depth maps are smooth inside a surface, seg maps flat
# inside a region, so the steps found are discontinuities and colour changes, not codec noise.
CONTROL_BOUNDARY_CANNY = (50, 100)

# fn(generated_THWC uint8, control_THWC uint8, preset) -> {metric name: value}, one view.
ControlMetric = Callable[[np.ndarray, np.ndarray, str], dict[str, float]]


def _prefixed(prefix: str, scores: Mapping[str, float]) -> dict[str, float]:
  return {f"{prefix}_{k}": v for k, v in scores.items()}


def _generated_edges(generated_THWC: np.ndarray, preset: str) -> np.ndarray:
  """bool (T, H, W): Canny of the generated video, exactly as the edge control is made with `preset`."""
  return controls.edge(generated_THWC, None, preset)[..., 0] > 0


def _control_boundaries(control_THWC: np.ndarray) -> np.ndarray:
  """bool (T, H, W): the boundaries of a depth or seg map (Canny with CONTROL_BOUNDARY_CANNY)."""
  return np.stack([cv2.Canny(np.ascontiguousarray(frame), *CONTROL_BOUNDARY_CANNY) > 0 for frame in control_THWC])


def edge_adherence(generated_THWC: np.ndarray, control_THWC: np.ndarray, preset: str) -> dict[str, float]:
  # > 127 rather than == 255: the control may come decoded from a lossy video.
  return _prefixed("edge", metrics.edge_prf(_generated_edges(generated_THWC, preset), control_THWC[..., 0] > 127))


def vis_adherence(generated_THWC: np.ndarray, control_THWC: np.ndarray, preset: str) -> dict[str, float]:
  return {"vis_ssim": metrics.ssim(controls.vis(generated_THWC, None, preset), control_THWC)}


def _boundary_adherence(prefix: str, generated_THWC: np.ndarray, control_THWC: np.ndarray,
                        preset: str) -> dict[str, float]:
  return _prefixed(prefix, metrics.edge_prf(_generated_edges(generated_THWC, preset),
                                            _control_boundaries(control_THWC)))


def depth_edge_proxy(generated_THWC: np.ndarray, control_THWC: np.ndarray, preset: str) -> dict[str, float]:
  return _boundary_adherence("depth_edge", generated_THWC, control_THWC, preset)


def seg_boundary_proxy(generated_THWC: np.ndarray, control_THWC: np.ndarray, preset: str) -> dict[str, float]:
  return _boundary_adherence("seg_boundary", generated_THWC, control_THWC, preset)


CONTROL_METRICS: dict[str, ControlMetric] = {
    "edge": edge_adherence,
    "depth": depth_edge_proxy,
    "seg": seg_boundary_proxy,
    "vis": vis_adherence,
}


def register(control_type: str, fn: ControlMetric, *, replace: bool = False) -> None:
  """Makes `fn` the adherence metric of `control_type` (a new control type, or `replace=True` for a known one)."""
  if control_type in CONTROL_METRICS and not replace:
    raise ValueError(f"control {control_type!r} already has a metric; pass replace=True to replace it")
  CONTROL_METRICS[control_type] = fn


def reconstruction(generated_THWC: np.ndarray, ground_truth_THWC: np.ndarray) -> dict[str, float]:
  return {"psnr": metrics.psnr(generated_THWC, ground_truth_THWC),
          "ssim": metrics.ssim(generated_THWC, ground_truth_THWC)}


def num_cond_pixel_frames(num_cond_frames: int, temporal_factor: int = VAE_TEMPORAL_FACTOR) -> int:
  """Pixel frames decoded from the first `num_cond_frames` latent frames: 0, 1, 1 + f, 1 + 2 f, ..."""
  if num_cond_frames < 0:
    raise ValueError(f"num_cond_frames must be >= 0, got {num_cond_frames}")
  return 0 if num_cond_frames == 0 else 1 + temporal_factor * (num_cond_frames - 1)


def _as_views(name: str, video: np.ndarray) -> np.ndarray:
  """uint8 (V, T, H, W, 3) from a video of one view (T, H, W, 3) or of several."""
  if video.dtype != np.uint8 or video.ndim not in (4, 5) or video.shape[-1] != 3:
    raise ValueError(f"{name} must be uint8 (T, H, W, 3) or (V, T, H, W, 3), got {video.dtype} {video.shape}")
  return video[None] if video.ndim == 4 else video


def score_sample(control_type: str, generated_VTHWC: np.ndarray, control_VTHWC: np.ndarray,
                 ground_truth_VTHWC: np.ndarray | None = None, *, num_cond_frames: int, preset: str = "medium",
                 views: Sequence[str] = rig.AGIBOT.names) -> dict[str, float]:
  """Control adherence (and reconstruction, when the ground truth is given) of one generated sample.

  Args:
    control_type: a key of CONTROL_METRICS.
    generated_VTHWC, control_VTHWC, ground_truth_VTHWC: uint8 (V, T, H, W, 3), or (T, H, W, 3) for one view;
      one shape for all.
    num_cond_frames: latent frames per view the sample was generated with clean; the pixel frames they cover
      are left out of every score (module docstring).
    preset: the inference preset the control was made with (controls.PRESETS); the generated video is mapped
      with it. A control drawn at random (training) has no preset: score samples of preset controls.
    views: the V views' names (distinct; the rig's cameras), keys of the per-view scores.

  Returns:
    {metric: mean over views} and {f"{metric}/{view}": value}, floats.
  """
  if control_type not in CONTROL_METRICS:
    raise ValueError(f"no metric for control {control_type!r}; registered: {tuple(CONTROL_METRICS)}")
  if preset not in controls.PRESETS:
    raise ValueError(f"preset must be one of {controls.PRESETS}, got {preset!r}")
  videos = {"generated": generated_VTHWC, "control": control_VTHWC}
  if ground_truth_VTHWC is not None:
    videos["ground_truth"] = ground_truth_VTHWC
  videos = {name: _as_views(name, video) for name, video in videos.items()}
  shapes = {name: video.shape for name, video in videos.items()}
  if len(set(shapes.values())) != 1:
    raise ValueError(f"generated, control and ground-truth videos must have one shape, got {shapes}")
  views = tuple(views)
  if len(set(views)) != len(views) or not views:
    raise ValueError(f"views must be distinct names, got {views}")
  num_views, num_frames = videos["generated"].shape[:2]
  if len(views) != num_views:
    raise ValueError(f"got {num_views} view(s) but {len(views)} view names {tuple(views)}: pass `views`")
  skip = num_cond_pixel_frames(num_cond_frames)
  if skip >= num_frames:
    raise ValueError(f"num_cond_frames={num_cond_frames} covers {skip} pixel frames: none of the {num_frames} "
                     "frames is left to score")

  per_view = {}
  for v, view in enumerate(views):
    scored = {name: video[v, skip:] for name, video in videos.items()}
    scores = CONTROL_METRICS[control_type](scored["generated"], scored["control"], preset)
    if "ground_truth" in scored:
      scores |= reconstruction(scored["generated"], scored["ground_truth"])
    per_view[view] = scores
  out = {}
  for metric in per_view[views[0]]:
    out[metric] = float(np.mean([scores[metric] for scores in per_view.values()]))
    out |= {f"{metric}/{view}": float(scores[metric]) for view, scores in per_view.items()}
  return out


def aggregate(scores: Sequence[Mapping[str, float]]) -> dict[str, float]:
  """The mean of every key over the score dicts that hold it (e.g. over held-out samples)."""
  if not scores:
    raise ValueError("aggregate needs at least one score dict")
  values = collections.defaultdict(list)
  for sample in scores:
    for key, value in sample.items():
      values[key].append(value)
  return {key: float(np.mean(vals)) for key, vals in values.items()}


def to_uint8(video: np.ndarray) -> np.ndarray:
  """Pixels in [-1, 1] (decoded samples, `generate.pixels_to_rows`) -> uint8, (x + 1)·127.5 rounded and clipped."""
  return np.clip(np.rint((np.asarray(video, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def score_rows(control_type: str, generated_BVTHWC: np.ndarray, control_BVTHWC: np.ndarray,
               ground_truth_BVTHWC: np.ndarray | None = None, *, num_cond_frames: int, preset: str = "medium",
               views: Sequence[str] = rig.AGIBOT.names) -> list[dict[str, float]]:
  """`score_sample` of every batch item of float rows (B, V, T, H, W, 3) in [-1, 1].

  The ground truth is scored (psnr, ssim) only for a sample with clean frames (num_cond_frames > 0): without them
  the sample is a new video under the same control, not a reconstruction of the clip.
  """
  if num_cond_frames == 0:
    ground_truth_BVTHWC = None
  out = []
  for b in range(len(generated_BVTHWC)):
    truth = None if ground_truth_BVTHWC is None else to_uint8(ground_truth_BVTHWC[b])
    out.append(score_sample(control_type, to_uint8(generated_BVTHWC[b]), to_uint8(control_BVTHWC[b]), truth,
                            num_cond_frames=num_cond_frames, preset=preset, views=views))
  return out


def row_scorer(control_type: str, *, preset: str = "medium", views: Sequence[str] = rig.AGIBOT.names
               ) -> Callable[[np.ndarray, np.ndarray, np.ndarray, int], dict[str, float]]:
  """`score(generated, ground_truth, control, num_cond_frames) -> {metric: mean over views and batch items}` of
  float rows (B, V, T, H, W, 3) in [-1, 1] (`score_rows`), without the per-view entries."""
  if control_type not in CONTROL_METRICS:
    raise ValueError(f"no metric for control {control_type!r}; registered: {tuple(CONTROL_METRICS)}")

  def score(generated, ground_truth, control, num_cond_frames):
    means = aggregate(score_rows(control_type, generated, control, ground_truth, num_cond_frames=num_cond_frames,
                                 preset=preset, views=views))
    return {k: v for k, v in means.items() if "/" not in k}

  return score
