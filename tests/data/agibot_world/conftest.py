"""Small synthetic AgiBot World trees written to the spec's structure (shared spec agibot_world_formats.md §1-§2).

Frames are 64x48; frame i of view v has a flat grey level that jumps 37 levels per frame and a white square
moving 4 px per frame, so a frame taken from the wrong index differs from the right one by tens of levels while
codec loss stays within a few. Depth PNGs are uint16 millimetres with an invalid (0) corner.
"""

import functools
import json
import os
import pathlib
import subprocess
import tarfile

import cv2
import imageio_ffmpeg
import numpy as np
import pytest

from agibot_jax import video_io as video

H, W, FPS = 48, 64, 30.0
VIEW_FILES = {"head_color": "head_color.mp4", "hand_left": "hand_left_color.mp4",
              "hand_right": "hand_right_color.mp4"}
LEROBOT_KEYS = {"v2.1": ("observation.images.head", "observation.images.hand_left", "observation.images.hand_right"),
                "v3.0": ("observation.images.top_head", "observation.images.hand_left",
                         "observation.images.hand_right")}
# LeRobot's own example robots: ALOHA (two arms, four cameras; lerobot/aloha_* datasets) and a single arm with two
# cameras (koch / so100 datasets).
ALOHA_KEYS = ("observation.images.cam_high", "observation.images.cam_left_wrist", "observation.images.cam_low",
              "observation.images.cam_right_wrist")
SINGLE_ARM_KEYS = ("observation.images.laptop", "observation.images.phone")


def frames(view: int, start: int, count: int, seed: int = 0) -> np.ndarray:
  """uint8 (count, H, W, 3): frames start.. of view `view` of an episode with `seed`."""
  out = np.empty((count, H, W, 3), np.uint8)
  for n, i in enumerate(range(start, start + count)):
    out[n] = (20 + (37 * i + 60 * view + 11 * seed) % 200, 90 + 30 * view, 140)
    x = (4 * i) % (W - 12)
    out[n, 10:22, x:x + 12] = 255
  return out


def depth_mm(index: int) -> np.ndarray:
  """uint16 (H, W): depth of frame `index`, 400 mm + a ramp, with a 0 (invalid) corner."""
  d = (400 + 20 * index + 10 * np.arange(W)[None, :] + np.zeros((H, 1))).astype(np.uint16)
  d[:8, :8] = 0
  return d


@functools.lru_cache(maxsize=None)
def av1_encoder() -> str | None:
  listing = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True,
                           text=True, check=False).stdout
  names = {line.split()[1] for line in listing.splitlines() if len(line.split()) > 1}
  return next((e for e in ("libaom-av1", "libsvtav1", "librav1e") if e in names), None)


def write_mp4(path, frames_THWC: np.ndarray, codec: str = "h264") -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if codec == "h264":
    video.write_video(str(path), frames_THWC, FPS)
    return
  encoder = av1_encoder()
  params = ["-cpu-used", "8", "-crf", "20"] if encoder == "libaom-av1" else []
  writer = imageio_ffmpeg.write_frames(str(path), (W, H), fps=FPS, codec=encoder, pix_fmt_out="yuv420p",
                                       macro_block_size=1, ffmpeg_log_level="error", output_params=params)
  writer.send(None)
  for frame in frames_THWC:
    writer.send(np.ascontiguousarray(frame))
  writer.close()


def truncate_data(path: pathlib.Path, keep: float) -> None:
  """Moves the moov atom to the front (the container still declares every frame), then cuts the file's tail:
  the first frames decode, the rest are missing."""
  tmp = path.with_suffix(".faststart.mp4")
  subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-c", "copy", "-movflags",
                  "+faststart", str(tmp)], check=True)
  data = tmp.read_bytes()
  tmp.unlink()
  path.write_bytes(data[:int(len(data) * keep)])


def action_config(*segments):
  return [{"start_frame": a, "end_frame": b, "action_text": t, "skill": "Pick"} for a, b, t in segments]


def write_task_info(root: pathlib.Path, task: int, episodes: dict[int, list]) -> None:
  entries = [{"episode_id": ep, "task_name": f"Stock the shelf {task}",
              "init_scene_text": "A shelf and a crate of cans", "label_info": {"action_config": segs}}
             for ep, segs in episodes.items()]
  (root / "task_info").mkdir(parents=True, exist_ok=True)
  (root / "task_info" / f"task_{task}.json").write_text(json.dumps(entries))


