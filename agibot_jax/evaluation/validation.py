"""Validation loss on held-out clips, every random draw fixed per sample (config section `dataloader_val`).

Held-out samples (`split_samples`): the dataset at `dataloader_val.dataset_dir` (the training layout), or, without
one, the fraction `dataloader_val.held_out_fraction` of the training samples picked by `held_out_seed`, which the
training loader then does not read. At most `max_samples` of them (by id), each read from frame 0 with an
edge/vis control at the inference preset `control_preset` (file controls as stored): the inputs never change.

Fixed draws. Sample i (its position in the held-out list) is scored at K = `num_timestep_buckets` noise levels,
one in each bucket [k/K, (k+1)/K) of σ (x_t = σ·ε + (1 − σ)·x0; timestep = 1000·σ), all drawn from
fold_in(key(`seed`), i):
  σ_k = (k + u_k) / K with u_k ~ U[0, 1);  ε_k ~ N(0, I);  n_k ~ model.conditional_frames_probs;
  every view's text kept; clean conditional frames given (no text or video-condition dropout).
They depend on nothing else (not the step, the weights, the devices or the processes), so two checkpoints see
identical inputs and one checkpoint gives one value. The draws are made inside the compiled function with JAX's
partitionable threefry, so they are the same values on any mesh.

Loss: the training objective (objective.rectified_flow_loss: uniform weight, conditional frames count as exact
zeros) per (sample, bucket, view), at `model.control_weight`. Reported, as means over what is not named:
  <prefix>/loss              every sample, bucket and view: a σ-uniform average, whereas training draws σ from
                             the shifted logit-normal (mostly high noise), so it is not the training loss's mean
  <prefix>/loss/<view>       one view
  <prefix>/loss_t/<lo>-<hi>  one σ bucket, e.g. val/loss_t/0.00-0.25
with prefix `val` (regular weights) or `val_ema` (EMA weights). `ValidationCallback` writes them every
`trainer.validation_iter` steps to TensorBoard (`<workdir>/tensorboard`) and `<workdir>/metrics.jsonl` (process 0).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from agibot_jax import logs
from agibot_jax import rig as rig_lib
from agibot_jax.data import layout, pipeline
from agibot_jax.models import dit
from agibot_jax.sampling import generate
from agibot_jax.training import loop, objective
from agibot_jax.training import step as step_lib

log = logging.getLogger(__name__)

WEIGHTS = {"reg": "val", "ema": "val_ema"}  # dataloader_val.weights entry -> metric prefix


def held_out_split(samples: Sequence[layout.Sample], fraction: float,
                   seed: int) -> tuple[list[layout.Sample], list[layout.Sample]]:
  """(kept, held out): round(fraction · n) samples (at least 1) chosen by a seeded permutation of the ids.

  The choice depends on the seed and the set of ids only (not on their order); both lists keep id order.
  """
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"dataloader_val.held_out_fraction must be in (0, 1), got {fraction}")
  ids = sorted(s.sample_id for s in samples)
  num_out = max(1, round(fraction * len(ids)))
  if num_out >= len(ids):
    raise ValueError(f"dataloader_val.held_out_fraction={fraction} of {len(ids)} samples leaves none to train on")
  chosen = {ids[i] for i in np.random.default_rng(seed).permutation(len(ids))[:num_out]}
  ordered = sorted(samples, key=lambda s: s.sample_id)
  return [s for s in ordered if s.sample_id not in chosen], [s for s in ordered if s.sample_id in chosen]


def split_samples(config, train_samples: Sequence[layout.Sample], *,
                  required: bool) -> tuple[list[layout.Sample], list[layout.Sample] | None]:
  """(training samples, held-out samples or None) as `dataloader_val` says (module docstring).

  The held-out dataset is validated here (layout.DatasetError lists every problem), before any model is built.
  required: raise when `dataloader_val` names no held-out set.
  """
  val, ds = config.dataloader_val, config.dataloader_train.dataset
  if required:
    validated_weights(config)
  train_samples = list(train_samples)
  if val.dataset_dir:
    held_out = layout.load_index(val.dataset_dir, rig_lib.of_config(config), ds.control_input_type,
                                 int(ds.num_video_frames), bool(ds.skip_invalid),
                                 control_stretch=bool(ds.allow_control_stretch))
    if os.path.abspath(val.dataset_dir) == os.path.abspath(ds.dataset_dir or ""):
      log.warning("dataloader_val.dataset_dir is the training dataset: the validation samples are trained on")
  elif val.held_out_fraction > 0:
    train_samples, held_out = held_out_split(train_samples, float(val.held_out_fraction), int(val.held_out_seed))
    log.info("held out %d of %d training samples for validation (dataloader_val.held_out_fraction=%g)",
             len(held_out), len(train_samples) + len(held_out), val.held_out_fraction)
  elif required:
    raise ValueError("no held-out samples: set dataloader_val.dataset_dir or dataloader_val.held_out_fraction")
  else:
    return train_samples, None
  return train_samples, held_out[:int(val.max_samples)]


def validated_weights(config) -> tuple[str, ...]:
  """`dataloader_val.weights`, checked: some of WEIGHTS' keys."""
  weights = tuple(config.dataloader_val.weights)
  if not weights or any(w not in WEIGHTS for w in weights):
    raise ValueError(f"dataloader_val.weights must name some of {tuple(WEIGHTS)}, got {weights}")
  return weights


