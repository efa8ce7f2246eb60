"""Small helpers shared across the package."""

from __future__ import annotations

import contextlib
import os
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
  """Writes `path` through `write(file)` (`atomic_path`)."""
  with atomic_path(path) as tmp, open(tmp, mode) as f:
    write(f)
