r"""Generate a multiview video (a view per camera of `config.rig`) with the control DiT from a training run or a
converted checkpoint.

  python -m agibot_jax.sample --config configs/edge.py --checkpoint runs/edge \
      --config.dataloader_train.dataset.dataset_dir=DIR --sample_id ID --guidance 3 --num_cond_frames 1 \
      --out out.mp4
  python -m agibot_jax.sample --config configs/edge.py --checkpoint CONVERTED_DIT_DIR \
      --control_videos head.mp4,left.mp4,right.mp4 --prompt "The robot picks up the red cup." --out out.mp4
  python -m agibot_jax.sample ... --control_weight 0,0.5,1      # one row per control weight

`--checkpoint` is a training workdir (or its `checkpoints/` folder: the newest complete checkpoint's weights are
read, EMA unless `--no_ema`), a DiT directory written by `python -m convert.dit`, or a bundle directory with `dit/`
(and `vae/`, `text_encoder/`). The config must describe the checkpoint's model (`--config` and the model overrides
the run was trained with; a different model or data layout is refused naming the keys). The paths a training run
was trained with (dataset, caches, VAE, text encoder) are used wherever the config names none. The VAE and the text
encoder come from the config exactly as in training (`model.tokenizer.path`, `model.text_encoder.path`, a bundle, or
random weights for the tiny config).

Inputs: `--sample_id` picks a sample of the dataset (default: the first; a training run's embedded example dataset
when no dataset_dir is given); its control map is computed with `--control_preset` (computed controls) or read from
the dataset (file controls). With `--control_videos` (one control video per camera, in the rig's order) and
`--prompt` no dataset is needed; there is then no input video, so no clean first frame: `--num_cond_frames` must be 0.

Writes `--out` (mp4: one row per control weight, then the input video when there is one, then the control pixels;
views side by side) and the frame strip `<out stem>_<n>frames.jpg` beside it (12 frames, or all of a shorter clip).
A progress bar follows the denoising steps, which run as one compiled loop (cond/uncond batched, guidance and
control weight traced values). `--dry_run` runs the up-front checks only (agibot_jax/preflight.py).
"""

from __future__ import annotations

import logging
import os
import time

import jax
from absl import flags

from agibot_jax import assemble, cli, preflight, registry
from agibot_jax import rig as rig_lib
from agibot_jax.data import controls
from agibot_jax.models import dit
from agibot_jax.sampling import generate, video_out

log = logging.getLogger(__name__)


def run(config, *, checkpoint: str, out: str, use_ema: bool = True, sample_id: str | None = None,
        control_videos: list[str] | None = None, prompt: str | None = None, guidance: float = 3.0,
        num_cond_frames: int | None = None, num_steps: int = 35, shift: float = generate.SHIFT,
        seed: int = generate.NOISE_SEED, control_preset: str = "medium",
        control_weights: tuple[float, ...] | None = None, dry_run: bool = False) -> dict:
  """Samples one video per control weight (default: `model.control_weight`); returns a summary.

  Everything that can be wrong with the inputs is found before any model is built (agibot_jax/preflight.py);
  `dry_run` stops there.
  """
  if control_videos:
    if sample_id is not None:
      raise cli.UsageError("give either --sample_id (a dataset sample) or --control_videos, not both")
    if prompt is None:
      raise cli.UsageError("--control_videos needs --prompt")
    if num_cond_frames not in (None, 0):
      raise cli.UsageError(f"--num_cond_frames={num_cond_frames} needs clean frames from an input video; with "
                           "--control_videos there is none: use --num_cond_frames=0 (or --sample_id with a dataset)")
    num_cond_frames = 0
  elif prompt is not None:
    raise cli.UsageError("--prompt applies to --control_videos; a dataset sample uses its own caption")
  num_cond_frames = 1 if num_cond_frames is None else num_cond_frames
  control_weights = control_weights or (float(config.model.control_weight),)

  checked = preflight.for_sampling(config, checkpoint=checkpoint, out=out, out_suffix=".mp4")
  config = checked.config
  ds = config.dataloader_train.dataset
  rig = rig_lib.of_config(config)
  views = rig.names
  if control_videos:
    if len(control_videos) != len(views):
      raise cli.UsageError(f"--control_videos has {len(control_videos)} files; need one per camera of rig "
                           f"{rig.describe()}")
    preflight.check_inputs(control_videos, "--control_videos")
  else:
    if not ds.dataset_dir:
      raise cli.UsageError("no input: set --config.dataloader_train.dataset.dataset_dir (with --sample_id) or give "
                           "--control_videos and --prompt")
    samples = preflight.prepare_dataset(config)
    index = preflight.sample_index(samples, sample_id, ds.dataset_dir)
  if dry_run:
    return {"dry_run": True, "checkpoint": os.path.abspath(checkpoint), "step": checked.checkpoint.step,
            "out": os.path.abspath(out)}

  mesh = assemble.make_mesh(config)
  cfg = assemble.dit_config(config)
  weights = assemble.sampling_params(config, checked.checkpoint.workdir, cfg, mesh, use_ema=use_ema)
  vae_model, vae_params = assemble.build_vae(config, mesh)
  text_provider = assemble.build_text_provider(config, cfg)
  assemble.check_text_projection(text_provider, weights.params)

  if control_videos:
    loader_batch = assemble.control_video_loader_batch(config, control_videos, prompt)
    batch = assemble.control_only_model_batch(loader_batch, vae_model, vae_params, text_provider, config, mesh)
  else:
    loader_batch = assemble.dataset_loader_batch(config, samples, index, control_preset)
    encode = assemble.make_encoder(vae_model, len(views))
    batch = assemble.model_batch(loader_batch, encode, vae_params, text_provider, config, mesh)

  gen = generate.Generator(dit.MultiViewControlDiT(cfg), vae_model, num_views=len(views), num_steps=num_steps,
                           shift=shift, seed=seed, progress=True)
  t0 = time.perf_counter()
  latents = [jax.block_until_ready(gen.denoise(weights.params, batch, guidance=guidance,
                                               num_cond_frames=num_cond_frames, control_weight=w))
             for w in control_weights]
  t1 = time.perf_counter()
  rows = [gen.decode(vae_params, x) for x in latents]
  labels = [f"g={guidance:g} n={num_cond_frames} w={w:g}" for w in control_weights]
  t2 = time.perf_counter()
  if "video" in loader_batch:
    rows.append(generate.pixels_to_rows(loader_batch["video"], len(views)))
    labels.append("input")
  rows.append(generate.pixels_to_rows(loader_batch[registry.control(ds.control_input_type).key], len(views)))
  labels.append(f"{ds.control_input_type} control")

  summary = {"guidance": guidance, "num_cond_frames": num_cond_frames, "num_steps": num_steps,
             "control_weights": list(control_weights), "denoise_s_incl_compile": t1 - t0,
             "decode_s_incl_compile": t2 - t1, "video_shape_BVTHWC": list(rows[0].shape), "rows": len(rows)}
  if jax.process_index() == 0:
    stem = os.path.splitext(os.path.basename(out))[0]
    mp4, jpg = video_out.save_sample_outputs(os.path.dirname(os.path.abspath(out)), stem, rows,
                                             fps=int(config.trainer.callbacks.every_n_sample.fps), row_labels=labels,
                                             view_names=list(views))
    log.info("wrote %s (rows: %s; views side by side) and its frame strip %s", mp4, ", ".join(labels), jpg)
    summary.update(mp4=str(mp4), jpg=str(jpg))
  return summary


