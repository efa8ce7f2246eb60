"""agibot_jax/data/resize.py against torch's antialiased interpolate (what torchvision's Resize runs).

torchvision on a uint8 tensor: float32 `F.interpolate(antialias=True, align_corners=False)`, clamp (bicubic),
round half-to-even, cast. Tolerance: uint8 results differ by at most 1, on at most 5e-4 of the values
(float32 summation-order effects; observed ~1e-4 for bilinear, 0 for bicubic); float results within 2e-4.
"""

import numpy as np
import pytest

from agibot_jax.data import resize

torch = pytest.importorskip("torch")

CASES = [
    ((720, 1280), (432, 768), "bilinear"),   # the training resize
    ((720, 1280), (720, 1280), "bilinear"),  # the 720p bucket (identity)
    ((480, 640), (432, 768), "bilinear"),    # robot_example -> training size (down H, up W)
    ((720, 1280), (64, 96), "bilinear"),     # tiny config, strong antialiasing
    ((48, 80), (720, 1280), "bilinear"),
    ((432, 768), (43, 76), "bicubic"),       # vis down-up at the training size (preset medium)
    ((43, 76), (432, 768), "bicubic"),
    ((64, 96), (6, 9), "bicubic"),           # vis down-up (preset medium), tiny config
    ((6, 9), (64, 96), "bicubic"),
    ((37, 53), (16, 99), "bicubic"),
]


def _torchvision_like(x_THWC, size_hw, method):
  t = torch.from_numpy(x_THWC).permute(0, 3, 1, 2).float()
  y = torch.nn.functional.interpolate(t, size=size_hw, mode=method, align_corners=False, antialias=True)
  y_float = y.permute(0, 2, 3, 1).numpy()
  y_uint8 = torch.round(y.clamp(0, 255)).to(torch.uint8).permute(0, 2, 3, 1).numpy()
  return y_float, y_uint8


def _smooth_image(rng, t, h, w):
  """Noise plus smooth structure, so both flat and textured regions are exercised."""
  yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
  base = 127 + 100 * np.sin(9 * xx + 5 * yy)[None, :, :, None] * np.array([1.0, -0.7, 0.4])
  return np.clip(base + rng.normal(0, 25, (t, h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("src_hw,dst_hw,method", CASES)
def test_matches_torch_antialias(src_hw, dst_hw, method):
  x = _smooth_image(np.random.default_rng(0), 2, *src_hw)
  ref_float, ref_uint8 = _torchvision_like(x, dst_hw, method)
  ours = resize.resize_uint8(x, dst_hw, method)
  diff = np.abs(ours.astype(np.int32) - ref_uint8)
  print(f"{src_hw}->{dst_hw} {method}: max diff {diff.max()}, fraction off {np.mean(diff > 0):.2e}")
  assert ours.shape == ref_uint8.shape and ours.dtype == np.uint8
  assert diff.max() <= 1 and np.mean(diff > 0) <= 5e-4
  if method == "bilinear":  # bicubic torch values here are clamped; compare floats for bilinear only
    np.testing.assert_allclose(resize.resize_float(x, dst_hw, method), ref_float, atol=2e-4)


def test_other_axes_layout():
  x = np.random.default_rng(1).integers(0, 256, (3, 4, 30, 50), dtype=np.uint8)  # C, T, H, W
  ours = resize.resize_uint8(x, (12, 20), "bicubic", axes_hw=(2, 3))
  ref = resize.resize_uint8(x.transpose(1, 2, 3, 0), (12, 20), "bicubic").transpose(3, 0, 1, 2)
  np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("n_in,n_out,method", [(1280, 768, "bilinear"), (720, 64, "bilinear"), (48, 720, "bilinear"),
                                                (768, 76, "bicubic"), (43, 432, "bicubic"), (9, 9, "bicubic")])
def test_band_blocks_are_axis_weights(n_in, n_out, method):
  """The dense blocks the matmuls use hold exactly the weights of axis_weights, every output once."""
  index_OK, weight_OK = resize.axis_weights(n_in, n_out, method)
  expected_OI = np.zeros((n_out, n_in), np.float32)
  np.add.at(expected_OI, (np.arange(n_out)[:, None], index_OK), weight_OK)
  blocks_OI = np.zeros((n_out, n_in), np.float32)
  next_o = 0
  for o0, o1, i0, i1, weight_oi in resize._band_blocks(n_in, n_out, method):
    assert o0 == next_o and o1 > o0 and 0 <= i0 < i1 <= n_in and weight_oi.shape == (o1 - o0, i1 - i0)
    blocks_OI[o0:o1, i0:i1] = weight_oi
    next_o = o1
  assert next_o == n_out
  np.testing.assert_array_equal(blocks_OI, expected_OI)


def test_layouts_and_dtypes_agree():
  """Leading axes, channel counts (uint8 RGB de-interleaves through cv2, others through NumPy) and input dtypes."""
  x = _smooth_image(np.random.default_rng(2), 6, 40, 70).reshape(2, 3, 40, 70, 3)
  ours = resize.resize_uint8(x, (23, 31))
  assert ours.shape == (2, 3, 23, 31, 3)
  np.testing.assert_array_equal(ours[1], resize.resize_uint8(x[1], (23, 31)))
  per_channel = [resize.resize_float(np.ascontiguousarray(x[..., c:c + 1]), (23, 31)) for c in range(3)]
  np.testing.assert_allclose(resize.resize_float(x, (23, 31)), np.concatenate(per_channel, axis=-1), atol=1e-4)
  np.testing.assert_array_equal(resize.resize_float(x, (23, 31), "bicubic"),
                                resize.resize_float(x.astype(np.float64), (23, 31), "bicubic"))


def test_rejects_non_uint8():
  with pytest.raises(TypeError, match="uint8"):
    resize.resize_uint8(np.zeros((1, 4, 4, 3), np.float32), (2, 2))