def bucket_names(num_buckets: int) -> list[str]:
  edges = np.linspace(0.0, 1.0, num_buckets + 1)
  return [f"{lo:.2f}-{hi:.2f}" for lo, hi in zip(edges[:-1], edges[1:])]


def fixed_draws(key: jax.Array, cfg: objective.ObjectiveConfig, latent_shape: tuple[int, ...], num_views: int,
                num_buckets: int) -> objective.Draws:
  """One sample's draws (module docstring), batch K = num_buckets; latent_shape is the sample's (1, V·T, h, w, C)."""
  k_draws, k_sigma = jax.random.split(key)
  draws = objective.sample_draws(k_draws, cfg, (num_buckets,) + tuple(latent_shape[1:]), num_views)
  sigma_K = (jnp.arange(num_buckets, dtype=jnp.float32) + jax.random.uniform(k_sigma, (num_buckets,))) / num_buckets
  return draws.replace(timesteps_B=sigma_K * objective.NUM_TRAIN_TIMESTEPS,
                       text_keep_BV=jnp.ones_like(draws.text_keep_BV),
                       use_video_condition=jnp.ones_like(draws.use_video_condition))


def make_loss_fn(model: dit.MultiViewControlDiT, config) -> Callable:
  """jit: (params, model batch of one sample, sample index) -> float32 (K, V) loss per bucket and view."""
  step_cfg = step_lib.StepConfig.from_config(config)
  num_views, num_buckets = step_cfg.num_views, int(config.dataloader_val.num_timestep_buckets)
  seed, control_weight = int(config.dataloader_val.seed), float(config.model.control_weight)
  compute_dtype = jnp.dtype(model.cfg.dtype)

  def loss_fn(params, batch, index):
    draws = fixed_draws(jax.random.fold_in(jax.random.key(seed), index), step_cfg.objective,
                        batch["x0_BTHWC"].shape, num_views, num_buckets)
    batch = {k: jnp.repeat(v, num_buckets, axis=0) for k, v in batch.items()}
    apply_fn = step_lib.network_fn(model, params, batch, control_weight)
    _, parts = objective.rectified_flow_loss(apply_fn, batch["x0_BTHWC"], batch["crossattn_emb_BMC"], draws,
                                             num_views=num_views, compute_dtype=compute_dtype)
    return parts.loss_map.reshape(num_buckets, num_views, -1).mean(axis=-1)

  return jax.jit(loss_fn)


