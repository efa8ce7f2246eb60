"""agibot_jax/data/inspect.py: exit status 0 + summary on valid data, 2 + every problem (naming its file) otherwise.

One test per bad-input case of the validation; each breaks a copy of the synthetic dataset and runs the
inspect entry point (`inspect.run`, the body of the CLI; one test runs the real CLI in a subprocess).
"""

import os
import pathlib
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from agibot_jax import video_io as video
from agibot_jax.data import inspect
from tests.data.conftest import FRAMES, HEIGHT, WIDTH, corrupt_mid_stream, tiny_config

REPO = pathlib.Path(__file__).resolve().parents[2]


def _inspect(capsys, control_type, dataset_dir, **overrides):
  code = inspect.run(tiny_config(control_type, dataset_dir, **overrides))
  out = capsys.readouterr()
  return code, out.out + out.err


def _write(path, frames=FRAMES, fps=16.0, seed=0):
  rng = np.random.default_rng(seed)
  video.write_video(str(path), rng.integers(0, 256, (frames, HEIGHT, WIDTH, 3), dtype=np.uint8), fps)


def _assert_problem(code, text, path, words):
  assert code == inspect.EXIT_PROBLEMS, text
  lines = [ln for ln in text.splitlines() if str(path) in ln]
  assert lines, f"no problem names {path}:\n{text}"
  assert any(words in ln for ln in lines), f"{path} reported without {words!r}:\n{text}"


@pytest.mark.parametrize("control_type", ["edge", "vis", "depth", "seg"])
def test_valid_dataset_exit_0_with_summary(capsys, synthetic_dir, control_type):
  code, text = _inspect(capsys, control_type, synthetic_dir)
  assert code == 0, text
  assert "samples:        2" in text and f"control:        {control_type}" in text
  assert "resolution HxW: 64x96" in text and "fps:            16" in text


def test_summary_and_problems_name_the_rig(capsys, synthetic_dir):
  code, text = _inspect(capsys, "seg", synthetic_dir, views=("hand_right", "head_color"))
  assert code == 0, text
  assert "rig:            agibot (hand_right=2, head_color=0) (camera=view row)" in text
  assert "not read:       hand_left (camera folders of the dataset the run does not read)" in text
  code = inspect.run(tiny_config("seg", synthetic_dir, views=("hand_middle",)))
  err = capsys.readouterr().err
  assert code == inspect.EXIT_PROBLEMS and err.count("\n") == 1
  assert err.startswith("INVALID dataloader_train.dataset.views=('hand_middle',): must be distinct cameras of rig "
                        "agibot")
  config = tiny_config("seg", synthetic_dir)
  config.rig = [{"name": "wrist", "caption_prefix": "From the wrist."}]
  code = inspect.run(config)
  text = capsys.readouterr().err
  _assert_problem(code, text, synthetic_dir / "videos" / "wrist",
                  "folder missing (camera wrist of rig custom); the dataset has camera folder(s) hand_left, "
                  "hand_right, head_color, which rig custom (wrist=0) lacks")


