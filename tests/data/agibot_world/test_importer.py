"""agibot_jax/data/agibot_world/importer.py: clips, pixels, captions, depth, skips, resume; the output trains.

The raw tree (conftest.write_raw_tree) is imported once with 9-frame clips (the tiny configs' length), head
depth and blank hand depth. Pixel checks compare a decoded output frame with the decoded source frame it was
cut from: the only loss between them is the importer's H.264 re-encode (crf 12), within 2 levels on average,
while the neighbouring source frames are tens of levels away.
"""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from agibot_jax import rig
from agibot_jax import video_io as video
from agibot_jax.data import inspect, pipeline
from agibot_jax.data.agibot_world import decode, depth, importer, lerobot, raw
from tests.data.agibot_world import conftest
from tests.data.conftest import tiny_config

CODEC_LOSS = 2.0  # mean |diff| of one H.264 crf-12 re-encode of the fixture frames
WRONG_FRAME = 10.0  # neighbouring fixture frames differ by far more


def _settings(src, dst, **kw):
  return importer.Settings(str(src), str(dst), **{"clip_frames": 9, **kw})


@pytest.fixture(scope="module")
def imported(raw_root, tmp_path_factory):
  dst = tmp_path_factory.mktemp("imported")
  summary = importer.run(_settings(raw_root, dst, depth=True, hand_depth="blank", workers=2))
  return dst, summary, json.loads((dst / importer.MANIFEST).read_text())


def _frame(path, index):
  return video.read_frames(str(path), index, 1, "imageio")[0]


def _mean_abs(a, b):
  return float(np.abs(a.astype(np.int32) - b).mean())


def test_clip_count_and_frame_ranges(imported):
  dst, summary, manifest = imported
  clips = {key: ep["clips"] for key, ep in manifest["episodes"].items()}
  three = {"c0": [0, 8], "c1": [9, 17], "c2": [18, 26]}
  two = {"c0": [0, 8], "c1": [9, 17]}
  assert clips == {f"{key}": {f"{key}_{c}": r for c, r in ranges.items()} for key, ranges in [
      ("327_1001", three), ("327_1002", three), ("327_1008", {"c0": [0, 8]}), ("328_2001", two),
      ("328_2002", two)]}
  assert (summary.clips, summary.written, summary.episodes) == (11, 11, 5)
  ids = sorted(c for ranges in clips.values() for c in ranges)
  for folder in ("videos", importer.DEPTH_FOLDER):
    for view in rig.AGIBOT.names:
      assert sorted(p[:-4] for p in os.listdir(dst / folder / view)) == ids
  info = video.probe(str(dst / "videos" / "hand_left" / "328_2002_c1.mp4"))
  assert (info.num_frames, info.fps, info.height, info.width) == (9, 30.0, conftest.H, conftest.W)
  assert manifest["settings"]["stride"] == 9 and manifest["episodes"]["328_2001"]["videos"]["head_color"].endswith(
      "2001-2002.tar:2001/videos/head_color.mp4")


@pytest.mark.parametrize("key, k, j", [("327_1001", 1, 3), ("327_1002", 2, 8), ("328_2002", 1, 0)])
def test_pixels_equal_the_source_frame(imported, raw_root, key, k, j):
  """327_1002 is AV1 when the fixture could encode it (decoded by libdav1d), 328_2002 sits in a tar shard."""
  dst, _, manifest = imported
  first = manifest["episodes"][key]["clips"][f"{key}_c{k}"][0]
  episode = next(e for e in raw.discover(str(raw_root))[0] if f"{e.task}_{e.episode}" == key)
  for view, blob in zip(rig.AGIBOT.names, episode.media(want_depth=False).videos):
    info = decode.probe(blob)
    src = [f for _, f in zip(range(first + j + 2), decode.iter_frames(blob, info, 0, "imageio"))]
    out = _frame(dst / "videos" / view / f"{key}_c{k}.mp4", j)
    assert _mean_abs(out, src[first + j]) < CODEC_LOSS, (key, view)
    assert _mean_abs(out, src[first + j + 1]) > WRONG_FRAME and (
        first + j == 0 or _mean_abs(out, src[first + j - 1]) > WRONG_FRAME)


