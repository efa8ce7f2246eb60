r"""Encode every sample of a dataset once and store its VAE latents (see agibot_jax/data/latent_cache.py).

  python -m agibot_jax.cache_latents --config configs/depth.py --workdir runs/depth \
      --config.dataloader_train.dataset.dataset_dir=DIR [--config.model.tokenizer.path=VAE] \
      [--config.dataloader_train.dataset.latent_cache_dir=CACHE] [--dtype bfloat16] [--control_preset medium]

then train with the same config plus `--config.dataloader_train.dataset.latent_cache_dir=CACHE`. CACHE
defaults to `<workdir>/latent_cache`. The VAE is the one training uses (`agibot_jax.assemble.build_vae`:
`model.tokenizer.path`, a `checkpoint.load_path` bundle's `vae/`, or random weights in the tiny demo), and
a sample's video and control are encoded by the training job's own jitted encoder, so depth/seg latents are
bit-identical to online encoding (float32 cache). Samples are visited in dataset order with their epoch-0
random draw; those already cached are skipped, so an interrupted run resumes. Under a multi-process launch
(`agibot_jax.assemble.distributed_init_args`) each process encodes every n-th sample on its own device.

For randomised controls (edge, vis) the cache freezes ONE random control per sample (Canny thresholds / blur of
epoch 0 with `config.seed`) for every epoch; `--control_preset NAME` caches the inference preset instead. Train
online to keep a fresh draw per epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags

from agibot_jax import assemble, cli, logs, preflight, registry
from agibot_jax.data import controls, latent_cache, pipeline

log = logging.getLogger(__name__)


def cache_dir_of(config: ml_collections.ConfigDict, workdir: str) -> str:
  return config.dataloader_train.dataset.latent_cache_dir or os.path.join(workdir, "latent_cache")


def write_cache(config: ml_collections.ConfigDict, cache_dir: str, vae_model, vae_params, *, dtype: str = "float32",
                control_preset: str | None = None, encode: Callable | None = None,
                progress: Callable = lambda it, **kw: it, num_threads: int = 2) -> tuple[int, int]:
  """Encodes the samples of `config`'s dataset missing from `cache_dir`; returns (samples, newly encoded).

  With n processes (jax.distributed), process i encodes the missing ones among samples i, i+n, ... (the cache
  takes concurrent writers: every file is written under a temporary name and renamed).

  encode: `agibot_jax.assemble.make_encoder(vae_model, ...)` (made here when None): (params, video, control)
  uint8 (B, 3, V·T, H, W) -> latents (B, V·t, h, w, 16) float32, one call for both.
  num_threads: decoding threads, so the next samples decode while the current one encodes.
  """
  ds_cfg = config.dataloader_train.dataset
  if control_preset is not None:
    if not registry.control(ds_cfg.control_input_type).randomized:
      raise ValueError(f"--control_preset applies to randomised controls only, not {ds_cfg.control_input_type!r}")
    if control_preset not in controls.PRESETS:
      raise ValueError(f"control_preset must be one of {controls.PRESETS}, got {control_preset!r}")
  settings = dataclasses.replace(pipeline.DataSettings.from_config(config, control_preset), latent_cache_dir="")
  source = pipeline.AgibotMultiviewSource(settings)
  cache = latent_cache.LatentCache.create(
      cache_dir, latent_cache.cache_meta(settings, vae_model.cfg, vae_params, seed=config.seed, dtype=dtype))
  # Split by dataset index, not by position among the missing: the processes may look at the cache at different times.
  todo = [i for i, s in enumerate(source.samples)
          if i % jax.process_count() == jax.process_index() and s.sample_id not in cache]
  if not todo:
    return len(source), 0
  encode = encode or assemble.make_encoder(vae_model, len(settings.views))
  # Unshuffled, one epoch, batch 1: batch i is sample i with the RNG of (seed, epoch 0, i), as online training.
  batches = pipeline.build_dataset(source, batch_size=1, seed=config.seed, shuffle=False, num_epochs=1)
  loaded = grain.MapDataset.source(todo).map(lambda i: batches[i]).to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=num_threads))
  control_key = registry.control(settings.control_type).key
  for batch in progress(loaded, total=len(todo), desc="cache latents", unit="sample"):
    latent_video, latent_control = encode(vae_params, jnp.asarray(batch["video"]), jnp.asarray(batch[control_key]))
    cache.write(batch["__key__"][0], np.asarray(latent_video[0]), np.asarray(latent_control[0]),
                int(batch["frame_indices"][0, 0]))
  return len(source), len(todo)


def main() -> int:
  f = flags.FLAGS
  assemble.initialize_distributed()
  config, samples = preflight.for_latent_cache(f.config, f.workdir)
  cache_dir = cache_dir_of(config, f.workdir)
  if f.dry_run:
    cli.print_result({"dry_run": True, "samples": len(samples), "cache_dir": os.path.abspath(cache_dir)})
    return 0
  vae_model, vae_params = assemble.build_vae(config)

  def progress(it, **kwargs):
    with logs.progress(**kwargs) as bar:
      for item in it:
        yield item
        bar.update(1)

  total, encoded = write_cache(config, cache_dir, vae_model, vae_params, dtype=f.dtype,
                               control_preset=f.control_preset, progress=progress)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    # Every process exits once the whole cache is written (and none waits at JAX's shutdown barrier).
    multihost_utils.sync_global_devices("latent cache written")
    log.info("latent cache: %d samples, %d encoded by process %d of %d -> %s", total, encoded, jax.process_index(),
             jax.process_count(), os.path.abspath(cache_dir))
  else:
    log.info("latent cache: %d samples, %d encoded, %d already cached -> %s", total, encoded, total - encoded,
             os.path.abspath(cache_dir))
  log.info("train with --config.dataloader_train.dataset.latent_cache_dir=%s", os.path.abspath(cache_dir))
  cli.print_result({"samples": total, "encoded": encoded, "cache_dir": os.path.abspath(cache_dir)})
  return 0


if __name__ == "__main__":
  cli.define_config_flag()
  cli.define_dry_run_flag()
  flags.DEFINE_string("workdir", None, "run directory: the cache goes to <workdir>/latent_cache unless "
                      "config.dataloader_train.dataset.latent_cache_dir is set")
  flags.DEFINE_enum("dtype", "float32", list(latent_cache.DTYPES), "stored latent dtype (read back as float32)")
  flags.DEFINE_enum("control_preset", None, list(controls.PRESETS),
                    "randomised controls (edge/vis): cache this inference preset instead of the epoch-0 training draw")
  # missing inputs, mismatched caches, a full disk: one line
  cli.run(main, required=("config", "workdir"), bad_input=(*preflight.USER_ERRORS, OSError, ValueError))
