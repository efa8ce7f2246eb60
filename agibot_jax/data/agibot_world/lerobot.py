"""LeRobot roots, codebase v2.0/v2.1 and v3.0: AgiBot World's conversions and any other robot's dataset (shared spec
agibot_world_formats.md §2).

  v2.x  meta/episodes.jsonl, meta/tasks.jsonl; one MP4 per episode and camera at `video_path`
        (videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4); frame 0 = episode start.
  v3.0  meta/episodes/chunk-*/file-*.parquet, meta/tasks.parquet; episodes packed into shared MP4s at
        `video_path` (videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4); an episode is
        frames [round(from_timestamp·fps), round(to_timestamp·fps)) of its camera's file.

The cameras are a rig's (agibot_jax/rig.py), and each reads one video feature of `meta/info.json` `features`
(dtype "video"): `video_keys`, one per camera in the rig's order (`camera_map`: `import_lerobot --cameras
KEY=VIEW,...`, or a rig camera's own feature `observation.images.<camera>`), or for the agibot rig AgiBot World's
(`DEFAULT_KEYS`): head `observation.images.top_head` (the OpenDriveLab and LeRobot ports) or
`observation.images.head` (any4lerobot), hands `observation.images.hand_{left,right}`.

Clip ids are `<dataset>_<episode_index>_c<k>`, <dataset> the root folder's name, as LeRobot datasets carry no
AgiBot task or episode id. Texts: the episode's task string; any4lerobot's `"<task_name> | <scene>"` is split
in two; LeRobot's own port of AgiBot World also stores per-frame `action_text` and `init_scene_text` columns in the
data parquet, read (when present) for the scene and the sub-action segments. No depth is read from LeRobot roots.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import logging
import os
import re
from collections.abc import Sequence

from agibot_jax import rig as rig_lib
from agibot_jax.data.agibot_world import captions, source

log = logging.getLogger(__name__)

# AgiBot World's video features of the agibot rig's cameras (the conversions disagree on the head's).
DEFAULT_KEYS = {"head_color": ("observation.images.top_head", "observation.images.head"),
                "hand_left": ("observation.images.hand_left",),
                "hand_right": ("observation.images.hand_right",)}
A4L_SEPARATOR = " | "


def is_root(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "meta", "info.json"))


def caption_prefix(camera: str) -> str:
  """The caption prefix a rig made from a camera map gives `camera` (edit it in DST/rig.json to say where the camera
  is, as the agibot rig's do)."""
  return f"The video is captured from the {camera.replace('_', ' ')} camera."


def camera_map(pairs: Sequence[tuple[str, str]], rig: rig_lib.Rig | None = None,
               name: str = "lerobot") -> tuple[rig_lib.Rig, tuple[str, ...]]:
  """(rig, the video feature of each of its cameras) of an import: `pairs` (video feature, camera) as given by
  `--cameras`, and
    no `rig`: a rig of those cameras in that order, view rows 0, 1, 2, every camera the others' neighbour, and
      `caption_prefix` prefixes;
    a `rig`: its cameras, each reading the feature `pairs` maps to it, else `observation.images.<camera>`.
  Raises ValueError (rig.RigError) naming the camera, e.g. for more cameras than the network has view rows.
  """
  views = [v for _, v in pairs]
  if len(set(views)) != len(views):
    raise rig_lib.RigError(f"--cameras maps two video features to one camera: {', '.join(views)}")
  if rig is None:
    rig = rig_lib.from_cameras([{"name": v, "view": i, "caption_prefix": caption_prefix(v)}
                                for i, v in enumerate(views)], name=name)
    return rig, tuple(k for k, _ in pairs)
  if unknown := [v for v in views if v not in rig.names]:
    raise rig_lib.RigError(f"--cameras: {', '.join(unknown)} is not a camera of rig {rig.describe()}")
  feature = {v: k for k, v in pairs}
  return rig, tuple(feature.get(v, f"observation.images.{v}") for v in rig.names)


def _pq():
  try:
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError("reading a LeRobot root needs pyarrow: pip install pyarrow "
                     "(or pip install -e '.[agibot_world]')") from None
  return pq


@dataclasses.dataclass(frozen=True)
class Info:
  """What the importer reads from meta/info.json."""
  root: str
  version: str  # "v2.0" | "v2.1" | "v3.0"
  fps: float
  video_keys: tuple[str, ...]  # per camera, in the rig's order
  video_path: str
  data_path: str
  chunks_size: int

  @property
  def packed(self) -> bool:
    return self.version.startswith("v3")


def read_info(root: str, video_keys: tuple[str, ...] = (), views: tuple[str, ...] = rig_lib.AGIBOT.names) -> Info:
  """meta/info.json of `root`, read for the cameras `views` (module docstring). Raises ValueError naming the file and
  the key."""
  path = os.path.join(root, "meta", "info.json")
  try:
    with open(path, encoding="utf-8") as f:
      info = json.load(f)
    version, fps = str(info["codebase_version"]), float(info["fps"])
    video_path, data_path, features = info["video_path"], info["data_path"], info["features"]
    chunks_size = int(info.get("chunks_size", 1000))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as e:
    raise ValueError(f"{path}: unreadable ({e})") from None
  except KeyError as e:
    raise ValueError(f"{path}: no key {e}") from None
  if not (version.startswith("v2.") or version == "v3.0"):
    raise ValueError(f"{path}: codebase_version {version!r} is not supported (v2.0, v2.1 or v3.0)")
  videos = sorted(k for k, feat in features.items() if isinstance(feat, dict) and feat.get("dtype") == "video")
  if video_keys:
    if len(video_keys) != len(views):
      raise ValueError(f"{path}: --video_keys needs {len(views)} of its video features {videos} "
                       f"(order {', '.join(views)}), got {list(video_keys)}")
    if unknown := [k for k in video_keys if k not in videos]:
      raise ValueError(f"{path}: {', '.join(unknown)} is not among its video features {videos}")
  else:
    chosen = {v: next((k for k in DEFAULT_KEYS.get(v, ()) if k in videos), None) for v in views}
    if missing := [v for v, k in chosen.items() if k is None]:
      raise ValueError(f"{path}: no video feature for view(s) {', '.join(missing)} among {videos}; name them with "
                       f"--video_keys (import_agibot_world) or --cameras KEY=VIEW,... (import_lerobot)")
    video_keys = tuple(chosen.values())
  _pq()
  return Info(os.path.abspath(root), version, fps, tuple(video_keys), video_path, data_path, chunks_size)


@dataclasses.dataclass(frozen=True)
class LeRobotEpisode:
  task: str
  episode: str
  text: captions.EpisodeText
  videos: tuple[source.Blob, ...]
  first_frames: tuple[int, ...]
  num_frames: int
  fps: float

  def media(self, want_depth: bool) -> source.Media:
    del want_depth  # the importer refuses --depth for LeRobot roots up front
    return source.Media(self.videos, self.first_frames, self.num_frames, self.fps, depth=None)


def _read_jsonl(path: str) -> list[dict]:
  try:
    with open(path, encoding="utf-8") as f:
      return [json.loads(line) for line in f if line.strip()]
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: unreadable ({e})") from None


def _read_parquet_rows(pattern: str) -> list[dict]:
  paths = sorted(glob.glob(pattern))
  if not paths:
    raise ValueError(f"{pattern}: no file matches")
  rows = []
  for path in paths:
    try:
      rows += _pq().read_table(path).to_pylist()
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
      raise ValueError(f"{path}: unreadable parquet ({_one_line(e)})") from None
  return rows


def _one_line(error: Exception) -> str:
  return " ".join(str(error).split())


def _task_indices(info: Info) -> dict[str, int]:
  """Task string -> task_index (tasks.jsonl in v2; tasks.parquet, task string as its index, in v3)."""
  meta = os.path.join(info.root, "meta")
  if not info.packed:
    return {t["task"]: int(t["task_index"]) for t in _read_jsonl(os.path.join(meta, "tasks.jsonl"))}
  rows = _read_parquet_rows(os.path.join(meta, "tasks.parquet"))
  return {str(r.get("task", r.get("__index_level_0__"))): int(r["task_index"]) for r in rows}


@functools.lru_cache(maxsize=8)
def _frame_texts(path: str) -> dict[int, list[tuple[int, str, str]]]:
  """Episode -> [(frame_index, action_text, init_scene_text)] of one data parquet ({} without the columns).

  Raises source.Unusable when the file does not read: its episodes are skipped, the others imported."""
  if not os.path.isfile(path):
    return {}
  try:
    names = set(_pq().read_schema(path).names)
    if not {"episode_index", "frame_index"} <= names or not names & {"action_text", "init_scene_text"}:
      return {}
    columns = [c for c in ("episode_index", "frame_index", "action_text", "init_scene_text") if c in names]
    rows = _pq().read_table(path, columns=columns).to_pylist()
  except (OSError, ValueError) as e:
    raise source.Unusable(path, f"unreadable parquet ({_one_line(e)})") from None
  by_episode: dict[int, list[tuple[int, str, str]]] = {}
  for r in rows:
    by_episode.setdefault(int(r["episode_index"]), []).append(
        (int(r["frame_index"]), r.get("action_text") or "", r.get("init_scene_text") or ""))
  return by_episode


def _episode_text(tasks: list[str], frames: list[tuple[int, str, str]]) -> captions.EpisodeText:
  task_name = " ".join(tasks)
  name, scene = task_name.split(A4L_SEPARATOR, 1) if A4L_SEPARATOR in task_name else (task_name, "")
  segments: list[captions.Segment] = []
  for frame, action, frame_scene in sorted(frames):
    scene = scene or frame_scene
    if segments and segments[-1].text == action and segments[-1].end == frame:
      segments[-1] = dataclasses.replace(segments[-1], end=frame + 1)
    elif action:
      segments.append(captions.Segment(frame, frame + 1, action))
  return captions.EpisodeText(name, scene, tuple(segments))


def discover(root: str, tasks: tuple[str, ...] = (), episodes: tuple[str, ...] = (), video_keys: tuple[str, ...] = (),
             views: tuple[str, ...] = rig_lib.AGIBOT.names) -> tuple[list[LeRobotEpisode], list[source.Skip]]:
  """Episodes of a LeRobot root (filtered by task_index / episode_index), sorted, each with the videos of the
  cameras `views` (`read_info`); and what was skipped."""
  info = read_info(root, video_keys, views)
  name = re.sub(r"[^A-Za-z0-9_-]+", "-", os.path.basename(info.root))
  meta = os.path.join(info.root, "meta")
  episodes_meta = (os.path.join(meta, "episodes", "chunk-*", "file-*.parquet") if info.packed
                   else os.path.join(meta, "episodes.jsonl"))
  rows = _read_parquet_rows(episodes_meta) if info.packed else _read_jsonl(episodes_meta)
  if bad := [i for i, r in enumerate(rows) if not {"episode_index", "length"} <= set(r)]:
    raise ValueError(f"{episodes_meta}: row {bad[0]} has no episode_index or no length")
  task_index = _task_indices(info) if tasks else {}
  found: list[LeRobotEpisode] = []
  skips: list[source.Skip] = []
  for row in sorted(rows, key=lambda r: int(r["episode_index"])):
    ep, length, ep_tasks = int(row["episode_index"]), int(row["length"]), list(row.get("tasks") or [])
    if (episodes and str(ep) not in episodes) or (tasks and not any(
        str(task_index.get(t)) in tasks for t in ep_tasks)):
      continue
    try:
      found.append(_episode(info, name, row, ep, length, ep_tasks))
    except source.Unusable as e:
      skips.append(source.Skip(name, str(ep), e.path, e.reason))
    except KeyError as e:
      raise ValueError(f"{episodes_meta}: the row of episode {ep} has no {e}") from None
  log.info("LeRobot %s root %s: %d episode(s) found, %d skipped", info.version, root, len(found), len(skips))
  return found, skips


def _episode(info: Info, name: str, row: dict, ep: int, length: int, ep_tasks: list[str]) -> LeRobotEpisode:
  videos, firsts = [], []
  for key in info.video_keys:
    if info.packed:
      c, f = row[f"videos/{key}/chunk_index"], row[f"videos/{key}/file_index"]
      rel = info.video_path.format(video_key=key, chunk_index=c, file_index=f)
      first = round(row[f"videos/{key}/from_timestamp"] * info.fps)
      count = round(row[f"videos/{key}/to_timestamp"] * info.fps) - first
      if count != length:
        raise source.Unusable(os.path.join(info.root, rel), f"{key} spans {count} frames by its from/to timestamps "
                              f"but the episode's length is {length}")
    else:
      rel = info.video_path.format(episode_chunk=ep // info.chunks_size, video_key=key, episode_index=ep)
      first = 0
    path = os.path.join(info.root, rel)
    if not os.path.isfile(path):
      raise source.Unusable(path, f"missing video of {key}")
    videos.append(source.Blob(path))
    firsts.append(first)
  data_rel = (info.data_path.format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
              if info.packed else info.data_path.format(episode_chunk=ep // info.chunks_size, episode_index=ep))
  frames = _frame_texts(os.path.join(info.root, data_rel)).get(ep, [])
  return LeRobotEpisode(name, str(ep), _episode_text(ep_tasks, frames), tuple(videos), tuple(firsts), length,
                        info.fps)
