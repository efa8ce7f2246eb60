"""The package's console: one stdlib logger tree (`agibot_jax.*`) under absl's app.

Every module logs with `logging.getLogger(__name__)`. `setup` (called by `agibot_jax.cli.run` before a command's
main) gives the `agibot_jax` logger its own short-format handler, and keeps third-party INFO lines (Orbax's
internals, absl's) off the console unless `--verbosity` is given explicitly. Inside a progress bar, `progress`
routes the lines through tqdm so they do not break the bar.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

ROOT = "agibot_jax"
_FORMAT = "%(asctime)s %(message)s"


def setup(verbosity: int | None = None) -> None:
  """`verbosity`: absl's --verbosity when the user gave it (then third-party lines follow it), else None."""
  for name in (ROOT, "__main__"):  # the package, and the command module run with `python -m`
    log = logging.getLogger(name)
    if not any(getattr(h, "_agibot", False) for h in log.handlers):
      handler = logging.StreamHandler(sys.stderr)
      handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
      handler._agibot = True  # pylint: disable=protected-access
      log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.DEBUG if verbosity is not None and verbosity >= 1 else logging.INFO)
  if verbosity is None:
    logging.getLogger().setLevel(logging.WARNING)
  # transformers (used here for its tokenizers only) advises at import that torch is missing: true and irrelevant.
  os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
  # JAX warns at every fork. Those of `subprocess` (ffmpeg decoding) exec at once, which is safe; grain's loader
  # workers are spawned, not forked. A fork from anywhere else still warns.
  warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning, module="subprocess")


@contextlib.contextmanager
def progress(*, disable: bool = False, **tqdm_kwargs):
  """A tqdm bar (process 0 only; none when `disable`) during which the package's log lines are written above it."""
  import jax
  from tqdm import tqdm
  from tqdm.contrib.logging import logging_redirect_tqdm

  with tqdm(disable=disable or jax.process_index() != 0, **tqdm_kwargs) as bar, \
      logging_redirect_tqdm(loggers=[logging.getLogger(ROOT), logging.getLogger("__main__")]):
    yield bar