def main() -> int:
  f = flags.FLAGS
  assemble.initialize_distributed()
  summary = run(f.config, checkpoint=f.checkpoint, out=f.out, use_ema=f.ema and not f.no_ema,
                sample_id=f.sample_id, control_videos=f.control_videos, prompt=f.prompt, guidance=f.guidance,
                num_cond_frames=f.num_cond_frames, num_steps=f.num_steps, shift=f.shift, seed=f.seed,
                control_preset=f.control_preset, control_weights=control_weights(f.control_weight),
                dry_run=f.dry_run)
  cli.print_result(summary)
  return 0


def control_weights(values: list[str] | None) -> tuple[float, ...] | None:
  try:
    return tuple(float(w) for w in values) if values else None
  except ValueError as e:
    raise cli.UsageError(f"--control_weight {','.join(values)}: {e}") from e


if __name__ == "__main__":
  cli.define_config_flag()
  cli.define_dry_run_flag()
  flags.DEFINE_string("checkpoint", None, "training workdir (or its checkpoints/ dir), converted DiT "
                      "dir (python -m convert.dit) or bundle dir with dit/")
  flags.DEFINE_bool("ema", True, "training checkpoints: sample with the EMA weights (default); --noema or "
                    "--no_ema: the regular weights")
  flags.DEFINE_bool("no_ema", False, "the regular weights of a training checkpoint (absl's --noema)")
  flags.DEFINE_string("sample_id", None, "dataset sample id (file stem); default: the first sample")
  flags.DEFINE_list("control_videos", None, "one control video per camera (the rig's order), "
                    "instead of a dataset sample")
  flags.DEFINE_string("prompt", None, "the prompt, with --control_videos")
  flags.DEFINE_float("guidance", 3.0, "classifier-free guidance g: v = v_cond + g·(v_cond − v_uncond)")
  flags.DEFINE_list("control_weight", None, "control weight(s): one value, or a comma-separated list to sweep "
                    "(one row each); default model.control_weight")
  flags.DEFINE_integer("num_cond_frames", None, "clean latent frames per view taken from the "
                       "input video (0 or 1); default 1 with a dataset sample, 0 otherwise")
  flags.DEFINE_integer("num_steps", 35, "UniPC denoising steps")
  flags.DEFINE_float("shift", generate.SHIFT, "time shift of the sampling schedule")
  flags.DEFINE_integer("seed", generate.NOISE_SEED, "NumPy RandomState seed of the starting noise")
  flags.DEFINE_enum("control_preset", "medium", list(controls.PRESETS), "computed controls' strength at inference")
  flags.DEFINE_string("out", None, "output .mp4 (its frame strip, <stem>_<n>frames.jpg, is written beside it)")
  cli.run(main, required=("config", "checkpoint", "out"), bad_input=preflight.USER_ERRORS)
