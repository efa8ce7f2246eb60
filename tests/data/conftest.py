"""Fixtures of the data tests: a small synthetic dataset (agibot_jax.data.synthetic) and config helpers."""

import pathlib
import shutil

import pytest

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
