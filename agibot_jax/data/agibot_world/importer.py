"""AgiBot World episodes, or any LeRobot dataset's, -> the training layout: plan the clips, cut and re-encode them,
keep a manifest.

The cameras are a rig's (`Settings.rig`, agibot_jax/rig.py): AgiBot World's three for the raw release, or those a
LeRobot import maps (`python -m agibot_jax.data.import_lerobot`). For every episode (in task, episode order):
  plan   probe the cameras' videos (and the depth frames) without decoding, check frame counts, fps and codecs,
         list the clips that fit (clips.Grid) and which of them are already complete in DST;
  cut    decode the cameras in lockstep from the first needed frame, and write each clip as soon as its
         last frame is decoded (memory: the clips being filled, not the episode).
Both run over `workers` threads (the decoding and encoding run in FFmpeg subprocesses and in OpenCV / NumPy
calls that release the GIL). A clip's files (a caption per camera, the depth controls, a video per camera) are
written to hidden temporary names first and renamed into place together, so no file is ever half-written; a clip
counts as done only when all of its files exist, so an interrupted import resumes by running it again.

DST/manifest.json records the sources, the settings that decide a clip's content (a rerun with other values
is refused), every imported episode with its source files and clip frame ranges, and every skipped item with
its reason. Successive runs into one DST (other filters, other sources) merge into it. DST/rig.json holds the rig,
for training with `--config.rig=DST/rig.json`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import logging
import math
import os
import re
from collections.abc import Iterable

import numpy as np

from agibot_jax import registry, utils
from agibot_jax import rig as rig_lib
from agibot_jax import video_io as video
from agibot_jax.data.agibot_world import captions, clips, decode, depth, lerobot, raw, source

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "agibot_jax.import_agibot_world/1"
HAND_DEPTH = ("none", "blank")
DEPTH_FOLDER = registry.control("depth").key
HEAD = rig_lib.AGIBOT.names[0]  # the raw release's camera with sensor depth
_TEMP = re.compile(r"^\..+\.\d+\.tmp\.(mp4|json)$")
_FPS_RTOL = 1e-3
NOTES = {
    "frames": "clip k holds output frames n = k*stride + j (j < clip_frames); output frame n is source frame "
              "first_frame + floor(n * source_fps / fps + 1/2), the same for every view and the depth",
    "depth": "head: 1 + 254 * (1/d - 1/d_far) / (1/d_near - 1/d_far) over the clip's valid pixels (d > 0 mm), "
             "0 where invalid, grey in 3 channels; hands: none, or blank (all 0) with --hand_depth=blank",
    "aspect": "stretch keeps the source size (the loader's resize stretches to 16:9); pad adds black bars, "
              "crop keeps the centre, both to 16:9 rounded to even sizes",
    "captions": "one caption per clip, the same for every camera, without the rig's caption prefixes",
}


@dataclasses.dataclass(frozen=True)
class Settings:
  src: str
  dst: str
  clip_frames: int = 93
  stride: int | None = None  # output frames between clip starts; None: clip_frames (back to back)
  fps: float | None = None  # output fps; None: the source's
  aspect: str = "stretch"
  depth: bool = False  # write control_input_depth/head_color from the head depth PNGs
  hand_depth: str = "none"  # none | blank (all-zero stand-in for the hand views)
  caption_template: str = captions.DEFAULT_TEMPLATE
  tasks: tuple[str, ...] = ()  # raw: task ids; LeRobot: task_index values
  episodes: tuple[str, ...] = ()  # raw: episode ids; LeRobot: episode_index values
  max_clips: int = 0  # 0: every clip
  workers: int = 1
  video_backend: str = "auto"  # decoding: auto | imageio | opencv (agibot_jax.data.video)
  rig: rig_lib.Rig = rig_lib.AGIBOT  # the cameras written (their folders), in the source's video order
  video_keys: tuple[str, ...] = ()  # LeRobot video feature of each camera; (): detected (lerobot.read_info)

  def content(self) -> dict:
    """The settings that decide what a clip's files hold; a rerun into the same DST must repeat them."""
    content = {"clip_frames": self.clip_frames, "stride": self.stride or self.clip_frames, "fps": self.fps,
               "aspect": self.aspect, "depth": self.depth, "hand_depth": self.hand_depth,
               "caption_template": self.caption_template}
    if self.rig.names != rig_lib.AGIBOT.names:  # manifests of AgiBot imports predate the key
      content["cameras"] = list(self.rig.names)
    return content

  def grid(self, source_fps: float) -> clips.Grid:
    return clips.Grid(self.clip_frames, self.stride or self.clip_frames, source_fps / (self.fps or source_fps))


