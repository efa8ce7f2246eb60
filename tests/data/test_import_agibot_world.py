"""agibot_jax/data/import_agibot_world.py: the command's exit statuses and its summary line."""

import json
import os
import pathlib
import subprocess
import sys
import types

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
  usage = _run(src)  # SRC without DST
  assert usage.returncode == 2 and usage.stderr.strip().endswith("missing argument(s) ['dst']; it takes SRC DST (--help)")


def test_every_episode_skipped_exits_2_in_one_line(monkeypatch, capsys):
  from agibot_jax.data import import_agibot_world
  from agibot_jax.data.agibot_world import importer, source

  skip = source.Skip("327", "648642", "/src/observations/327/648642", "9 frames, fewer than --clip_frames=93")
  monkeypatch.setattr(importer, "run", lambda settings, progress: importer.Summary("raw", 0, 0, 0, (skip,)))
  assert import_agibot_world.run_import(types.SimpleNamespace(src="/src", dst="/dst")) == 2
  out, err = capsys.readouterr()
  assert out == "" and err.count("\n") == 1, err
  assert err.startswith("REFUSED nothing imported from /src: 1 item(s) skipped (reasons in /dst/manifest.json); "
                        "the first: 327_648642: /src/observations/327/648642: 9 frames"), err


def test_a_full_destination_fails_in_one_line(monkeypatch, capsys):
  """Issue 33 (a full disk, tried once): an OSError traceback after empty clips were left as complete ones
  (those: tests/test_video_io.py)."""
  from agibot_jax.data import import_agibot_world
  from agibot_jax.data.agibot_world import importer

  def disk_full(settings, progress):
    raise OSError(28, "No space left on device", "/dst/manifest.json")

  monkeypatch.setattr(importer, "run", disk_full)
  assert import_agibot_world.run_import(types.SimpleNamespace(src="/src", dst="/dst")) == 1
  err = capsys.readouterr().err
  assert err == ("FAILED writing /dst: [Errno 28] No space left on device: '/dst/manifest.json' (the clips completed "
                 "are kept: rerun to resume)\n")