def test_captions_follow_the_template(imported):
  dst = imported[0]
  base = "Stock the shelf 327. A shelf and a crate of cans."
  expected = {"c0": f"{base} Pick a can from the crate.",
              "c1": f"{base} Pick a can from the crate. Place the can on the shelf.",
              "c2": f"{base} Place the can on the shelf."}
  for c, caption in expected.items():
    for view in rig.AGIBOT.names:
      assert json.loads((dst / "captions" / view / f"327_1001_{c}.json").read_text()) == {"caption": caption}
  assert json.loads((dst / "captions" / "head_color" / "328_2001_c0.json").read_text()) == {
      "caption": "Stock the shelf 328. A shelf and a crate of cans."}


def test_depth_video_is_the_normalised_clip(imported):
  dst = imported[0]
  expected = depth.to_video(np.stack([conftest.depth_mm(i) for i in range(9, 18)]))
  out = video.read_frames(str(dst / importer.DEPTH_FOLDER / "head_color" / "327_1001_c1.mp4"), 0, 9, "imageio")
  errors = [_mean_abs(o, e) for o, e in zip(out, expected)]
  assert max(errors) < CODEC_LOSS, errors
  assert out[:, 1:6, 1:6].max() < 8  # the invalid corner stays black
  assert out[0, 20:, 8:12].mean() > out[-1, 20:, -4:].mean() + 150  # near (left, early) bright, far dark
  hand = video.read_frames(str(dst / importer.DEPTH_FOLDER / "hand_left" / "327_1001_c1.mp4"), 0, 9, "imageio")
  assert hand.max() < 4


def test_skipped_items_and_reasons(imported, raw_root):
  manifest = imported[2]
  obs = f"{raw_root}/observations/327"
  reasons = {key: (s["path"], s["reason"]) for key, s in manifest["skipped"].items()}
  assert reasons["327_1003"] == (f"{obs}/1003/videos", "missing video(s) hand_right_color.mp4")
  assert reasons["327_1004"] == (f"{obs}/1004/videos", "unequal frame counts: head_color 30, hand_left 29, hand_right 30")
  assert reasons["327_1005"] == (f"{obs}/1005/videos", "too few frames: 5, one clip of 9 frames needs 9")
  assert reasons["327_1006"][1] == f"episode not listed in {raw_root}/task_info/task_327.json"
  assert reasons["327_1007"] == (f"{obs}/1007/videos/head_color.mp4",
                                 "cannot open video (missing moov atom: truncated or corrupt)")
  path, reason = reasons["327_1008"]
  assert path == f"{obs}/1008/videos/hand_left_color.mp4"
  assert reason.startswith("decoding stopped before frame") and reason.endswith("; 1 clip(s) written before")
  assert reasons["329_*"] == (f"{raw_root}/task_info/task_329.json",
                              "task_info file missing (no task name or sub-actions)")
  assert len(reasons) == 7


def test_inspect_and_a_batch_accept_the_output(imported, capsys):
  dst = imported[0]
  for control_type in ("depth", "edge"):
    assert inspect.run(tiny_config(control_type, dst)) == 0, capsys.readouterr().err
  assert "samples:        11" in capsys.readouterr().out
  batch = next(pipeline.from_config(tiny_config("depth", dst), num_epochs=1))
  assert batch["video"].shape == batch["control_input_depth"].shape == (1, 3, 27, 64, 96)
  assert batch["ai_caption"][0][0].startswith(rig.AGIBOT.cameras[0].caption_prefix + " Stock the shelf")


