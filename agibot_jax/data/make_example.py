"""Writes a small synthetic multiview dataset in the exact Agibot layout (agibot_jax/data/synthetic.py).

  python -m agibot_jax.data.make_example DIR [--num_samples 2 --frames 16 --height 96 --width 144 --fps 16]
      [--appearance control]      # frames determined by their controls (synthetic.py)
      [--rig rig.json]            # the cameras of another rig (a preset name or a rig file; default agibot)
  python -m agibot_jax.data.make_example DIR --frames 93 --height 72 --width 128    # for the full-size configs

The defaults pass `agibot_jax.data.inspect` with the tiny configs (configs/<ct>.py:tiny: 64x96, 9 frames; 96x144 is
their aspect ratio). The full-size configs read 93 frames at 432x768: `--frames 93` and a 16:9 size.
"""

from __future__ import annotations

import logging
import os

from absl import flags

from agibot_jax import cli
from agibot_jax import rig as rig_lib
from agibot_jax.data import synthetic

log = logging.getLogger(__name__)


def main(out_dir: str) -> int:
  f = flags.FLAGS
  rig = rig_lib.parse(f.rig)
  ids = synthetic.write_example(out_dir, f.num_samples, f.frames, f.height, f.width, f.fps, f.seed, f.appearance,
                                rig.names)
  log.info("wrote %d samples x %d views (rig %s: %s; %d frames, %dx%d, depth+seg controls) to %s", len(ids),
           len(rig.names), rig.name, ", ".join(rig.names), f.frames, f.height, f.width, out_dir)
  cli.print_result({"dataset_dir": os.path.abspath(out_dir), "samples": ids})
  return 0


if __name__ == "__main__":
  flags.DEFINE_integer("num_samples", 2, "samples to write")
  flags.DEFINE_integer("frames", 16, "frames per clip (the full-size configs read 93)")
  flags.DEFINE_integer("height", 96, "frame height (even)")
  flags.DEFINE_integer("width", 144, "frame width (even)")
  flags.DEFINE_float("fps", 16.0, "frame rate")
  flags.DEFINE_integer("seed", 0, "world seed")
  flags.DEFINE_enum("appearance", "random", list(synthetic.APPEARANCES), "random: shapes look random; control: "
                    "each shape's look follows its class, so the controls determine the frames")
  flags.DEFINE_string("rig", rig_lib.DEFAULT, "whose cameras: a rig preset name or a rig JSON file (agibot_jax/rig.py)")
  cli.run(main, positional=("out_dir",), bad_input=(ValueError, OSError))  # a bad rig (RigError) or size, a full disk
