"""agibot_jax/data/agibot_world/lerobot.py: info.json keys, v2.1 per-episode files, v3.0 packed files, camera maps."""

import json

import pytest

from agibot_jax import rig
from agibot_jax.data.agibot_world import captions, lerobot
from tests.data.agibot_world import conftest


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
  base = tmp_path_factory.mktemp("lerobot")
  conftest.write_lerobot(base / "a4l_task_327", "v2.1", [20, 14], ["Stock the shelf | A shelf and a crate", "Wipe"])
  conftest.write_lerobot(base / "port_v30", "v3.0", [20, 14], ["Stock the shelf", "Stock the shelf"],
                         action_texts={1: [(0, 5, "Pick a can"), (5, 14, "Place it")]})
  return base / "a4l_task_327", base / "port_v30"


def test_video_keys_from_info(roots):
  v21, v30 = roots
  assert lerobot.read_info(str(v21)).video_keys == conftest.LEROBOT_KEYS["v2.1"]
  assert lerobot.read_info(str(v30)).video_keys == conftest.LEROBOT_KEYS["v3.0"]
  with pytest.raises(ValueError, match="info.json: --video_keys needs 3"):
    lerobot.read_info(str(v21), ("observation.images.head",))


def test_bad_info_named(tmp_path, roots):
  (tmp_path / "meta").mkdir()
  info = json.loads((roots[0] / "meta" / "info.json").read_text())
  del info["features"]["observation.images.hand_left"]
  (tmp_path / "meta" / "info.json").write_text(json.dumps(info))
  with pytest.raises(ValueError, match=r"info.json: no video feature for view\(s\) hand_left .*--video_keys"):
    lerobot.read_info(str(tmp_path))
  (tmp_path / "meta" / "info.json").write_text(json.dumps(dict(info, codebase_version="v1.6")))
  with pytest.raises(ValueError, match="codebase_version 'v1.6' is not supported"):
    lerobot.read_info(str(tmp_path))


def test_v21_one_file_per_episode(roots):
  episodes, skips = lerobot.discover(str(roots[0]))
  assert skips == [] and [(e.task, e.episode, e.num_frames) for e in episodes] == [
      ("a4l_task_327", "0", 20), ("a4l_task_327", "1", 14)]
  assert episodes[0].first_frames == (0, 0, 0)
  assert episodes[1].videos[0].path.endswith("videos/chunk-000/observation.images.head/episode_000001.mp4")
  assert episodes[0].text == captions.EpisodeText("Stock the shelf", "A shelf and a crate")
  assert [e.episode for e in lerobot.discover(str(roots[0]), tasks=("1",))[0]] == ["1"]  # task_index of "Wipe"


def test_v30_packed_file_and_frame_texts(roots):
  episodes, skips = lerobot.discover(str(roots[1]), episodes=("1",))
  assert skips == [] and len(episodes) == 1
  ep = episodes[0]
  assert (ep.first_frames, ep.num_frames) == ((20, 20, 20), 14)
  assert ep.videos[0].path.endswith("videos/observation.images.top_head/chunk-000/file-000.mp4")
  assert ep.text == captions.EpisodeText("Stock the shelf", "A shelf and a crate of cans", (
      captions.Segment(0, 5, "Pick a can"), captions.Segment(5, 14, "Place it")))


def test_v30_timestamps_disagreeing_with_length_skip(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  conftest.write_lerobot(tmp_path / "d", "v3.0", [20, 14], ["a", "b"])
  path = tmp_path / "d" / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
  table = pq.read_table(path).to_pydict()
  table["length"] = [20, 16]
  pq.write_table(pa.table(table), path)
  episodes, skips = lerobot.discover(str(tmp_path / "d"))
  assert [e.episode for e in episodes] == ["0"]
  assert [(s.key, s.reason) for s in skips] == [
      ("d_1", "observation.images.top_head spans 14 frames by its from/to timestamps but the episode's length is 16")]


def test_a_damaged_episode_parquet_skips_that_episode(tmp_path, roots):
  """Issue 33 (damaged parquet files, tried once): one damaged episode file refused the whole import, its message
  over two lines; now that episode is skipped with the reason in one line."""
  import shutil

  root = tmp_path / "a4l_task_327"
  shutil.copytree(roots[0], root)
  data = root / "data" / "chunk-000" / "episode_000001.parquet"
  raw = bytearray(data.read_bytes())
  raw[len(raw) // 3:len(raw) // 3 + 64] = bytes(64)
  data.write_bytes(bytes(raw))
  lerobot._frame_texts.cache_clear()  # pylint: disable=protected-access
  episodes, skips = lerobot.discover(str(root))
  assert [e.episode for e in episodes] == ["0"]
  assert [(s.key, s.path) for s in skips] == [("a4l_task_327_1", str(data))]
  assert skips[0].reason.startswith("unreadable parquet (") and "\n" not in skips[0].reason


def test_camera_map_makes_or_follows_a_rig():
  pairs = [("observation.images.cam_high", "head"), ("observation.images.cam_left_wrist", "left_wrist")]
  made, keys = lerobot.camera_map(pairs, name="aloha")
  assert made.describe() == "aloha (head=0, left_wrist=1)" and keys == tuple(k for k, _ in pairs)
  assert made.cameras[1].caption_prefix == "The video is captured from the left wrist camera."
  assert made.cross_view_attn_map() == ((1,), (0,), ())
  # A rig's own mapping: each camera reads the feature mapped to it, else observation.images.<camera>.
  arm = rig.from_cameras([{"name": "laptop", "caption_prefix": "From the laptop."},
                          {"name": "phone", "caption_prefix": "From the phone."}], name="so100")
  assert lerobot.camera_map([("observation.images.top", "phone")], arm) == (
      arm, ("observation.images.laptop", "observation.images.top"))
  with pytest.raises(rig.RigError, match=r"^--cameras: head is not a camera of rig so100 \(laptop=0, phone=1\)$"):
    lerobot.camera_map(pairs[:1], arm)
  with pytest.raises(rig.RigError, match="maps two video features to one camera"):
    lerobot.camera_map([(k, "head") for k, _ in pairs])
  four = pairs + [("observation.images.cam_low", "low"), ("observation.images.cam_right_wrist", "right_wrist")]
  with pytest.raises(rig.RigError, match=r"^rig 'aloha' has 4 cameras \(head, left_wrist, low, right_wrist\); the "
                                         r"released network has 3 view rows"):
    lerobot.camera_map(four, name="aloha")


def test_any_robots_video_features(tmp_path):
  conftest.write_lerobot(tmp_path / "aloha", "v3.0", [9], ["Put the cup in the bin"], keys=conftest.ALOHA_KEYS,
                         robot_type="aloha")
  views = ("head", "right_wrist")
  keys = (conftest.ALOHA_KEYS[0], conftest.ALOHA_KEYS[3])
  assert lerobot.read_info(str(tmp_path / "aloha"), keys, views).video_keys == keys
  with pytest.raises(ValueError, match=r"info.json: observation.images.cam_top is not among its video features "
                                       r"\['observation.images.cam_high', "):
    lerobot.read_info(str(tmp_path / "aloha"), (keys[0], "observation.images.cam_top"), views)
  with pytest.raises(ValueError, match=r"no video feature for view\(s\) head, right_wrist .*--cameras KEY=VIEW"):
    lerobot.read_info(str(tmp_path / "aloha"), (), views)