def test_cli_subprocess_exit_codes_and_preview(synthetic_dir, tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  base_cmd = [sys.executable, "-m", "agibot_jax.data.inspect", "--config", "configs/seg.py:tiny"]
  preview = tmp_path / "preview.mp4"
  ok = subprocess.run(base_cmd + [f"--config.dataloader_train.dataset.dataset_dir={synthetic_dir}",
                                  f"--preview={preview}"], cwd=REPO, env=env, capture_output=True, text=True)
  assert ok.returncode == 0, ok.stderr
  info = video.probe(str(preview))
  # Video and control rows of 3 views (64x96 each), a label column on the left and a header naming the views.
  assert info.num_frames == 9 and 2 * 64 < info.height < 2 * 64 + 30 and 3 * 96 < info.width < 3 * 96 + 200
  # The strip of all 9 frames keeps the rows at full size (issue 31, item 9: it was 40 px tall, labels unreadable).
  strip = cv2.imread(str(tmp_path / "preview_9frames.jpg"))
  assert strip.shape[0] > 2 * 64 and strip.shape[1] > 9 * 3 * 96
  bad = subprocess.run(base_cmd + [f"--config.dataloader_train.dataset.dataset_dir={tmp_path / 'nope'}"],
                       cwd=REPO, env=env, capture_output=True, text=True)
  assert bad.returncode == 2 and str(tmp_path / "nope") in bad.stderr


def test_missing_view_file(capsys, synthetic_copy):
  path = synthetic_copy / "videos/hand_left/synthetic_001.mp4"
  path.unlink()
  _assert_problem(*_inspect(capsys, "edge", synthetic_copy), path, "missing view file")


def test_stem_in_one_view_only(capsys, synthetic_copy):
  path = synthetic_copy / "videos/hand_right/extra_clip.mp4"
  shutil.copy(synthetic_copy / "videos/hand_right/synthetic_000.mp4", path)
  _assert_problem(*_inspect(capsys, "edge", synthetic_copy), path, "exists only in view hand_right")


def test_caption_file_missing(capsys, synthetic_copy):
  path = synthetic_copy / "captions/head_color/synthetic_000.json"
  path.unlink()
  _assert_problem(*_inspect(capsys, "edge", synthetic_copy), path, "caption file missing")


def test_caption_without_caption_string(capsys, synthetic_copy):
  path = synthetic_copy / "captions/hand_left/synthetic_000.json"
  path.write_text('{"prompt": "wrong key"}')
  _assert_problem(*_inspect(capsys, "edge", synthetic_copy), path, 'no "caption" string')


@pytest.mark.parametrize("control_type", ["depth", "seg"])
def test_control_file_missing(capsys, synthetic_copy, control_type):
  path = synthetic_copy / f"control_input_{control_type}/hand_right/synthetic_001.mp4"
  path.unlink()
  _assert_problem(*_inspect(capsys, control_type, synthetic_copy), path, f"{control_type} control file missing")


@pytest.mark.parametrize("corruption", ["garbage", "truncated", "empty"])
def test_corrupt_video(capsys, synthetic_copy, corruption):
  path = synthetic_copy / "videos/head_color/synthetic_000.mp4"
  data = path.read_bytes()
  path.write_bytes({"garbage": os.urandom(len(data)), "truncated": data[:len(data) // 3], "empty": b""}[corruption])
  _assert_problem(*_inspect(capsys, "edge", synthetic_copy), path, "unreadable or corrupt video")


def test_video_shorter_than_needed(capsys, synthetic_copy):
  paths = [synthetic_copy / f"videos/{v}/synthetic_000.mp4" for v in ("head_color", "hand_left", "hand_right")]
  for p in paths:
    _write(p, frames=5)
  code, text = _inspect(capsys, "edge", synthetic_copy)
  for p in paths:
    _assert_problem(code, text, p, "video has 5 frames, need at least 9")


def test_views_with_different_frame_counts(capsys, synthetic_copy):
  path = synthetic_copy / "videos/hand_left/synthetic_000.mp4"
  _write(path, frames=10)
  _assert_problem(*_inspect(capsys, "edge", synthetic_copy), path, "view hand_left has 10 frames")


def test_views_with_different_fps(capsys, synthetic_copy):
  path = synthetic_copy / "videos/hand_right/synthetic_001.mp4"
  _write(path, fps=10.0)
  _assert_problem(*_inspect(capsys, "vis", synthetic_copy), path, "at 10 fps but view head_color")


@pytest.mark.parametrize("mismatch", [{"frames": 10}, {"fps": 25.0}])
def test_control_differs_from_rgb(capsys, synthetic_copy, mismatch):
  path = synthetic_copy / "control_input_depth/head_color/synthetic_000.mp4"
  _write(path, **mismatch)
  _assert_problem(*_inspect(capsys, "depth", synthetic_copy), path, "control video has")


def _write_hw(path, height, width):
  frames = np.random.default_rng(0).integers(0, 256, (FRAMES, height, width, 3), dtype=np.uint8)
  video.write_video(str(path), frames, 16.0)


def test_control_of_another_aspect_is_refused_unless_intended(capsys, caplog, synthetic_copy):
  """Issue 33 row 5: resized to the training resolution, a 48x64 control and its 48x80 video no longer line up."""
  path = synthetic_copy / "control_input_depth/hand_left/synthetic_001.mp4"
  _write_hw(path, 48, 64)
  _assert_problem(*_inspect(capsys, "depth", synthetic_copy), path,
                  "control video is 48x64 (W/H 1.33) but its RGB video")
  code, text = _inspect(capsys, "depth", synthetic_copy, allow_control_stretch=True)
  assert code == 0, text
  assert f"{path} 48x64 (W/H 1.33) vs 48x80 (W/H 1.67)" in caplog.text


def test_control_of_another_size_same_aspect_is_named(capsys, caplog, synthetic_copy):
  path = synthetic_copy / "control_input_seg/head_color/synthetic_000.mp4"
  _write_hw(path, 24, 40)
  code, text = _inspect(capsys, "seg", synthetic_copy)
  assert code == 0, text
  assert (f"1 control video(s) of another size than their RGB video, each resized to the training resolution by "
          f"itself: {path} 24x40 (W/H 1.67) vs 48x80 (W/H 1.67)") in caplog.text


def test_empty_dataset(capsys, tmp_path):
  for view in ("head_color", "hand_left", "hand_right"):
    (tmp_path / "videos" / view).mkdir(parents=True)
    (tmp_path / "captions" / view).mkdir(parents=True)
  _assert_problem(*_inspect(capsys, "edge", tmp_path), tmp_path / "videos/head_color", "empty dataset")


def test_every_problem_is_reported_not_just_the_first(capsys, synthetic_copy):
  missing = synthetic_copy / "videos/hand_left/synthetic_000.mp4"
  missing.unlink()
  caption = synthetic_copy / "captions/head_color/synthetic_001.json"
  caption.write_text("not json")
  code, text = _inspect(capsys, "edge", synthetic_copy)
  _assert_problem(code, text, missing, "missing view file")
  _assert_problem(code, text, caption, "not valid JSON")


@pytest.mark.parametrize("full", ["flag", "config"])
def test_full_decode_finds_a_file_corrupt_mid_stream(capsys, synthetic_copy, full):
  """Issue 17 item 5: `--full` / `validate=full` decode every frame training reads; the default probe does not."""
  path = synthetic_copy / "control_input_seg/hand_right/synthetic_000.mp4"
  corrupt_mid_stream(path, 9)
  code, text = _inspect(capsys, "seg", synthetic_copy)
  assert code == 0, text
  if full == "flag":
    code = inspect.run(tiny_config("seg", synthetic_copy), full=True)
    out = capsys.readouterr()
    text = out.out + out.err
  else:
    code, text = _inspect(capsys, "seg", synthetic_copy, validate="full")
  _assert_problem(code, text, path, "corrupt control video")
