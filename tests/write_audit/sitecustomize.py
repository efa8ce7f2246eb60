"""Test hook of tests/test_multiprocess.py: records which paths a process writes.

Put this folder on PYTHONPATH (Python then imports it as `sitecustomize` at start-up) and set WRITE_AUDIT_LOG: every
file opened for writing, directory made, file renamed or removed, and subprocess started (e.g. ffmpeg writing an
mp4) gets one line `<event> <path or argv>` in that file. Writes made by C++ libraries (tensorstore, OpenCV) are not
seen; the test checks the Python-level writers (TensorBoard, metrics.jsonl, Orbax's JSON items, sample videos).
"""

import os
import sys

_LOG = os.environ.get("WRITE_AUDIT_LOG")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {"os.mkdir": 1, "os.rename": 2, "os.remove": 1, "shutil.rmtree": 1}  # os.replace audits as os.rename


def _install(log_path: str) -> None:
  fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)  # before the hook: not recorded

  def record(event: str, args: tuple) -> None:
    if event == "open":
      path, mode, flags = args
      if not isinstance(path, (str, os.PathLike)):
        return
      if not (isinstance(flags, int) and flags & _WRITE_FLAGS) and not (mode and set(str(mode)) & set("wax+")):
        return
      paths = [path]
    elif event in _PATH_EVENTS:
      paths = [a for a in args[:_PATH_EVENTS[event]] if isinstance(a, (str, os.PathLike))]
    elif event == "subprocess.Popen":
      paths = [" ".join(map(str, args[1])) if isinstance(args[1], (list, tuple)) else str(args[1])]
    else:
      return
    for path in paths:
      os.write(fd, f"{event} {os.fsdecode(path)}\n".encode())

  sys.addaudithook(record)


if _LOG:
  _install(_LOG)
