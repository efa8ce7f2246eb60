"""Benchmark the multiview control DiT on synthetic inputs of the configured size.

  python -m agibot_jax.bench --config configs/edge.py --mode forward
  python -m agibot_jax.bench --config configs/edge.py --mode forward \
      --config.dataloader_train.dataset.resolution_hw='(720,1280)' --steps 5 --profile /tmp/trace

Warm-up, then `--steps` timed calls with device synchronisation: median/min/max seconds, model
TFLOP/s per device and MFU from the analytic FLOP count (`agibot_jax.flops`), peak device memory,
compile time. The last line printed is one JSON object.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from agibot_jax import flops
from agibot_jax.models import dit

_CONFIG = config_flags.DEFINE_config_file("config", "configs/edge.py", "training config file")
_MODE = flags.DEFINE_enum("mode", "forward", ["forward"], "what to time")
_STEPS = flags.DEFINE_integer("steps", 5, "timed steps")
_WARMUP = flags.DEFINE_integer("warmup", 1, "untimed steps after compilation")
_PROFILE = flags.DEFINE_string("profile", "", "write a jax.profiler trace of 2 steps to this directory")

def synthetic_inputs(cfg: dit.DiTConfig, latent_hw, num_views: int, batch: int, key):
  """Random inputs of the training shapes (3 views, one conditioned frame per view)."""
  h, w = latent_hw
  vt = num_views * cfg.state_t
  k1, k2, k3 = jax.random.split(key, 3)
  dtype = jnp.dtype(cfg.dtype)
  cond = jnp.zeros((batch, num_views, cfg.state_t, h, w, 1), dtype).at[:, :, 0].set(1).reshape(batch, vt, h, w, 1)
  return dict(
      x_BTHWC=jax.random.normal(k1, (batch, vt, h, w, cfg.in_channels), dtype),
      timesteps_B=jnp.full((batch,), 500.0, jnp.float32),
      crossattn_emb_BMC=jax.random.normal(k2, (batch, num_views * cfg.text_tokens_per_view,
                                               cfg.crossattn_proj_in_channels), dtype),
      latent_control_BTHWC=jax.random.normal(k3, (batch, vt, h, w, cfg.in_channels), dtype),
      condition_mask_BTHW1=cond,
      view_indices_BT=jnp.repeat(jnp.arange(num_views, dtype=jnp.int32), cfg.state_t)[None].repeat(batch, 0),
  )


def time_calls(fn, args, steps: int, warmup: int):
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return compiled, compile_s, times


def main(_):
  config = _CONFIG.value
  cfg = dit.DiTConfig.from_config(config.model.net)
  res_h, res_w = config.dataloader_train.dataset.resolution_hw
  latent_hw = (res_h // 8, res_w // 8)
  num_views, batch = len(config.dataloader_train.dataset.views), config.dataloader_train.batch_size
  device = jax.devices()[0]

  model = dit.MultiViewControlDiT(cfg)
  inputs = synthetic_inputs(cfg, latent_hw, num_views, batch, jax.random.key(1))
  t0 = time.perf_counter()
  params = jax.jit(lambda k: model.init(k, **inputs)["params"])(jax.random.key(0))
  params = jax.block_until_ready(jax.tree.map(lambda p: p.unbox() if hasattr(p, "unbox") else p, params,
                                              is_leaf=lambda p: hasattr(p, "unbox")))
  init_s = time.perf_counter() - t0

  forward = jax.jit(lambda p, kw: model.apply({"params": p}, **kw))
  compiled, compile_s, times = time_calls(forward, (params, inputs), _STEPS.value, _WARMUP.value)
  if _PROFILE.value:
    jax.profiler.start_trace(_PROFILE.value)
    for _ in range(2):
      jax.block_until_ready(compiled(params, inputs))
    jax.profiler.stop_trace()

  count = flops.dit_flops(cfg, num_views=num_views, latent_hw=latent_hw, batch=batch)
  median = statistics.median(times)
  tflops = count.forward / median / 1e12
  peak = flops.peak_tflops(device)
  n_params = sum(p.size for p in jax.tree.leaves(params))
  result = dict(
      mode=_MODE.value, device=device.device_kind, backend=jax.default_backend(), jax=jax.__version__,
      resolution=[res_h, res_w], latent=[num_views * cfg.state_t, *latent_hw], tokens=num_views * cfg.state_t *
      latent_hw[0] * latent_hw[1] // cfg.patch_spatial**2, batch=batch, params=n_params,
      param_dtype=cfg.param_dtype, dtype=cfg.dtype, attention=cfg.attention, remat=cfg.remat_policy,
      init_s=round(init_s, 2), compile_s=round(compile_s, 2), step_s_median=round(median, 4),
      step_s_min=round(min(times), 4), step_s_max=round(max(times), 4), model_flops=count.forward,
      tflops_per_device=round(tflops, 1), mfu=None if peak is None else round(tflops / peak, 4),
      peak_memory_gib=None if flops.peak_memory_gib(device) is None else round(flops.peak_memory_gib(device), 2),
  )
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
