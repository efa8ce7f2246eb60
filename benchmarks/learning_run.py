"""Does the loop learn? A reduced control DiT trained from scratch on a control-determined synthetic dataset (issue 19).

  PYTHONPATH=/tmp/site:$PWD python3 benchmarks/learning_run.py --workdir /tmp/learning_run --out_dir $OUT  # one GPU
  PYTHONPATH=. python benchmarks/learning_run.py --workdir /tmp/lr --out_dir /tmp/lr_out --smoke            # CPU check

1. Data: `--num_train` training and `--num_val` held-out clips of agibot_jax/data/synthetic.py with
   appearance="control" (each shape's look follows its class, so the edge control determines the frames), written
   in parallel in the training layout; edge controls as in training (random Canny thresholds per sample).
2. Model: the multiview control DiT with `--blocks` main blocks of width `--dim`, a control block every
   `--vace_every` (the 2B design's layout: 28 blocks, a control block every 7), random init, every weight trained
   (`model.train_base`), AdamW with the reference's LambdaLinear schedule (warm-up `--warmup`, one cycle), EMA.
   Text: the random stand-in encoder of agibot_jax/text/demo.py (the captions say little here).
3. Tokenizer: no pretrained VAE is available on the GPU machine and a random VAE's decoder cannot reconstruct
   pixels, so a lossless space-to-depth map stands in for it: latent (V·T, H/f, W/f, 3·f²) of the pixels in
   [-1, 1], f = `--pixel_factor`, no temporal compression (a latent frame per pixel frame). The DiT, objective,
   optimizer, train loop, validation and sampler are the package's own (agibot_jax.training.loop.train_loop with
   the agibot_jax.evaluation.validation callback).
4. Figures: validation loss (fixed draws, regular and EMA weights) at step 0 and every `--val_every` steps; edge F1
   (agibot_jax/evaluation/scoring.py, preset "medium", 2 px tolerance) of `--num_eval` held-out samples generated
   from the control alone (no clean frame, `--sample_steps` UniPC steps, guidance `--guidance`), for the
   untrained model, the trained EMA and regular weights, the trained EMA weights with control weight 0, and the
   held-out clips themselves (the ceiling).

Training stops early when `--train_budget_s` (counted from just before the first step, compilation included) runs
out, and the run evaluates the weights it has then (`steps_done` in the JSON).

Writes to `--out_dir`: learning_run.json (settings, timings, curves, F1s), learning_curve.png (validation loss
against step, drawn with OpenCV) and samples.jpg (per view: untrained, trained EMA, ground truth, control; 4 frames).
`--workdir` holds the datasets, TensorBoard events and metrics.jsonl. The last printed line is the JSON summary.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import multiprocessing
import os
import time

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from agibot_jax import assemble, flops, logs, preflight, rig, video_io
from agibot_jax.data import pipeline, synthetic
from agibot_jax.evaluation import report, scoring, validation
from agibot_jax.models import dit
from agibot_jax.sampling import generate
from agibot_jax.training import ema as ema_lib
from agibot_jax.training import loop
from agibot_jax.training import optimizer as optim
from agibot_jax.training.step import make_train_step
from configs import base

log = logging.getLogger("agibot_jax.learning_run")

NUM_VIEWS = len(rig.AGIBOT.cameras)  # the base config's rig
SMOKE = {"steps": 5, "batch": 2, "blocks": 2, "dim": 64, "heads": 2, "vace_every": 2, "num_train": 4, "num_val": 2,
         "val_every": 5, "num_eval": 1, "sample_steps": 2, "text_tokens": 8, "workers": 2, "dtype": "float32"}


class NoCheckpoints:
  """The run keeps no checkpoints: it evaluates the weights in memory."""

  def save(self, state):
    del state

  def wait(self):
    pass

  def check(self):
    pass


def run_config(f):
  """The tiny edge config grown to the reduced DiT and this run's data, optimiser and validation."""
  c = base.get_config("edge", "tiny")
  net = c.model.net
  net.model_channels, net.num_heads, net.num_blocks = f.dim, f.heads, f.blocks
  net.vace_block_every_n = f.vace_every
  net.adaln_lora_dim = 256
  net.crossattn_emb_channels = 1024
  net.text_tokens_per_view = c.model.text_encoder.num_tokens = f.text_tokens
  net.in_channels = net.out_channels = 3 * f.pixel_factor**2
  net.state_t = f.frames
  net.dtype = f.dtype
  net.attention = "auto" if jax.default_backend() == "gpu" else "xla"
  c.model.train_base = True
  c.model.precision = f.dtype
  ds = c.dataloader_train.dataset
  ds.dataset_dir = os.path.join(f.workdir, "train_data")
  ds.resolution_hw = (f.height, f.width)
  ds.num_video_frames = f.frames
  # In-process decoding (imageio-ffmpeg starts a process per clip, which would starve the step); the GPU machine
  # has no imageio-ffmpeg anyway.
  ds.video_backend = "opencv"
  c.dataloader_train.batch_size = f.batch
  c.dataloader_train.num_workers = f.workers
  c.dataloader_val.dataset_dir = os.path.join(f.workdir, "val_data")
  c.dataloader_val.max_samples = f.num_val
  c.optimizer.lr = f.lr
  c.scheduler.warm_up_steps = (f.warmup,)
  c.scheduler.cycle_lengths = (max(f.steps, f.warmup + 1),)
  c.trainer.max_iter = f.steps
  c.trainer.logging_iter = max(1, min(50, f.steps))
  c.trainer.validation_iter = f.val_every
  c.mesh.context = 1
  c.mesh.data = -1
  return c