def check(settings: Settings) -> None:
  """Raises ValueError (one line) on a bad setting, before anything is read."""
  s = settings
  if s.clip_frames < 1 or (s.stride is not None and s.stride < 1):
    raise ValueError(f"--clip_frames and --stride must be >= 1, got {s.clip_frames} and {s.stride}")
  if s.fps is not None and not s.fps > 0:
    raise ValueError(f"--fps must be > 0, got {s.fps}")
  if s.aspect not in clips.ASPECTS:
    raise ValueError(f"--aspect must be one of {clips.ASPECTS}, got {s.aspect!r}")
  if s.hand_depth not in HAND_DEPTH or (s.hand_depth != "none" and not s.depth):
    raise ValueError(f"--hand_depth must be one of {HAND_DEPTH}, and other than none only with --depth")
  if s.max_clips < 0 or s.workers < 1:
    raise ValueError(f"--max_clips must be >= 0 and --workers >= 1, got {s.max_clips} and {s.workers}")
  captions.check_template(s.caption_template)
  video.resolve_backend(s.video_backend)
  if not os.path.isdir(s.src):
    raise ValueError(f"{s.src}: source root not found")


def clip_id(key: str, k: int) -> str:
  return f"{key}_c{k}"


def output_paths(dst: str, cid: str, settings: Settings) -> list[str]:
  """Every file of one clip: captions, depth controls, videos (the order they are renamed into place)."""
  views = settings.rig.names
  paths = [os.path.join(dst, "captions", v, f"{cid}.json") for v in views]
  if settings.depth:
    depth_views = views if settings.hand_depth == "blank" else (HEAD,)
    paths += [os.path.join(dst, DEPTH_FOLDER, v, f"{cid}.mp4") for v in depth_views]
  return paths + [os.path.join(dst, "videos", v, f"{cid}.mp4") for v in views]


def _done(dst: str, cid: str, settings: Settings) -> bool:
  return all(os.path.isfile(p) for p in output_paths(dst, cid, settings))


@dataclasses.dataclass(frozen=True)
class Plan:
  """One episode that yields clips."""
  episode: source.Episode
  media: source.Media  # without the depth frames
  depth_dir: str | None  # where they are (--depth)
  infos: tuple[decode.StreamInfo, ...]
  source_fps: float
  num_frames: int
  clips: tuple[tuple[int, int, int], ...]  # (k, first, last source frame) of every clip that fits
  done: frozenset[int]  # clips whose files are all in DST already

  @property
  def key(self) -> str:
    return source.episode_key(self.episode)


def _reason(error: Exception, label: str) -> str:
  """The error's message without the leading `label: ` its raiser put there."""
  return str(error).removeprefix(f"{label}: ")


def _corrupt_hint(task: str) -> str:
  return " (this task is listed with corrupted MP4s by any4lerobot)" if task in raw.KNOWN_CORRUPT_TASKS else ""


