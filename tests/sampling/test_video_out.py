"""Tests for agibot_jax/sampling/video_out.py: layout, width cap, mp4 read back with OpenCV, the JPEG strip."""

import cv2
import numpy as np
import pytest

from agibot_jax.sampling import video_out


def _row(value, b=1, v=3, t=5, h=10, w=16):
  return np.full((b, v, t, h, w, 3), value, np.float32)


def test_video_grid_layout():
  """Views side by side (head, left, right) along width, rows along height, (x+1)/2 clamped."""
  row = np.zeros((1, 3, 2, 4, 6, 3), np.float32)
  for v in range(3):
    row[:, v] = -1.0 + v
  grid = video_out.video_grid([row, _row(5.0, t=2, h=4, w=6)])
  assert grid.shape == (2, 8, 18, 3)
  np.testing.assert_array_equal(grid[:, :4, 0:6], 0.0)
  np.testing.assert_array_equal(grid[:, :4, 6:12], 0.5)
  np.testing.assert_array_equal(grid[:, :4, 12:18], 1.0)
  np.testing.assert_array_equal(grid[:, 4:], 1.0)


def test_frame_strip_picks_twelve_frames():
  row = np.zeros((1, 3, 24, 2, 2, 3), np.float32)
  row[:, :, :, :, :, 0] = (np.arange(24, dtype=np.float32) / 23.0 * 2 - 1)[None, None, :, None, None]
  strip = video_out.frame_strip([row])
  assert strip.shape == (2, 12 * 3 * 2, 3)
  picked = strip[0, ::6, 0] * 23.0
  np.testing.assert_allclose(picked, [round(i * 23 / 11) for i in range(12)], atol=1e-4)


def test_width_cap_keeps_aspect():
  frames = np.random.RandomState(0).rand(2, 100, 4096, 3).astype(np.float32)
  capped = video_out.cap_width(frames, 2048)
  assert capped.shape == (2, 50, 2048, 3)
  assert video_out.cap_width(frames[:, :, :1000], 2048).shape == (2, 100, 1000, 3)


@pytest.mark.parametrize("backend", ["imageio_ffmpeg", "opencv"])
def test_save_sample_outputs(tmp_path, backend):
  """8 rows (6 samples, input, control) of 36 px; 2 batch items × 3 views × 350 px = 2100 px > 2048, so the video
  is capped to 2048 × int(288·2048/2100) = 2048 × 280; 7 frames. Read back with OpenCV (as on the GPU box)."""
  rng = np.random.RandomState(0)
  rows = [rng.uniform(-1.2, 1.2, (2, 3, 7, 36, 350, 3)).astype(np.float32) for _ in range(8)]
  base = video_out.sample_file_base("ema", 200)
  assert base == "ema_ReplicateID0000_Sample_Iter000000200_3views"
  mp4, jpg = video_out.save_sample_outputs(tmp_path, base, rows, backend=backend)
  assert mp4.name == f"{base}.mp4" and jpg.name == f"{base}_7frames.jpg"  # all 7 frames of the clip

  cap = cv2.VideoCapture(str(mp4))
  fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little")
  assert fourcc == {"imageio_ffmpeg": b"h264", "opencv": b"FMP4"}[backend]
  assert cap.get(cv2.CAP_PROP_FPS) == 10.0
  frames = []
  while True:
    ok, frame = cap.read()
    if not ok:
      break
    frames.append(frame)
  cap.release()
  assert len(frames) == 7
  assert frames[0].shape == (280, 2048, 3)

  strip = cv2.imread(str(jpg))
  # Width 2·7·3·350 = 14700 is the longer side → 4096; height int(4096/14700 · 288) = 80.
  assert strip.shape == (80, 4096, 3)


def test_mp4_content_survives_encoding(tmp_path):
  """A flat grey/white split survives H.264 to within a few levels (and odd sizes get padded to even)."""
  rows = [np.concatenate([_row(-0.5, h=33, w=21), _row(1.0, h=33, w=21)], axis=4)]
  mp4, _ = video_out.save_sample_outputs(tmp_path, "x", rows, backend="imageio_ffmpeg")
  ok, frame = cv2.VideoCapture(str(mp4)).read()
  assert ok and frame.shape == (34, 3 * 42, 3)
  assert abs(int(frame[16, 5, 0]) - 63) <= 3  # (−0.5 + 1)/2 · 255 = 63.75, truncated to 63
  assert abs(int(frame[16, 30, 0]) - 255) <= 3


def test_bad_rows_are_rejected(tmp_path):
  with pytest.raises(ValueError, match="row 1"):
    video_out.video_grid([_row(0.0), _row(0.0, t=4)])
  with pytest.raises(ValueError, match="row 0"):
    video_out.video_grid([np.zeros((3, 5, 10, 16), np.float32)])
