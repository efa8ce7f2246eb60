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
def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch, backend):
  """Issue 33: an mp4 (sample videos, previews, imported clips) appears under its name only once complete; a writer
  interrupted after 2 of 5 frames leaves neither a half file nor its temporary."""
  import cv2
  import imageio_ffmpeg

  frames, written = np.zeros((5, 16, 16, 3), np.uint8), []

  def third_frame_interrupts(write):
    def wrapped(frame, *args):
      if frame is not None:  # imageio-ffmpeg's writer is started with send(None)
        if len(written) == 2:
          raise KeyboardInterrupt
        written.append(frame)
      return write(frame, *args)
    return wrapped

  if backend == "imageio_ffmpeg":
    open_writer = imageio_ffmpeg.write_frames

    class Writer:
      def __init__(self, *args, **kwargs):
        writer = open_writer(*args, **kwargs)
        self.send, self.close = third_frame_interrupts(writer.send), writer.close

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", Writer)
  else:
    monkeypatch.setattr(cv2, "cvtColor", third_frame_interrupts(cv2.cvtColor))
  with pytest.raises(KeyboardInterrupt):
    video.write_video(str(tmp_path / "out.mp4"), frames, 10.0, backend=backend)
  assert list(tmp_path.iterdir()) == []
  monkeypatch.undo()
  video.write_video(str(tmp_path / "out.mp4"), frames, 10.0, backend=backend)
  assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_an_encoder_that_writes_nothing_is_an_error_not_an_empty_file(tmp_path, monkeypatch):
  """Issue 33 (a full disk during import_agibot_world, tried once): FFmpeg failed to write ("No space left on
  device"), imageio-ffmpeg ignores its exit status, and an empty clip was renamed into place as complete."""
  import imageio_ffmpeg

  def write_nothing(path, *args, **kwargs):
    open(path, "wb").close()
    while True:
      yield

  monkeypatch.setattr(imageio_ffmpeg, "write_frames", write_nothing)
  with pytest.raises(video.VideoError, match=r"out.mp4: the encoder wrote 0 of 3 frames"):
    video.write_video(str(tmp_path / "out.mp4"), np.zeros((3, 16, 16, 3), np.uint8), 10.0, backend="imageio_ffmpeg")
  assert list(tmp_path.iterdir()) == []


def test_ffmpeg_starts_without_running_python_in_the_forked_child():
  """Issue 33 row 9: imageio-ffmpeg started FFmpeg with preexec_fn=os.setpgrp; in the multithreaded training process
  the forked child deadlocked before exec (seen on a disk-full run: training hung at a decode, and the child, a copy of
  it with its SIGTERM handler, stayed alive after the run was killed)."""
  from imageio_ffmpeg import _utils

  assert _utils._popen_kwargs(prevent_sigint=True)["preexec_fn"] is None  # pylint: disable=protected-access