def write_raw_episode(folder: pathlib.Path, num_frames: int = 30, *, codec: str = "h264",
                      counts: dict[str, int] | None = None, views=tuple(VIEW_FILES), depth: bool = True,
                      seed: int = 0) -> None:
  """observations/<task>/<episode>/{videos,depth}; `counts` overrides a view's frame count."""
  for v, name in enumerate(VIEW_FILES):
    if name in views:
      write_mp4(folder / "videos" / VIEW_FILES[name], frames(v, 0, (counts or {}).get(name, num_frames), seed), codec)
  if depth:
    (folder / "depth").mkdir(parents=True, exist_ok=True)
    for i in range(num_frames):
      cv2.imwrite(str(folder / "depth" / f"head_depth_{i:06d}.png"), depth_mm(i))


def write_shard(task_dir: pathlib.Path, episodes: list[int], num_frames: int = 20) -> pathlib.Path:
  """observations/<task>/<first>-<last>.tar holding `<episode>/{videos,depth}/...` (episodes not left unpacked)."""
  staging = task_dir / "_staging"
  for ep in episodes:
    write_raw_episode(staging / str(ep), num_frames, seed=ep % 7)
  path = task_dir / f"{episodes[0]}-{episodes[-1]}.tar"
  with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
    for ep in episodes:
      tar.add(staging / str(ep), arcname=str(ep))
  for p in sorted(staging.rglob("*"), reverse=True):
    p.unlink() if p.is_file() else p.rmdir()
  staging.rmdir()
  return path


