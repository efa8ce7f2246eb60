"""Fixtures of the data tests: a small synthetic dataset (agibot_jax.data.synthetic) and config helpers."""

import pathlib
import shutil

import pytest

from agibot_jax import video_io as video
from agibot_jax.data import synthetic
from configs import base

FRAMES, HEIGHT, WIDTH = 12, 48, 80


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> pathlib.Path:
  """2 samples x 3 views, 12 frames of 48x80 at 16 fps, with depth and seg controls (read-only: copy to edit)."""
  out = tmp_path_factory.mktemp("synthetic")
  synthetic.write_example(str(out), num_samples=2, frames=FRAMES, height=HEIGHT, width=WIDTH)
  return out


@pytest.fixture
def synthetic_copy(synthetic_dir, tmp_path) -> pathlib.Path:
  dst = tmp_path / "ds"
  shutil.copytree(synthetic_dir, dst)
  return dst


def tiny_config(control_type: str, dataset_dir, **dataset_overrides):
  """configs/<ct>.py:tiny (64x96, 9 frames) pointed at `dataset_dir`."""
  config = base.get_config(control_type, "tiny")
  config.dataloader_train.dataset.dataset_dir = str(dataset_dir)
  for key, value in dataset_overrides.items():
    setattr(config.dataloader_train.dataset, key, value)
  return config


def corrupt_mid_stream(path: pathlib.Path, frames_needed: int) -> None:
  """Zeroes a stretch of the frame data after the first frame: the file still probes (metadata and first frame
  decode) but stops decoding before `frames_needed` frames (checked here, so a test never runs on a file that
  did not break as intended)."""
  data = path.read_bytes()
  start, end = data.find(b"mdat") + 4, data.find(b"moov")  # frame data, then the index (no faststart)
  assert 4 <= start < end, path
  for fraction in (0.9, 0.8, 0.7, 0.6):
    a = start + int((end - start) * fraction)
    path.write_bytes(data[:a] + bytes(min(64, end - a)) + data[a + 64:])
    video.probe(str(path))
    try:
      video.verify(str(path), frames_needed)
    except video.VideoError:
      return
  raise AssertionError(f"{path}: no corruption found that probes but does not decode {frames_needed} frames")
