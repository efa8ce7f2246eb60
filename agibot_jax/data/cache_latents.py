"""Encode every sample of a dataset once and store its VAE latents (see agibot_jax/data/latent_cache.py).

  python -m agibot_jax.data.cache_latents --config configs/depth.py --workdir runs/depth \
      --config.dataloader_train.dataset.dataset_dir=DIR [--config.model.tokenizer.path=VAE] \
      [--config.dataloader_train.dataset.latent_cache_dir=CACHE] [--dtype bfloat16] [--control_preset medium]

then train with the same config plus `--config.dataloader_train.dataset.latent_cache_dir=CACHE`. CACHE
defaults to `<workdir>/latent_cache`. The VAE is the one training uses (`agibot_jax.train.build_vae`:
`model.tokenizer.path`, a `checkpoint.load_path` bundle's `vae/`, or random weights in the tiny demo), and
a sample's video and control are encoded by the training job's own jitted encoder, so depth/seg latents are
bit-identical to online encoding (float32 cache). Samples are visited in dataset order with their epoch-0
random draw; those already cached are skipped, so an interrupted run resumes.

For edge/vis the cache freezes ONE random control per sample (Canny thresholds / blur of epoch 0 with
`config.seed`) for every epoch; `--control_preset NAME` caches the inference preset instead. Train online
to keep a fresh draw per epoch.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable

import grain
import jax.numpy as jnp
import ml_collections
import numpy as np

from agibot_jax.data import controls, latent_cache, pipeline


def cache_dir_of(config: ml_collections.ConfigDict, workdir: str) -> str:
  return config.dataloader_train.dataset.latent_cache_dir or os.path.join(workdir, "latent_cache")


def write_cache(config: ml_collections.ConfigDict, cache_dir: str, vae_model, vae_params, *, dtype: str = "float32",
                control_preset: str | None = None, encode: Callable | None = None,
                progress: Callable = lambda it, **kw: it, num_threads: int = 2) -> tuple[int, int]:
  """Encodes the samples of `config`'s dataset missing from `cache_dir`; returns (samples, newly encoded).

  encode: `agibot_jax.train.make_encoder(vae_model, ...)` (made here when None): (params, video, control)
  uint8 (B, 3, V·T, H, W) -> latents (B, V·t, h, w, 16) float32, one call for both.
  num_threads: decoding threads, so the next samples decode while the current one encodes.
  """
  from agibot_jax import train

  ds_cfg = config.dataloader_train.dataset
  if control_preset is not None:
    if ds_cfg.control_input_type not in latent_cache.RANDOM_CONTROLS:
      raise ValueError(f"--control_preset applies to edge/vis only, not {ds_cfg.control_input_type!r}")
    if control_preset not in controls.PRESETS:
      raise ValueError(f"control_preset must be one of {controls.PRESETS}, got {control_preset!r}")
  settings = dataclasses.replace(pipeline.DataSettings.from_config(config, control_preset), latent_cache_dir="")
  source = pipeline.AgibotMultiviewSource(settings)
  cache = latent_cache.LatentCache.create(
      cache_dir, latent_cache.cache_meta(settings, vae_model.cfg, vae_params, seed=config.seed, dtype=dtype))
  todo = [i for i, s in enumerate(source.samples) if s.sample_id not in cache]
  if not todo:
    return len(source), 0
  encode = encode or train.make_encoder(vae_model, len(settings.views))
  # Unshuffled, one epoch, batch 1: batch i is sample i with the RNG of (seed, epoch 0, i), as online training.
  batches = pipeline.build_dataset(source, batch_size=1, seed=config.seed, shuffle=False, num_epochs=1)
  loaded = grain.MapDataset.source(todo).map(lambda i: batches[i]).to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=num_threads))
  control_key = f"control_input_{settings.control_type}"
  for batch in progress(loaded, total=len(todo), desc="cache latents", unit="sample"):
    latent_video, latent_control = encode(vae_params, jnp.asarray(batch["video"]), jnp.asarray(batch[control_key]))
    cache.write(batch["__key__"][0], np.asarray(latent_video[0]), np.asarray(latent_control[0]),
                int(batch["frame_indices"][0, 0]))
  return len(source), len(todo)


def main(argv) -> int:
  del argv
  from absl import flags
  from tqdm import tqdm

  from agibot_jax import train

  f = flags.FLAGS
  config, workdir = f.config, f.workdir
  train.ensure_dataset(config, workdir)
  cache_dir = cache_dir_of(config, workdir)
  vae_model, vae_params = train.build_vae(config)
  total, encoded = write_cache(config, cache_dir, vae_model, vae_params, dtype=f.dtype,
                               control_preset=f.control_preset, progress=tqdm)
  print(f"[agibot-jax] latent cache: {total} samples, {encoded} encoded, {total - encoded} already cached "
        f"-> {os.path.abspath(cache_dir)}")
  print(f"[agibot-jax] train with --config.dataloader_train.dataset.latent_cache_dir={os.path.abspath(cache_dir)}")
  return 0


def _define_flags():
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "training config, e.g. configs/depth.py or configs/depth.py:tiny")
  flags.DEFINE_string("workdir", None, "run directory: the cache goes to <workdir>/latent_cache unless "
                      "config.dataloader_train.dataset.latent_cache_dir is set")
  flags.mark_flags_as_required(["config", "workdir"])
  flags.DEFINE_enum("dtype", "float32", list(latent_cache.DTYPES), "stored latent dtype (read back as float32)")
  flags.DEFINE_enum("control_preset", None, list(controls.PRESETS),
                    "edge/vis: cache this inference preset instead of the epoch-0 training draw")


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