def test_resume_writes_only_what_is_missing(imported, raw_root, tmp_path):
  dst = tmp_path / "dst"
  shutil.copytree(imported[0], dst)
  cut = dst / "videos" / "head_color" / "327_1001_c1.mp4"
  original = video.read_frames(str(cut), 0, 9, "imageio")
  cut.unlink()
  (dst / "captions" / "hand_right" / "328_2001_c0.json").unlink()
  stale = dst / "videos" / "hand_left" / ".327_1001_c1.4242.tmp.mp4"
  stale.write_bytes(b"half")
  kept = dst / "videos" / "hand_left" / "327_1002_c0.mp4"
  before = kept.stat().st_mtime_ns
  settings = _settings(raw_root, dst, depth=True, hand_depth="blank")
  summary = importer.run(settings)
  assert (summary.clips, summary.written) == (11, 2)
  assert not stale.exists() and kept.stat().st_mtime_ns == before
  # Re-cut from frame 9 (a seek, not a decode from 0): the same frames as the first import.
  assert _mean_abs(video.read_frames(str(cut), 0, 9, "imageio"), original) < 0.5
  with pytest.raises(ValueError, match=r"manifest.json: DST was imported with other settings \(clip_frames=9, stride=9\)"):
    importer.run(dataclasses.replace(settings, clip_frames=12))


def test_fps_stride_pad_and_max_clips(raw_root, tmp_path):
  dst = tmp_path / "dst"
  summary = importer.run(_settings(raw_root, dst, fps=15.0, stride=4, aspect="pad", max_clips=3, tasks=("327",)))
  manifest = json.loads((dst / importer.MANIFEST).read_text())
  assert {k: e["clips"] for k, e in manifest["episodes"].items()} == {
      "327_1001": {"327_1001_c0": [0, 16], "327_1001_c1": [8, 24]}, "327_1002": {"327_1002_c0": [0, 16]}}
  assert summary.clips == 3 and manifest["episodes"]["327_1001"]["fps"] == 15.0
  assert manifest["settings"] == {"clip_frames": 9, "stride": 4, "fps": 15.0, "aspect": "pad", "depth": False,
                                  "hand_depth": "none", "caption_template": "{task_name} {scene} {actions}"}
  path = dst / "videos" / "hand_right" / "327_1001_c1.mp4"
  info = video.probe(str(path))
  assert (info.num_frames, info.fps, info.height, info.width) == (9, 15.0, 48, 86)
  out = _frame(path, 2)[:, 15:71]  # clip frame 2 of c1 is source frame 8 + 2 * 2; bars at 0:11 and 75:86
  src = video.read_frames(str(raw_root / "observations/327/1001/videos/hand_right_color.mp4"), 11, 3,
                          "imageio")[:, :, 4:60]  # away from the bars, where chroma blends across the edge
  assert _mean_abs(out, src[1]) < CODEC_LOSS and min(_mean_abs(out, src[0]), _mean_abs(out, src[2])) > WRONG_FRAME
  assert not os.path.exists(dst / importer.DEPTH_FOLDER)


def test_av1_with_opencv_is_refused_before_any_clip(raw_root, tmp_path):
  if conftest.av1_encoder() is None:
    pytest.skip("no AV1 encoder for the fixture: episode 1002 is H.264")
  with pytest.raises(decode.MissingCodecError, match="1002/videos/head_color.mp4 is AV1"):
    importer.run(_settings(raw_root, tmp_path / "dst", episodes=("1002",), video_backend="opencv"))
  assert not (tmp_path / "dst" / "videos").exists()


