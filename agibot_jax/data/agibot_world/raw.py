"""The raw AgiBot World release (Alpha / Beta), unpacked or still in its tar shards.

  <root>/task_info/task_<task>.json                        JSON list, one object per episode
  <root>/observations/<task>/<episode>/videos/{head_color,hand_left_color,hand_right_color}.mp4
  <root>/observations/<task>/<episode>/depth/head_depth_<NNNNNN>.png    uint16 millimetres, head camera only
  <root>/observations/<task>/<first>-<last>.tar            shards whose members are `<episode>/videos/...`

Facts and their sources: shared spec agibot_world_formats.md §1. An unpacked episode folder wins over the
same episode in a shard. Shard members are read in place (no extraction): videos through FFmpeg's
`subfile` protocol, depth PNGs by offset, so a shard must be an uncompressed tar (as released).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tarfile

from agibot_jax import rig as rig_lib
from agibot_jax.data.agibot_world import captions, source

log = logging.getLogger(__name__)

VIDEO_FILES = {"head_color": "head_color.mp4", "hand_left": "hand_left_color.mp4",
               "hand_right": "hand_right_color.mp4"}
DEPTH_PREFIX, DEPTH_SUFFIX = "head_depth", ".png"
# Tasks whose episodes include corrupted MP4s, per any4lerobot's README (spec §1.7); named in skip reasons.
KNOWN_CORRUPT_TASKS = frozenset({"380", "384", "428", "460", "505", "510", "711"})


def is_root(path: str) -> bool:
  return os.path.isdir(os.path.join(path, "observations"))


@dataclasses.dataclass(frozen=True)
class ShardSlice:
  """Where one episode's members sit in a tar shard: the header offset of its first member, and how many."""
  path: str
  offset: int
  count: int


@dataclasses.dataclass(frozen=True)
class RawEpisode:
  task: str
  episode: str
  text: captions.EpisodeText
  folder: str | None = None  # observations/<task>/<episode>
  shard: ShardSlice | None = None

  def media(self, want_depth: bool) -> source.Media:
    where = self.folder or f"{self.shard.path}:{self.episode}/"
    try:
      files = self._folder_files() if self.folder else self._shard_files()
    except (tarfile.TarError, OSError) as e:
      raise source.Unusable(where, f"unreadable ({e})") from None
    missing = [name for name in VIDEO_FILES.values() if f"videos/{name}" not in files]
    if missing:
      raise source.Unusable(os.path.join(where, "videos"), f"missing video(s) {', '.join(missing)}")
    depth = None
    if want_depth:
      depth = tuple(files[n] for n in sorted(files) if n.startswith(f"depth/{DEPTH_PREFIX}")
                    and n.endswith(DEPTH_SUFFIX))
      if not depth:
        raise source.Unusable(os.path.join(where, "depth"), f"no {DEPTH_PREFIX}*{DEPTH_SUFFIX} frames (--depth)")
    return source.Media(videos=tuple(files[f"videos/{VIDEO_FILES[v]}"] for v in rig_lib.AGIBOT.names),
                        first_frames=(0,) * len(rig_lib.AGIBOT.names), num_frames=None, fps=None, depth=depth)

  def _folder_files(self) -> dict[str, source.Blob]:
    """`videos/<name>` and `depth/<name>` -> file."""
    files = {}
    for sub in ("videos", "depth"):
      folder = os.path.join(self.folder, sub)
      if os.path.isdir(folder):
        files.update({f"{sub}/{e.name}": source.Blob(e.path) for e in os.scandir(folder) if e.is_file()})
    return files

  def _shard_files(self) -> dict[str, source.Blob]:
    files = {}
    with open(self.shard.path, "rb") as f:
      f.seek(self.shard.offset)
      with tarfile.open(fileobj=f, mode="r:") as tar:
        for member in tar:
          parsed = _episode_member(member.name)
          if parsed and parsed[0] == self.episode and member.isreg():
            files[parsed[1]] = source.Blob(self.shard.path, member.name, member.offset_data, member.size)
            if len(files) == self.shard.count:
              break
    return files


def _episode_member(name: str) -> tuple[str, str] | None:
  """`[...]/<episode>/(videos|depth)/<file>` -> (episode, "videos/<file>"), else None."""
  parts = name.split("/")
  if len(parts) >= 3 and parts[-2] in ("videos", "depth") and parts[-3].isdigit():
    return parts[-3], f"{parts[-2]}/{parts[-1]}"
  return None


