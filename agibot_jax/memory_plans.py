"""Memory plans of the train step: the settings a device memory budget (`model.memory_budget_gib`) gets.

`PLANS` go from the fastest to the smallest; each adds to the one before, and all give the same losses up to rounding
(recomputed values are the same computation, token slices change the order of sums only: BENCHMARKS.md,
tests/test_memory_plans.py). The budget is the memory pool the run may use, in GiB: JAX's pool is
`XLA_PYTHON_CLIENT_MEM_FRACTION` of the card (0.75 by default). A plan fits when

  XLA's memory analysis of its compiled step (arguments + outputs that reuse no donated argument + temporaries)
  + what the devices already hold (VAE, text encoder: the allocator's bytes in use)
  + two model batches (the one in the step and the next one, prepared while the step runs)
  + RESERVE_GIB (allocator rounding, the step's metrics, small buffers)

stays within the budget. XLA allocates a step's temporaries as one block (tens of GiB at 720p), which the pool must
have in one piece: the run builds its state without leaving holes (`assemble.initial_state`), and the chosen plan
first runs one trial step on a zero state; an out-of-memory error there moves on to the next plan, with one log line.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from agibot_jax import assemble, cli, sharding
from agibot_jax import rig as rig_lib
from agibot_jax.models import dit, dit_config
from agibot_jax.training.state import precision_dtype

log = logging.getLogger(__name__)

# (name, the settings it adds). A slice count becomes the largest divisor, up to it, of what it slices (`ladder`).
PLANS = (
    ("as configured", {}),
    ("full remat", {"model.net.remat_policy": "full"}),
    ("+ block inputs in host memory", {"model.net.offload_block_inputs": True}),
    ("+ a checkpoint per sub-layer", {"model.net.remat_sublayers": True}),
    ("+ optimizer state and EMA in host memory", {"model.offload_optimizer_state": True}),
    ("+ MLP in token slices", {"model.net.mlp_chunks": 8}),
    ("+ cross-view attention in frame slices", {"model.net.cross_view_chunks": 8}),
)
RESERVE_GIB = 0.5


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """XLA's memory analysis of a compiled step, GiB per device (device memory unless host_)."""

  argument: float
  output: float
  alias: float  # outputs that reuse a donated argument
  temp: float  # one block, allocated at each call
  host_argument: float = 0.0
  host_temp: float = 0.0

  @classmethod
  def of(cls, compiled) -> "StepMemory":
    stats = compiled.memory_analysis()
    return cls(*(getattr(stats, f"{f.name}_size_in_bytes", 0) / 2**30 for f in dataclasses.fields(cls)))

  @property
  def device(self) -> float:
    """Device memory at the step's peak: arguments, outputs that reuse no donated argument, temporaries."""
    return self.argument + self.output - self.alias + self.temp

  def describe(self) -> str:
    return ", ".join(f"{f.name} {getattr(self, f.name):.2f}" for f in dataclasses.fields(self))


def with_overrides(config, overrides: dict) -> ml_collections.FrozenConfigDict:
  """`config` (frozen) with dotted keys set."""
  c = config.as_configdict() if isinstance(config, ml_collections.FrozenConfigDict) else config.copy_and_resolve_references()
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    setattr(functools.reduce(getattr, parents, c), leaf, value)
  return ml_collections.FrozenConfigDict(c)