@pytest.mark.parametrize("version, backend", [("v2.1", "imageio"), ("v3.0", "imageio"), ("v3.0", "opencv")])
def test_lerobot_roots(tmp_path, version, backend):
  """v3.0's second episode starts at frame 20 of the packed files: its first clip frame is that frame."""
  root = tmp_path / "ds"
  conftest.write_lerobot(root, version, [20, 14], ["Stock the shelf | A shelf", "Wipe"],
                         action_texts={1: [(0, 5, "Pick a can"), (5, 14, "Wipe the table")]})
  dst = tmp_path / "dst"
  summary = importer.run(_settings(root, dst, video_backend=backend))
  assert (summary.kind, summary.clips) == (f"lerobot {version}", 3)
  manifest = json.loads((dst / importer.MANIFEST).read_text())
  assert manifest["episodes"]["ds_1"]["clips"] == {"ds_1_c0": [0, 8]}
  assert manifest["episodes"]["ds_1"]["first_frames"] == ([20] * 3 if version == "v3.0" else [0] * 3)
  for v in range(3):
    out = video.read_frames(str(dst / "videos" / rig.AGIBOT.names[v] / "ds_1_c0.mp4"), 0, 9, "imageio")
    truth = conftest.frames(v, 0, 9, seed=1)
    assert max(_mean_abs(o, t) for o, t in zip(out, truth)) < 2 * CODEC_LOSS  # source encode + re-encode
    assert _mean_abs(out[0], conftest.frames(v, 1, 1, seed=1)[0]) > WRONG_FRAME
  assert json.loads((dst / "captions" / "head_color" / "ds_1_c0.json").read_text())["caption"] == (
      "Wipe. A shelf and a crate of cans. Pick a can. Wipe the table.")
  with pytest.raises(ValueError, match="--depth reads the raw release"):
    importer.run(_settings(root, tmp_path / "dst2", depth=True))


def test_any_lerobot_dataset_with_a_camera_map(tmp_path, capsys):
  """An ALOHA-style v3.0 root (four cameras, the episodes packed in one MP4 per camera), two of its cameras imported
  under the map's names: the right source frames (episode 1 starts at packed frame 20) and the task as caption;
  DST/rig.json is the rig to train with, and inspect accepts the output with it."""
  root = tmp_path / "aloha_cups"
  conftest.write_lerobot(root, "v3.0", [20, 14], ["Put the cup in the bin", "Stack the cups"],
                         keys=conftest.ALOHA_KEYS, robot_type="aloha")
  two, keys = lerobot.camera_map([(conftest.ALOHA_KEYS[0], "head"), (conftest.ALOHA_KEYS[3], "right_wrist")],
                                 name="dst")
  dst = tmp_path / "dst"
  summary = importer.run(_settings(root, dst, rig=two, video_keys=keys))
  assert (summary.kind, summary.clips) == ("lerobot v3.0", 3)
  assert sorted(os.listdir(dst / "videos")) == sorted(os.listdir(dst / "captions")) == ["head", "right_wrist"]
  manifest = json.loads((dst / importer.MANIFEST).read_text())
  assert manifest["settings"]["cameras"] == ["head", "right_wrist"]
  assert list(manifest["episodes"]["aloha_cups_1"]["videos"]) == ["head", "right_wrist"]
  out = video.read_frames(str(dst / "videos" / "right_wrist" / "aloha_cups_1_c0.mp4"), 0, 9, "imageio")
  truth = conftest.frames(3, 0, 9, seed=1)  # the fourth camera, cam_right_wrist
  assert max(_mean_abs(o, t) for o, t in zip(out, truth)) < 2 * CODEC_LOSS  # source encode + re-encode
  assert _mean_abs(out[0], conftest.frames(0, 0, 1, seed=1)[0]) > WRONG_FRAME  # not cam_high's
  assert json.loads((dst / "captions" / "head" / "aloha_cups_1_c0.json").read_text()) == {"caption": "Stack the cups."}
  assert rig.parse(str(dst / rig.RIG_FILE)) == two
  config = tiny_config("edge", dst)
  config.rig = str(dst / rig.RIG_FILE)
  assert inspect.run(config) == 0, capsys.readouterr().err
  assert "rig:            dst (head=0, right_wrist=1)" in capsys.readouterr().out
  with pytest.raises(ValueError, match=r"imported with other settings \(cameras=\['head', 'right_wrist'\]\)"):
    importer.run(_settings(root, dst, video_keys=conftest.ALOHA_KEYS[:3]))  # the agibot rig's three folders
