r"""Imports any robot's LeRobot dataset (codebase v2.0 / v2.1 / v3.0) into the training layout, with 1 to 3 cameras.

  python -m agibot_jax.data.import_lerobot SRC DST \
      --cameras observation.images.cam_high=head,observation.images.cam_left_wrist=left_wrist \
      [--rig RIG] [--clip_frames 93 --stride 93 --fps 30 --aspect stretch|pad|crop --tasks 0,2 --episodes 5 \
      --max_clips 1000 --workers 4]

SRC is a LeRobot root (meta/info.json; packed v3.0 files included). `--cameras` maps its video features to camera
folders, 1 to 3 of them (the released network has 3 view rows; a fourth is refused). DST gets videos/<camera>/ and
captions/<camera>/ (the episode's task string) with ids `<SRC folder>_<episode_index>_c<k>`, manifest.json, and
rig.json: the rig to train with (`--config.rig=DST/rig.json`), its cameras in the order given on view rows 0, 1, 2,
each one every other camera's neighbour, and caption prefixes "The video is captured from the <camera> camera."
(edit them to say where each camera is; keep them fixed once training started). `--rig` (a preset name or a rig
file, agibot_jax/rig.py) gives the rig instead: each of its cameras reads the feature `--cameras` maps to it, else
`observation.images.<camera>`. Rerunning the same command completes an interrupted import. Exit status 0 with a
summary, 2 with a one-line reason.
"""

from __future__ import annotations

import os
import re
import sys

from absl import flags

from agibot_jax import cli
from agibot_jax import rig as rig_lib
from agibot_jax.data import import_agibot_world
from agibot_jax.data.agibot_world import lerobot

EXIT_REFUSED = import_agibot_world.EXIT_REFUSED


def parse_cameras(items: list[str]) -> list[tuple[str, str]]:
  """`--cameras KEY=VIEW,...` -> [(video feature, camera)]. Raises ValueError naming the item."""
  pairs = []
  for item in items:
    key, _, view = item.rpartition("=")
    if not key or not view:
      raise ValueError(f"--cameras {item!r}: expected VIDEO_FEATURE=CAMERA, e.g. observation.images.cam_high=head")
    pairs.append((key, view))
  return pairs


def main(src: str, dst: str) -> int:
  f = flags.FLAGS
  try:
    if not f.cameras and not f.rig:
      raise ValueError("--cameras VIDEO_FEATURE=CAMERA,... (1 to 3 cameras) or --rig: which cameras to import")
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", os.path.basename(os.path.abspath(dst)))
    rig, video_keys = lerobot.camera_map(parse_cameras(f.cameras or []), rig_lib.parse(f.rig) if f.rig else None,
                                         name=name)
    if not lerobot.is_root(src):
      raise ValueError(f"{src}: not a LeRobot root (no meta/info.json)")
  except ValueError as e:
    print(f"REFUSED {e}", file=sys.stderr)
    return EXIT_REFUSED
  return import_agibot_world.run_import(import_agibot_world.settings_from_flags(src, dst, rig=rig,
                                                                                video_keys=video_keys))


if __name__ == "__main__":
  import_agibot_world.define_clip_flags()
  flags.adopt_module_key_flags(import_agibot_world)
  flags.DEFINE_list("cameras", None, "VIDEO_FEATURE=CAMERA,...: the video features of meta/info.json to import and "
                    "their camera folders, in rig order (1 to 3)")
  flags.DEFINE_string("rig", None, "the cameras' rig (a preset name or a rig JSON file) instead of one made from "
                      "--cameras")
  cli.run(main, positional=("src", "dst"))
