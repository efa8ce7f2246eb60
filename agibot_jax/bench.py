r"""Benchmark the multiview control DiT on synthetic inputs of the configured size.

  python -m agibot_jax.bench --config configs/edge.py --mode forward
  python -m agibot_jax.bench --config configs/edge.py --mode train   # one full training step
  python -m agibot_jax.bench --config configs/edge.py --mode forward \
      --config.dataloader_train.dataset.resolution_hw='(720,1280)' --steps 5 --profile /tmp/trace

Warm-up, then `--steps` timed calls with device synchronisation: median/min/max seconds, model
TFLOP/s per device and MFU from the analytic FLOP count (`agibot_jax.flops`), peak device memory,
compile time. The last line printed is one JSON object.
"""

from __future__ import annotations

import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
from absl import flags

from agibot_jax import assemble, cli, flops, sharding
from agibot_jax.models import dit
from agibot_jax.training import ema as ema_lib
from agibot_jax.training import optimizer as optim
from agibot_jax.training.state import precision_dtype
from agibot_jax.training.step import make_train_step


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


def synthetic_model_batch(cfg: dit.DiTConfig, latent_hw, num_views: int, batch: int, pixel_hw, key, text_dtype):
  """A train-step model batch (agibot_jax/training/step.py) of random latents and text."""
  inputs = synthetic_inputs(cfg, latent_hw, num_views, batch, key)
  return {
      "x0_BTHWC": inputs["x_BTHWC"].astype(jnp.float32),
      "control_BTHWC": inputs["latent_control_BTHWC"].astype(jnp.float32),
      "crossattn_emb_BMC": inputs["crossattn_emb_BMC"].astype(text_dtype),
      "view_indices_BT": inputs["view_indices_BT"],
      "padding_mask_BHW": jnp.zeros((batch, *pixel_hw), jnp.float32),
  }


def main() -> int:
  config = assemble.resolve(flags.FLAGS.config)
  cfg = assemble.dit_config(config)
  res_h, res_w = config.dataloader_train.dataset.resolution_hw
  latent_hw = (res_h // 8, res_w // 8)
  num_views, batch = len(config.dataloader_train.dataset.views), config.dataloader_train.batch_size
  device = jax.devices()[0]
  mesh = assemble.make_mesh(config)

  t0 = time.perf_counter()
  param_shardings = sharding.param_shardings(dit.abstract_params(cfg, boxed=True), mesh)
  params = jax.jit(functools.partial(dit.init_params, cfg), out_shardings=param_shardings)(jax.random.key(0))
  params = jax.block_until_ready(params)
  init_s = time.perf_counter() - t0
  on_mesh = lambda tree: jax.tree.map(lambda a: jax.device_put(a, sharding.batch_sharding(mesh, a.shape)), tree)
  n_params = sum(p.size for p in jax.tree.leaves(params))
  model = dit.MultiViewControlDiT(cfg)
  count = flops.dit_flops(cfg, num_views=num_views, latent_hw=latent_hw, batch=batch,
                          train_base=bool(config.model.train_base))

  if flags.FLAGS.mode == "forward":
    inputs = on_mesh(synthetic_inputs(cfg, latent_hw, num_views, batch, jax.random.key(1)))
    fn, args, model_flops = jax.jit(lambda p, kw: model.apply({"params": p}, **kw)), (params, inputs), count.forward
  else:
    tx = optim.make_optimizer(config)
    ema = ema_lib.PowerEMA.from_config(config)
    _, state_sh, make = assemble.state_target(config, cfg, mesh, tx, ema)
    state = jax.jit(make, donate_argnums=0, out_shardings=state_sh)(params)
    del params
    model_batch = on_mesh(synthetic_model_batch(cfg, latent_hw, num_views, batch, (res_h, res_w), jax.random.key(1),
                                                precision_dtype(config)))
    step = jax.jit(make_train_step(model, tx, config, ema), donate_argnums=0, out_shardings=(state_sh, None))
    fn, args, model_flops = step, (state, model_batch), count.train_step

  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0

  def call(args):
    """One timed call; a train step donates its state, so the new state is fed back in."""
    out = compiled(*args)
    if flags.FLAGS.mode == "train":
      return (out[0], args[1]), out[1]
    return args, out

  times, losses = [], []
  for i in range(flags.FLAGS.warmup + flags.FLAGS.steps):
    t0 = time.perf_counter()
    args, out = call(args)
    jax.block_until_ready(out)
    if i >= flags.FLAGS.warmup:
      times.append(time.perf_counter() - t0)
    if flags.FLAGS.mode == "train":
      losses.append(float(out["loss"]))
  if flags.FLAGS.profile:
    jax.profiler.start_trace(flags.FLAGS.profile, create_perfetto_trace=True)
    for _ in range(2):
      args, out = call(args)
      jax.block_until_ready(out)
    jax.profiler.stop_trace()

  median = statistics.median(times)
  tflops = model_flops / median / 1e12 / jax.device_count()
  peak = flops.peak_tflops(device)
  mem = flops.peak_memory_gib(device)
  result = dict(
      mode=flags.FLAGS.mode, device=device.device_kind, num_devices=jax.device_count(), mesh=dict(mesh.shape),
      backend=jax.default_backend(), jax=jax.__version__, resolution=[res_h, res_w],
      latent=[num_views * cfg.state_t, *latent_hw],
      tokens=num_views * cfg.state_t * latent_hw[0] * latent_hw[1] // cfg.patch_spatial**2, batch=batch,
      params=n_params, param_dtype=cfg.param_dtype, dtype=cfg.dtype, precision=config.model.precision,
      attention=cfg.attention, remat=cfg.remat_policy, init_s=round(init_s, 2), compile_s=round(compile_s, 2),
      step_s_median=round(median, 4), step_s_min=round(min(times), 4), step_s_max=round(max(times), 4),
      model_flops=model_flops, tflops_per_device=round(tflops, 1), mfu=None if peak is None else round(tflops / peak, 4),
      peak_memory_gib=None if mem is None else round(mem, 2), losses=[round(x, 5) for x in losses],
  )
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  cli.define_config_flag("configs/edge.py")
  flags.DEFINE_enum("mode", "forward", ["forward", "train"], "what to time: the DiT forward or a training step")
  flags.DEFINE_integer("steps", 5, "timed steps")
  flags.DEFINE_integer("warmup", 1, "untimed steps after compilation")
  flags.DEFINE_string("profile", "", "write a jax.profiler trace of 2 steps to this directory")
  cli.run(main)
