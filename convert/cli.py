"""What every `python -m convert.*` command shares: bad input reported as one line, exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

# A missing, unreadable or mismatched file: CheckpointError, ConversionError (both ValueErrors),
# FileNotFoundError, FileExistsError (both OSErrors), and the converters' own checks.
BAD_INPUT = (OSError, ValueError)
EXIT_BAD_INPUT = 2


def run(command: Callable[[], int | None]) -> int:
  """Calls `command`; its exit status (None: 0), or EXIT_BAD_INPUT after printing `error: <message>` to stderr."""
  try:
    return command() or 0
  except BAD_INPUT as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
