"""Sampling speed: guided UniPC denoising of the DiT (one compiled loop, cond/uncond batched) and VAE decoding.

  PYTHONPATH=. python benchmarks/sample.py --config configs/edge.py --config.model.allow_random_init=True \
      --config.model.net.param_dtype=bfloat16 --config.model.net.attention=cudnn      # GPU box (see gpu_sample.sh)
  PYTHONPATH=. python benchmarks/sample.py --config configs/edge.py:tiny --num_steps 3  # CPU smoke test

Random weights (the config must allow them) and a synthetic model batch of the configured shapes (2B: 3 views ×
93 frames at 432×768 → latent (1, 72, 54, 96, 16)), so no checkpoint or dataset is needed. Each phase runs once
to compile (timed as `first_s`) and then `--repeats` times; the figures are the best and mean of those, each
ended by block_until_ready. Peak device memory is the process-wide peak after each phase. The last line is JSON.
"""

from __future__ import annotations

import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from agibot_jax import rig as rig_lib
from agibot_jax import sharding
from agibot_jax.models import dit, dit_config
from agibot_jax.models import vae as vae_lib
from agibot_jax.sampling import generate

_CONFIG = config_flags.DEFINE_config_file("config", "configs/edge.py", "training config file")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 35, "UniPC steps")
_GUIDANCE = flags.DEFINE_float("guidance", 3.0, "guidance (both branches run whatever its value)")
_NUM_COND_FRAMES = flags.DEFINE_integer("num_cond_frames", 1, "clean latent frames per view")
_REPEATS = flags.DEFINE_integer("repeats", 2, "timed runs after the compiling one (0: only the first, compile included)")


def _peak_gib() -> float | None:
  peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  return None if peak is None else round(peak / 2**30, 2)


def _timed(fn, repeats: int) -> dict:
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  timed = {"best_s": round(min(times), 3), "mean_s": round(float(np.mean(times)), 3)} if times else {}
  return {"first_s": round(first, 3), **timed, "peak_gib": _peak_gib()}, out


def synthetic_model_batch(config, cfg: dit_config.DiTConfig, latent_hw, key) -> dict:
  """Random model batch (agibot_jax.assemble.model_batch's keys and dtypes), batch 1."""
  ds = config.dataloader_train.dataset
  v, (h, w) = len(rig_lib.of_config(config).cameras), latent_hw
  vt = v * cfg.state_t
  k1, k2, k3 = jax.random.split(key, 3)
  emb_dtype = jnp.bfloat16 if config.model.precision == "bfloat16" else jnp.float32
  return {
      "x0_BTHWC": jax.random.normal(k1, (1, vt, h, w, cfg.in_channels), jnp.float32),
      "control_BTHWC": jax.random.normal(k2, (1, vt, h, w, cfg.in_channels), jnp.float32),
      "crossattn_emb_BMC": jax.random.normal(k3, (1, v * cfg.text_tokens_per_view, cfg.crossattn_proj_in_channels),
                                             emb_dtype),
      "view_indices_BT": jnp.repeat(jnp.arange(v, dtype=jnp.int32), cfg.state_t)[None],
      "padding_mask_BHW": jnp.zeros((1,) + tuple(ds.resolution_hw), jnp.float32),
  }


def main(argv):
  del argv
  config = _CONFIG.value
  if not config.model.allow_random_init:
    raise ValueError("this benchmark uses random weights: pass --config.model.allow_random_init=True")
  mesh = sharding.make_mesh(**config.mesh)
  jax.set_mesh(mesh)
  ds = config.dataloader_train.dataset
  cfg = dit_config.DiTConfig.from_config(config.model.net)
  vae_model = vae_lib.WanVAE(vae_lib.VAEConfig.from_tokenizer_config(config.model.tokenizer))
  latent_hw = (ds.resolution_hw[0] // vae_model.cfg.spatial_factor, ds.resolution_hw[1] // vae_model.cfg.spatial_factor)

  param_shardings = sharding.param_shardings(dit.abstract_params(cfg, boxed=True), mesh)
  params = jax.jit(functools.partial(dit.init_params, cfg), out_shardings=param_shardings)(jax.random.key(0))
  vae_params = jax.jit(functools.partial(vae_lib.init_params, vae_model))(jax.random.key(1))
  batch = synthetic_model_batch(config, cfg, latent_hw, jax.random.key(2))
  jax.block_until_ready((params, vae_params, batch))
  weights_gib = _peak_gib()

  num_views = len(rig_lib.of_config(config).cameras)
  gen = generate.Generator(dit.MultiViewControlDiT(cfg), vae_model, num_views=num_views,
                           num_steps=_NUM_STEPS.value)
  denoise, latents = _timed(lambda: gen.denoise(params, batch, guidance=_GUIDANCE.value,
                                                num_cond_frames=_NUM_COND_FRAMES.value), _REPEATS.value)
  decode_fn = jax.jit(functools.partial(vae_lib.decode_multiview, vae_model, num_views=num_views))
  decode, video = _timed(lambda: decode_fn(vae_params, latents), _REPEATS.value)
  result = {
      "device": str(jax.devices()[0].device_kind), "num_devices": jax.device_count(),
      "latent_shape": list(latents.shape), "video_shape": list(video.shape), "num_steps": _NUM_STEPS.value,
      "dit_calls_per_step": 1, "dit_batch_per_call": 2 * latents.shape[0],
      "param_dtype": cfg.param_dtype, "dtype": cfg.dtype, "attention": cfg.attention,
      "denoise": denoise, "denoise_s_per_step": round(denoise.get("best_s", denoise["first_s"]) / _NUM_STEPS.value, 4),
      "decode": decode, "peak_gib_after_init": weights_gib, "finite": bool(jnp.isfinite(video).all()),
  }
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