def tokens_per_view(config) -> int:
  h, w = config.dataloader_train.dataset.resolution_hw
  patch = 8 * int(config.model.net.patch_spatial)  # pixels per token side (the Wan VAE's x8, then the patch)
  return int(config.model.net.state_t) * (h // patch) * (w // patch)


def ladder(config) -> list[tuple[str, ml_collections.FrozenConfigDict, dict]]:
  """(name, config, the overrides it adds to `config`) of every plan, from the fastest."""
  sliced = {"model.net.mlp_chunks": tokens_per_view(config),  # what each slice count must divide
            "model.net.cross_view_chunks": int(config.model.net.state_t)}
  overrides, out = {}, []
  for name, changes in PLANS:
    for key, value in changes.items():
      overrides[key] = max(n for n in range(1, value + 1) if sliced[key] % n == 0) if key in sliced else value
    out.append((name, with_overrides(config, overrides), dict(overrides)))
  return out


def model_batch_shapes(config, cfg: dit_config.DiTConfig,
                       text_channels: int) -> dict[str, tuple[tuple[int, ...], object]]:
  """name -> (shape, dtype) of the train step's model batch (agibot_jax/training/step.py) at the config's sizes."""
  ds = config.dataloader_train.dataset
  b, v = int(config.dataloader_train.batch_size), len(rig_lib.of_config(config).cameras)
  h, w = (x // 8 for x in ds.resolution_hw)  # the Wan VAE's spatial factor
  return {
      "x0_BTHWC": ((b, v * cfg.state_t, h, w, cfg.in_channels), jnp.float32),
      "control_BTHWC": ((b, v * cfg.state_t, h, w, cfg.in_channels), jnp.float32),
      "crossattn_emb_BMC": ((b, v * cfg.text_tokens_per_view, text_channels), precision_dtype(config)),
      "view_indices_BT": ((b, v * cfg.state_t), jnp.int32),
      "padding_mask_BHW": ((b, *ds.resolution_hw), jnp.float32),
  }


def abstract_model_batch(config, cfg: dit_config.DiTConfig, mesh, text_channels: int) -> dict:
  """The model batch as ShapeDtypeStructs with the step's input shardings."""
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh, shape))
          for k, (shape, dtype) in model_batch_shapes(config, cfg, text_channels).items()}


def batch_gib(config, text_channels: int) -> float:
  """Memory of one whole model batch (a device holds it all at batch 1, the batch being split over data only)."""
  shapes = model_batch_shapes(config, assemble.dit_config(config), text_channels).values()
  return sum(float(np.prod(shape)) * jnp.dtype(dtype).itemsize for shape, dtype in shapes) / 2**30


@dataclasses.dataclass
class CompiledStep:
  executable: jax.stages.Compiled
  state: object  # TrainState of sharded ShapeDtypeStructs
  batch: dict  # model batch of sharded ShapeDtypeStructs

  @property
  def memory(self) -> StepMemory:
    return StepMemory.of(self.executable)


def compile_step(config, mesh, text_channels: int) -> CompiledStep:
  """The train step of `config`, compiled for abstract state and batch (nothing is allocated)."""
  from agibot_jax.training import ema as ema_lib
  from agibot_jax.training import optimizer as optim
  from agibot_jax.training.step import make_train_step

  cfg = assemble.dit_config(config)
  tx, ema = optim.make_optimizer(config), ema_lib.PowerEMA.from_config(config)
  target, state_sh, _ = assemble.state_target(config, cfg, mesh, tx, ema)
  batch = abstract_model_batch(config, cfg, mesh, text_channels)
  step = jax.jit(make_train_step(dit.MultiViewControlDiT(cfg), tx, config, ema), donate_argnums=(0,),
                 out_shardings=(state_sh, None))
  return CompiledStep(step.lower(target, batch).compile(), target, batch)


def zeros_like_abstract(tree):
  """Zero arrays of a tree of sharded ShapeDtypeStructs, in their memory kinds, made on the devices."""
  shardings = jax.tree.map(lambda s: s.sharding, tree)
  return jax.jit(lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree), out_shardings=shardings)()


def trial_step(step: CompiledStep) -> None:
  """One call of the compiled step on a zero state and batch, freed afterwards: raises where the real step would run
  out of memory (the temporaries' block not placeable in the pool as it is now)."""
  state = zeros_like_abstract(step.state)
  batch = zeros_like_abstract(step.batch)
  try:
    new_state, metrics = step.executable(state, batch)
    jax.block_until_ready((new_state, metrics))
    for leaf in jax.tree.leaves((new_state, metrics)):
      leaf.delete()
  finally:
    for leaf in jax.tree.leaves((state, batch)):
      if not leaf.is_deleted():
        leaf.delete()


