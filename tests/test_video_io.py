"""agibot_jax/video_io.py: probing, both decoding backends, frame windows, writing."""

import numpy as np
import pytest

from agibot_jax import video_io as video

CLIP = "night_3view/videos/head_color/night_000.mp4"


def test_probe_real_clip(data_dir):
  info = video.probe(str(data_dir / CLIP))
  assert (info.num_frames, info.fps, info.height, info.width) == (128, 30.0, 720, 1280)


def test_backends_agree_and_window_offsets(data_dir):
  path = str(data_dir / CLIP)
  a = video.read_frames(path, 0, 4, "imageio")
  b = video.read_frames(path, 0, 4, "opencv")
  assert a.shape == b.shape == (4, 720, 1280, 3) and a.dtype == np.uint8
  # Same H.264 decoder, different YUV->RGB conversion: a few levels apart at most on average.
  mean_abs = np.abs(a.astype(np.int32) - b).mean()
  print(f"imageio vs opencv mean |diff| {mean_abs:.3f}")
  assert mean_abs < 2.0
  np.testing.assert_array_equal(video.read_frames(path, 2, 2, "imageio"), a[2:])
  np.testing.assert_array_equal(video.read_frames(path, 2, 2, "opencv"), b[2:])


@pytest.mark.parametrize("backend", ["imageio", "opencv"])
def test_too_few_frames_names_file(tmp_path, backend):
  path = tmp_path / "short.mp4"
  video.write_video(str(path), np.zeros((3, 16, 16, 3), np.uint8), 10.0)
  with pytest.raises(video.VideoError, match="short.mp4.*need 5"):
    video.read_frames(str(path), 0, 5, backend)


def test_write_then_read_roundtrip(tmp_path):
  frames = np.zeros((6, 32, 48, 3), np.uint8)
  frames[:, 8:24, 10:30] = (200, 50, 20)
  path = tmp_path / "x.mp4"
  video.write_video(str(path), frames, 12.0)
  info = video.probe(str(path))
  assert (info.num_frames, info.fps, info.height, info.width) == (6, 12.0, 32, 48)
  assert np.abs(video.read_frames(str(path), 0, 6).astype(int) - frames).mean() < 3


def test_backend_names():
  assert video.resolve_backend("auto") == "imageio"
  with pytest.raises(ValueError, match="decord"):
    video.resolve_backend("decord")


@pytest.mark.parametrize("backend", ["imageio_ffmpeg", "opencv"])
def test_a_failed_write_leaves_the_previous_file_and_no_partial_one(tmp_path, monkeypatch, backend):
  """Issue 33, row 3 (results written atomically): a write that fails after its first frame leaves the previous
  video under its name, whole, and no temporary file beside it."""
  path = tmp_path / "out.mp4"
  video.write_video(str(path), np.full((4, 16, 16, 3), 100, np.uint8), 8.0, backend=backend)
  before = path.read_bytes()

  encode = video._encode_mp4  # pylint: disable=protected-access

  def interrupted(tmp, frames_THWC, *args, **kwargs):
    class Frames:  # Ctrl-C after the first frame was encoded
      shape = frames_THWC.shape

      def __iter__(self):
        yield frames_THWC[0]
        raise KeyboardInterrupt
    return encode(tmp, Frames(), *args, **kwargs)

  monkeypatch.setattr(video, "_encode_mp4", interrupted)
  with pytest.raises(KeyboardInterrupt):
    video.write_video(str(path), np.zeros((4, 16, 16, 3), np.uint8), 8.0, backend=backend)
  assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
