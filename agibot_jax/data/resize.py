"""Antialiased separable image resize in NumPy, numerically matching torch's `antialias=True` path.

The reference resizes uint8 frames with torchvision (`Resize(..., BILINEAR, antialias=True)` for video and
control frames, `BICUBIC, antialias=True` in the vis control's down-up). torchvision casts uint8 to float32,
calls `torch.nn.functional.interpolate(..., antialias=True, align_corners=False)`, clamps (bicubic only),
rounds half-to-even and casts back. This module reproduces that without torch, so the data path runs on
machines without torch.

Kernel facts (torch's AA interpolation, per axis, input size n_in → n_out):
  scale = n_in / n_out; support = (taps / 2) · max(scale, 1) with taps 2 (bilinear) or 4 (bicubic);
  for output i: center = scale · (i + 0.5), window [trunc(center − support + 0.5), trunc(center + support + 0.5))
  clipped to the input; weight_j = k((j − center + 0.5) / max(scale, 1)), normalised to sum 1.
  k is the triangle filter (bilinear) or Keys' cubic with a = −0.5 (bicubic).
  Width is filtered first, then height, both in float32 with tap-by-tap accumulation (torch's order).
  Residual float32 rounding differences (weights, vectorised sums) flip a uint8 result by 1 on ~1e-4 of
  the pixels (tests/data/test_resize.py states the tolerance).
"""

from __future__ import annotations

import functools

import numpy as np

_TAPS = {"bilinear": 2, "bicubic": 4}


def _triangle(x: np.ndarray) -> np.ndarray:
  x = np.abs(x)
  return np.where(x < 1.0, 1.0 - x, 0.0)


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
  x = np.abs(x)
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
  far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
  return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=64)
def axis_weights(n_in: int, n_out: int, method: str) -> tuple[np.ndarray, np.ndarray]:
  """Sparse 1-D resampling matrix of torch's antialias kernel.

  Returns:
    index_OK: int64 (n_out, K) input indices per output sample (padding entries point at 0).
    weight_OK: float32 (n_out, K) normalised weights (padding entries are 0).
  """
  if method not in _TAPS:
    raise ValueError(f"resize method must be one of {sorted(_TAPS)}, got {method!r}")
  if n_in <= 0 or n_out <= 0:
    raise ValueError(f"resize sizes must be positive, got {n_in} -> {n_out}")
  # torch computes these in float32 for float32 input; mirror that so window bounds agree exactly.
  scale = np.float32(n_in) / np.float32(n_out)
  stretch = max(float(scale), 1.0)
  support = np.float32(_TAPS[method] * 0.5 * stretch)
  kernel = _triangle if method == "bilinear" else _cubic
  center_O = (scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5))).astype(np.float32)
  lo_O = np.maximum((center_O - support + np.float32(0.5)).astype(np.int64), 0)
  hi_O = np.minimum((center_O + support + np.float32(0.5)).astype(np.int64), n_in)
  k = int((hi_O - lo_O).max())
  index_OK = lo_O[:, None] + np.arange(k)[None, :]
  valid_OK = index_OK < hi_O[:, None]
  offset_OK = (index_OK.astype(np.float32) - center_O[:, None] + np.float32(0.5)) / np.float32(stretch)
  weight_OK = np.where(valid_OK, kernel(offset_OK.astype(np.float64)), 0.0).astype(np.float32)
  total_O = weight_OK.sum(axis=1, keepdims=True, dtype=np.float32)
  weight_OK = np.where(total_O != 0, weight_OK / np.where(total_O != 0, total_O, 1), 0).astype(np.float32)
  index_OK = np.where(valid_OK, index_OK, 0)
  return index_OK, weight_OK


def _resample_axis(x: np.ndarray, axis: int, n_out: int, method: str) -> np.ndarray:
  index_OK, weight_OK = axis_weights(x.shape[axis], n_out, method)
  shape = [1] * x.ndim
  shape[axis] = n_out
  out = None
  # Accumulate tap by tap in float32, like torch's per-output loop (w0·x0 + w1·x1 + ...).
  for k in range(index_OK.shape[1]):
    term = np.take(x, index_OK[:, k], axis=axis).astype(np.float32, copy=False)
    term *= weight_OK[:, k].reshape(shape)
    if out is None:
      out = term
    else:
      out += term
  return out


# Leading-axis (frame) chunk of resize_uint8: keeps the float32 intermediates of a 720p frame group inside the CPU caches.
_CHUNK = 4


def resize_float(x: np.ndarray, size_hw: tuple[int, int], method: str = "bilinear",
                 axes_hw: tuple[int, int] = (-3, -2)) -> np.ndarray:
  """Resizes the two spatial axes of `x` (any dtype) to `size_hw`; returns float32, unrounded."""
  h_axis, w_axis = (a % x.ndim for a in axes_hw)
  out_h, out_w = size_hw
  if (x.shape[h_axis], x.shape[w_axis]) == (out_h, out_w):
    return x.astype(np.float32)
  y = _resample_axis(x, w_axis, out_w, method)
  return _resample_axis(y, h_axis, out_h, method)


def resize_uint8(x: np.ndarray, size_hw: tuple[int, int], method: str = "bilinear",
                 axes_hw: tuple[int, int] = (-3, -2)) -> np.ndarray:
  """torchvision-equivalent resize of uint8 images.

  Args:
    x: uint8 array whose axes `axes_hw` are (H, W), e.g. frames_THWC with the default axes.
    size_hw: output (H, W).
    method: "bilinear" or "bicubic" (both with antialiasing, as torchvision's `antialias=True`).
  Returns:
    uint8 array, same layout, spatial size `size_hw`: float32 result clamped to [0, 255] and rounded
    half-to-even (torchvision clamps only for bicubic; the triangle filter cannot leave [0, 255]).
  """
  if x.dtype != np.uint8:
    raise TypeError(f"resize_uint8 expects uint8 input, got {x.dtype}")
  h_axis, w_axis = (a % x.ndim for a in axes_hw)
  if (x.shape[h_axis], x.shape[w_axis]) == tuple(size_hw):
    return x.copy()
  if h_axis == 0 or w_axis == 0:
    return _to_uint8(resize_float(x, size_hw, method, (h_axis, w_axis)))
  out_shape = list(x.shape)
  out_shape[h_axis], out_shape[w_axis] = size_hw
  out = np.empty(out_shape, np.uint8)
  for i in range(0, x.shape[0], _CHUNK):
    out[i:i + _CHUNK] = _to_uint8(resize_float(x[i:i + _CHUNK], size_hw, method, (h_axis, w_axis)))
  return out


def _to_uint8(y: np.ndarray) -> np.ndarray:
  np.clip(y, 0.0, 255.0, out=y)
  return np.rint(y, out=y).astype(np.uint8)
