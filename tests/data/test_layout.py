"""agibot_jax/data/layout.py: stem matching, prompts, skip_invalid."""

import pytest

from agibot_jax.data import layout

VIEWS = ("head_color", "hand_left", "hand_right")


def test_scan_matches_stems_and_reads_prompt(synthetic_dir):
  samples, problems = layout.scan(str(synthetic_dir), VIEWS, "seg", frames_needed=9)
  assert problems == []
  assert [s.sample_id for s in samples] == ["synthetic_000", "synthetic_001"]
  s = samples[0]
  assert [p.split("/")[-2:] for p in s.videos] == [[v, "synthetic_000.mp4"] for v in VIEWS]
  assert [p.split("/")[-3] for p in s.controls] == ["control_input_seg"] * 3
  assert s.prompt.startswith("A synthetic tabletop scene")
  assert (s.num_frames, s.fps, s.original_hw) == (12, 16.0, ((48, 80),) * 3)
  edge_samples, _ = layout.scan(str(synthetic_dir), VIEWS, "edge", frames_needed=9)
  assert edge_samples[0].controls is None


def test_load_index_refuses_or_skips(synthetic_copy):
  (synthetic_copy / "videos/hand_left/synthetic_001.mp4").unlink()
  with pytest.raises(layout.DatasetError, match="hand_left/synthetic_001.mp4") as err:
    layout.load_index(str(synthetic_copy), VIEWS, "edge", 9)
  assert len(err.value.problems) == 1
  kept = layout.load_index(str(synthetic_copy), VIEWS, "edge", 9, skip_invalid=True)
  assert [s.sample_id for s in kept] == ["synthetic_000"]


def test_skip_invalid_with_nothing_left_still_refuses(synthetic_copy):
  with pytest.raises(layout.DatasetError, match="need at least 99"):
    layout.load_index(str(synthetic_copy), VIEWS, "edge", 99, skip_invalid=True)


def test_bad_config_is_named(synthetic_dir):
  with pytest.raises(ValueError, match="hand_middle"):
    layout.scan(str(synthetic_dir), ("head_color", "hand_middle"), "edge", 9)
  with pytest.raises(ValueError, match="hdmap"):
    layout.scan(str(synthetic_dir), VIEWS, "hdmap", 9)
