r"""Benchmark the multiview control DiT on synthetic inputs of the configured size.

  python -m agibot_jax.bench --config configs/edge.py --mode forward
  python -m agibot_jax.bench --config configs/edge.py --mode train   # one full training step
  python -m agibot_jax.bench --config configs/edge.py --mode forward \
      --config.dataloader_train.dataset.resolution_hw='(720,1280)' --steps 5 --profile /tmp/trace

Warm-up, then `--steps` timed calls with device synchronisation: median/min/max seconds, model
TFLOP/s per device and MFU from the analytic FLOP count (`agibot_jax.flops`), peak device memory,
compile time. The last line printed is one JSON object.

`--compile_only` stops after compilation (no device memory beyond the weights and inputs is used, so a plan that
would not fit can still be inspected); `--largest_buffers N` adds XLA's memory analysis of the compiled step and its
N largest arrays (shape, dtype, GiB, device or host memory, the jax operation that makes them) to the JSON, to find
what a plan keeps.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import statistics
import time

import jax
import jax.numpy as jnp
from absl import flags

from agibot_jax import assemble, cli, flops, memory_plans, preflight, sharding
from agibot_jax import rig as rig_lib
from agibot_jax.models import dit, dit_config
from agibot_jax.training import ema as ema_lib
from agibot_jax.training import optimizer as optim
from agibot_jax.training.state import precision_dtype
from agibot_jax.training.step import make_train_step


def synthetic_inputs(cfg: dit_config.DiTConfig, latent_hw, num_views: int, batch: int, key):
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


def synthetic_model_batch(cfg: dit_config.DiTConfig, latent_hw, num_views: int, batch: int, pixel_hw, key, text_dtype):
  """A train-step model batch (agibot_jax/training/step.py) of random latents and text."""
  inputs = synthetic_inputs(cfg, latent_hw, num_views, batch, key)
  return {
      "x0_BTHWC": inputs["x_BTHWC"].astype(jnp.float32),
      "control_BTHWC": inputs["latent_control_BTHWC"].astype(jnp.float32),
      "crossattn_emb_BMC": inputs["crossattn_emb_BMC"].astype(text_dtype),
      "view_indices_BT": inputs["view_indices_BT"],
      "padding_mask_BHW": jnp.zeros((batch, *pixel_hw), jnp.float32),
  }


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
                "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
# One HLO instruction that makes an array: `%name = bf16[3,2048]{1,0} fusion(...), ..., op_name="jit(f)/..."`.
_HLO_ARRAY = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.-]+)\s*=\s*(\w+)\[([\d,]*)\](\{[^}]*\})?\s+([\w-]+)\(")
# One that makes several: `%name = (bf16[..]{..}, f32[..]{..}) custom-call(...)` (a multi-output fusion or kernel).
_HLO_TUPLE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.-]+)\s*=\s*\((.*?)\)\s+(fusion|custom-call)\(")
_SHAPE = re.compile(r"(\w+)\[([\d,]*)\](\{[^}]*\})?")
# A layout's memory space: `{4,3,2,1,0:S(5)}` is an array in host memory (XLA's host offload), none is the device's.
_HOST_MEMORY_SPACE = ":S(5)"
_HLO_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.-]+)\s.*\{\s*$")
_FUSION_BODY = re.compile(r"\bfusion\(.*\bcalls=%?([\w.-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
# Instructions that name an array made elsewhere rather than allocate one.
_NO_BUFFER = {"parameter", "get-tuple-element", "bitcast", "tuple"}


def largest_buffers(hlo_text: str, n: int) -> list[dict]:
  """The n largest arrays that instructions of an optimised HLO module make, largest first, each with its memory.

  Counted: instructions outside fusion bodies that allocate (a fusion's internals live in registers or shared
  memory; parameters, tuple accessors and bitcasts alias arrays made elsewhere). A map of where a plan's memory
  goes, not the buffer assignment itself: XLA may still alias or reuse some of these, and an array in "host" memory
  (offloaded) costs no device memory.
  """
  fusion_bodies = set(_FUSION_BODY.findall(hlo_text))
  found, computation = [], None
  for line in hlo_text.splitlines():
    header = _HLO_COMPUTATION.match(line)
    if header and not line.startswith(" "):
      computation = header.group(1)
      continue
    if computation in fusion_bodies:
      continue
    if m := _HLO_ARRAY.match(line):
      name, shapes, opcode = m.group(1), [(m.group(2), m.group(3), m.group(4) or "")], m.group(5)
    elif m := _HLO_TUPLE.match(line):
      name, shapes, opcode = m.group(1), _SHAPE.findall(m.group(2)), m.group(3)
    else:
      continue
    if opcode in _NO_BUFFER:
      continue
    op = _OP_NAME.search(line)
    for i, (dtype, dims, layout) in enumerate(shapes):
      if dtype not in _DTYPE_BYTES:
        continue
      size = _DTYPE_BYTES[dtype]
      for d in dims.split(","):
        size *= int(d) if d else 1
      found.append({"gib": size / 2**30, "array": f"{dtype}[{dims}]", "opcode": opcode,
                    "memory": "host" if _HOST_MEMORY_SPACE in layout else "device",
                    "op_name": op.group(1) if op else "", "instruction": name if len(shapes) == 1 else f"{name}#{i}"})
  found.sort(key=lambda b: -b["gib"])
  return [{**b, "gib": round(b["gib"], 3)} for b in found[:n]]


def with_random_weights(config):
  """`config` with random DiT weights (seed 0) instead of a checkpoint: the benchmark times, it does not train."""
  return memory_plans.with_overrides(config, {"checkpoint.load_path": "", "model.allow_random_init": True, "seed": 0})


def main() -> int:
  config = preflight.for_bench(flags.FLAGS.config)
  mesh = assemble.make_mesh(config)
  if flags.FLAGS.mode == "train":  # as `agibot_jax.train` does
    config = memory_plans.choose(config, mesh, int(config.model.net.crossattn_proj_in_channels))
  cfg = assemble.dit_config(config)
  res_h, res_w = config.dataloader_train.dataset.resolution_hw
  latent_hw = (res_h // 8, res_w // 8)
  num_views, batch = len(rig_lib.of_config(config).cameras), config.dataloader_train.batch_size
  device = jax.devices()[0]

  t0 = time.perf_counter()
  on_mesh = lambda tree: jax.tree.map(lambda a: jax.device_put(a, sharding.batch_sharding(mesh, a.shape)), tree)
  model = dit.MultiViewControlDiT(cfg)
  count = flops.dit_flops(cfg, num_views=num_views, latent_hw=latent_hw, batch=batch,
                          train_base=bool(config.model.train_base))
  n_params = sum(p.size for p in jax.tree.leaves(dit.abstract_params(cfg)))

  if flags.FLAGS.mode == "forward":
    param_shardings = sharding.param_shardings(dit.abstract_params(cfg, boxed=True), mesh)
    params = jax.jit(functools.partial(dit.init_params, cfg), out_shardings=param_shardings)(jax.random.key(0))
    inputs = on_mesh(synthetic_inputs(cfg, latent_hw, num_views, batch, jax.random.key(1)))
    fn, args, model_flops = jax.jit(lambda p, kw: model.apply({"params": p}, **kw)), (params, inputs), count.forward
  else:  # the state as training builds it (assemble.initial_state: random weights, seed 0)
    tx = optim.make_optimizer(config)
    ema = ema_lib.PowerEMA.from_config(config)
    _, state_sh, make = assemble.state_target(config, cfg, mesh, tx, ema)
    state = assemble.initial_state(with_random_weights(config), cfg, mesh, make, state_sh)
    model_batch = on_mesh(synthetic_model_batch(cfg, latent_hw, num_views, batch, (res_h, res_w), jax.random.key(1),
                                                precision_dtype(config)))
    step = jax.jit(make_train_step(model, tx, config, ema), donate_argnums=0, out_shardings=(state_sh, None))
    fn, args, model_flops = step, (state, model_batch), count.train_step
  jax.block_until_ready(args)
  init_s = time.perf_counter() - t0

  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  pool = (device.memory_stats() or {}).get("bytes_limit")
  report = dict(mode=flags.FLAGS.mode, device=device.device_kind, resolution=[res_h, res_w], remat=cfg.remat_policy,
                offload_block_inputs=cfg.offload_block_inputs, remat_sublayers=cfg.remat_sublayers,
                mlp_chunks=cfg.mlp_chunks, cross_view_chunks=cfg.cross_view_chunks,
                remat_segment_blocks=cfg.remat_segment_blocks,
                offload_optimizer_state=bool(config.model.offload_optimizer_state),
                lora_rank=int(config.model.lora.rank), memory_budget_gib=float(config.model.memory_budget_gib),
                pool_gib=None if pool is None else round(pool / 2**30, 2), compile_s=round(compile_s, 2))
  if flags.FLAGS.largest_buffers:
    memory = memory_plans.StepMemory.of(compiled)
    report.update(memory_analysis={f.name: round(getattr(memory, f.name), 3) for f in dataclasses.fields(memory)},
                  largest_buffers=largest_buffers(compiled.as_text(), flags.FLAGS.largest_buffers))
  if flags.FLAGS.compile_only:
    print(json.dumps(report))
    return 0

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
      attention=cfg.attention, init_s=round(init_s, 2),
      step_s_median=round(median, 4), step_s_min=round(min(times), 4), step_s_max=round(max(times), 4),
      model_flops=model_flops, tflops_per_device=round(tflops, 1), mfu=None if peak is None else round(tflops / peak, 4),
      peak_memory_gib=None if mem is None else round(mem, 2), losses=[round(x, 5) for x in losses],
      **{k: v for k, v in report.items() if k not in ("mode", "device", "resolution")},
  )
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  cli.define_config_flag("configs/edge.py")
  flags.DEFINE_enum("mode", "forward", ["forward", "train"], "what to time: the DiT forward or a training step")
  flags.DEFINE_integer("steps", 5, "timed steps")
  flags.DEFINE_integer("warmup", 1, "untimed steps after compilation")
  flags.DEFINE_string("profile", "", "write a jax.profiler trace of 2 steps to this directory")
  flags.DEFINE_bool("compile_only", False, "stop after compiling (with --largest_buffers: inspect a plan that may not fit)")
  flags.DEFINE_integer("largest_buffers", 0, "report XLA's memory analysis and this many of the largest arrays")
  cli.run(main, bad_input=preflight.USER_ERRORS)
