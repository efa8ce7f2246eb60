r"""Imports AgiBot World episodes (raw release or a LeRobot v2.x / v3.0 conversion) into the training layout.

  python -m agibot_jax.data.import_agibot_world SRC DST [--clip_frames 93 --stride 93 --fps 30 \
      --aspect stretch|pad|crop --depth --hand_depth none|blank --tasks 327,352 --episodes 648642 \
      --max_clips 1000 --workers 4]

SRC is a raw root (task_info/, observations/<task>/<episode>/ or its tar shards) or a LeRobot root (recognised
by meta/info.json). DST gets videos/, captions/ (and control_input_depth/) of the agibot rig's three cameras with ids
`<task>_<episode>_c<k>`, manifest.json and rig.json. Rerunning the same command completes an interrupted import. Exit
status 0 with a summary, 2 with a one-line reason when the source, the settings or a codec rule the import out, or
when no clip was imported (every episode skipped: the reasons are in manifest.json); 1 with one line when DST cannot
be written (a full disk: the clips completed are kept, rerun to resume).
Other robots' LeRobot datasets: `python -m agibot_jax.data.import_lerobot`.
The data is CC BY-NC-SA 4.0 and gated: this reads the copy you obtained and redistributes nothing.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from agibot_jax import cli, video_io
from agibot_jax.data.agibot_world import captions, clips, decode, importer

EXIT_REFUSED = 2
EXIT_FAILED = 1


def define_clip_flags() -> None:
  """The flags of every importer: how clips are cut, captioned and selected (import_lerobot takes them too)."""
  flags.DEFINE_integer("clip_frames", 93, "frames per clip (the loader reads 93)")
  flags.DEFINE_integer("stride", None, "output frames between clip starts (default: clip_frames, no overlap)")
  flags.DEFINE_float("fps", None, "output fps, subsampling the source uniformly (default: the source's, 30)")
  flags.DEFINE_enum("aspect", "stretch", clips.ASPECTS, "640x480 -> 16:9: keep (the loader stretches), pad or crop")
  flags.DEFINE_string("caption_template", captions.DEFAULT_TEMPLATE,
                      f"caption per clip from the fields {{{'}, {'.join(captions.FIELDS)}}}")
  flags.DEFINE_list("tasks", None, "only these tasks (raw: task ids; LeRobot: task_index)")
  flags.DEFINE_list("episodes", None, "only these episodes (raw: episode ids; LeRobot: episode_index)")
  flags.DEFINE_integer("max_clips", 0, "at most this many clips, the first in task/episode order (0: all)")
  flags.DEFINE_integer("workers", 4, "episodes processed in parallel")
  flags.DEFINE_enum("video_backend", "auto", ("auto", "imageio", "opencv"),
                    "decoder: imageio-ffmpeg (AV1 via libdav1d) or OpenCV (no AV1); auto prefers imageio")


def settings_from_flags(src: str, dst: str, **source_settings) -> importer.Settings:
  """Settings of the `define_clip_flags` flags, plus the importer's own `source_settings`."""
  f = flags.FLAGS
  return importer.Settings(
      src=src, dst=dst, clip_frames=f.clip_frames, stride=f.stride, fps=f.fps, aspect=f.aspect,
      caption_template=f.caption_template, tasks=tuple(f.tasks or ()), episodes=tuple(f.episodes or ()),
      max_clips=f.max_clips, workers=f.workers, video_backend=f.video_backend, **source_settings)


def run_import(settings: importer.Settings) -> int:
  """Imports; prints the summary (exit status 0), the one-line reason it was refused or imported nothing (2), or why
  DST could not be written (1)."""
  # OpenCV's FFmpeg logs every probe of an AV1 file as a failed hardware decode; probing decodes nothing.
  # Read once, at the first video OpenCV opens.
  os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
  try:
    summary = importer.run(settings, progress=True)
  except (ValueError, decode.MissingCodecError) as e:
    print(f"REFUSED {e}", file=sys.stderr)
    return EXIT_REFUSED
  except (OSError, video_io.VideoError) as e:
    print(f"FAILED writing {settings.dst}: {e} (the clips completed are kept: rerun to resume)", file=sys.stderr)
    return EXIT_FAILED
  if summary.clips == 0:
    first = f"; the first: {summary.skipped[0]}" if summary.skipped else ""
    print(f"REFUSED nothing imported from {settings.src}: {len(summary.skipped)} item(s) skipped (reasons in "
          f"{settings.dst}/{importer.MANIFEST}){first}", file=sys.stderr)
    return EXIT_REFUSED
  print(f"imported {summary} -> {settings.dst} (details: {settings.dst}/{importer.MANIFEST})")
  return 0


def main(src: str, dst: str) -> int:
  f = flags.FLAGS
  return run_import(settings_from_flags(src, dst, depth=f.depth, hand_depth=f.hand_depth,
                                        video_keys=tuple(f.video_keys or ())))


if __name__ == "__main__":
  define_clip_flags()
  flags.DEFINE_bool("depth", False, "write control_input_depth/head_color from the head depth PNGs (raw only)")
  flags.DEFINE_enum("hand_depth", "none", importer.HAND_DEPTH,
                    "hand-view depth: none (a depth run then needs it from elsewhere) or blank (all 0)")
  flags.DEFINE_list("video_keys", None, "LeRobot video features for head_color,hand_left,hand_right "
                    "(default: detected from meta/info.json)")
  cli.run(main, positional=("src", "dst"))
