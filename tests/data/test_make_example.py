"""agibot_jax/data/synthetic.py and its command make_example: the synthetic dataset has the exact layout and is
valid for every tiny config."""

import json
import subprocess
import sys

import numpy as np
import pytest

from agibot_jax import registry, rig
from agibot_jax import video_io as video
from agibot_jax.data import layout, pipeline, synthetic
from configs import base
from tests.conftest import REPO


def test_default_dataset_valid_for_all_tiny_configs(tmp_path):
  result = subprocess.run([sys.executable, "-m", "agibot_jax.data.make_example", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "wrote 2 samples x 3 views" in result.stderr
  for folder in ("videos", "control_input_depth", "control_input_seg"):
    for view in rig.AGIBOT.names:
      assert sorted(p.name for p in (tmp_path / folder / view).iterdir()) == ["synthetic_000.mp4",
                                                                                "synthetic_001.mp4"]
      info = video.probe(str(tmp_path / folder / view / "synthetic_000.mp4"))
      assert (info.num_frames, info.height, info.width, info.fps) == (16, 96, 144, 16.0)
  caption = json.loads((tmp_path / "captions/hand_left/synthetic_001.json").read_text())["caption"]
  assert caption.startswith("A synthetic tabletop scene")
  for control_type in registry.control_types():  # tiny configs need 9 frames
    samples, problems = layout.scan(str(tmp_path), rig.AGIBOT, control_type, 9)
    assert problems == [] and len(samples) == 2
    # Issue 31, item 4: the tiny configs' aspect ratio, so checking the example warns about no stretched view.
    tiny_hw = base.get_config(control_type, "tiny").dataloader_train.dataset.resolution_hw
    assert layout.aspect_mismatches(samples, rig.AGIBOT.names, tiny_hw) == {}
  assert json.loads(result.stdout.strip().splitlines()[-1])["samples"] == ["synthetic_000", "synthetic_001"]


def test_views_and_controls_are_consistent(synthetic_dir):
  """Depth and seg mark the same shapes as the RGB video; the three cameras see one moving scene."""
  source = pipeline.AgibotMultiviewSource(pipeline.DataSettings(
      str(synthetic_dir), "seg", resolution_hw=(48, 80), num_video_frames=9))
  s = source[0]
  seg_mask = s["control_input_seg"].max(0) > 60
  assert 0.02 < seg_mask.mean() < 0.8
  moving = np.abs(s["video"][:, 1:9].astype(int) - s["video"][:, 0:8]).max(0) > 30
  assert moving.any() and not np.array_equal(s["video"][:, :9], s["video"][:, 9:18])


def _views(seed: int, appearance: str, t: int = 3, h: int = 48, w: int = 80):
  """(rgb, depth, seg) uint8 (V, H, W, 3) of the world of `seed` at time t, every camera."""
  rng = np.random.default_rng([seed, 0])
  shapes = synthetic._world(rng, int(rng.integers(3, 6)), appearance)
  frames = [synthetic._render(shapes, t, cam, h, w) for cam in synthetic._CAMERAS]
  return tuple(np.stack(maps) for maps in zip(*frames))


def _agreeing_shape_pixels(control: str, appearance: str):
  """(rgb of world 1, rgb of world 4, where their `control` maps agree, where that is on shapes). Worlds 1 and 4 have
  shapes of one class overlapping in both appearances (134 and 291 pixels)."""
  index = {"depth": 1, "seg": 2}[control]
  a, b = _views(1, appearance), _views(4, appearance)
  same = (a[index] == b[index]).all(-1)
  assert not same.all()
  return a[0], b[0], same, same & (a[2] != 0).any(-1)  # seg is 0 on the background


@pytest.mark.parametrize("control", ["depth", "seg"])
def test_control_appearance_the_controls_determine_the_frames(control):
  """appearance="control": two worlds have the same pixels wherever their control maps agree (shapes of one class,
  and the background)."""
  rgb_a, rgb_b, same, on_shapes = _agreeing_shape_pixels(control, "control")
  assert on_shapes.sum() > 20  # different worlds sharing some shape pixels
  assert np.array_equal(rgb_a[same], rgb_b[same])


def test_random_appearance_the_seg_map_does_not():
  rgb_a, rgb_b, _, on_shapes = _agreeing_shape_pixels("seg", "random")
  assert on_shapes.sum() > 20 and not np.array_equal(rgb_a[on_shapes], rgb_b[on_shapes])


def test_control_appearance_dataset_is_valid(tmp_path):
  ids = synthetic.write_example(str(tmp_path), num_samples=1, frames=9, height=48, width=80, appearance="control")
  samples, problems = layout.scan(str(tmp_path), rig.AGIBOT, "seg", 9)
  assert problems == [] and [s.sample_id for s in samples] == ids
  with pytest.raises(ValueError, match="appearance must be one of"):
    synthetic.write_example(str(tmp_path), appearance="painted")
