"""The train state and its sharded construction.

`TrainState` holds everything a step changes or needs to be resumed exactly: the step, the float32
trainable masters, the frozen base (bf16 in production), the optimizer state, the float32 EMA of the
trainable branch (the EMA of a frozen tensor is the tensor itself) and the PRNG key. Every leaf is
sharded by the logical axis rules of `agibot_jax.sharding` (FSDP over the model width).

With `model.lora.rank` > 0 the trainable masters are the control blocks' LoRA adapters (and
`model.lora.train_in_full`), and the control blocks' kernels are frozen (models/lora.py); `params()` and
`ema_params()` give the merged weights.

With `model.offload_optimizer_state` the Adam moments and the EMA (4.1 GiB of the 2B model's 10.5 GiB of state) live
in pinned host memory between steps and come to the device for the update only. XLA stages them among the step's
temporaries, so the 2B step's peak falls by 0.5-0.9 GiB, not by all 4.1 (BENCHMARKS.md, memory plans).
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from agibot_jax import sharding
from agibot_jax.models import dit_config, lora
from agibot_jax.training import ema as ema_lib
from agibot_jax.training import optimizer as optim


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32: completed optimizer steps (the reference's iteration)
  trainable: Any  # float32 masters of the trained parameters
  frozen: Any  # the rest, in `model.precision`
  opt_state: optax.OptState
  ema: Any  # float32 EMA of `trainable`, or None when disabled
  rng: jax.Array  # uint32 key data; step keys are fold_in(rng, step)
  lora_scale: float = flax.struct.field(pytree_node=False, default=0.0)  # alpha/rank of the LoRA adapters, if any

  def params(self) -> Any:
    return lora.merged(optim.merge_params(self.trainable, self.frozen), self.lora_scale)

  def ema_params(self) -> Any:
    """Full EMA weights for export/sampling: EMA of the trained branch + the frozen base (LoRA: the EMA adapters
    merged into the frozen kernels), in device memory."""
    branch = self.trainable if self.ema is None else in_device_memory(self.ema)
    return lora.merged(optim.merge_params(branch, self.frozen), self.lora_scale)


HOST_MEMORY = "pinned_host"


def offloadable(leaf) -> bool:
  """Which optimizer-state and EMA leaves `model.offload_optimizer_state` keeps in host memory: the arrays (moments,
  EMA); scalars (the update count, the injected learning rate) stay on the device, where the update reads them."""
  return len(leaf.shape) > 0 and jnp.issubdtype(leaf.dtype, jnp.floating)


def to_memory(tree, space):
  """Inside a jitted step: the offloadable leaves of `tree` moved to `space` (jax.memory.Space.Device or Host)."""
  return jax.tree.map(lambda a: jax.device_put(a, space) if offloadable(a) else a, tree)


def in_device_memory(tree):
  """Concrete arrays of `tree` that live in host memory, copied to device memory (others as they are)."""
  def one(a):
    if isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer) and a.sharding.memory_kind == HOST_MEMORY:
      return jax.device_put(a, a.sharding.with_memory_kind("device"))
    return a
  return jax.tree.map(one, tree)


def precision_dtype(config):
  return jnp.bfloat16 if config.model.precision == "bfloat16" else jnp.float32


def new_state(params, config, tx: optax.GradientTransformation, ema: ema_lib.PowerEMA | None, seed: int) -> TrainState:
  """A step-0 state from full DiT params (any dtype; trainable cast to f32, frozen to the precision). With LoRA, the
  adapters are drawn from `seed`."""
  lora_cfg = lora.LoraConfig.from_config(config.model)
  if lora_cfg.rank:
    params = optim.merge_params(lora.init_adapters(params, lora_cfg, seed), params)
  trainable, frozen = optim.partition_params(params, optim.trainable_predicate(config))
  low = precision_dtype(config)
  frozen = jax.tree.map(lambda p: p.astype(low) if jnp.issubdtype(p.dtype, jnp.floating) else p, frozen)
  frozen = _keep_buffers_f32(frozen, params)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      trainable=trainable,
      frozen=frozen,
      opt_state=tx.init(trainable),
      ema=None if ema is None else ema.init(trainable),
      rng=jax.random.key_data(jax.random.key(seed)),
      lora_scale=lora_cfg.scale,
  )


def _keep_buffers_f32(frozen, params):
  """RoPE exponent buffers stay as loaded: rounding them again would change the frequencies."""
  for group in dit_config.BUFFER_GROUPS:
    if group in frozen:
      frozen = dict(frozen)
      frozen[group] = params[group]
  return frozen


def state_shardings(abstract_state: TrainState, boxed_params, mesh, offload_optimizer_state: bool = False) -> TrainState:
  """NamedShardings for every leaf of a TrainState.

  Parameters (and the optimizer moments and EMA, which share their shapes and paths) follow the
  parameter logical axes, LoRA adapters those of their kernel (`lora.adapter_axes`); scalars and the key are
  replicated. With `offload_optimizer_state` the offloadable optimizer-state and EMA leaves are placed in pinned
  host memory.
  """
  boxed_params = optim.merge_params(_boxed_adapters(abstract_state.trainable, boxed_params), boxed_params)
  by_path = flax.traverse_util.flatten_dict(sharding.param_shardings(boxed_params, mesh))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def for_tree(tree):
    """Shardings for a tree whose leaves mirror parameters somewhere below their path."""
    def one(path, leaf):
      keys = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
      for start in range(len(keys)):
        hit = by_path.get(keys[start:])
        if hit is not None and tuple(leaf.shape) == _shape_of(boxed_params, keys[start:]):
          return hit
      return replicated
    return jax.tree_util.tree_map_with_path(one, tree)

  def idle_between_steps(tree):
    shardings = for_tree(tree)
    if not offload_optimizer_state:
      return shardings
    return jax.tree.map(lambda sh, leaf: sh.with_memory_kind(HOST_MEMORY) if offloadable(leaf) else sh, shardings, tree)

  return abstract_state.replace(
      step=replicated,
      trainable=for_tree(abstract_state.trainable),
      frozen=for_tree(abstract_state.frozen),
      opt_state=idle_between_steps(abstract_state.opt_state),
      ema=None if abstract_state.ema is None else idle_between_steps(abstract_state.ema),
      rng=replicated,
  )


def _boxed_adapters(trainable, boxed_params):
  """The LoRA adapters of `trainable`, boxed like their kernel with their own logical axes."""
  boxes = flax.traverse_util.flatten_dict(boxed_params)

  def boxed(path, leaf):
    kernel = boxes[path[:-1] + (lora.KERNEL,)]
    return kernel.replace(value=leaf, names=lora.adapter_axes(kernel.names, path[-1]))

  return flax.traverse_util.unflatten_dict({path: boxed(path, leaf) for path, leaf
                                            in flax.traverse_util.flatten_dict(trainable).items()
                                            if path[-1] in (lora.A, lora.B)})


def _shape_of(boxed_params, keys):
  node = boxed_params
  for k in keys:
    node = node[k]
  return tuple(node.unbox().shape if isinstance(node, nn.Partitioned) else node.shape)
