"""agibot_jax/data/agibot_world/clips.py: the clip grid (stride, --fps subsampling) and the 16:9 fit."""

import numpy as np
import pytest

from agibot_jax.data.agibot_world import clips


def test_back_to_back_clips_at_source_fps():
  grid = clips.Grid(clip_frames=9, stride=9, step=1.0)
  assert grid.num_clips(30) == 3 and grid.num_clips(26) == 2 and grid.num_clips(8) == 0
  np.testing.assert_array_equal(grid.indices(1), np.arange(9, 18))
  assert grid.frames_needed() == 9


def test_overlapping_clips_and_integer_subsampling():
  grid = clips.Grid(clip_frames=9, stride=4, step=2.0)  # 30 -> 15 fps
  np.testing.assert_array_equal(grid.indices(0), np.arange(0, 17, 2))
  np.testing.assert_array_equal(grid.indices(1), np.arange(8, 25, 2))
  assert grid.num_clips(30) == 2 and grid.num_clips(24) == 1 and grid.frames_needed() == 17


def test_non_integer_subsampling_is_uniform_and_rounded():
  grid = clips.Grid(clip_frames=9, stride=9, step=30 / 16)
  idx = grid.indices(0)
  np.testing.assert_array_equal(idx, [0, 2, 4, 6, 8, 9, 11, 13, 15])
  assert grid.indices(1)[0] == 17  # floor(9 * 1.875 + 0.5)


def test_upsampling_refused():
  with pytest.raises(ValueError, match="repeat frames"):
    clips.Grid(9, 9, step=0.5)


@pytest.mark.parametrize("hw, aspect, expected", [
    ((480, 640), "stretch", (480, 640)), ((480, 640), "pad", (480, 854)), ((480, 640), "crop", (360, 640)),
    ((48, 64), "pad", (48, 86)), ((48, 64), "crop", (36, 64)),
    ((100, 400), "pad", (224, 400)), ((100, 400), "crop", (100, 178)), ((432, 768), "pad", (432, 768)),
])
def test_fitted_sizes(hw, aspect, expected):
  assert clips.fitted_hw(*hw, aspect) == expected


def test_pad_centres_and_crop_keeps_the_centre():
  x = np.arange(2 * 48 * 64 * 3, dtype=np.uint32).reshape(2, 48, 64, 3).astype(np.uint16) + 1
  padded = clips.fit_aspect(x, "pad")
  assert padded.shape == (2, 48, 86, 3) and padded.dtype == x.dtype
  np.testing.assert_array_equal(padded[:, :, 11:75], x)
  assert not padded[:, :, :11].any() and not padded[:, :, 75:].any()
  np.testing.assert_array_equal(clips.fit_aspect(x, "crop"), x[:, 6:42])
  assert clips.fit_aspect(x, "stretch") is x
