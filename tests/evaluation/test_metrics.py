"""agibot_jax/evaluation/metrics.py: hand-computed edge F1, SSIM and PSNR cases on small frames."""

import math

import numpy as np
import pytest

from agibot_jax.evaluation import metrics

T, H, W = 2, 24, 32


def vertical_line(x: int, rows: slice = slice(None)) -> np.ndarray:
  edges_THW = np.zeros((T, H, W), bool)
  edges_THW[:, rows, x] = True
  return edges_THW


def test_edge_identical_maps_score_one():
  edges_THW = np.random.default_rng(0).random((T, H, W)) < 0.05
  assert metrics.edge_prf(edges_THW, edges_THW) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


@pytest.mark.parametrize("shift,f1", [(1, 1.0), (2, 1.0), (3, 0.0), (6, 0.0)])
def test_edge_shift_across_the_line(shift, f1):
  # Every pixel of the shifted line is exactly `shift` px from the reference line: within 2 px all match.
  assert metrics.edge_prf(vertical_line(10 + shift), vertical_line(10))["f1"] == f1


@pytest.mark.parametrize("dy_dx,f1", [((1, 1), 1.0), ((2, 2), 0.0)])
def test_edge_tolerance_is_euclidean(dy_dx, f1):
  # A single pixel moved diagonally: sqrt(2) <= 2 matches; sqrt(8) > 2 does not (Chebyshev would say 2: match).
  ref_THW = np.zeros((1, H, W), bool)
  ref_THW[0, 8, 8] = True
  pred_THW = np.roll(ref_THW, dy_dx, axis=(1, 2))
  assert metrics.edge_prf(pred_THW, ref_THW)["f1"] == f1


def test_edge_tolerance_argument():
  assert metrics.edge_prf(vertical_line(13), vertical_line(10), tolerance=3)["f1"] == 1.0


def test_edge_partial_overlap_exact():
  # ref: column 5, rows 0-9 (10 px per frame). pred: column 5 rows 0-4 (on ref) + column 15 rows 0-4 (far away).
  # Precision: 5 of 10 pred pixels lie on ref. Recall: ref rows 0-4 are on pred, rows 5 and 6 lie 1 and 2 px
  # below pred's last pixel (row 4), rows 7-9 are 3+ px away: 7 of 10.
  ref_THW = vertical_line(5, slice(0, 10))
  pred_THW = vertical_line(5, slice(0, 5)) | vertical_line(15, slice(0, 5))
  scores = metrics.edge_prf(pred_THW, ref_THW)
  assert scores["precision"] == pytest.approx(0.5)
  assert scores["recall"] == pytest.approx(0.7)
  assert scores["f1"] == pytest.approx(2 * 0.5 * 0.7 / (0.5 + 0.7))


def test_edge_counts_pool_frames_and_never_match_across_frames():
  # Frame 0 matches exactly; frame 1 has pred pixels where frame 0 (not frame 1) has ref pixels.
  ref_THW = vertical_line(10)
  ref_THW[1] = False
  pred_THW = vertical_line(10)
  scores = metrics.edge_prf(pred_THW, ref_THW)
  assert scores["precision"] == pytest.approx(0.5) and scores["recall"] == 1.0
  assert scores["f1"] == pytest.approx(2 / 3)


def test_edge_empty_maps():
  empty_THW, line_THW = np.zeros((T, H, W), bool), vertical_line(10)
  assert metrics.edge_prf(empty_THW, empty_THW) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
  assert metrics.edge_prf(empty_THW, line_THW) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
  assert metrics.edge_prf(line_THW, empty_THW) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_edge_shape_mismatch_is_an_error():
  with pytest.raises(ValueError, match="edge_prf"):
    metrics.edge_prf(np.zeros((T, H, W), bool), np.zeros((T, H, W + 1), bool))


def _ssim_by_windows(x_THWC: np.ndarray, y_THWC: np.ndarray) -> float:
  """Wang et al. 2004 written out: weighted statistics of every 11x11 window inside the frame, per channel."""
  g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5 ** 2))
  w = np.outer(g, g) / np.outer(g, g).sum()
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  values = []
  for x_HWC, y_HWC in zip(x_THWC.astype(np.float64), y_THWC.astype(np.float64)):
    for i in range(x_HWC.shape[0] - 10):
      for j in range(x_HWC.shape[1] - 10):
        for c in range(x_HWC.shape[2]):
          px, py = x_HWC[i:i + 11, j:j + 11, c], y_HWC[i:i + 11, j:j + 11, c]
          mx, my = (w * px).sum(), (w * py).sum()
          vx, vy, cxy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum(), (w * (px - mx) * (py - my)).sum()
          values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
  return float(np.mean(values))


def test_ssim_identical_is_one():
  x_THWC = np.random.default_rng(0).integers(0, 256, (T, H, W, 3), dtype=np.uint8)
  assert metrics.ssim(x_THWC, x_THWC) == pytest.approx(1.0, abs=1e-12)


def test_ssim_uniform_offset_hand_computed():
  # Uniform frames: no variance, so SSIM is the luminance term (2 a b + C1) / (a^2 + b^2 + C1) everywhere.
  a, b, c1 = 100.0, 120.0, (0.01 * 255) ** 2
  x_THWC = np.full((T, H, W, 3), a, np.uint8)
  y_THWC = np.full((T, H, W, 3), b, np.uint8)
  assert metrics.ssim(x_THWC, y_THWC) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-12)


@pytest.mark.parametrize("channels", [3, 1])
def test_ssim_matches_the_window_definition(channels):
  rng = np.random.default_rng(1)
  x_THWC = rng.integers(0, 256, (2, 16, 19, channels), dtype=np.uint8)
  y_THWC = np.clip(x_THWC + rng.integers(-60, 61, x_THWC.shape), 0, 255).astype(np.uint8)
  expected = _ssim_by_windows(x_THWC, y_THWC)
  assert 0.2 < expected < 0.95  # a case where luminance, contrast and structure all matter
  assert metrics.ssim(x_THWC, y_THWC) == pytest.approx(expected, rel=1e-9)


def test_ssim_needs_a_whole_window():
  x_THWC = np.zeros((1, 10, 32, 3), np.uint8)
  with pytest.raises(ValueError, match="at least 11x11"):
    metrics.ssim(x_THWC, x_THWC)


def test_psnr_identical_frames_score_the_cap():
  x_THWC = np.random.default_rng(0).integers(0, 256, (T, H, W, 3), dtype=np.uint8)
  assert metrics.psnr(x_THWC, x_THWC) == metrics.PSNR_CAP_DB


def test_psnr_known_mse_per_frame_then_mean():
  # Frame 0 off by 5 everywhere (MSE 25), frame 1 by 10 (MSE 100), frame 2 identical (the cap): the mean of the
  # frames' PSNRs, not the PSNR of the mean MSE.
  x_THWC = np.full((3, H, W, 3), 100, np.uint8)
  y_THWC = x_THWC.copy()
  y_THWC[0] += 5
  y_THWC[1] -= 10
  expected = (10 * math.log10(255 ** 2 / 25) + 10 * math.log10(255 ** 2 / 100) + metrics.PSNR_CAP_DB) / 3
  assert metrics.psnr(x_THWC, y_THWC) == pytest.approx(expected, rel=1e-12)
  assert metrics.psnr(x_THWC[:1], y_THWC[:1]) == pytest.approx(20 * math.log10(255 / 5), rel=1e-12)
