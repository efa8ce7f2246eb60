"""Pixel metrics of one view's video (host NumPy): edge F1 with a pixel tolerance, SSIM, PSNR.

Videos are uint8 (T, H, W, C) of equal shapes, edge maps bool (T, H, W); every metric pools the clip's frames
as its docstring says and returns Python floats.
"""

from __future__ import annotations

import cv2
import numpy as np

EDGE_TOLERANCE_PX = 2.0  # Euclidean distance at which an edge pixel still matches
DATA_RANGE = 255.0  # L of SSIM and PSNR (uint8 pixels)
# SSIM of Wang et al. 2004: Gaussian window 11x11, sigma 1.5; C1 = (K1 L)^2, C2 = (K2 L)^2.
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
PSNR_CAP_DB = 100.0  # PSNR of identical frames (MSE 0), instead of inf, so means over frames and samples stay finite


def _check_pair(a: np.ndarray, b: np.ndarray, ndim: int, what: str) -> None:
  if a.shape != b.shape or a.ndim != ndim:
    raise ValueError(f"{what} needs two arrays of one {ndim}-d shape, got {a.shape} and {b.shape}")


def _distance_to(edges_HW: np.ndarray) -> np.ndarray:
  """float32 (H, W): Euclidean distance in pixels from every pixel to the nearest True pixel of `edges_HW`.

  With no True pixel every distance is huge (OpenCV returns ~1.8e19), so nothing matches.
  """
  # distanceTransform measures the distance to the nearest zero pixel: edge pixels become the zeros.
  return cv2.distanceTransform(np.where(edges_HW, 0, 1).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def edge_prf(pred_THW: np.ndarray, ref_THW: np.ndarray, tolerance: float = EDGE_TOLERANCE_PX) -> dict[str, float]:
  """Precision, recall and F1 of the edge map `pred` against `ref` (bool (T, H, W)), with a pixel tolerance.

  precision = #(pred pixels within Euclidean distance `tolerance` of a ref pixel of the same frame) / #(pred pixels);
  recall = the same with the roles swapped; F1 = 2PR / (P + R) (0 when P = R = 0). The counts pool all frames
  of the clip, so a frame with few edges weighs little. Both maps empty: P = R = F1 = 1 (nothing to find, nothing
  spurious); exactly one empty: P = R = F1 = 0. The distance is Euclidean, not Chebyshev: an edge moved by
  (1, 1) is 1.41 px away, by (2, 2) 2.83 px.
  """
  _check_pair(pred_THW, ref_THW, 3, "edge_prf")
  pred_THW, ref_THW = pred_THW.astype(bool), ref_THW.astype(bool)
  n_pred, n_ref = int(pred_THW.sum()), int(ref_THW.sum())
  if n_pred == 0 or n_ref == 0:
    score = float(n_pred == n_ref)
    return {"precision": score, "recall": score, "f1": score}
  pred_hits = ref_hits = 0
  for pred_HW, ref_HW in zip(pred_THW, ref_THW):
    pred_hits += int((_distance_to(ref_HW)[pred_HW] <= tolerance).sum())
    ref_hits += int((_distance_to(pred_HW)[ref_HW] <= tolerance).sum())
  precision, recall = pred_hits / n_pred, ref_hits / n_ref
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"precision": precision, "recall": recall, "f1": f1}


def _ssim_map(x_HWC: np.ndarray, y_HWC: np.ndarray) -> np.ndarray:
  """float64 (H - 10, W - 10, C): the SSIM of every 11x11 window lying wholly inside the frame, per channel."""
  def local_mean(z_HWC):
    # GaussianBlur drops a trailing channel axis of size 1: put the input's shape back.
    return cv2.GaussianBlur(z_HWC, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA).reshape(z_HWC.shape)

  c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
  mu_x, mu_y = local_mean(x_HWC), local_mean(y_HWC)
  var_x = local_mean(x_HWC * x_HWC) - mu_x * mu_x
  var_y = local_mean(y_HWC * y_HWC) - mu_y * mu_y
  cov_xy = local_mean(x_HWC * y_HWC) - mu_x * mu_y
  ssim_HWC = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
  # Windows reaching over the border would see padding: keep the valid ones, as Wang et al. and scikit-image do.
  r = SSIM_WINDOW // 2
  return ssim_HWC[r:-r, r:-r]


def ssim(x_THWC: np.ndarray, y_THWC: np.ndarray) -> float:
  """SSIM (Wang et al. 2004) of two uint8 videos (T, H, W, C), H and W >= 11.

  Per channel (colour counts, unlike SSIM on luma), with a Gaussian window (11, sigma 1.5), population
  statistics, K1 = 0.01, K2 = 0.03, L = 255, over the windows wholly inside the frame (the 5-pixel border is
  left out); the mean over those windows, the channels and the frames. This is scikit-image's
  `structural_similarity(x, y, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=255)` averaged over frames. Identical videos: 1.
  """
  _check_pair(x_THWC, y_THWC, 4, "ssim")
  if min(x_THWC.shape[1:3]) < SSIM_WINDOW:
    raise ValueError(f"ssim needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {x_THWC.shape[1:3]}")
  per_frame = [_ssim_map(x_HWC.astype(np.float64), y_HWC.astype(np.float64)).mean()
               for x_HWC, y_HWC in zip(x_THWC, y_THWC)]
  return float(np.mean(per_frame))


def psnr(x_THWC: np.ndarray, y_THWC: np.ndarray) -> float:
  """PSNR in dB of two uint8 videos (T, H, W, C): per frame 10 log10(255^2 / MSE) over all pixels and channels,
  capped at PSNR_CAP_DB (identical frames score the cap, not inf), then the mean over frames."""
  _check_pair(x_THWC, y_THWC, 4, "psnr")
  # cv2.norm sums the squared uint8 differences without a float copy of the video.
  sse_T = np.array([cv2.norm(np.ascontiguousarray(x_HWC), np.ascontiguousarray(y_HWC), cv2.NORM_L2SQR)
                    for x_HWC, y_HWC in zip(x_THWC, y_THWC)])
  mse_T = sse_T / x_THWC[0].size
  with np.errstate(divide="ignore"):
    psnr_T = 10.0 * np.log10(DATA_RANGE ** 2 / mse_T)
  return float(np.mean(np.minimum(psnr_T, PSNR_CAP_DB)))
