"""Small helpers shared across the package."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import IO


def atomic_write(path: str, write: Callable[[IO], None], mode: str = "wb") -> None:
  """Writes `path` through `write(file)` into a temporary sibling, then renames it into place.

  A crash leaves either the old file or none, never a partial one.
  """
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, mode) as f:
      write(f)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
