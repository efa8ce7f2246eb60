"""agibot_jax/data/agibot_world/decode.py: AV1 through imageio-ffmpeg, OpenCV's refusal, exact starts, tar members."""

import tarfile

import numpy as np
import pytest

from agibot_jax import video_io as video
from agibot_jax.data.agibot_world import decode, source
from tests.data.agibot_world import conftest


def _decode_all(blob, start=0, backend="imageio"):
  info = decode.probe(blob)
  return np.stack(list(decode.iter_frames(blob, info, start, backend)))


def _mean_abs(a, b):
  return float(np.abs(a.astype(np.int32) - b).mean())


@pytest.fixture(scope="module")
def av1_clip(tmp_path_factory):
  if conftest.av1_encoder() is None:
    pytest.skip("imageio-ffmpeg's FFmpeg has no AV1 encoder (libaom-av1, libsvtav1, librav1e) for the fixture")
  path = tmp_path_factory.mktemp("av1") / "head_color.mp4"
  conftest.write_mp4(path, conftest.frames(0, 0, 12), codec="av1")
  return source.Blob(str(path))


def test_av1_decodes_with_imageio_ffmpeg(av1_clip):
  info = decode.probe(av1_clip)
  assert (info.codec, info.num_frames, info.fps, info.height, info.width) == ("av01", 12, 30.0, 48, 64)
  assert decode.av1_decoder() in decode.AV1_DECODERS
  frames = _decode_all(av1_clip)
  truth = conftest.frames(0, 0, 12)
  assert frames.shape == truth.shape
  errors = [_mean_abs(f, t) for f, t in zip(frames, truth)]
  print(f"AV1 ({conftest.av1_encoder()} crf 20) decoded by {decode.av1_decoder()}: mean |diff| <= {max(errors):.2f}")
  assert max(errors) < 3.0
  np.testing.assert_array_equal(_decode_all(av1_clip, start=5), frames[5:])


def test_av1_refused_with_opencv(av1_clip):
  info = decode.probe(av1_clip)
  with pytest.raises(decode.MissingCodecError, match="head_color.mp4 is AV1.*imageio-ffmpeg"):
    decode.check_decodable(info, "opencv", av1_clip.label)
  decode.check_decodable(info, "imageio", av1_clip.label)


@pytest.mark.parametrize("backend", ["imageio", "opencv"])
def test_start_frame_is_exact(tmp_path, backend):
  path = tmp_path / "x.mp4"
  conftest.write_mp4(path, conftest.frames(1, 0, 40))
  blob = source.Blob(str(path))
  full = _decode_all(blob, backend=backend)
  for start in (1, 17, 39):
    np.testing.assert_array_equal(_decode_all(blob, start, backend), full[start:])


def test_tar_member_reads_in_place(tmp_path):
  conftest.write_mp4(tmp_path / "1" / "videos" / "a.mp4", conftest.frames(0, 0, 6))
  with tarfile.open(tmp_path / "s.tar", "w") as tar:
    tar.add(tmp_path / "1", arcname="1")
  with tarfile.open(tmp_path / "s.tar") as tar:
    m = tar.getmember("1/videos/a.mp4")
  blob = source.Blob(str(tmp_path / "s.tar"), m.name, m.offset_data, m.size)
  assert blob.label.endswith("s.tar:1/videos/a.mp4")
  assert blob.read() == (tmp_path / "1" / "videos" / "a.mp4").read_bytes()
  np.testing.assert_array_equal(_decode_all(blob), _decode_all(source.Blob(str(tmp_path / "1/videos/a.mp4"))))


def test_probe_names_a_truncated_file(tmp_path):
  path = tmp_path / "cut.mp4"
  conftest.write_mp4(path, conftest.frames(0, 0, 6))
  path.write_bytes(path.read_bytes()[:200])
  with pytest.raises(video.VideoError, match="cut.mp4: cannot open video"):
    decode.probe(source.Blob(str(path)))
