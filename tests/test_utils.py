"""agibot_jax/utils.py: atomic writes, and helpers that end with their parent."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from agibot_jax import utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_interrupted_atomic_write_keeps_the_old_file(tmp_path):
  path = tmp_path / "report.json"
  path.write_text("old")

  def write_half(f):
    f.write("new, half")
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    utils.atomic_write(str(path), write_half, mode="w")
  assert [p.name for p in tmp_path.iterdir()] == ["report.json"] and path.read_text() == "old"
  utils.atomic_write(str(path), lambda f: f.write("new"), mode="w")
  assert [p.name for p in tmp_path.iterdir()] == ["report.json"] and path.read_text() == "new"


def test_a_full_disk_names_the_file(tmp_path):
  """Issue 33 (a full disk, tried once on a small tmpfs): text.precompute and cache_latents ended in tracebacks of
  `OSError: [Errno 28] No space left on device` naming no file (raised when the file is closed)."""
  import errno

  def disk_full(f):
    raise OSError(errno.ENOSPC, "No space left on device")

  with pytest.raises(OSError) as e:
    utils.atomic_write(str(tmp_path / "entry.npz"), disk_full)
  assert str(e.value) == f"[Errno 28] No space left on device: '{tmp_path / 'entry.npz'}'"
  assert list(tmp_path.iterdir()) == []


PARENT = textwrap.dedent("""
    import os, subprocess, sys, time
    helper = subprocess.Popen([sys.executable, "-c", "import os, time; from agibot_jax import utils; "
                               f"utils.end_with_parent({os.getpid()}, poll_s=0.1); print('ready', flush=True); "
                               "time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    helper.stdout.readline()
    print(helper.pid, flush=True)
    time.sleep(120)
""")


def _running(pid: int) -> bool:
  """Whether `pid` runs (an exited process not yet reaped by its new parent is a zombie: not running)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_helper_ends_when_its_parent_is_killed():
  """Issue 33 row 9: grain's worker processes outlived a training run killed with kill -9, holding its memory.
  The workers call `end_with_parent` (agibot_jax/data/pipeline.py `_worker_init`, tests/data/test_pipeline.py)."""
  parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=REPO, env={**os.environ, "PYTHONPATH": REPO},
                            stdout=subprocess.PIPE, text=True)
  helper = int(parent.stdout.readline())
  assert _running(helper)
  parent.send_signal(signal.SIGKILL)
  parent.wait()
  deadline = time.time() + 10
  while _running(helper) and time.time() < deadline:
    time.sleep(0.05)
  assert not _running(helper), "the helper outlived its killed parent"
