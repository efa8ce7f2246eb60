"""agibot_jax/data/import_agibot_world.py: the command's exit statuses and its summary line."""

import json
import os
import pathlib
import subprocess
import sys

from tests.data.agibot_world import conftest

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", "agibot_jax.data.import_agibot_world", *map(str, args)], cwd=REPO,
                        env=env, capture_output=True, text=True)


def test_import_then_refusals(tmp_path):
  src, dst = tmp_path / "task_390", tmp_path / "dst"
  conftest.write_lerobot(src, "v2.1", [10], ["Pick up the cup"])
  ok = _run(src, dst, "--clip_frames=9", "--workers=2", "--aspect=crop")
  assert ok.returncode == 0, ok.stderr
  assert ok.stdout.strip() == (f"imported 1 clip(s) from 1 episode(s) of a lerobot v2.1 root (1 written now); "
                               f"0 item(s) skipped -> {dst} (details: {dst}/manifest.json)")
  assert json.loads((dst / "captions" / "hand_left" / "task_390_0_c0.json").read_text()) == {
      "caption": "Pick up the cup."}
  refused = _run(src, tmp_path / "dst2", "--depth")
  assert refused.returncode == 2 and "REFUSED" in refused.stderr and "--depth reads the raw release" in refused.stderr
  rerun = _run(src, dst, "--clip_frames=9")
  assert rerun.returncode == 2 and "other settings (aspect='crop')" in rerun.stderr
  assert _run(src).returncode == 1  # usage: SRC and DST
