"""agibot_jax/data/layout.py: stem matching (any extension case), prompts, skip_invalid, the aspect warning."""

import logging
import os

import numpy as np
import pytest

from agibot_jax import rig
from agibot_jax import video_io as video
from agibot_jax.data import layout
from tests.data.conftest import FRAMES, corrupt_mid_stream

VIEWS = ("head_color", "hand_left", "hand_right")


def test_scan_matches_stems_and_reads_prompt(synthetic_dir):
  samples, problems = layout.scan(str(synthetic_dir), rig.AGIBOT, "seg", frames_needed=9)
  assert problems == []
  assert [s.sample_id for s in samples] == ["synthetic_000", "synthetic_001"]
  s = samples[0]
  assert [p.split("/")[-2:] for p in s.videos] == [[v, "synthetic_000.mp4"] for v in VIEWS]
  assert [p.split("/")[-3] for p in s.controls] == ["control_input_seg"] * 3
  assert s.prompt.startswith("A synthetic tabletop scene")
  assert (s.num_frames, s.fps, s.original_hw) == (12, 16.0, ((48, 80),) * 3)
  edge_samples, _ = layout.scan(str(synthetic_dir), rig.AGIBOT, "edge", frames_needed=9)
  assert edge_samples[0].controls is None


def test_load_index_refuses_or_skips(synthetic_copy):
  (synthetic_copy / "videos/hand_left/synthetic_001.mp4").unlink()
  with pytest.raises(layout.DatasetError, match="hand_left/synthetic_001.mp4") as err:
    layout.load_index(str(synthetic_copy), rig.AGIBOT, "edge", 9)
  assert len(err.value.problems) == 1
  kept = layout.load_index(str(synthetic_copy), rig.AGIBOT, "edge", 9, skip_invalid=True)
  assert [s.sample_id for s in kept] == ["synthetic_000"]


def test_skip_invalid_with_nothing_left_still_refuses(synthetic_copy):
  with pytest.raises(layout.DatasetError, match="need at least 99"):
    layout.load_index(str(synthetic_copy), rig.AGIBOT, "edge", 99, skip_invalid=True)


def test_bad_config_is_named(synthetic_dir):
  with pytest.raises(ValueError, match="hdmap"):
    layout.scan(str(synthetic_dir), rig.AGIBOT, "hdmap", 9)


def test_upper_case_extension_is_found(synthetic_copy):
  """Issue 17 item 10: `.MP4` files were skipped silently."""
  for view in VIEWS:
    path = synthetic_copy / "videos" / view / "synthetic_001.mp4"
    path.rename(path.with_suffix(".MP4"))
  samples, problems = layout.scan(str(synthetic_copy), rig.AGIBOT, "edge", frames_needed=9)
  assert problems == []
  assert [p.rsplit("/", 1)[-1] for p in samples[1].videos] == ["synthetic_001.MP4"] * 3


def test_same_stem_twice_is_a_problem(synthetic_copy):
  path = synthetic_copy / "videos/hand_left/synthetic_000.mp4"
  (path.parent / "synthetic_000.MP4").write_bytes(path.read_bytes())
  samples, problems = layout.scan(str(synthetic_copy), rig.AGIBOT, "edge", frames_needed=9)
  assert [p.sample_id for p in problems] == ["synthetic_000"] and "has 2 files here" in problems[0].message
  assert [s.sample_id for s in samples] == ["synthetic_001"]


def test_aspect_ratio_warning_lists_views(synthetic_copy, caplog):
  """Issue 17 item 10: views with another aspect ratio than the training resolution are named (48x80 is 1.67)."""
  frames = np.random.default_rng(0).integers(0, 256, (FRAMES, 60, 80, 3), dtype=np.uint8)  # 60x80: 1.33
  video.write_video(str(synthetic_copy / "videos/hand_right/synthetic_000.mp4"), frames, 16.0)
  with caplog.at_level(logging.WARNING, logger="agibot_jax"):
    layout.load_index(str(synthetic_copy), rig.AGIBOT, "edge", 9, resolution_hw=(48, 80))
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert warnings == ["view(s) whose aspect ratio (W/H) differs from the training resolution 48x80 (1.67), "
                      "stretched to it: hand_right 60x80 (1.33)"]
  caplog.clear()
  layout.load_index(str(synthetic_copy), rig.AGIBOT, "edge", 9, resolution_hw=(64, 96))  # 1.5
  assert "head_color 48x80 (1.67); hand_left 48x80 (1.67); hand_right 48x80 (1.67), 60x80 (1.33)" in caplog.text


