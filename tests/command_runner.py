"""Runs command lines as `python -m MODULE ARGS` would, each in a child forked from one interpreter that imported the
heavy libraries once: a test that runs a dozen commands pays the start-up (seconds per fresh interpreter on 2 cores)
once. Each child runs its module as `__main__` (runpy, as `python -m` does) in its own working directory, with its
stdout and stderr in files, and exits; nothing it does (flags, JAX's backend, threads) reaches the next one.

`run_commands(commands, cwd, env)` starts the runner in a fresh interpreter (JAX must not have started a backend
before the forks) and returns one `Result` per command, in order; a command that exits nonzero stops the rest when
`stop_on_error`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
# Imported before the forks, so that each command finds them loaded (what the commands import at the top).
PRELOAD = ("jax", "jax.numpy", "flax.linen", "optax", "orbax.checkpoint", "grain", "cv2", "tensorboardX",
           "ml_collections", "absl.app", "agibot_jax.assemble", "agibot_jax.preflight",
           "agibot_jax.evaluation.validation", "agibot_jax.sampling.callback", "agibot_jax.training.loop")


@dataclasses.dataclass(frozen=True)
class Result:
  argv: list[str]  # ["agibot_jax.train", "--config", ...]: the module, then its arguments
  returncode: int
  stdout: str
  stderr: str
  seconds: float


def run_commands(commands: list[list[str]], cwd: str, env: dict[str, str] | None = None, *,
                 timeout_s: float = 600, stop_on_error: bool = True) -> list[Result]:
  """Runs each `[module, arg, ...]` in `cwd` as `python -m module arg ...`; returns their Results."""
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", **(env or {})}
  with tempfile.TemporaryDirectory() as tmp:
    spec = os.path.join(tmp, "commands.json")
    with open(spec, "w") as f:
      json.dump({"commands": commands, "cwd": cwd, "out": tmp, "timeout_s": timeout_s,
                 "stop_on_error": stop_on_error}, f)
    proc = subprocess.run([sys.executable, __file__, spec], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout_s * len(commands) + 120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(os.path.join(tmp, "results.json")) as f:
      return [Result(**r) for r in json.load(f)]


def _child(argv: list[str], out_path: str, err_path: str) -> None:
  """In the forked child: runs the command with stdout/stderr in files, then exits with its status."""
  import runpy
  import traceback

  for fd, path in ((1, out_path), (2, err_path)):
    os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
  sys.argv = list(argv)
  code = 0
  try:
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
  except SystemExit as e:
    if isinstance(e.code, str):
      print(e.code, file=sys.stderr)
    code = e.code if isinstance(e.code, int) else int(e.code is not None)
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
    code = 1
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


def _main(spec_path: str) -> None:
  import importlib

  with open(spec_path) as f:
    spec = json.load(f)
  sys.path.insert(0, str(REPO))
  for module in PRELOAD:
    importlib.import_module(module)
  results = []
  for i, argv in enumerate(spec["commands"]):
    out_path, err_path = (os.path.join(spec["out"], f"{i}.{name}") for name in ("out", "err"))
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
      os.chdir(spec["cwd"])
      _child(argv, out_path, err_path)
    deadline = t0 + spec["timeout_s"]
    while True:
      done, status = os.waitpid(pid, os.WNOHANG)
      if done:
        code = os.waitstatus_to_exitcode(status)
        break
      if time.perf_counter() > deadline:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        code = -9
        break
      time.sleep(0.02)
    read = lambda path: open(path, errors="replace").read() if os.path.exists(path) else ""
    results.append({"argv": argv, "returncode": code, "stdout": read(out_path), "stderr": read(err_path),
                    "seconds": time.perf_counter() - t0})
    if code != 0 and spec["stop_on_error"]:
      break
  with open(os.path.join(spec["out"], "results.json"), "w") as f:
    json.dump(results, f)


if __name__ == "__main__":
  _main(sys.argv[1])
