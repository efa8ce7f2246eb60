"""What every `python -m convert.*` command shares: bad input reported as one line, exit status 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

# A missing, unreadable or mismatched file: CheckpointError, ConversionError (both ValueErrors),
# FileNotFoundError, FileExistsError (both OSErrors), and the converters' own checks.
BAD_INPUT = (OSError, ValueError)
EXIT_BAD_INPUT = 2


def run(command: Callable[[], int | None]) -> int:
  """Calls `command`; its exit status (None: 0), or EXIT_BAD_INPUT after printing `error: <message>` to stderr."""
  # Orbax (through absl) logs every step of every save at INFO, jax its backend search: the
  # converters' own lines are enough.
  for name in ("absl", "jax"):
    logging.getLogger(name).setLevel(logging.WARNING)
  try:
    return command() or 0
  except BAD_INPUT as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
