r"""Validates a training dataset against a config and optionally previews one sample.

  python -m agibot_jax.data.inspect --config configs/edge.py \
      --config.dataloader_train.dataset.dataset_dir=DIR [--full] [--preview out.mp4 --preview_index 0]

Exit status 0 with a summary (the rig and its cameras, camera folders it does not read, samples, frames, fps,
resolution, control type) when the dataset is valid; 2 with the list of every problem (each naming its file; a
camera folder the rig lacks names the rig and the folders the dataset has) otherwise, or with one line when the rig
(`config.rig`, `dataloader_train.dataset.views`) is unusable. Each video's metadata and first frame
are read; `--full` (or `dataloader_train.dataset.validate=full`) decodes every frame training will read, which finds
files corrupt mid-stream. Views whose aspect ratio differs from the training resolution's get a warning.
`--preview` writes the sample's views side by side (top row) above its control maps (bottom row; edge/vis with the
"medium" preset).
"""

from __future__ import annotations

import os
import sys

from absl import flags

from agibot_jax import cli, preflight, registry
from agibot_jax import rig as rig_lib
from agibot_jax.data import layout, pipeline


EXIT_PROBLEMS = 2


def summary(settings: pipeline.DataSettings, samples: list[layout.Sample]) -> str:
  frames = sorted({s.num_frames for s in samples})
  fps = sorted({round(s.fps, 3) for s in samples})
  sizes = sorted({hw for s in samples for hw in s.original_hw})
  h, w = settings.resolution_hw
  unread = layout.camera_folders(settings.dataset_dir, settings.rig)[1]
  return "\n".join([
      f"dataset:        {settings.dataset_dir}",
      f"samples:        {len(samples)}",
      f"rig:            {settings.rig.describe()} (camera=view row)",
      f"views:          {', '.join(settings.views)}",
      f"not read:       {', '.join(unread) if unread else '-'} (camera folders of the dataset the run does not read)",
      f"frames/view:    {frames[0]}..{frames[-1]} in files, {settings.num_video_frames} used"
      f"{' (random start)' if settings.random_start_frame else ' (from frame 0)'}",
      f"fps:            {', '.join(f'{f:g}' for f in fps)}",
      f"source HxW:     {', '.join(f'{a}x{b}' for a, b in sizes)}",
      f"resolution HxW: {h}x{w}",
      f"control:        {settings.control_type}",
  ])


def write_preview(source: pipeline.AgibotMultiviewSource, index: int, path: str) -> None:
  """One sample's views side by side, the video above its control, each row and view labelled (mp4 at `path`, and
  its frame strip beside it: 12 frames, or all of a shorter clip)."""
  from agibot_jax.sampling import generate, video_out

  sample = source.load(index, rng=None)
  s = source.settings
  control = registry.control(s.control_type)
  rows = [generate.pixels_to_rows(sample[key][None], len(s.views)) for key in ("video", control.key)]
  stem = os.path.splitext(os.path.basename(path))[0]
  video_out.save_sample_outputs(os.path.dirname(os.path.abspath(path)), stem, rows, fps=round(float(sample["fps"])),
                                row_labels=[f"{sample['__key__']} video", f"{s.control_type} control"],
                                view_names=list(s.views), n_viz_sample=1)


def run(config, preview: str | None = None, preview_index: int = 0, full: bool = False) -> int:
  """Validates `config`'s training dataset (`full`: every frame decoded), prints the summary or the problems and
  the result line; returns the exit status."""
  try:
    rig_lib.of_config(config)
  except rig_lib.RigError as e:  # the dataset's cameras: one line among the dataset's problems
    print(f"INVALID {e}", file=sys.stderr)
    return EXIT_PROBLEMS
  if full:
    config = config.copy_and_resolve_references()
    config.dataloader_train.dataset.validate = "full"
  config = preflight.for_dataset(config)
  if preview:
    preflight.check_output(preview, "--preview", ".mp4")
  try:
    samples = preflight.prepare_dataset(config)
  except layout.DatasetError as e:
    print(f"INVALID {e}", file=sys.stderr)
    cli.print_result({"valid": False, "problems": len(e.problems)})
    return EXIT_PROBLEMS
  settings = pipeline.DataSettings.from_config(config, control_preset="medium")
  print(summary(settings, samples))
  result = {"valid": True, "samples": len(samples)}
  if preview:
    write_preview(pipeline.AgibotMultiviewSource(settings, samples), preview_index, preview)
    print(f"preview:        {preview}")
    result["preview"] = os.path.abspath(preview)
  cli.print_result(result)
  return 0


def main() -> int:
  return run(flags.FLAGS.config, flags.FLAGS.preview, flags.FLAGS.preview_index, flags.FLAGS.full)


if __name__ == "__main__":
  cli.define_config_flag()
  flags.DEFINE_string("preview", None, "write a side-by-side preview mp4 of one sample here")
  flags.DEFINE_integer("preview_index", 0, "sample index (sorted by id) for --preview")
  flags.DEFINE_bool("full", False, "decode every frame training will read (finds files corrupt mid-stream; slow)")
  cli.run(main, required=("config",), bad_input=preflight.USER_ERRORS)
