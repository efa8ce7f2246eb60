"""agibot_jax/data/synthetic.py and its command make_example: the synthetic dataset has the exact layout and is
valid for every tiny config."""

import json
import subprocess
import sys

import numpy as np

from agibot_jax import registry
from agibot_jax import video_io as video
from agibot_jax.data import layout, pipeline
from tests.conftest import REPO


def test_default_dataset_valid_for_all_tiny_configs(tmp_path):
  result = subprocess.run([sys.executable, "-m", "agibot_jax.data.make_example", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "wrote 2 samples x 3 views" in result.stderr
  for folder in ("videos", "control_input_depth", "control_input_seg"):
    for view in registry.VIEW_NAMES:
      assert sorted(p.name for p in (tmp_path / folder / view).iterdir()) == ["synthetic_000.mp4",
                                                                                "synthetic_001.mp4"]
      info = video.probe(str(tmp_path / folder / view / "synthetic_000.mp4"))
      assert (info.num_frames, info.height, info.width, info.fps) == (16, 96, 160, 16.0)
  caption = json.loads((tmp_path / "captions/hand_left/synthetic_001.json").read_text())["caption"]
  assert caption.startswith("A synthetic tabletop scene")
  for control_type in registry.control_types():  # tiny configs need 9 frames
    samples, problems = layout.scan(str(tmp_path), registry.VIEW_NAMES, control_type, 9)
    assert problems == [] and len(samples) == 2


def test_views_and_controls_are_consistent(synthetic_dir):
  """Depth and seg mark the same shapes as the RGB video; the three cameras see one moving scene."""
  source = pipeline.AgibotMultiviewSource(pipeline.DataSettings(
      str(synthetic_dir), "seg", resolution_hw=(48, 80), num_video_frames=9))
  s = source[0]
  seg_mask = s["control_input_seg"].max(0) > 60
  assert 0.02 < seg_mask.mean() < 0.8
  moving = np.abs(s["video"][:, 1:9].astype(int) - s["video"][:, 0:8]).max(0) > 30
  assert moving.any() and not np.array_equal(s["video"][:, :9], s["video"][:, 9:18])