def test_full_validation_decodes_every_frame_read(synthetic_copy):
  """Issue 17 item 5: a file corrupt mid-stream passes the probe but not `full`."""
  path = synthetic_copy / "videos/hand_left/synthetic_001.mp4"
  corrupt_mid_stream(path, 9)
  assert layout.scan(str(synthetic_copy), rig.AGIBOT, "edge", 9)[1] == []
  samples, problems = layout.scan(str(synthetic_copy), rig.AGIBOT, "edge", 9, full=True)
  assert [s.sample_id for s in samples] == ["synthetic_000"]
  assert len(problems) == 1 and problems[0].path == str(path) and "corrupt video" in problems[0].message


def test_empty_prompt_is_warned(synthetic_copy, caplog):
  """Issue 33 row 11: `{"caption": ""}` for head_color (the prompt) was accepted without a word."""
  path = synthetic_copy / "captions/head_color/synthetic_001.json"
  path.write_text('{"caption": " "}')
  with caplog.at_level(logging.WARNING, logger="agibot_jax"):
    samples = layout.load_index(str(synthetic_copy), rig.AGIBOT, "edge", 9)
  assert len(samples) == 2
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert warnings == [f"1 sample(s) with an empty prompt (their head_color caption, which is the prompt): {path}"]


@pytest.mark.parametrize("name", ["captions/hand_right", "videos"])
def test_unreadable_folder_is_a_problem_not_a_traceback(synthetic_copy, monkeypatch, name):
  """Issue 33 (unreadable files, tried once as a user without the rights): a folder that cannot be listed stopped the
  check with a PermissionError traceback (videos/: in the camera-folder listing)."""
  folder = str(synthetic_copy / name)
  listdir, isfile, isdir = os.listdir, os.path.isfile, os.path.isdir

  def denied(path):
    if str(path) == folder:
      raise PermissionError(13, "Permission denied", path)
    return listdir(path)

  monkeypatch.setattr(os, "listdir", denied)
  # Nor is what it holds seen (no search right): not named missing one by one.
  inside = lambda path: str(path).startswith(folder + os.sep)
  monkeypatch.setattr(os.path, "isfile", lambda path: not inside(path) and isfile(path))
  monkeypatch.setattr(os.path, "isdir", lambda path: not inside(path) and isdir(path))
  samples, problems = layout.scan(str(synthetic_copy), rig.AGIBOT, "edge", 9)
  assert [str(p) for p in problems] == [f"{folder}: folder cannot be read (Permission denied)"]


def test_camera_folders_of_another_rig_are_named(synthetic_copy, caplog):
  """A rig whose camera folders the dataset lacks: each missing folder names the rig, and the dataset's own camera
  folders (and its rig.json, when an importer wrote one) say what to set instead."""
  two = rig.from_cameras([{"name": "top", "caption_prefix": "From above."},
                          {"name": "hand_left", "caption_prefix": "From the left hand."}], name="arm")
  (synthetic_copy / rig.RIG_FILE).write_text("{}")
  _, problems = layout.scan(str(synthetic_copy), two, "seg", 9)
  missing = [str(p) for p in problems if p.sample_id is None]
  hint = (f"folder missing (camera top of rig arm); the dataset has camera folder(s) hand_right, head_color, which rig "
          f"arm (top=0, hand_left=1) lacks: set config.rig to the dataset's cameras "
          f"(--config.rig={synthetic_copy}/rig.json)")
  assert missing == [f"{synthetic_copy}/{folder}/top: {hint}" for folder in ("videos", "captions", "control_input_seg")]
  # Folders of cameras the run does not read: a warning naming them, not a problem.
  with caplog.at_level(logging.WARNING):
    samples = layout.load_index(str(synthetic_copy), rig.AGIBOT.select(("hand_left",)), "seg", 9)
  assert len(samples) == 2 and samples[0].videos == (f"{synthetic_copy}/videos/hand_left/synthetic_000.mp4",)
  assert (f"camera folder(s) hand_right, head_color of {synthetic_copy}/videos are not read: the run's cameras are rig "
          "agibot (hand_left=1)") in caplog.text