class _OutOfTime(Exception):
  pass


class TimeBudget:
  """Train-loop callback that ends training once it has run `seconds`, keeping the state of the last step, so one
  device call (10 minutes at most) always gets to the evaluation."""

  def __init__(self, seconds: float):
    self.deadline = time.perf_counter() + seconds
    self.step, self.state = None, None

  def __call__(self, step: int, state, batch: dict, loader_batch: dict) -> None:
    if time.perf_counter() > self.deadline:
      self.step, self.state = step, state
      raise _OutOfTime


def write_datasets(config, f) -> None:
  """Training clips from world seed 0 and held-out clips from seed 1, `--workers` processes."""
  jobs = [(config.dataloader_train.dataset.dataset_dir, i, 0) for i in range(f.num_train)]
  jobs += [(config.dataloader_val.dataset_dir, i, 1) for i in range(f.num_val)]
  write = functools.partial(_write_one, frames=f.frames, height=f.height, width=f.width)
  if f.workers > 0:
    with multiprocessing.get_context("spawn").Pool(f.workers) as pool:
      pool.starmap(write, jobs)
  else:
    for job in jobs:
      write(*job)


def _write_one(out_dir: str, index: int, seed: int, *, frames: int, height: int, width: int) -> None:
  synthetic.write_sample(out_dir, index, frames, height, width, seed=seed, appearance="control")


