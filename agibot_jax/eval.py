r"""Evaluate a checkpoint on held-out clips: validation loss, control adherence and reconstruction of samples.

  python -m agibot_jax.eval --config configs/edge.py --checkpoint runs/edge \
      --config.dataloader_val.dataset_dir=DIR [--num_samples 4 --guidance 3 --control_weight 1.0 \
      --num_cond_frames 1 --num_steps 35 --out report.json]

`--checkpoint` is what `agibot_jax.sample` takes: a training workdir (the newest checkpoint's EMA weights unless
`--no_ema`; the config must describe its model, and the paths it was trained with are used where the config names
none), a `convert.dit` directory or a bundle with `dit/`. The held-out clips are `dataloader_val.dataset_dir`, or
the run's held-out fraction of its training set (`dataloader_val.held_out_fraction` and `held_out_seed`, taken from
the training run when neither is given).

1. Validation loss of the weights on the first `dataloader_val.max_samples` held-out clips, with the fixed draws
   of agibot_jax/evaluation/validation.py (the numbers a training run logs as val/ or val_ema/).
2. For the first `--num_samples` clips: a sample generated from the clip's control (at `dataloader_val.
   control_preset`), its caption and its first `--num_cond_frames` clean latent frames; scored against the control
   (edge F1, vis SSIM, depth/seg boundary proxies) and, with clean frames, against the clip (PSNR, SSIM), on the
   frames after the clean ones (agibot_jax/evaluation/scoring.py).

Writes `--out` (JSON), an HTML page beside it (same stem) with the metric tables and, per sample, a frame grid
`<stem>_<sample id>.jpg` (a labelled row per view and video: generated, ground truth, control; a column per frame;
agibot_jax/evaluation/report.py). Prints the report's path and the headline numbers as one JSON line.
"""

from __future__ import annotations

import functools
import logging
import os

import jax
from absl import flags

from agibot_jax import assemble, cli, preflight, registry, video_io
from agibot_jax import rig as rig_lib
from agibot_jax.evaluation import report as report_lib
from agibot_jax.evaluation import scoring, validation
from agibot_jax.models import dit
from agibot_jax.sampling import generate

log = logging.getLogger(__name__)


def held_out_samples(config):
  """The held-out samples of `config` (validated; none -> a one-line error), read before any model is built."""
  val = config.dataloader_val
  if not val.dataset_dir and not val.held_out_fraction:
    raise cli.UsageError("no held-out clips: pass --config.dataloader_val.dataset_dir=DIR (or the training run's "
                         "dataloader_val.held_out_fraction)")
  train_samples = [] if val.dataset_dir else preflight.prepare_dataset(config)
  return validation.split_samples(config, train_samples, required=True)[1]