def write_lerobot(root: pathlib.Path, version: str, lengths: list[int], tasks: list[str],
                  action_texts: dict[int, list[tuple[int, int, str]]] | None = None, *,
                  keys: tuple[str, ...] | None = None, robot_type: str = "a2d") -> None:
  """A LeRobot root: v2.1 (one MP4 per episode and camera) or v3.0 (all episodes packed in one MP4 per camera), its
  meta/info.json in LeRobot's layout (video features with their `info`, the per-frame index features).

  Episode e has lengths[e] frames, task tasks[e]; camera v (of `keys`, default AgiBot World's of the version) films
  `frames(v, 0, length, seed=e)`. `action_texts` adds LeRobot-port per-frame `action_text` / `init_scene_text`
  columns to the data parquet.
  """
  import pyarrow as pa
  import pyarrow.parquet as pq

  keys = keys or LEROBOT_KEYS[version]
  packed = version == "v3.0"
  video_info = {"video.height": H, "video.width": W, "video.codec": "h264", "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False, "video.fps": FPS, "video.channels": 3, "has_audio": False}
  features = {k: {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"], "info": video_info}
              for k in keys}
  features["observation.state"] = {"dtype": "float32", "shape": [2], "names": {"motors": ["joint_0", "joint_1"]}}
  features["action"] = {"dtype": "float32", "shape": [2], "names": {"motors": ["joint_0", "joint_1"]}}
  for name in ("episode_index", "frame_index", "index", "task_index"):
    features[name] = {"dtype": "int64", "shape": [1], "names": None}
  features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
  info = {"codebase_version": version, "robot_type": robot_type, "total_episodes": len(lengths),
          "total_frames": int(sum(lengths)), "total_tasks": len(set(tasks)), "chunks_size": 1000, "fps": FPS,
          "splits": {"train": f"0:{len(lengths)}"}, "features": features}
  if packed:
    info.update(data_files_size_in_mb=100, video_files_size_in_mb=500)
    info["data_path"] = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    info["video_path"] = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
  else:
    info.update(total_chunks=1, total_videos=len(lengths) * len(keys))
    info["data_path"] = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
    info["video_path"] = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
  (root / "meta").mkdir(parents=True, exist_ok=True)
  (root / "meta" / "info.json").write_text(json.dumps(info))
  task_list = sorted(set(tasks))

  def data_rows(e):
    rows = {"episode_index": [e] * lengths[e], "frame_index": list(range(lengths[e]))}
    if action_texts is not None:
      texts = [""] * lengths[e]
      for a, b, t in action_texts.get(e, []):
        texts[a:b] = [t] * (b - a)
      rows["action_text"] = texts
      rows["init_scene_text"] = ["A shelf and a crate of cans"] * lengths[e]
    return rows

  if not packed:
    for e, n in enumerate(lengths):
      for v, key in enumerate(keys):
        write_mp4(root / info["video_path"].format(episode_chunk=0, video_key=key, episode_index=e), frames(v, 0, n, e))
      data = root / info["data_path"].format(episode_chunk=0, episode_index=e)
      data.parent.mkdir(parents=True, exist_ok=True)
      pq.write_table(pa.table(data_rows(e)), data)
    with open(root / "meta" / "episodes.jsonl", "w") as f:
      for e, n in enumerate(lengths):
        f.write(json.dumps({"episode_index": e, "tasks": [tasks[e]], "length": n}) + "\n")
    with open(root / "meta" / "tasks.jsonl", "w") as f:
      for i, t in enumerate(task_list):
        f.write(json.dumps({"task_index": i, "task": t}) + "\n")
    return
  starts = np.concatenate([[0], np.cumsum(lengths)])
  for v, key in enumerate(keys):
    write_mp4(root / info["video_path"].format(video_key=key, chunk_index=0, file_index=0),
              np.concatenate([frames(v, 0, n, e) for e, n in enumerate(lengths)]))
  data = root / info["data_path"].format(chunk_index=0, file_index=0)
  data.parent.mkdir(parents=True, exist_ok=True)
  columns: dict[str, list] = {}
  for e in range(len(lengths)):
    for name, values in data_rows(e).items():
      columns.setdefault(name, []).extend(values)
  pq.write_table(pa.table(columns), data)
  episodes = {"episode_index": list(range(len(lengths))), "tasks": [[t] for t in tasks], "length": lengths,
              "data/chunk_index": [0] * len(lengths), "data/file_index": [0] * len(lengths),
              "dataset_from_index": starts[:-1].tolist(), "dataset_to_index": starts[1:].tolist()}
  for key in keys:
    episodes[f"videos/{key}/chunk_index"] = [0] * len(lengths)
    episodes[f"videos/{key}/file_index"] = [0] * len(lengths)
    episodes[f"videos/{key}/from_timestamp"] = (starts[:-1] / FPS).tolist()
    episodes[f"videos/{key}/to_timestamp"] = (starts[1:] / FPS).tolist()
  path = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
  path.parent.mkdir(parents=True, exist_ok=True)
  pq.write_table(pa.table(episodes), path)
  pq.write_table(pa.table({"task_index": list(range(len(task_list))), "__index_level_0__": task_list}),
                 root / "meta" / "tasks.parquet")


def write_raw_tree(root: pathlib.Path) -> None:
  """Task 327: good episodes 1001 (30 frames, depth, sub-actions) and 1002 (AV1 when an encoder exists), and one
  bad episode per skip reason; task 328: a tar shard (episodes 2001, 2002); task 329: no task_info."""
  segs = action_config((0, 12, "Pick a can from the crate"), (12, 30, "Place the can on the shelf"))
  write_task_info(root, 327, {1001: segs, 1002: segs, 1003: [], 1004: [], 1005: [], 1007: [], 1008: []})
  obs = root / "observations"
  write_raw_episode(obs / "327" / "1001", 30)
  write_raw_episode(obs / "327" / "1002", 30, codec="av1" if av1_encoder() else "h264", seed=2)
  write_raw_episode(obs / "327" / "1003", 30, views=("head_color", "hand_left"))  # no hand_right
  write_raw_episode(obs / "327" / "1004", 30, counts={"hand_left": 29})  # unequal frame counts
  write_raw_episode(obs / "327" / "1005", 5)  # too few frames
  write_raw_episode(obs / "327" / "1006", 30)  # not in task_info
  write_raw_episode(obs / "327" / "1007", 30)
  head = obs / "327" / "1007" / "videos" / "head_color.mp4"
  head.write_bytes(head.read_bytes()[:300])  # truncated: no moov atom
  write_raw_episode(obs / "327" / "1008", 30)
  truncate_data(obs / "327" / "1008" / "videos" / "hand_left_color.mp4", 0.6)
  write_task_info(root, 328, {2001: [], 2002: []})
  write_shard(obs / "328", [2001, 2002])
  write_raw_episode(obs / "329" / "3001", 30)


@pytest.fixture(scope="session")
def raw_root(tmp_path_factory) -> pathlib.Path:
  """The tree of `write_raw_tree` (read-only)."""
  root = tmp_path_factory.mktemp("agibot_raw")
  write_raw_tree(root)
  return root
