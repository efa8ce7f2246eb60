"""Shared test fixtures: where the golden tensors and real clips live (../shared beside the repo)."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("AGIBOT_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"
DATA = SHARED / "data"


# Compiling dominates the tests on CPU (tiny models, run once each). LLVM's optimisation level 0 compiles ~30 %
# faster; XLA's own graph optimisations still run, and every comparison in the tests is between programs compiled
# alike or against golden tensors within a stated tolerance. AGIBOT_TEST_XLA_OPT=1 runs them as users compile.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def pytest_configure(config):
  """Compile faster (TEST_XLA_FLAGS) and once: one XLA compilation cache for the test session, shared with the
  commands the tests start, which compile the same small programs many times (a train step per run, resumed runs,
  CLI subprocesses). Set before JAX is imported; the cache starts empty, so no result depends on an earlier session."""
  del config
  if not os.environ.get("AGIBOT_TEST_XLA_OPT"):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="agibot-jax-test-xla-cache-")
    os.environ["AGIBOT_TEST_OWN_XLA_CACHE"] = str(os.getpid())  # pytest-xdist's workers inherit it, not own it


def pytest_xdist_auto_num_workers(config):
  """Workers for pytest-xdist's `-n auto` (pyproject's addopts): one per core, at most 4 (each holds its own
  compiled programs, ~2 GB); none for GPU tests, which would share one GPU's memory."""
  cores = len(os.sched_getaffinity(0))
  if cores < 2 or re.search(r"(?<!not )\bgpu\b", config.getoption("markexpr") or ""):
    return 0
  return min(cores, 4)


def pytest_unconfigure(config):
  del config
  if os.environ.get("AGIBOT_TEST_OWN_XLA_CACHE") == str(os.getpid()):
    del os.environ["AGIBOT_TEST_OWN_XLA_CACHE"]
    shutil.rmtree(os.environ.pop("JAX_COMPILATION_CACHE_DIR"), ignore_errors=True)


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


def xla_flags_with_devices(devices: int) -> str:
  """XLA_FLAGS for a child process that sees `devices` CPU devices, keeping this session's other flags."""
  return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()


def run_on_fake_cpu_devices(script: str, flag: str, devices: int) -> dict:
  """Runs `python script flag` in a child process that sees `devices` CPU devices, and returns the JSON of the last
  line it prints starting with "RESULT " (the device count is fixed at JAX start-up, hence the child)."""
  env = {**os.environ, "XLA_FLAGS": xla_flags_with_devices(devices), "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  proc = subprocess.run([sys.executable, os.path.abspath(script), flag], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-4000:]
  return json.loads(lines[-1][len("RESULT "):])


def write_config_checkpoint(workdir: str, config, step: int = 1) -> None:
  """A training checkpoint of `workdir` holding the config item (and an empty data item and a one-array state, whose
  layout `checkpointing.checkpoint_to_read` reads): what the up-front checks of sample, eval and a resumed train read
  of a checkpoint, without training a model (`config` is resolved here, with `workdir`, as training would)."""
  import numpy as np
  import orbax.checkpoint as ocp

  from agibot_jax import preflight
  from agibot_jax.training import checkpointing

  saved = checkpointing.config_json(preflight.resolve(config, workdir))
  options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
  with ocp.CheckpointManager(checkpointing.checkpoint_dir(workdir), options=options,
                             item_names=("state", "data", "config")) as manager:
    manager.save(step, args=ocp.args.Composite(config=ocp.args.JsonSave(saved), data=ocp.args.JsonSave({}),
                                               state=ocp.args.StandardSave({"step": np.zeros((), np.int32)})))