def plan_episode(episode: source.Episode, settings: Settings, backend: str) -> Plan | source.Skip:
  """Checks the episode's files without decoding them; the clips to cut, or why the episode is skipped.

  Raises:
    decode.MissingCodecError: the backend cannot decode the videos (ends the import).
  """
  try:
    media = episode.media(settings.depth)
    infos = tuple(_probe(blob, backend, episode.task) for blob in media.videos)
    fps, num_frames = _fps_and_frames(media, infos, settings.rig.names)
    if media.depth is not None:
      _check_depth(media.depth, num_frames, infos[settings.rig.names.index(HEAD)])
    try:
      grid = settings.grid(fps)
    except ValueError as e:
      raise source.Unusable(media.videos[0].label, f"source is {fps:g} fps: {e}") from None
    if (n := grid.num_clips(num_frames)) == 0:
      raise source.Unusable(os.path.dirname(media.videos[0].label), f"too few frames: {num_frames}, one clip of "
                            f"{grid.clip_frames} frames needs {grid.frames_needed()}")
  except source.Unusable as e:
    return source.Skip(episode.task, episode.episode, e.path, e.reason)
  spans = tuple((k, int(idx[0]), int(idx[-1])) for k, idx in ((k, grid.indices(k)) for k in range(n)))
  key = source.episode_key(episode)
  done = frozenset(k for k, _, _ in spans if _done(settings.dst, clip_id(key, k), settings))
  # The depth frames are listed again by the cut: a plan is held for every episode until then.
  depth_dir = os.path.dirname(media.depth[0].label) if media.depth else None
  return Plan(episode, dataclasses.replace(media, depth=None), depth_dir, infos, fps, num_frames, spans, done)


def _probe(blob: source.Blob, backend: str, task: str) -> decode.StreamInfo:
  try:
    info = decode.probe(blob)
  except video.VideoError as e:
    raise source.Unusable(blob.label, _reason(e, blob.label) + _corrupt_hint(task)) from None
  decode.check_decodable(info, backend, blob.label)
  return info


def _fps_and_frames(media: source.Media, infos: tuple[decode.StreamInfo, ...],
                    views: tuple[str, ...]) -> tuple[float, int]:
  """The episode's fps and frame count: declared by the source or equal across the views. Raises Unusable."""
  folder = os.path.dirname(media.videos[0].label)
  fps = media.fps or infos[0].fps
  if any(not math.isclose(i.fps, fps, rel_tol=_FPS_RTOL) for i in infos):
    raise source.Unusable(folder, "views differ in fps: " + ", ".join(
        f"{v} {i.fps:g}" for v, i in zip(views, infos)) + (
            f" (metadata: {media.fps:g})" if media.fps else ""))
  num_frames = media.num_frames or infos[0].num_frames
  if media.num_frames is None and any(i.num_frames != num_frames for i in infos):
    raise source.Unusable(folder, "unequal frame counts: " + ", ".join(
        f"{v} {i.num_frames}" for v, i in zip(views, infos)))
  for blob, info, first in zip(media.videos, infos, media.first_frames):
    if first + num_frames > info.num_frames:
      raise source.Unusable(blob.label, f"has {info.num_frames} frames, the episode is frames "
                                        f"{first}..{first + num_frames - 1}")
  return fps, num_frames


def _check_depth(frames: tuple[source.Blob, ...], num_frames: int, head: decode.StreamInfo) -> None:
  """One PNG per video frame, the first a 16-bit PNG of the head video's size. Raises source.Unusable."""
  if len(frames) != num_frames:
    raise source.Unusable(os.path.dirname(frames[0].label), f"{len(frames)} depth PNGs for {num_frames} video frames")
  _depth_clip(frames, np.zeros(1, np.int64), (head.height, head.width))


@dataclasses.dataclass(frozen=True)
class CutResult:
  key: str
  written: tuple[int, ...]
  failure: source.Skip | None  # decoding failed part way: the clips before it are kept


