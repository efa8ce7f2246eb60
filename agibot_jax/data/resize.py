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
  Width is filtered first, then height, both in float32 (torch's order).

Method: each 1-D pass is the banded matrix of `axis_weights`, cut into dense float32 blocks of consecutive
outputs (each covering only the inputs it needs) and applied as BLAS matmuls; zeros in a block add nothing.
Per frame, the channels are split into float32 planes (C, H, W); the width pass writes its result W-major,
(W', C·H), which read as ((W', C), H) is exactly the transposed operand the height pass needs, so the height
pass writes (H', W'·C), i.e. the HWC output, and no float data is ever transposed.
Residual float32 differences (~20% of the weights are 1 ulp off torch's, BLAS sums in its own order) flip
a uint8 result by 1 where the exact value is (nearly) a .5 tie: ~6e-5 of the values on noisy images
(tests/data/test_resize.py states the tolerance), ~4e-4 to 5e-4 on real 720x1280 -> 432x768 frames, whose
smooth gradients hit exact ties more often (the earlier per-tap NumPy version: ~8e-5 and ~6e-4).
"""

from __future__ import annotations

import functools

import cv2
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


# A block of the banded matrix grows until it spans this many inputs (or twice one output's window, for strong
# downscaling) or _MAX_BLOCK outputs: larger blocks make fewer, larger BLAS calls but multiply more zeros.
# Tuned at 720x1280 -> 432x768 bilinear and the vis control's 432x768 <-> 43x76 bicubic.
_BLOCK_INPUTS = 16
_MAX_BLOCK = 128


@functools.lru_cache(maxsize=64)
def _band_blocks(n_in: int, n_out: int, method: str) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
  """`axis_weights` as dense blocks of consecutive outputs.

  Returns:
    (o0, o1, i0, i1, weight_oi) tuples covering outputs [0, n_out): weight_oi is the float32 (o1 - o0, i1 - i0)
    sub-matrix from inputs [i0, i1) to outputs [o0, o1); the matrix is 0 outside the blocks.
  """
  index_OK, weight_OK = axis_weights(n_in, n_out, method)
  used_OK = weight_OK != 0
  # Each output's span of contributing inputs (an output without any, which these kernels never produce, gets [0, 1)).
  lo_O = np.where(used_OK, index_OK, n_in).min(axis=1)
  hi_O = np.where(used_OK, index_OK + 1, 0).max(axis=1)
  lo_O, hi_O = np.where(lo_O < hi_O, lo_O, 0), np.where(lo_O < hi_O, hi_O, 1)
  limit = max(_BLOCK_INPUTS, 2 * int((hi_O - lo_O).max()))
  blocks = []
  o0 = 0
  while o0 < n_out:
    o1, i0, i1 = o0 + 1, lo_O[o0], hi_O[o0]
    while (o1 < n_out and o1 - o0 < _MAX_BLOCK
           and max(i1, hi_O[o1]) - min(i0, lo_O[o1]) <= limit):
      i0, i1 = min(i0, lo_O[o1]), max(i1, hi_O[o1])
      o1 += 1
    weight_oi = np.zeros((o1 - o0, i1 - i0), np.float32)
    row_N, tap_N = np.nonzero(used_OK[o0:o1])
    weight_oi[row_N, index_OK[o0 + row_N, tap_N] - i0] = weight_OK[o0 + row_N, tap_N]
    weight_oi.flags.writeable = False
    blocks.append((o0, o1, int(i0), int(i1), weight_oi))
    o0 = o1
  return tuple(blocks)


def _split_planes(frame_HWC: np.ndarray, planes_CHW: np.ndarray) -> None:
  """planes_CHW[c] = float32(frame_HWC[..., c])."""
  if frame_HWC.dtype == np.uint8 and frame_HWC.flags.c_contiguous and 1 < frame_HWC.shape[2] <= 4:
    # cv2's SIMD de-interleave plus contiguous casts: ~2x faster than NumPy's strided casting copy.
    for c, plane_HW in enumerate(cv2.split(frame_HWC)):
      np.copyto(planes_CHW[c], plane_HW, casting="unsafe")
  else:
    np.copyto(planes_CHW, frame_HWC.transpose(2, 0, 1), casting="unsafe")


def _resize_THWC(x_THWC: np.ndarray, size_hw: tuple[int, int], method: str, out_dtype: type) -> np.ndarray:
  """Resizes (T, H, W, C) frames (any dtype) frame by frame; float32 unrounded, or uint8 clamped and rounded."""
  n_t, h_in, w_in, n_c = x_THWC.shape
  h_out, w_out = size_hw
  w_blocks = _band_blocks(w_in, w_out, method)
  h_blocks = _band_blocks(h_in, h_out, method)
  # One frame's buffers, reused: a 720p frame's float32 planes fit the L3 cache, a stack of them would not.
  planes_CHW = np.empty((n_c, h_in, w_in), np.float32)
  rows_RW = planes_CHW.reshape(n_c * h_in, w_in)
  wide_WR = np.empty((w_out, n_c * h_in), np.float32)  # width pass output, W-major: [w', (c, h)]
  wide_XH = wide_WR.reshape(w_out * n_c, h_in)  # the same memory as [(w', c), h]
  out = np.empty((n_t, h_out, w_out, n_c), out_dtype)
  rounding = out_dtype == np.uint8
  # uint8: each height block is rounded while it is still in cache, so only one block's float rows are needed.
  acc_oX = np.empty((max(o1 - o0 for o0, o1, *_ in h_blocks), w_out * n_c), np.float32) if rounding else None
  for t in range(n_t):
    _split_planes(x_THWC[t], planes_CHW)
    # Transposed operands go to BLAS as flags, not copies.
    for o0, o1, i0, i1, weight_oi in w_blocks:
      np.matmul(weight_oi, rows_RW[:, i0:i1].T, out=wide_WR[o0:o1])
    out_HX = out[t].reshape(h_out, w_out * n_c)
    for o0, o1, i0, i1, weight_oi in h_blocks:
      dst_oX = acc_oX[:o1 - o0] if rounding else out_HX[o0:o1]
      np.matmul(weight_oi, wide_XH[:, i0:i1].T, out=dst_oX)
      if rounding:
        if method != "bilinear":  # the triangle filter's convex weights stay in [0, 255] up to float error
          np.clip(dst_oX, 0.0, 255.0, out=dst_oX)
        np.rint(dst_oX, out=dst_oX)
        np.copyto(out_HX[o0:o1], dst_oX, casting="unsafe")
  return out


def _resize(x: np.ndarray, size_hw: tuple[int, int], method: str, h_axis: int, w_axis: int,
            out_dtype: type) -> np.ndarray:
  if (h_axis, w_axis) == (x.ndim - 3, x.ndim - 2):  # (..., H, W, C), e.g. frames_THWC: the fast path
    y = _resize_THWC(x.reshape(int(np.prod(x.shape[:-3])), *x.shape[-3:]), size_hw, method, out_dtype)
    return y.reshape(*x.shape[:-3], *y.shape[1:])
  # Any other layout: one (H, W, N) image whose N planes are all the other axes.
  x_HW_ = np.moveaxis(x, (h_axis, w_axis), (0, 1))
  n_planes = int(np.prod(x_HW_.shape[2:]))
  y = _resize_THWC(x_HW_.reshape(1, *x_HW_.shape[:2], n_planes), size_hw, method, out_dtype)
  y = y.reshape(*size_hw, *x_HW_.shape[2:])
  return np.ascontiguousarray(np.moveaxis(y, (0, 1), (h_axis, w_axis)))


def resize_float(x: np.ndarray, size_hw: tuple[int, int], method: str = "bilinear",
                 axes_hw: tuple[int, int] = (-3, -2)) -> np.ndarray:
  """Resizes the two spatial axes of `x` (any dtype) to `size_hw`; returns float32, unrounded."""
  h_axis, w_axis = (a % x.ndim for a in axes_hw)
  if (x.shape[h_axis], x.shape[w_axis]) == tuple(size_hw):
    return x.astype(np.float32)
  return _resize(x, tuple(size_hw), method, h_axis, w_axis, np.float32)


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
  return _resize(x, tuple(size_hw), method, h_axis, w_axis, np.uint8)