def is_out_of_memory(error: BaseException) -> bool:
  """Whether `error` is XLA's out-of-memory error (RESOURCE_EXHAUSTED) rather than another failure."""
  return isinstance(error, jax.errors.JaxRuntimeError) and (
      "RESOURCE_EXHAUSTED" in str(error) or "Out of memory" in str(error))


def device_gib_in_use() -> float:
  """What the allocator of the first local device holds now (models built before the step), 0 where unknown."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("bytes_in_use", 0) / 2**30


class NoPlanFits(cli.ConfigError):
  """Even the smallest plan needs more than `model.memory_budget_gib`."""


def choose(config, mesh, text_channels: int, *, compile_fn: Callable = compile_step, trial: Callable = trial_step,
           in_use_gib: Callable[[], float] = device_gib_in_use) -> ml_collections.FrozenConfigDict:
  """The config of the fastest plan that fits `model.memory_budget_gib` and survives a trial step; `config` itself
  when the budget is 0. Raises NoPlanFits (one line listing what the plans compiled need) when none does.

  The plan as configured is compiled first (it fits on large cards); below it, each plan needs less than the one
  before, so a bisection finds the fastest that fits in at most three more compilations (15-70 s each for the 2B
  step). `compile_fn(config, mesh, text_channels)` gives a `CompiledStep`-like object with `.memory` (a StepMemory)
  that `trial` runs; both are arguments so that tests can script them.
  """
  budget = float(config.model.memory_budget_gib)
  if budget <= 0:
    return config
  plans, held = ladder(config), in_use_gib()
  compiled, needs = {}, {}

  def fits(i: int) -> bool:
    if i not in needs:
      name, candidate, _ = plans[i]
      t0 = time.perf_counter()
      compiled[i] = compile_fn(candidate, mesh, text_channels)
      memory, batches = compiled[i].memory, 2 * batch_gib(candidate, text_channels)
      needs[i] = memory.device + held + batches + RESERVE_GIB
      log.info("memory plan %r: %.4g GiB per device = step %.4g (%s) + in use %.2f + 2 batches %.2f + reserve %.2f; "
               "budget %g GiB (compiled in %.0f s)", name, needs[i], memory.device, memory.describe(), held, batches,
               RESERVE_GIB, budget, time.perf_counter() - t0)
    return needs[i] <= budget

  first = 0
  if not fits(0):
    lo, hi = 1, len(plans) - 1
    while lo < hi:
      mid = (lo + hi) // 2
      lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
    first = lo
  for i in range(first, len(plans)):
    name, candidate, overrides = plans[i]
    if not fits(i):
      continue
    try:
      trial(compiled[i])
    except jax.errors.JaxRuntimeError as e:
      if not is_out_of_memory(e):
        raise
      log.warning("memory plan %r: out of memory in its trial step although its estimate fits (%s); trying the "
                  "next plan", name, str(e).splitlines()[0][:200])
      needs[i] = float("inf")
      continue
    log.info("memory plan %r for model.memory_budget_gib=%g%s", name, budget,
             (": " + " ".join(f"{k}={v}" for k, v in overrides.items())) if overrides else "")
    return candidate
  tried = "; ".join(f"{plans[i][0]}: " + (f"{need:.4g} GiB" if need < float("inf") else "out of memory in a trial step")
                    for i, need in sorted(needs.items()))
  # LoRA is not a plan: it changes what is trained, so only the user turns it on.
  lora_hint = "" if config.model.lora.rank else "LoRA (model.lora.rank=16), "
  raise NoPlanFits(f"model.memory_budget_gib={budget:g}: no memory plan fits ({tried}); {lora_hint}a larger card, "
                   "several GPUs (mesh.context) or a lower resolution")