def cut_episode(plan: Plan, ks: Iterable[int], settings: Settings, backend: str) -> CutResult:
  """Decodes the episode once from the first frame clips `ks` need and writes each clip when it is complete."""
  grid = settings.grid(plan.source_fps)
  chosen = {k: grid.indices(k) for k in ks}
  start = min(int(idx[0]) for idx in chosen.values())
  stop = max(int(idx[-1]) for idx in chosen.values()) + 1
  wanted: dict[int, list[tuple[int, int]]] = {}  # source frame -> [(clip, position in clip)]
  for k, idx in chosen.items():
    for j, s in enumerate(idx):
      wanted.setdefault(int(s), []).append((k, j))
  streams = [decode.iter_frames(b, i, f + start, backend)
             for b, i, f in zip(plan.media.videos, plan.infos, plan.media.first_frames)]
  filling: dict[int, list[np.ndarray]] = {}  # clip -> per-view (T, H, W, 3) being filled
  written: list[int] = []
  try:
    depth_frames = plan.episode.media(want_depth=True).depth if settings.depth else None
    for s in range(start, stop):
      frames = [_next_frame(stream, blob, first + s, plan.episode.task)
                for stream, blob, first in zip(streams, plan.media.videos, plan.media.first_frames)]
      for k, j in wanted.get(s, ()):
        clip = filling.setdefault(k, [np.empty((grid.clip_frames,) + f.shape, np.uint8) for f in frames])
        for buf, frame in zip(clip, frames):
          buf[j] = frame
        if j == grid.clip_frames - 1:
          _write_clip(plan, k, chosen[k], filling.pop(k), depth_frames, settings)
          written.append(k)
  except source.Unusable as e:
    return CutResult(plan.key, tuple(written), source.Skip(
        plan.episode.task, plan.episode.episode, e.path, f"{e.reason}; {len(written)} clip(s) written before"))
  finally:
    for stream in streams:
      stream.close()
  return CutResult(plan.key, tuple(written), None)


def _next_frame(stream, blob: source.Blob, frame_no: int, task: str) -> np.ndarray:
  try:
    frame = next(stream, None)
  except video.VideoError as e:
    raise source.Unusable(blob.label, _reason(e, blob.label) + _corrupt_hint(task)) from None
  if frame is None:
    raise source.Unusable(blob.label, f"decoding stopped before frame {frame_no} (corrupt or truncated)"
                                      f"{_corrupt_hint(task)}")
  return frame