def run(config, *, checkpoint: str, out: str, use_ema: bool = True, num_samples: int = 4, guidance: float = 3.0,
        control_weight: float = 1.0, num_cond_frames: int = 1, num_steps: int = 35, shift: float = generate.SHIFT,
        seed: int = generate.NOISE_SEED, dry_run: bool = False) -> dict:
  """Evaluates; writes the report (process 0) and returns it. Everything that can be wrong with the inputs is found
  before any model is built (agibot_jax/preflight.py); `dry_run` stops there."""
  if num_samples < 0:
    raise cli.UsageError(f"--num_samples must be >= 0, got {num_samples}")
  checked = preflight.for_sampling(config, checkpoint=checkpoint, out=out, out_suffix=".json")
  config = checked.config
  samples = held_out_samples(config)
  if num_samples > len(samples):
    log.warning("--num_samples %d: the held-out set has %d samples; scoring all of them", num_samples, len(samples))
    num_samples = len(samples)
  if dry_run:
    return {"dry_run": True, "checkpoint": os.path.abspath(checkpoint), "step": checked.checkpoint.step,
            "held_out_samples": len(samples), "out": os.path.abspath(out)}

  mesh = assemble.make_mesh(config)
  cfg = assemble.dit_config(config)
  model = dit.MultiViewControlDiT(cfg)
  weights = assemble.sampling_params(config, checked.checkpoint.workdir, cfg, mesh, use_ema=use_ema)
  vae_model, vae_params = assemble.build_vae(config)
  text_provider = assemble.build_text_provider(config, cfg)
  assemble.check_text_projection(text_provider, weights.params)
  ds = config.dataloader_train.dataset
  views = rig_lib.of_config(config).names
  encode = assemble.make_encoder(vae_model, len(views), mesh)
  prepare = functools.partial(assemble.model_batch, encode=encode, vae_params=vae_params, text_provider=text_provider,
                              config=config, mesh=mesh)

  validator = validation.Validator(model, config, samples, prepare)
  # A converted DiT is one set of weights (an export of the EMA, usually): reported under val/ like regular ones.
  tag = ("ema" if use_ema else "reg") if weights.workdir else "converted"
  val_metrics = validator(weights.params, validation.WEIGHTS.get(tag, "val"), progress=True)
  log.info("validation: %s", " ".join(f"{k}={v:.4g}" for k, v in val_metrics.items() if k.count("/") == 1))

  gen = generate.Generator(model, vae_model, num_views=len(views), num_steps=num_steps, shift=shift, seed=seed,
                           progress=True)
  preset = config.dataloader_val.control_preset
  control_key = registry.control(ds.control_input_type).key
  stem = os.path.splitext(os.path.abspath(out))[0]
  scored = []
  for i in range(num_samples):
    loader_batch = validator.loader_batch(i)
    generated = gen.generate(weights.params, vae_params, prepare(loader_batch), guidance=guidance,
                             num_cond_frames=num_cond_frames, control_weight=control_weight)
    truth = generate.pixels_to_rows(loader_batch["video"], len(views))
    control = generate.pixels_to_rows(loader_batch[control_key], len(views))
    scores = scoring.score_rows(ds.control_input_type, generated, control, truth, num_cond_frames=num_cond_frames,
                                preset=preset, views=views)[0]
    sample_id = loader_batch["__key__"][0]
    image = f"{os.path.basename(stem)}_{sample_id}.jpg"
    if jax.process_index() == 0:
      grid = report_lib.frame_grid([scoring.to_uint8(x[0]) for x in (generated, truth, control)],
                                   view_names=list(views))
      video_io.write_image(os.path.join(os.path.dirname(stem), image), grid)
    log.info("%s: %s", sample_id, " ".join(f"{k}={v:.4g}" for k, v in scores.items() if "/" not in k))
    scored.append({"sample_id": sample_id, "scores": scores, "image": image})

  report = {
      "checkpoint": os.path.abspath(checkpoint), "step": weights.step, "weights": tag,
      "control_type": ds.control_input_type,
      "settings": {"guidance": guidance, "control_weight": control_weight, "num_cond_frames": num_cond_frames,
                   "num_steps": num_steps, "shift": shift, "noise_seed": seed, "control_preset": preset,
                   "validation_samples": len(samples), "validation_buckets":
                   int(config.dataloader_val.num_timestep_buckets), "validation_seed": int(config.dataloader_val.seed)},
      "validation": val_metrics,
      "metrics": scoring.aggregate([s["scores"] for s in scored]) if scored else {},
      "samples": scored,
  }
  if jax.process_index() == 0:
    report["html"] = report_lib.write_report(out, report)
    log.info("wrote %s and the page %s (%d frame grid(s) beside it)", out, report["html"], len(scored))
  return report


def main() -> int:
  f = flags.FLAGS
  assemble.initialize_distributed()
  report = run(f.config, checkpoint=f.checkpoint, out=f.out, use_ema=f.ema and not f.no_ema,
               num_samples=f.num_samples, guidance=f.guidance, control_weight=f.control_weight,
               num_cond_frames=f.num_cond_frames, num_steps=f.num_steps, shift=f.shift, seed=f.seed,
               dry_run=f.dry_run)
  if report.get("dry_run") or jax.process_index() != 0:
    cli.print_result(report)
    return 0
  # The overall numbers: validation loss and sample metrics without their per-view, per-bucket parts.
  headline = {"val_loss": next(iter(report["validation"].values())),
              **{k: v for k, v in report["metrics"].items() if "/" not in k}}
  cli.print_result({"report": os.path.abspath(f.out), "html": report["html"], **headline})
  return 0


if __name__ == "__main__":
  cli.define_config_flag()
  cli.define_dry_run_flag()
  flags.DEFINE_string("checkpoint", None, "training workdir (or its checkpoints/ dir), converted DiT dir "
                      "(python -m convert.dit) or bundle dir with dit/")
  flags.DEFINE_bool("ema", True, "training checkpoints: the EMA weights (default); --noema or --no_ema: the regular")
  flags.DEFINE_bool("no_ema", False, "the regular weights of a training checkpoint (absl's --noema)")
  flags.DEFINE_integer("num_samples", 4, "held-out clips to generate and score (the validation loss uses "
                       "dataloader_val.max_samples)")
  flags.DEFINE_float("guidance", 3.0, "classifier-free guidance g: v = v_cond + g·(v_cond − v_uncond)")
  flags.DEFINE_float("control_weight", 1.0, "control weight of the samples (0 ignores the control)")
  flags.DEFINE_integer("num_cond_frames", 1, "clean latent frames per view from the clip (0: none; then no "
                       "PSNR/SSIM against the clip)")
  flags.DEFINE_integer("num_steps", 35, "UniPC denoising steps")
  flags.DEFINE_float("shift", generate.SHIFT, "time shift of the sampling schedule")
  flags.DEFINE_integer("seed", generate.NOISE_SEED, "NumPy RandomState seed of the starting noise")
  flags.DEFINE_string("out", "report.json", "the JSON report; the HTML page and frame grids are written beside it")
  cli.run(main, required=("config", "checkpoint"), bad_input=preflight.USER_ERRORS)