def pixel_tokenizer(factor: int):
  """(encode, decode) of the lossless space-to-depth stand-in for the VAE (module docstring, 3.).

  encode(_, video_BCTHW uint8, control_BCTHW uint8) -> two float32 (B, V·T, H/f, W/f, 3·f²) latents (the
  `assemble.make_encoder` signature); decode(latent) -> host float32 (B, V, T, H, W, 3) in [-1, 1] for V = 3.
  """

  def to_latent(pixels_BCTHW):
    b, c, t, h, w = pixels_BCTHW.shape
    x = pixels_BCTHW.astype(jnp.float32) / 127.5 - 1.0
    x = x.reshape(b, c, t, h // factor, factor, w // factor, factor)
    return x.transpose(0, 2, 3, 5, 4, 6, 1).reshape(b, t, h // factor, w // factor, factor * factor * c)

  @jax.jit
  def encode(_, video_BCTHW, control_BCTHW):
    return to_latent(video_BCTHW), to_latent(control_BCTHW)

  def decode(latent_BTHWC):
    x = np.asarray(generate.to_host(latent_BTHWC))
    b, t, h, w, _ = x.shape
    x = x.reshape(b, t, h, w, factor, factor, 3).transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, t, h * factor,
                                                                                        w * factor, 3)
    return x.reshape(b, NUM_VIEWS, t // NUM_VIEWS, h * factor, w * factor, 3)

  return encode, decode


def edge_scores(gen, decode, validator, prepare, weights: dict, num_eval: int, guidance: float) -> dict:
  """({setting or "ground truth": mean edge scores over the first `num_eval` held-out samples}, {setting, "ground
  truth", "control": the first sample's rows})."""
  scores = {name: [] for name in (*weights, "ground truth")}
  first = {}
  for i in range(num_eval):
    loader_batch = validator.loader_batch(i)
    batch = prepare(loader_batch)
    truth = generate.pixels_to_rows(loader_batch["video"], NUM_VIEWS)
    control = generate.pixels_to_rows(loader_batch["control_input_edge"], NUM_VIEWS)
    for name, (params, control_weight) in weights.items():
      video = decode(gen.denoise(params, batch, guidance=guidance, num_cond_frames=0, control_weight=control_weight))
      scores[name] += scoring.score_rows("edge", video, control, num_cond_frames=0)
      if i == 0:
        first[name] = video
    # The ceiling: the clip itself against its control (edge maps of a decoded, re-encoded video).
    scores["ground truth"] += scoring.score_rows("edge", truth, control, num_cond_frames=0)
    if i == 0:
      first["ground truth"], first["control"] = truth, control
  means = {name: {k: v for k, v in scoring.aggregate(s).items() if "/" not in k} for name, s in scores.items()}
  return means, first


def draw_curves(series: dict[str, tuple[list[int], list[float]]], *, size=(480, 720)) -> np.ndarray:
  """uint8 RGB plot of (steps, values) lines on shared linear axes, with a legend and the axis ranges."""
  h, w = size
  left, right, top, bottom = 70, 20, 20, 40
  image = np.full((h, w, 3), 255, np.uint8)
  steps = [s for xs, _ in series.values() for s in xs]
  values = [v for _, ys in series.values() for v in ys]
  x0, x1 = min(steps), max(max(steps), min(steps) + 1)
  y0, y1 = min(values), max(values)
  y0, y1 = y0 - 0.05 * (y1 - y0 + 1e-9), y1 + 0.05 * (y1 - y0 + 1e-9)
  to_px = lambda x, y: (int(left + (x - x0) / (x1 - x0) * (w - left - right)),
                        int(top + (y1 - y) / (y1 - y0) * (h - top - bottom)))
  cv2.rectangle(image, (left, top), (w - right, h - bottom), (0, 0, 0), 1)
  font = cv2.FONT_HERSHEY_SIMPLEX
  for y in np.linspace(y0, y1, 5):
    cv2.putText(image, f"{y:.3g}", (5, to_px(x0, y)[1] + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
  for x in np.linspace(x0, x1, 5):
    cv2.putText(image, f"{x:.0f}", (to_px(x, y0)[0] - 10, h - bottom + 15), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
  cv2.putText(image, "step", (w // 2 - 15, h - 8), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
  colours = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))
  for k, (name, (xs, ys)) in enumerate(series.items()):
    colour = colours[k % len(colours)]
    points = np.array([to_px(x, y) for x, y in zip(xs, ys)], np.int32)
    cv2.polylines(image, [points], False, colour, 2, cv2.LINE_AA)
    cv2.putText(image, name, (w - right - 200, top + 20 + 18 * k), font, 0.45, colour, 1, cv2.LINE_AA)
  return image


def main(_) -> None:
  f = flags.FLAGS
  if f.smoke:
    for name, value in SMOKE.items():
      setattr(f, name, value)
  logs.setup(None)
  if os.path.isdir(f.workdir) and os.listdir(f.workdir):
    raise app.UsageError(f"--workdir {f.workdir} is not empty: the run writes its datasets and metrics.jsonl there")
  t_start = time.perf_counter()
  os.makedirs(f.out_dir, exist_ok=True)
  config = run_config(f)
  write_datasets(config, f)
  t_data = time.perf_counter()
  train_samples = preflight.prepare_dataset(config)
  _, val_samples = validation.split_samples(config, train_samples, required=True)

  mesh = assemble.make_mesh(config)
  cfg = assemble.dit_config(config)
  model = dit.MultiViewControlDiT(cfg)
  text_provider = assemble.build_text_provider(config, cfg)
  encode, decode = pixel_tokenizer(f.pixel_factor)
  prepare = functools.partial(assemble.model_batch, encode=encode, vae_params=None, text_provider=text_provider,
                              config=config, mesh=mesh)
  tx = optim.make_optimizer(config)
  ema = ema_lib.PowerEMA.from_config(config)
  _, state_sh, make = assemble.state_target(config, cfg, mesh, tx, ema)
  initial = assemble.initial_params(config, cfg, mesh)
  state = jax.jit(make, out_shardings=state_sh)(initial)
  step_fn = jax.jit(make_train_step(model, tx, config, ema), donate_argnums=(0,), out_shardings=(state_sh, None))
  loader = pipeline.from_config(config, samples=train_samples)

  validator = validation.Validator(model, config, val_samples, prepare)
  callback = validation.ValidationCallback(config, f.workdir, validator)
  validation.write_scalars(f.workdir, 0, callback.evaluate(state))
  latent_hw = (f.height // f.pixel_factor, f.width // f.pixel_factor)
  count = flops.dit_flops(cfg, num_views=NUM_VIEWS, latent_hw=latent_hw, batch=f.batch, train_base=True)
  metrics_log = loop.MetricsLog(f.workdir)
  timer = loop.StepTimer(count.train_step, jax.device_count())
  budget = TimeBudget(f.train_budget_s)
  t_train = time.perf_counter()
  try:
    state, _ = loop.train_loop(state, step_fn=step_fn, loader=loader, prepare=prepare, start=0, max_iter=f.steps,
                               logging_iter=int(config.trainer.logging_iter), save_iter=f.steps, checkpoints=NoCheckpoints(),
                               metrics_log=metrics_log, timer=timer, callbacks=[callback, budget])
    steps_done = f.steps
  except _OutOfTime:
    state, steps_done = budget.state, budget.step
    log.warning("--train_budget_s %g reached: stopped after %d of %d steps", f.train_budget_s, steps_done, f.steps)
    if steps_done % f.val_every:  # the curve ends at the weights evaluated below
      validation.write_scalars(f.workdir, steps_done, callback.evaluate(state))
  finally:
    metrics_log.close()
  t_eval = time.perf_counter()

  gen = generate.Generator(model, None, num_views=NUM_VIEWS, num_steps=f.sample_steps)
  weights = {"untrained": (initial, 1.0), "trained EMA": (state.ema_params(), 1.0),
             "trained regular": (state.params(), 1.0), "trained EMA, control weight 0": (state.ema_params(), 0.0)}
  f1, videos = edge_scores(gen, decode, validator, prepare, weights, f.num_eval, f.guidance)
  t_end = time.perf_counter()

  rows = [json.loads(line) for line in open(os.path.join(f.workdir, loop.METRICS_FILE))]
  curves = {prefix: ([r["step"] for r in rows if f"{prefix}/loss" in r], [r[f"{prefix}/loss"] for r in rows
                                                                          if f"{prefix}/loss" in r])
            for prefix in ("val", "val_ema")}
  train_loss = [(r["step"], r["loss"]) for r in rows if "loss" in r]
  cv2.imwrite(os.path.join(f.out_dir, "learning_curve.png"),
              cv2.cvtColor(draw_curves({"val loss (regular)": curves["val"], "val loss (EMA)": curves["val_ema"]}),
                           cv2.COLOR_RGB2BGR))
  order = ("untrained", "trained EMA", "ground truth", "control")
  video_io.write_image(os.path.join(f.out_dir, "samples.jpg"),
                       report.frame_grid([scoring.to_uint8(videos[name][0]) for name in order]))
  summary = {
      "date": datetime.date.today().isoformat(), "device": jax.devices()[0].device_kind,
      "devices": jax.device_count(),
      "settings": {name: getattr(f, name) for name in (
          "steps", "batch", "lr", "warmup", "blocks", "dim", "heads", "vace_every", "text_tokens", "height", "width",
          "frames", "pixel_factor", "num_train", "num_val", "val_every", "num_eval", "sample_steps", "guidance",
          "dtype")},
      "params_millions": round(sum(x.size for x in jax.tree.leaves(initial)) / 1e6, 2),
      "seconds": {"data": round(t_data - t_start, 1), "setup": round(t_train - t_data, 1),
                  "train_incl_validation": round(t_eval - t_train, 1), "sample_and_score": round(t_end - t_eval, 1),
                  "total": round(t_end - t_start, 1)},
      "steps_done": steps_done,
      # Wall seconds per step over the logging windows after the first (which includes compilation).
      "s_per_step": [r["s_per_step"] for r in rows if "s_per_step" in r],
      "val_loss": {"steps": curves["val"][0], "regular": curves["val"][1], "ema": curves["val_ema"][1],
                   "by_timestep_first": {k: v for k, v in rows[0].items() if "/loss_t/" in k},
                   "by_timestep_last": {k: v for k, v in next(r for r in rows[::-1] if "val/loss" in r).items()
                                        if "/loss_t/" in k}},
      "train_loss": {"steps": [s for s, _ in train_loss], "loss": [v for _, v in train_loss]},
      "edge": f1,
  }
  with open(os.path.join(f.out_dir, "learning_run.json"), "w") as out:
    json.dump(summary, out, indent=1)
  log.info("validation loss %.4f -> %.4f (EMA %.4f); edge F1 untrained %.3f, trained EMA %.3f (control weight 0: "
           "%.3f)", curves["val"][1][0], curves["val"][1][-1], curves["val_ema"][1][-1], f1["untrained"]["edge_f1"],
           f1["trained EMA"]["edge_f1"], f1["trained EMA, control weight 0"]["edge_f1"])
  print(json.dumps({k: summary[k] for k in ("device", "steps_done", "seconds", "edge")} |
                   {"val_loss_first_last": [curves["val"][1][0], curves["val"][1][-1]]}))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "scratch: datasets, TensorBoard events, metrics.jsonl")
  flags.DEFINE_string("out_dir", None, "results: learning_run.json, learning_curve.png, samples.jpg")
  flags.DEFINE_bool("smoke", False, "a CPU-sized run of every stage (overrides the sizes below)")
  flags.DEFINE_integer("steps", 2500, "training steps")
  flags.DEFINE_float("train_budget_s", 270, "training stops after this many seconds (compilation included) even "
                     "before --steps, and the run evaluates the weights it has")
  flags.DEFINE_integer("batch", 8, "clips per step")
  flags.DEFINE_float("lr", 3e-4, "peak learning rate")
  flags.DEFINE_integer("warmup", 100, "learning-rate warm-up steps")
  flags.DEFINE_integer("blocks", 8, "main DiT blocks")
  flags.DEFINE_integer("dim", 768, "DiT width")
  flags.DEFINE_integer("heads", 12, "attention heads")
  flags.DEFINE_integer("vace_every", 2, "a control block every this many main blocks")
  flags.DEFINE_integer("text_tokens", 64, "text tokens per view")
  flags.DEFINE_integer("height", 64, "clip height (pixels)")
  flags.DEFINE_integer("width", 96, "clip width (pixels)")
  flags.DEFINE_integer("frames", 9, "frames per view (= latent frames)")
  flags.DEFINE_integer("pixel_factor", 4, "space-to-depth factor of the stand-in tokenizer")
  flags.DEFINE_integer("num_train", 512, "training clips")
  flags.DEFINE_integer("num_val", 8, "held-out clips (validation loss)")
  flags.DEFINE_integer("val_every", 100, "validation every this many steps")
  flags.DEFINE_integer("num_eval", 4, "held-out clips sampled and scored per setting")
  flags.DEFINE_integer("sample_steps", 35, "UniPC steps of the samples")
  flags.DEFINE_float("guidance", 0.0, "classifier-free guidance of the samples")
  flags.DEFINE_integer("workers", 8, "processes writing the data and loading it")
  flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "compute dtype (and of frozen weights)")
  flags.mark_flags_as_required(["workdir", "out_dir"])
  app.run(main)
