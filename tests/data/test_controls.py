"""agibot_jax/data/controls.py: golden parity (../shared/golden/controls.*), the reference's robot edge video,
and the training randomisation ranges (spec §2.1–§2.2)."""

import json

import cv2
import numpy as np
import pytest
from safetensors.numpy import load_file

from agibot_jax import video_io as video
from agibot_jax.data import controls


@pytest.fixture(scope="module")
def golden(golden_dir):
  return load_file(str(golden_dir / "controls.safetensors")), json.loads((golden_dir / "controls.json").read_text())


@pytest.mark.parametrize("preset,key", [("medium", "edge"), ("very_low", "edge_very_low"), ("low", "edge_low"),
                                        ("high", "edge_high"), ("very_high", "edge_very_high")])
def test_edge_presets_exact(golden, preset, key):
  tensors, meta = golden
  assert controls.EDGE_PRESETS[preset] == (meta["outputs"][f"outputs/{key}"]["canny_t_lower"],
                                           meta["outputs"][f"outputs/{key}"]["canny_t_upper"])
  frames_THWC = tensors["inputs/video"].transpose(1, 2, 3, 0)
  ours_CTHW = controls.edge(frames_THWC, None, preset).transpose(3, 0, 1, 2)
  np.testing.assert_array_equal(ours_CTHW, tensors[f"outputs/{key}"])


@pytest.mark.parametrize("preset,key", [("medium", "vis"), ("low", "vis_low"), ("high", "vis_high")])
def test_vis_presets_within_one(golden, preset, key):
  tensors, meta = golden
  info = meta["outputs"][f"outputs/{key}"]
  assert controls.VIS_PRESETS[preset] == (info["blur_downsize_factor"], info["downup_factor"])
  frames_THWC = tensors["inputs/video"].transpose(1, 2, 3, 0)
  ours_CTHW = controls.vis(frames_THWC, None, preset).transpose(3, 0, 1, 2)
  diff = np.abs(ours_CTHW.astype(np.int32) - tensors[f"outputs/{key}"])
  print(f"vis {preset}: max diff {diff.max()}, pixels off {(diff > 0).sum()} of {diff.size}")
  assert diff.max() <= 1 and (diff > 0).sum() <= 10


def test_vis_none_is_identity(golden):
  frames = golden[0]["inputs/video"].transpose(1, 2, 3, 0)
  np.testing.assert_array_equal(controls.vis(frames, None, "none"), frames)


def test_edge_matches_reference_robot_edge_video(data_dir):
  """robot_edge.mp4 is the reference's edge map of robot_input.mp4: the "medium" preset (100, 200) at the
  clip's native 640x480. Both files went through H.264, so compare edge masks: the exact-pixel IoU and
  precision/recall within one pixel; "medium" must fit best of all presets."""
  frames = video.read_frames(str(data_dir / "robot_example/robot_input.mp4"), 0, 24)
  ref = video.read_frames(str(data_dir / "robot_example/robot_edge.mp4"), 0, 24).max(-1) > 127
  kernel = np.ones((3, 3), np.uint8)
  dilate = lambda m: np.stack([cv2.dilate(f.astype(np.uint8), kernel) for f in m]) > 0
  ious = {}
  for preset in ("very_low", "low", "medium", "high", "very_high"):
    ours = controls.edge(frames, None, preset)[..., 0] > 0
    ious[preset] = (ours & ref).sum() / (ours | ref).sum()
    if preset == "medium":
      precision = (ours & dilate(ref)).sum() / ours.sum()
      recall = (ref & dilate(ours)).sum() / ref.sum()
  print(f"robot edge IoU per preset {ious}; medium precision/recall within 1px {precision:.3f}/{recall:.3f}")
  assert max(ious, key=ious.get) == "medium"
  assert ious["medium"] > 0.75 and precision > 0.95 and recall > 0.93


def test_edge_training_thresholds_in_reference_ranges():
  rng = np.random.default_rng(0)
  draws = np.array([controls.edge_thresholds(rng) for _ in range(2000)])
  lower, diff = draws[:, 0], draws[:, 1] - draws[:, 0]
  assert (lower.min(), lower.max(), diff.min(), diff.max()) == (20, 99, 50, 149)


def test_vis_training_params_in_reference_ranges():
  rng = np.random.default_rng(0)
  params = [controls.vis_params(rng) for _ in range(3000)]
  assert {p["downsize"] for p in params} == {1, 2, 3, 4}
  assert {p["downup"] for p in params} == set(range(4, 18))
  combos = [(p["bilateral"] is not None, p["gaussian"] is not None) for p in params]
  freq = {c: combos.count(c) / len(combos) for c in set(combos)}
  assert abs(freq[(True, False)] - 0.3) < 0.03 and abs(freq[(False, True)] - 0.5) < 0.03
  assert abs(freq[(True, True)] - 0.2) < 0.03
  bil = np.array([p["bilateral"] for p in params if p["bilateral"]])
  assert (bil.min(0).tolist(), bil.max(0).tolist()) == ([15, 100, 50], [49, 299, 149])
  gau = [p["gaussian"] for p in params if p["gaussian"]]
  assert {k for k, _ in gau} == {21, 23, 25, 27, 29}
  assert 10.5 <= min(s for _, s in gau) and max(s for _, s in gau) <= 14.5


@pytest.mark.parametrize("control_type", ["edge", "vis"])
def test_training_controls_reproducible_from_rng(golden, control_type):
  frames = golden[0]["inputs/video"].transpose(1, 2, 3, 0)
  a = controls.compute(control_type, frames, np.random.default_rng([7, 0, 3]))
  b = controls.compute(control_type, frames, np.random.default_rng([7, 0, 3]))
  c = controls.compute(control_type, frames, np.random.default_rng([7, 1, 3]))
  assert a.shape == frames.shape and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