def _depth_clip(frames: tuple[source.Blob, ...], indices: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """uint16 millimetres (T, H, W) of the clip's source frames. Raises source.Unusable."""
  out = []
  for i in indices:
    try:
      mm = depth.read_png(frames[i])
    except depth.DepthError as e:
      raise source.Unusable(frames[i].label, _reason(e, frames[i].label)) from None
    if mm.shape != hw:
      raise source.Unusable(frames[i].label, f"depth is {mm.shape[1]}x{mm.shape[0]}, the head video {hw[1]}x{hw[0]}")
    out.append(mm)
  return np.stack(out)


def _write_clip(plan: Plan, k: int, indices: np.ndarray, per_view: list[np.ndarray],
                depth_frames: tuple[source.Blob, ...] | None, settings: Settings) -> None:
  """Writes every file of clip k to a hidden temporary name, then renames them all into place."""
  cid = clip_id(plan.key, k)
  fps = settings.fps or plan.source_fps
  caption = captions.clip_caption(plan.episode.text, int(indices[0]), int(indices[-1]), settings.caption_template)
  videos = [clips.fit_aspect(x, settings.aspect) for x in per_view]
  views = settings.rig.names
  contents: list[str | np.ndarray] = [caption] * len(views)
  if settings.depth:
    head_mm = _depth_clip(depth_frames, indices, per_view[views.index(HEAD)].shape[1:3])
    contents.append(clips.fit_aspect(depth.to_video(head_mm), settings.aspect))
    if settings.hand_depth == "blank":
      contents += [np.zeros_like(x) for v, x in zip(views, videos) if v != HEAD]
  contents += videos
  paths = output_paths(settings.dst, cid, settings)
  temps = [os.path.join(os.path.dirname(p), f".{cid}.{os.getpid()}.tmp{os.path.splitext(p)[1]}") for p in paths]
  try:
    for tmp, content in zip(temps, contents):
      os.makedirs(os.path.dirname(tmp), exist_ok=True)
      if isinstance(content, str):
        with open(tmp, "w", encoding="utf-8") as f:
          json.dump({"caption": content}, f, ensure_ascii=False)
      else:
        video.write_video(tmp, content, fps)
    for tmp, path in zip(temps, paths):
      os.replace(tmp, path)
  finally:
    for tmp in temps:
      if os.path.exists(tmp):
        os.remove(tmp)


def discover(settings: Settings) -> tuple[str, list[source.Episode], list[source.Skip]]:
  """(source kind, episodes, skipped items) of settings.src. Raises ValueError on a root of neither format."""
  s = settings
  if lerobot.is_root(s.src):
    info = lerobot.read_info(s.src, s.video_keys, s.rig.names)
    if s.depth:
      raise ValueError(f"{s.src}: --depth reads the raw release's head depth PNGs; a LeRobot root has none "
                       f"that the importer reads (import the raw release for depth)")
    return (f"lerobot {info.version}",) + lerobot.discover(s.src, s.tasks, s.episodes, s.video_keys, s.rig.names)
  if raw.is_root(s.src):
    if s.video_keys:
      raise ValueError("--video_keys applies to LeRobot roots only")
    if s.rig != rig_lib.AGIBOT:
      raise ValueError(f"{s.src}: a raw AgiBot World root has the agibot rig's cameras, not rig {s.rig.describe()}")
    return ("raw",) + raw.discover(s.src, s.tasks, s.episodes)
  raise ValueError(f"{s.src}: neither a raw AgiBot World root (observations/, task_info/) nor a LeRobot root "
                   f"(meta/info.json)")


def _load_manifest(settings: Settings) -> dict:
  """The DST's manifest (a fresh one when there is none). Raises ValueError when its settings differ."""
  path = os.path.join(settings.dst, MANIFEST)
  if not os.path.isfile(path):
    return {"format": MANIFEST_FORMAT, "sources": [], "settings": settings.content(), "notes": NOTES,
            "episodes": {}, "skipped": {}}
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: unreadable manifest ({e}); move it away to start over") from None
  if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
    raise ValueError(f"{path}: not a manifest of this importer (format {MANIFEST_FORMAT})")
  if (old := manifest.get("settings")) != (new := settings.content()):
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    raise ValueError(f"{path}: DST was imported with other settings ({', '.join(f'{k}={old.get(k)!r}' for k in changed)}); "
                     f"rerun with them or import into a new DST")
  return manifest


def _remove_stale_temps(dst: str, views: tuple[str, ...]) -> None:
  """Temporary files of an interrupted run (one importer per DST at a time)."""
  for folder in ("videos", "captions", DEPTH_FOLDER):
    for view in views:
      d = os.path.join(dst, folder, view)
      if os.path.isdir(d):
        for name in os.listdir(d):
          if _TEMP.match(name):
            os.remove(os.path.join(d, name))


def _episode_entry(plan: Plan, ks: list[int], settings: Settings) -> dict:
  spans = {k: (first, last) for k, first, last in plan.clips}
  return {
      "task": plan.episode.task, "episode": plan.episode.episode,
      "videos": {v: b.label for v, b in zip(settings.rig.names, plan.media.videos)},
      "first_frames": list(plan.media.first_frames),
      "depth": plan.depth_dir,
      "num_frames": plan.num_frames, "source_fps": plan.source_fps, "fps": settings.fps or plan.source_fps,
      "clips": {clip_id(plan.key, k): list(spans[k]) for k in ks},
  }


@dataclasses.dataclass(frozen=True)
class Summary:
  kind: str
  clips: int  # clips of the selection now complete in DST
  written: int  # of which written by this run
  episodes: int  # episodes with at least one clip
  skipped: tuple[source.Skip, ...]

  def __str__(self) -> str:
    return (f"{self.clips} clip(s) from {self.episodes} episode(s) of a {self.kind} root ({self.written} written "
            f"now); {len(self.skipped)} item(s) skipped")


def _select(planned: list[Plan | source.Skip], max_clips: int) -> list[tuple[Plan, list[int]]]:
  """(plan, its clips) in episode order, the first `max_clips` clips in all (0: every clip)."""
  plans = [p for p in planned if isinstance(p, Plan)]
  budget = max_clips or sum(len(p.clips) for p in plans)
  selection = []
  for plan in plans:
    if budget == 0:
      break
    ks = [k for k, _, _ in plan.clips][:budget]
    budget -= len(ks)
    selection.append((plan, ks))
  return selection


def _record(manifest: dict, settings: Settings, imported: list[tuple[Plan, list[int]]],
            skips: list[source.Skip]) -> None:
  """Merges this run into the manifest and writes it atomically."""
  manifest["sources"] = sorted(set(manifest["sources"]) | {os.path.abspath(settings.src)})
  manifest["episodes"].update({plan.key: _episode_entry(plan, ks, settings) for plan, ks in imported})
  manifest["skipped"] = {k: v for k, v in manifest["skipped"].items() if k not in manifest["episodes"]}
  manifest["skipped"].update({s.key: {"path": s.path, "reason": s.reason} for s in skips})
  utils.atomic_write(os.path.join(settings.dst, MANIFEST),
                     lambda f: json.dump(manifest, f, indent=1, ensure_ascii=False), mode="w")
  utils.atomic_write(os.path.join(settings.dst, rig_lib.RIG_FILE),
                     lambda f: json.dump(settings.rig.to_json(), f, indent=1, ensure_ascii=False), mode="w")


def run(settings: Settings, progress: bool = False) -> Summary:
  """Imports settings.src into settings.dst; returns what was done.

  Raises:
    ValueError: a bad setting, an unrecognised source root, or a DST imported with other settings (before
      any clip is written).
    decode.MissingCodecError: the decoding backend cannot decode the source videos.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  check(settings)
  backend = video.resolve_backend(settings.video_backend)
  kind, episodes, skips = discover(settings)
  manifest = _load_manifest(settings)
  os.makedirs(settings.dst, exist_ok=True)
  _remove_stale_temps(settings.dst, settings.rig.names)
  with concurrent.futures.ThreadPoolExecutor(settings.workers) as pool:
    planned = list(tqdm(pool.map(functools.partial(plan_episode, settings=settings, backend=backend), episodes),
                        total=len(episodes), desc="plan", unit="episode", disable=not progress))
    skips += [p for p in planned if isinstance(p, source.Skip)]
    selection = _select(planned, settings.max_clips)
    jobs = [pool.submit(cut_episode, plan, todo, settings, backend)
            for plan, ks in selection if (todo := [k for k in ks if k not in plan.done])]
    results: dict[str, CutResult] = {}
    with tqdm(total=sum(len(ks) for _, ks in selection), desc="clips", unit="clip", disable=not progress) as bar:
      bar.update(sum(len(plan.done & set(ks)) for plan, ks in selection))
      for job in concurrent.futures.as_completed(jobs):
        result = job.result()
        results[result.key] = result
        bar.update(len(result.written))
  imported: list[tuple[Plan, list[int]]] = []  # (plan, its clips complete in DST)
  for plan, ks in selection:
    result = results.get(plan.key)
    if result is not None and result.failure is not None:
      skips.append(result.failure)
      ks = [k for k in ks if k in plan.done or k in result.written]
    if ks:
      imported.append((plan, ks))
  for s in skips:
    log.warning("skipped %s", s)
  _record(manifest, settings, imported, skips)
  if settings.depth and settings.hand_depth == "none":
    log.warning("head depth only: a depth run needs %s/<view> for every camera; add hand-view depth "
                "(e.g. Video-Depth-Anything on the hand clips) or import into a new DST with --hand_depth=blank",
                DEPTH_FOLDER)
  return Summary(kind, sum(len(ks) for _, ks in imported), sum(len(r.written) for r in results.values()),
                 len(imported), tuple(skips))