def _text(entry: dict) -> captions.EpisodeText:
  """The caption texts of one task_info entry; segments without integer frames or text are left out."""
  label = entry.get("label_info") or entry.get("lable_info")  # one README copy misspells it (spec §1.5)
  label = label if isinstance(label, dict) else {}
  segments = tuple(
      captions.Segment(int(a["start_frame"]), int(a["end_frame"]), a["action_text"])
      for a in (label.get("action_config") or []) if isinstance(a, dict)
      and isinstance(a.get("start_frame"), int) and isinstance(a.get("end_frame"), int)
      and isinstance(a.get("action_text"), str))
  return captions.EpisodeText(str(entry.get("task_name") or ""), str(entry.get("init_scene_text") or ""), segments)


def load_task_info(path: str) -> dict[str, captions.EpisodeText]:
  """Episode id -> texts of one task_info/task_<task>.json. Raises source.Unusable."""
  if not os.path.isfile(path):
    raise source.Unusable(path, "task_info file missing (no task name or sub-actions)")
  try:
    with open(path, encoding="utf-8") as f:
      entries = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise source.Unusable(path, f"unreadable task_info ({e})") from None
  if not isinstance(entries, list):
    raise source.Unusable(path, f"task_info must be a JSON list of episode objects, got {type(entries).__name__}")
  return {str(e["episode_id"]): _text(e) for e in entries if isinstance(e, dict) and "episode_id" in e}


def _index_shard(path: str) -> dict[str, ShardSlice]:
  """Episode -> its slice of the shard (one pass over the tar headers)."""
  slices: dict[str, list[int]] = {}
  with tarfile.open(path, mode="r:") as tar:
    for member in tar:
      parsed = _episode_member(member.name)
      if parsed and member.isreg():
        slices.setdefault(parsed[0], [member.offset, 0])[1] += 1
  return {ep: ShardSlice(path, offset, count) for ep, (offset, count) in slices.items()}


def _sort_key(name: str):
  return (0, int(name), "") if name.isdigit() else (1, 0, name)


def discover(root: str, tasks: tuple[str, ...] = (), episodes: tuple[str, ...] = ()
             ) -> tuple[list[RawEpisode], list[source.Skip]]:
  """Episodes under `root`/observations (filtered by task / episode id), sorted; and what was skipped."""
  obs = os.path.join(root, "observations")
  found: list[RawEpisode] = []
  skips: list[source.Skip] = []
  task_dirs = sorted((d for d in os.listdir(obs) if os.path.isdir(os.path.join(obs, d))), key=_sort_key)
  for task in (t for t in task_dirs if not tasks or t in tasks):
    info_path = os.path.join(root, "task_info", f"task_{task}.json")
    try:
      texts = load_task_info(info_path)
    except source.Unusable as e:
      skips.append(source.Skip(task, "*", e.path, e.reason))
      continue
    task_dir = os.path.join(obs, task)
    located: dict[str, dict] = {}  # episode -> RawEpisode location keywords
    for name in sorted(os.listdir(task_dir)):
      path = os.path.join(task_dir, name)
      if name.endswith(".tar") and os.path.isfile(path):
        if "," in path:  # FFmpeg's subfile URL cannot hold a comma
          skips.append(source.Skip(task, "*", path, "shard path contains ',' (rename it or unpack the shard)"))
          continue
        try:
          shard = _index_shard(path)
        except (tarfile.TarError, OSError) as e:
          skips.append(source.Skip(task, "*", path, f"not a readable uncompressed tar ({e})"))
          continue
        for ep, piece in shard.items():
          located.setdefault(ep, {"shard": piece})
      elif name.isdigit() and os.path.isdir(path):
        located[name] = {"folder": path}
    for ep in sorted(located, key=_sort_key):
      if episodes and ep not in episodes:
        continue
      if ep in texts:
        found.append(RawEpisode(task, ep, texts[ep], **located[ep]))
      else:
        where = located[ep].get("folder") or located[ep]["shard"].path
        skips.append(source.Skip(task, ep, where, f"episode not listed in {info_path}"))
  missing = sorted(set(episodes) - {e.episode for e in found} - {s.episode for s in skips}, key=_sort_key)
  skips += [source.Skip("?", ep, obs, "episode not found under observations/") for ep in missing]
  if tasks and (absent := [t for t in tasks if t not in task_dirs]):
    skips += [source.Skip(t, "*", os.path.join(obs, t), "task folder not found") for t in absent]
  log.info("raw AgiBot World root %s: %d episode(s) found, %d skipped", root, len(found), len(skips))
  return found, skips
