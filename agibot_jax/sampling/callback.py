"""In-training sample videos, the reference's `EveryNDrawSampleMultiviewVideo` (training.md §9).

Every `trainer.callbacks.every_n_sample.every_n` steps (after the step; first at every_n), for the regular and
then the EMA weights, on the current training batch: one sample per (num_cond_frames, control weight, guidance),
in that nesting order (the reference's; 2 × 1 × 3 = 6 by default), from the same RandomState(1) noise, 35 UniPC
steps at shift 5, decoded, then the input video and the control pixels as the last two rows. Process 0 writes

  <workdir>/samples/{reg|ema}_ReplicateID0000_Sample_Iter{step:09d}_3views.mp4   and   …_<n>frames.jpg

and logs the frame strip (12 frames, or all of a shorter clip) to TensorBoard (`<workdir>/tensorboard`, tag
`samples/{reg|ema}`). Every process runs the sampling (the arrays are sharded over all of them).

With a `score_fn` (the training job passes agibot_jax.evaluation.scoring.row_scorer when
`every_n_sample.metrics`), process 0 also scores every sample against the input video and control rows and logs
each value as the scalar `sample_metrics/{reg|ema}/n{n}_w{w}_g{g}/<metric>`. The training control is a random draw
(edge thresholds, vis blur) while the scorer maps the samples with a fixed preset, so these values follow one
run's progress; `agibot_jax.eval` compares checkpoints on preset controls.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable

import jax
import numpy as np

from agibot_jax import rig as rig_lib
from agibot_jax.models import dit
from agibot_jax.models import vae as vae_lib
from agibot_jax.sampling import generate, video_out

log = logging.getLogger(__name__)

ScoreFn = Callable[[np.ndarray, np.ndarray, np.ndarray, int], dict[str, float]]


class EveryNSample:
  """Train-loop callback: `callback(step, state, batch, loader_batch)` after every optimizer step.

  Args:
    config: the run's config; reads `trainer.callbacks.every_n_sample` (every_n, guidance, num_cond_frames,
      control_weights, num_sampling_step, fps; optional shift and seed, default 5.0 and 1), the rig's cameras
      (`config.rig`) and the control type.
    workdir: the run directory.
    dit_model, vae_model, vae_params: the networks (the DiT weights come from the state at each firing). The
      model batch already holds the text embeddings; the unconditional branch drops every view's text (the
      reference callback uses no negative prompt).
    score_fn: optional `score_fn(generated, ground_truth, control, num_cond_frames) -> {metric: value}` of rows
      (B, V, T, H, W, 3) in [-1, 1] (module docstring).
  """

  def __init__(self, config, workdir: str, *, dit_model: dit.MultiViewControlDiT, vae_model: vae_lib.WanVAE,
               vae_params, score_fn: ScoreFn | None = None):
    cb = config.trainer.callbacks.every_n_sample
    ds = config.dataloader_train.dataset
    self.every_n = int(cb.every_n)
    # (num_cond_frames, control weight, guidance) of each sample row, in the reference's nesting order.
    self.settings = tuple(itertools.product((int(n) for n in cb.num_cond_frames),
                                            (float(w) for w in cb.control_weights), (float(g) for g in cb.guidance)))
    self.score_fn = score_fn
    self.fps = int(cb.fps)
    self.views = list(rig_lib.of_config(config).names)
    self.num_views = len(self.views)
    self.control_key = f"control_input_{ds.control_input_type}"
    self.out_dir = os.path.join(workdir, "samples")
    self.tb_dir = os.path.join(workdir, "tensorboard")
    self.vae_params = vae_params
    self.generator = generate.Generator(
        dit_model, vae_model, num_views=self.num_views, num_steps=int(cb.num_sampling_step),
        shift=float(cb.get("shift", generate.SHIFT)), seed=int(cb.get("seed", generate.NOISE_SEED)))

  def __call__(self, step: int, state, batch: dict, loader_batch: dict) -> None:
    if self.every_n <= 0 or step % self.every_n:
      return
    weights = [("reg", state.params)]
    if state.ema is not None:
      weights.append(("ema", state.ema_params))
    log.info("step %d: sample videos, %d per weights (%s), %d denoising steps each", step, len(self.settings),
             " and ".join(tag for tag, _ in weights), self.generator.num_steps)
    writer = self._tensorboard() if jax.process_index() == 0 else None
    try:
      for tag, get_params in weights:
        t0 = time.perf_counter()
        rows = self.sample_rows(get_params(), batch, loader_batch)
        if writer is not None:
          labels = [f"{tag} {name}" for name in self.row_names()]
          mp4, _ = video_out.save_sample_outputs(self.out_dir, video_out.sample_file_base(tag, step, self.num_views),
                                                 rows, fps=self.fps, row_labels=labels, view_names=self.views)
          image = video_out.tensorboard_image(rows, row_labels=labels, view_names=self.views)
          writer.add_image(f"samples/{tag}", image, step, dataformats="HWC")
          log.info("step %d: %s samples in %.1fs -> %s", step, tag, time.perf_counter() - t0, mp4)
          if self.score_fn is not None:
            self._write_scores(writer, step, tag, rows)
    finally:
      if writer is not None:
        writer.close()

  def row_names(self) -> list[str]:
    """What each row of `sample_rows` shows."""
    return [f"n={n} w={w:g} g={g:g}" for n, w, g in self.settings] + ["input", "control"]

  def sample_rows(self, params, batch: dict, loader_batch: dict) -> list[np.ndarray]:
    """The visualised rows, each (b, V, T, H, W, 3) in [-1, 1]: samples, input video, control pixels."""
    rows = [self.generator.generate(params, self.vae_params, batch, guidance=g, num_cond_frames=n, control_weight=w)
            for n, w, g in self.settings]
    if "video" in loader_batch:
      rows.append(generate.pixels_to_rows(loader_batch["video"], self.num_views))
      rows.append(generate.pixels_to_rows(loader_batch[self.control_key], self.num_views))
    else:  # latent-cache batches carry no pixels: show the decoded latents instead
      rows.append(self.generator.decode(self.vae_params, batch["x0_BTHWC"]))
      rows.append(self.generator.decode(self.vae_params, batch["control_BTHWC"]))
    # The loader pixels are this process's items only; the samples cover the global batch, whose first
    # items are process 0's.
    b = min(len(r) for r in rows)
    return [r[:b] for r in rows]

  def _write_scores(self, writer, step: int, tag: str, rows: list[np.ndarray]) -> None:
    """Scores of the sample rows against the input video and control rows (the last two) as scalars."""
    ground_truth, control = rows[-2], rows[-1]
    by_metric: dict[str, list[float]] = {}
    for (n, w, g), generated in zip(self.settings, rows):
      for metric, value in self.score_fn(generated, ground_truth, control, n).items():
        writer.add_scalar(f"sample_metrics/{tag}/n{n}_w{w:g}_g{g:g}/{metric}", value, step)
        by_metric.setdefault(metric, []).append(value)
    # One console line per weights; every sample's scores are in TensorBoard.
    log.info("step %d: %s samples, mean over %d: %s", step, tag, len(self.settings),
             " ".join(f"{k}={np.mean(v):.4g}" for k, v in by_metric.items()))

  def _tensorboard(self):
    """A writer for one firing. tensorboardX's flush() leaves queued events unwritten and the train loop has no
    end hook for callbacks, so each firing closes its own writer (one small event file per firing)."""
    from tensorboardX import SummaryWriter

    return SummaryWriter(self.tb_dir, filename_suffix=".samples")
