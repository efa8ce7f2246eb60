"""Shared test fixtures: where the golden tensors and real clips live (../shared beside the repo)."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("AGIBOT_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"
DATA = SHARED / "data"


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
  if not GOLDEN.is_dir():
    pytest.fail(f"golden tensors not found at {GOLDEN} (set AGIBOT_SHARED)")
  return GOLDEN


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  if not DATA.is_dir():
    pytest.fail(f"shared data not found at {DATA} (set AGIBOT_SHARED)")
  return DATA
