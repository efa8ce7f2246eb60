"""Dataset layout scan and up-front validation of a multiview dataset directory (spec §1.1–§1.3).

  <dataset_dir>/videos/<view>/<id>.mp4             RGB clip per view (a camera of the rig, agibot_jax/rig.py)
  <dataset_dir>/captions/<view>/<id>.json          {"caption": "..."} (the rig's first camera's is the prompt)
  <dataset_dir>/control_input_<ct>/<view>/<id>.mp4 only for file controls (depth, seg; agibot_jax.registry)

Samples are matched across views by file stem; extensions match in any case (`.MP4`). `scan` checks the whole
dataset once and returns every problem it finds (each naming the file; a camera folder the rig lacks is named with
the rig and the folders the dataset has instead); `load_index` refuses a dataset with problems unless told to drop
the bad samples, and warns about camera folders the run does not read, views whose aspect ratio is not the
training resolution's (they are stretched) and samples whose prompt (the rig's prompt camera's caption) is empty. A
control video of another aspect ratio than its RGB video is a problem (both are resized to the training resolution,
so they would be stretched differently and no longer line up) unless `control_stretch` says so is intended; one of
another size but the same aspect is named in a warning. The reference instead crashes at the first bad sample
mid-training (spec §1.6).

Each video is probed (metadata and first frame); `full=True` also decodes every frame training will read, which
finds files corrupt mid-stream (slow: a full decode of the dataset).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os

from agibot_jax import logs, registry
from agibot_jax import rig as rig_lib
from agibot_jax import video_io as video

log = logging.getLogger(__name__)
_FPS_RTOL = 1e-3
_ASPECT_RTOL = 1e-2


class DatasetError(ValueError):
  """The dataset has problems; `problems` lists every one (each names its file)."""

  def __init__(self, dataset_dir: str, problems: list[Problem]):
    self.problems = problems
    lines = "\n".join(f"  - {p}" for p in problems)
    super().__init__(f"dataset {dataset_dir} has {len(problems)} problem(s):\n{lines}")


@dataclasses.dataclass(frozen=True)
class Problem:
  sample_id: str | None  # None: a dataset-level problem (missing folder, empty dataset)
  path: str
  message: str

  def __str__(self) -> str:
    return f"{self.path}: {self.message}"


@dataclasses.dataclass(frozen=True)
class Sample:
  """One validated sample; per-view tuples follow the configured view order."""
  sample_id: str
  videos: tuple[str, ...]
  controls: tuple[str, ...] | None  # depth/seg control files, else None
  prompt: str
  num_frames: int  # min over the views (all equal after validation)
  fps: float
  original_hw: tuple[tuple[int, int], ...]


def _read_caption(path: str) -> tuple[str | None, str | None]:
  """Returns (caption, problem message)."""
  if not os.path.isfile(path):
    return None, "caption file missing"
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except OSError as e:
    return None, f"caption file cannot be read ({e.strerror or e})"
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    return None, f"caption file is not valid JSON ({e})"
  if not isinstance(data, dict) or not isinstance(data.get("caption"), str):
    return None, 'caption file has no "caption" string'
  return data["caption"], None


def _files(folder: str, ext: str) -> tuple[dict[str, str], list[Problem]]:
  """({stem: path} of the `ext` files in `folder`, the extension in any case; a problem per stem found twice, or one
  for the folder when it cannot be read)."""
  if not os.path.isdir(folder):
    return {}, []
  try:
    names = sorted(os.listdir(folder))
  except OSError as e:
    return {}, [Problem(None, folder, f"folder cannot be read ({e.strerror or e})")]
  by_stem: dict[str, list[str]] = {}
  for name in names:
    stem, dot_ext = os.path.splitext(name)
    if dot_ext.lower() == ext and not name.startswith("."):
      by_stem.setdefault(stem, []).append(os.path.join(folder, name))
  twice = [Problem(stem, paths[0], f"sample {stem!r} has {len(paths)} files here: "
                   f"{[os.path.basename(p) for p in paths]}") for stem, paths in by_stem.items() if len(paths) > 1]
  return {stem: paths[0] for stem, paths in by_stem.items()}, twice


def _unlistable(folder: str) -> str | None:
  """Why an existing `folder` cannot be listed (None: it can, or does not exist)."""
  try:
    os.listdir(folder)
  except FileNotFoundError:
    return None
  except OSError as e:
    return e.strerror or str(e)
  return None


def _under(path: str, folders) -> bool:
  return any(path.startswith(folder + os.sep) for folder in folders)


def _same_fps(a: float, b: float) -> bool:
  return abs(a - b) <= _FPS_RTOL * max(abs(a), abs(b))


def _same_aspect(a: video.VideoInfo, b: video.VideoInfo) -> bool:
  return abs(a.width / a.height - b.width / b.height) <= _ASPECT_RTOL * b.width / b.height


def _size(info: video.VideoInfo) -> str:
  return f"{info.height}x{info.width} (W/H {info.width / info.height:.2f})"


def camera_folders(dataset_dir: str, rig: rig_lib.Rig) -> tuple[list[str], list[str]]:
  """(the rig's cameras without a videos/ folder, the videos/ folders that are no camera of the rig)."""
  videos = os.path.join(dataset_dir, "videos")
  try:
    found = sorted(d for d in os.listdir(videos) if os.path.isdir(os.path.join(videos, d)) and not d.startswith("."))
  except OSError:  # absent, or cannot be read (`scan` names it)
    found = []
  return [v for v in rig.names if v not in found], [d for d in found if d not in rig.names]


def _other_cameras_hint(root: str, rig: rig_lib.Rig, extra: list[str]) -> str:
  """What to change when the rig's camera folders are missing but the dataset has others."""
  if not extra:
    return ""
  own = os.path.join(root, rig_lib.RIG_FILE)
  return (f"; the dataset has camera folder(s) {', '.join(extra)}, which rig {rig.describe()} lacks: set config.rig "
          f"to the dataset's cameras" + (f" (--config.rig={own})" if os.path.isfile(own) else ""))


def scan(dataset_dir: str, rig: rig_lib.Rig, control_type: str, frames_needed: int, *, full: bool = False,
         random_start: bool = False, backend: str = "auto",
         control_stretch: bool = False) -> tuple[list[Sample], list[Problem]]:
  """Checks the whole dataset for the cameras of `rig` (in its order); returns the valid samples (sorted by id) and
  every problem found.

  full: decode every frame training reads (the first `frames_needed`; all of them with `random_start`) with `backend`.
  control_stretch: a control video of another aspect ratio than its RGB video is intended (a warning, no problem).
  """
  views = rig.names
  control = registry.control(control_type)
  root = os.path.abspath(dataset_dir)
  problems: list[Problem] = []
  if not os.path.isdir(root):
    return [], [Problem(None, root, "dataset directory not found")]
  ctrl_root = os.path.join(root, control.key) if control.from_files else None
  tops = [os.path.join(root, "videos"), os.path.join(root, "captions")] + ([ctrl_root] if ctrl_root else [])
  blocked = {top: why for top in tops if (why := _unlistable(top))}
  problems += [Problem(None, top, f"folder cannot be read ({why})") for top, why in blocked.items()]
  unreadable = set(blocked)  # folders that cannot be listed: what they hold is not known missing
  missing, extra = camera_folders(root, rig)
  hint = _other_cameras_hint(root, rig, extra) if missing else ""
  for v in views:
    folders = [os.path.join(root, "videos", v), os.path.join(root, "captions", v)]
    folders += [os.path.join(ctrl_root, v)] if ctrl_root else []
    problems += [Problem(None, d, f"folder missing (camera {v} of rig {rig.name}){hint}")
                 for d in folders if os.path.dirname(d) not in unreadable and not os.path.isdir(d)]

  duplicates: dict[str, list[Problem]] = {}

  def files(*parts: str, ext: str = ".mp4") -> dict[str, str]:
    found, found_problems = _files(os.path.join(root, *parts), ext)
    for p in found_problems:
      if p.sample_id is None:
        problems.append(p)
        unreadable.add(p.path)
      else:
        duplicates.setdefault(p.sample_id, []).append(p)
    return found

  videos = {v: files("videos", v) for v in views}
  captions = {v: files("captions", v, ext=".json") for v in views}
  ctrl_files = {v: files(control.key, v) for v in views} if ctrl_root else {}
  all_ids = sorted(set().union(*videos.values()))
  if full:
    log.info("validate=full: decoding every frame training reads, %d samples x %d views", len(all_ids), len(views))

  def decodes(info: video.VideoInfo) -> str | None:
    """Why the file does not decode as far as training reads (None: it does, or is not fully checked)."""
    if not full or info.num_frames < frames_needed:
      return None
    try:
      video.verify(info.path, info.num_frames if random_start else frames_needed, backend)
    except video.VideoError as e:
      return str(e)
    return None

  samples, resized = [], []
  with logs.progress(total=len(all_ids), desc="decoding", unit="sample") if full else contextlib.nullcontext() as bar:
    for sid in all_ids:
      sample_problems: list[Problem] = list(duplicates.get(sid, ()))
      present = [v for v in views if sid in videos[v]]
      paths = [videos[v].get(sid, os.path.join(root, "videos", v, f"{sid}.mp4")) for v in views]
      if len(present) == 1 and len(views) > 1:
        sample_problems.append(Problem(sid, paths[views.index(present[0])],
                                       f"sample {sid!r} exists only in view {present[0]} (no other view has it)"))
      else:
        sample_problems += [Problem(sid, p, f"missing view file ({v}) of sample {sid!r}")
                            for v, p in zip(views, paths) if v not in present]

      prompt = ""
      for v in views:
        cap_path = captions[v].get(sid, os.path.join(root, "captions", v, f"{sid}.json"))
        caption, msg = _read_caption(cap_path)
        if msg:
          sample_problems.append(Problem(sid, cap_path, msg))
        elif v == rig.prompt_view:
          prompt = caption

      infos = {}
      for v, p in zip(views, paths):
        if v in present:
          try:
            infos[v] = video.probe(p)
          except video.VideoError as e:
            sample_problems.append(Problem(sid, p, f"unreadable or corrupt video ({e})"))
      for v, info in infos.items():
        if info.num_frames < frames_needed:
          sample_problems.append(Problem(sid, info.path,
                                         f"video has {info.num_frames} frames, need at least {frames_needed}"))
        elif msg := decodes(info):
          sample_problems.append(Problem(sid, info.path, f"corrupt video ({msg})"))
      if len(infos) > 1:
        ref_view, ref = next(iter(infos.items()))
        for v, info in infos.items():
          if info.num_frames != ref.num_frames or not _same_fps(info.fps, ref.fps):
            sample_problems.append(Problem(
                sid, info.path, f"view {v} has {info.num_frames} frames at {info.fps:g} fps but view {ref_view} "
                f"({ref.path}) has {ref.num_frames} frames at {ref.fps:g} fps"))

      ctrl_paths = None
      if ctrl_root:
        ctrl_paths = tuple(ctrl_files[v].get(sid, os.path.join(ctrl_root, v, f"{sid}.mp4")) for v in views)
        for v, cp in zip(views, ctrl_paths):
          if not os.path.isfile(cp):
            sample_problems.append(Problem(sid, cp, f"{control_type} control file missing for view {v}"))
            continue
          try:
            cinfo = video.probe(cp)
          except video.VideoError as e:
            sample_problems.append(Problem(sid, cp, f"unreadable or corrupt control video ({e})"))
            continue
          if v in infos and (cinfo.num_frames != infos[v].num_frames or not _same_fps(cinfo.fps, infos[v].fps)):
            sample_problems.append(Problem(
                sid, cp, f"control video has {cinfo.num_frames} frames at {cinfo.fps:g} fps but its RGB video "
                f"{infos[v].path} has {infos[v].num_frames} frames at {infos[v].fps:g} fps"))
          elif msg := decodes(cinfo):
            sample_problems.append(Problem(sid, cp, f"corrupt control video ({msg})"))
          elif v in infos and (cinfo.height, cinfo.width) != (infos[v].height, infos[v].width):
            if control_stretch or _same_aspect(cinfo, infos[v]):
              resized.append(f"{cp} {_size(cinfo)} vs {_size(infos[v])}")
            else:
              sample_problems.append(Problem(
                  sid, cp, f"control video is {_size(cinfo)} but its RGB video {infos[v].path} is "
                  f"{_size(infos[v])}: resized to the training resolution they would be stretched differently and "
                  "no longer line up; fix the control video, or set "
                  "dataloader_train.dataset.allow_control_stretch=True if the stretch is intended"))

      # A file in a folder that cannot be read is not known to be missing: the folder's problem names it.
      problems += [p for p in sample_problems if not _under(p.path, unreadable)]
      if not sample_problems:
        samples.append(Sample(
            sample_id=sid, videos=tuple(paths), controls=ctrl_paths, prompt=prompt,
            num_frames=min(i.num_frames for i in infos.values()), fps=infos[views[0]].fps,
            original_hw=tuple((infos[v].height, infos[v].width) for v in views)))
      if bar is not None:
        bar.update(1)
  if not all_ids and not _under(os.path.join(root, "videos", views[0], ""), unreadable):
    problems.append(Problem(None, os.path.join(root, "videos", views[0]), "empty dataset: no .mp4 samples found"))
  if resized:
    log.warning("%d control video(s) of another size than their RGB video, each resized to the training resolution "
                "by itself: %s", len(resized), _first_few(resized))
  return samples, problems


def _first_few(items: list[str], n: int = 5) -> str:
  return "; ".join(items[:n]) + (f"; and {len(items) - n} more" if len(items) > n else "")


def aspect_mismatches(samples: list[Sample], views: tuple[str, ...],
                      resolution_hw: tuple[int, int]) -> dict[str, list[tuple[int, int]]]:
  """{view: its source sizes (H, W) whose aspect ratio differs from `resolution_hw`'s by more than 1%}."""
  target = resolution_hw[1] / resolution_hw[0]
  out: dict[str, set[tuple[int, int]]] = {}
  for sample in samples:
    for view, (h, w) in zip(views, sample.original_hw):
      if abs(w / h - target) > _ASPECT_RTOL * target:
        out.setdefault(view, set()).add((h, w))
  return {view: sorted(sizes) for view, sizes in out.items()}


def load_index(dataset_dir: str, rig: rig_lib.Rig, control_type: str, frames_needed: int,
               skip_invalid: bool = False, *, resolution_hw: tuple[int, int] | None = None, full: bool = False,
               random_start: bool = False, backend: str = "auto", control_stretch: bool = False) -> list[Sample]:
  """Validated sample list (`scan`) for the cameras of `rig`; a warning names the camera folders the rig does not
  read, another the samples whose prompt is empty, and with `resolution_hw` another lists the views whose aspect
  ratio differs.

  Raises:
    DatasetError: any problem (listing all of them), or, with `skip_invalid`, no valid sample left.
  """
  samples, problems = scan(dataset_dir, rig, control_type, frames_needed, full=full, random_start=random_start,
                           backend=backend, control_stretch=control_stretch)
  if problems and not (skip_invalid and samples):
    raise DatasetError(dataset_dir, problems)
  if problems:
    dropped = sorted({p.sample_id for p in problems if p.sample_id is not None})
    log.warning("skip_invalid: dropping %d sample(s) %s of %s:\n%s", len(dropped), dropped, dataset_dir,
                    "\n".join(f"  - {p}" for p in problems))
  if unread := camera_folders(dataset_dir, rig)[1]:
    log.warning("camera folder(s) %s of %s are not read: the run's cameras are rig %s", ", ".join(unread),
                os.path.join(dataset_dir, "videos"), rig.describe())
  if rig.prompt_view in rig.names:
    empty = [os.path.join(os.path.abspath(dataset_dir), "captions", rig.prompt_view, f"{s.sample_id}.json")
             for s in samples if not s.prompt.strip()]
    if empty:
      log.warning("%d sample(s) with an empty prompt (their %s caption, which is the prompt): %s", len(empty),
                  rig.prompt_view, _first_few(empty))
  if resolution_hw is not None:
    mismatched = aspect_mismatches(samples, rig.names, resolution_hw)
    if mismatched:
      h, w = resolution_hw
      listed = "; ".join(f"{view} {', '.join(f'{a}x{b} ({b / a:.2f})' for a, b in sizes)}"
                         for view, sizes in mismatched.items())
      log.warning("view(s) whose aspect ratio (W/H) differs from the training resolution %dx%d (%.2f), stretched to "
                  "it: %s", h, w, w / h, listed)
  return samples
