"""Small helpers shared across the package."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import IO


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """A temporary sibling of `path` to write, renamed to `path` when the block ends without an error (removed if it
  raises), so an interrupted writer leaves the old file or none under `path`, never a partial one.

  The name is hidden and keeps the extension, for writers that choose the format by it (FFmpeg, OpenCV, torch.save).
  """
  folder, name = os.path.split(os.path.abspath(path))
  stem, ext = os.path.splitext(name)
  tmp = os.path.join(folder, f".{stem}.{uuid.uuid4().hex[:12]}.tmp{ext}")
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def atomic_write(path: str, write: Callable[[IO], None], mode: str = "wb") -> None:
  """Writes `path` through `write(file)` (`atomic_path`). An OSError (a full disk) names `path`."""
  try:
    with atomic_path(path) as tmp, open(tmp, mode) as f:
      write(f)
  except OSError as e:
    if e.filename is not None:
      raise
    raise OSError(e.errno, e.strerror, path) from e


def end_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
  """Ends this process (a helper of `parent_pid`) within `poll_s` seconds of its parent's end, however it ended.

  A thread polls the parent: once this process is re-parented (kill -9, a crash), it exits. (Linux's
  PR_SET_PDEATHSIG would fire when the parent *thread* that started this process ends, which for helpers started
  from a thread pool is not the parent's end.)
  """
  def watch():
    while os.getppid() == parent_pid:
      time.sleep(poll_s)
    os._exit(1)  # pylint: disable=protected-access

  if os.getppid() != parent_pid:
    os._exit(1)  # pylint: disable=protected-access
  threading.Thread(target=watch, name="end-with-parent", daemon=True).start()
