"""Shared test fixtures: where the golden tensors and real clips live (../shared beside the repo)."""

import json
import os
import pathlib
import subprocess
import sys

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


def run_on_fake_cpu_devices(script: str, flag: str, devices: int) -> dict:
  """Runs `python script flag` in a child process that sees `devices` CPU devices, and returns the JSON of the last
  line it prints starting with "RESULT " (the device count is fixed at JAX start-up, hence the child)."""
  env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  proc = subprocess.run([sys.executable, os.path.abspath(script), flag], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-4000:]
  return json.loads(lines[-1][len("RESULT "):])
