"""agibot_jax/data/agibot_world/depth.py: millimetre PNGs and the per-clip near-bright normalisation."""

import cv2
import numpy as np
import pytest

from agibot_jax.data.agibot_world import depth, source


def test_inverse_depth_min_max_over_the_clip():
  clip_mm = np.array([[[0, 1000], [500, 2000]], [[2000, 2000], [2000, 2000]]], np.uint16)
  out = depth.to_video(clip_mm)
  assert out.shape == (2, 2, 2, 3) and out.dtype == np.uint8
  assert (out == out[..., :1]).all()
  # near 500 mm -> 255, far 2000 mm -> 1, 1000 mm -> 1 + 254 * (1/1000 - 1/2000) / (1/500 - 1/2000) = 85.67
  np.testing.assert_array_equal(out[0, ..., 0], [[0, 86], [255, 1]])
  np.testing.assert_array_equal(out[1, ..., 0], [[1, 1], [1, 1]])


def test_degenerate_clips():
  assert not depth.to_video(np.zeros((2, 3, 3), np.uint16)).any()
  flat = np.full((1, 2, 2), 700, np.uint16)
  flat[0, 0, 0] = 0
  np.testing.assert_array_equal(depth.to_video(flat)[0, ..., 0], [[0, 255], [255, 255]])


def test_read_png_roundtrip_and_refusals(tmp_path):
  mm = np.array([[0, 65535], [400, 3000]], np.uint16)
  cv2.imwrite(str(tmp_path / "ok.png"), mm)
  np.testing.assert_array_equal(depth.read_png(source.Blob(str(tmp_path / "ok.png"))), mm)
  cv2.imwrite(str(tmp_path / "eight.png"), mm.astype(np.uint8))
  with pytest.raises(depth.DepthError, match="eight.png: expected a 16-bit"):
    depth.read_png(source.Blob(str(tmp_path / "eight.png")))
  (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
  with pytest.raises(depth.DepthError, match="bad.png: not a decodable PNG"):
    depth.read_png(source.Blob(str(tmp_path / "bad.png")))
