"""agibot_jax/data/agibot_world/raw.py: task_info, episode folders and tar shards, and what gets skipped."""

import json

import numpy as np
import pytest

from agibot_jax.data.agibot_world import depth, raw, source
from tests.data.agibot_world import conftest


def _keys(items):
  return [f"{e.task}_{e.episode}" for e in items]


def test_discover_lists_folders_and_shards(raw_root):
  episodes, skips = raw.discover(str(raw_root))
  assert _keys(episodes) == ["327_1001", "327_1002", "327_1003", "327_1004", "327_1005", "327_1007", "327_1008",
                             "328_2001", "328_2002"]
  assert {s.key: s.reason for s in skips} == {
      "327_1006": f"episode not listed in {raw_root}/task_info/task_327.json",
      "329_*": "task_info file missing (no task name or sub-actions)"}
  first = episodes[0]
  assert first.text.task_name == "Stock the shelf 327" and first.text.segments[1] == (
      raw.captions.Segment(12, 30, "Place the can on the shelf"))


def test_filters(raw_root):
  episodes, skips = raw.discover(str(raw_root), tasks=("328", "999"))
  assert _keys(episodes) == ["328_2001", "328_2002"] and [s.key for s in skips] == ["999_*"]
  episodes, skips = raw.discover(str(raw_root), episodes=("1001", "9999"))
  assert _keys(episodes) == ["327_1001"]
  assert [(s.key, s.reason) for s in skips if s.episode == "9999"] == [
      ("?_9999", "episode not found under observations/")]


def test_media_of_a_folder_and_of_a_shard_member(raw_root):
  episodes = {f"{e.task}_{e.episode}": e for e in raw.discover(str(raw_root))[0]}
  media = episodes["327_1001"].media(want_depth=True)
  assert [b.path.split("/")[-1] for b in media.videos] == ["head_color.mp4", "hand_left_color.mp4",
                                                          "hand_right_color.mp4"]
  assert len(media.depth) == 30 and media.depth[3].path.endswith("head_depth_000003.png")
  shard = episodes["328_2001"].media(want_depth=True)
  assert shard.videos[0].label.endswith("328/2001-2002.tar:2001/videos/head_color.mp4")
  assert len(shard.depth) == 20
  np.testing.assert_array_equal(depth.read_png(shard.depth[3]), conftest.depth_mm(3))
  with pytest.raises(source.Unusable, match="missing video.*hand_right_color.mp4"):
    episodes["327_1003"].media(want_depth=False)


def test_task_info_shapes(tmp_path):
  path = tmp_path / "task_5.json"
  path.write_text(json.dumps({"episode_id": 1}))
  with pytest.raises(source.Unusable, match="must be a JSON list"):
    raw.load_task_info(str(path))
  path.write_text(json.dumps([{"episode_id": 7, "task_name": "Wipe", "lable_info": {"action_config": [
      {"start_frame": 3, "end_frame": 9, "action_text": "Wipe the table"}, {"start_frame": "x"}]}}]))
  assert raw.load_task_info(str(path)) == {"7": raw.captions.EpisodeText("Wipe", "", (
      raw.captions.Segment(3, 9, "Wipe the table"),))}