def summarize(loss_SKV: np.ndarray, views: Sequence[str], prefix: str) -> dict[str, float]:
  """The reported means (module docstring) of per-(sample, bucket, view) losses."""
  loss_SKV = np.asarray(loss_SKV, np.float64)
  out = {f"{prefix}/loss": float(loss_SKV.mean())}
  out |= {f"{prefix}/loss/{v}": float(loss_SKV[:, :, i].mean()) for i, v in enumerate(views)}
  out |= {f"{prefix}/loss_t/{name}": float(loss_SKV[:, k].mean())
          for k, name in enumerate(bucket_names(loss_SKV.shape[1]))}
  return out


class Validator:
  """The validation loss of DiT weights on the held-out samples.

  Args:
    model: the DiT.
    config: the run's config (`dataloader_val`, `dataloader_train.dataset`, `model`).
    samples: the held-out samples (`split_samples`).
    prepare: loader batch -> model batch on the mesh (the training job's `assemble.model_batch` partial).
  """

  def __init__(self, model: dit.MultiViewControlDiT, config, samples: Sequence[layout.Sample],
               prepare: Callable[[dict], dict]):
    if not samples:
      raise ValueError("validation needs at least one held-out sample")
    settings = pipeline.DataSettings.from_config(config, control_preset=config.dataloader_val.control_preset)
    # Pixels, not a latent cache: a cached edge/vis control is a random training draw, not the preset.
    settings = dataclasses.replace(settings, latent_cache_dir="", random_start_frame=False)
    self.source = pipeline.AgibotMultiviewSource(settings, samples)
    self.views = settings.views
    self.prepare = prepare
    self._loss = make_loss_fn(model, config)

  def loader_batch(self, index: int) -> dict:
    """Held-out sample `index` as a collated loader batch (batch 1), the same every call."""
    return pipeline.collate([self.source.load(index, rng=None)])

  def __call__(self, params, prefix: str = "val", *, progress: bool = False) -> dict[str, float]:
    """{metric: value} (module docstring) of `params` on every held-out sample; `progress`: a bar over them."""
    losses = []
    with logs.progress(total=len(self.source), desc=f"{prefix} loss", unit="clip", disable=not progress) as bar:
      for i in range(len(self.source)):
        losses.append(generate.to_host(self._loss(params, self.prepare(self.loader_batch(i)), i)))
        bar.update(1)
    return summarize(np.stack(losses), self.views, prefix)


def write_scalars(workdir: str, step: int, metrics: dict[str, float]) -> None:
  """Process 0: `metrics` as TensorBoard scalars under `<workdir>/tensorboard` and one metrics.jsonl line."""
  if jax.process_index() != 0:
    return
  from tensorboardX import SummaryWriter

  # One writer per call, closed at once: tensorboardX's flush() can leave queued events unwritten, and the loop
  # gives callbacks no end hook.
  writer = SummaryWriter(os.path.join(workdir, "tensorboard"), filename_suffix=".validation")
  try:
    for k, v in metrics.items():
      writer.add_scalar(k, v, step)
  finally:
    writer.close()
  with open(os.path.join(workdir, loop.METRICS_FILE), "a") as f:
    f.write(json.dumps({"step": step, **metrics}) + "\n")


class ValidationCallback:
  """Train-loop callback: the validation loss every `trainer.validation_iter` steps, of the weights that
  `dataloader_val.weights` names (the EMA only where the run keeps one), written by `write_scalars`."""

  def __init__(self, config, workdir: str, validator: Validator):
    self.every_n = int(config.trainer.validation_iter)
    self.weights = validated_weights(config)
    self.workdir, self.validator = workdir, validator

  def evaluate(self, state) -> dict[str, float]:
    metrics = {}
    for tag in self.weights:
      if tag == "ema" and state.ema is None:
        continue
      params = state.ema_params() if tag == "ema" else state.params()
      metrics |= self.validator(params, WEIGHTS[tag])
    return metrics

  def __call__(self, step: int, state, batch: dict, loader_batch: dict) -> None:
    if self.every_n <= 0 or step % self.every_n:
      return
    metrics = self.evaluate(state)
    write_scalars(self.workdir, step, metrics)
    log.info("step %d: %s", step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.count("/") == 1))
