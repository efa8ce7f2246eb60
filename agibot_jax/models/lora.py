"""LoRA adapters on the control blocks (`model.lora`).

With rank r > 0, each targeted kernel W (blocks, in, out) of `control_blocks` is frozen (in `model.precision`, like
the base) and two float32 adapters train in its place, stored beside it in the trainable tree:

  (control_blocks, ..., "lora_a")   A (blocks, in, r)   uniform ±1/sqrt(in) (PEFT's Kaiming-uniform), from the run's seed
  (control_blocks, ..., "lora_b")   B (blocks, r, out)  zeros, so step 0 is the base exactly

`merged` replaces every kernel that has adapters by W + (alpha/r)·A@B (float32) and drops the adapters: the network,
sampling and export all see plain kernels, so the network code and the reference's key names are unchanged.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

GROUP = "control_blocks"
KERNEL = "kernel"
A, B = "lora_a", "lora_b"
FULL_TRAINABLE = ("control_embedder", "control_before_proj")  # the control-branch groups `train_in_full` may name
# The key of the adapters' init: fold_in(key(seed), INIT_STREAM), a stream the step keys fold_in(key(seed), step)
# never reach.
INIT_STREAM = 2**31 - 1

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int = 0
  alpha: float = 16.0
  targets: tuple[str, ...] = ("*",)
  train_in_full: tuple[str, ...] = FULL_TRAINABLE

  @classmethod
  def from_config(cls, model_config) -> LoraConfig:
    """From `config.model` (a ConfigDict, or a checkpoint's config JSON; no `lora` means rank 0). ValueError naming
    the key for a value that cannot be used."""
    lora = model_config.get("lora") or {}
    out = cls(**{f.name: tuple(lora[f.name]) if isinstance(f.default, tuple) else lora[f.name]
                 for f in dataclasses.fields(cls) if f.name in lora})
    checks = (
        ("rank", isinstance(out.rank, int) and out.rank >= 0, "must be an integer >= 0 (0: no LoRA)"),
        ("alpha", isinstance(out.alpha, (int, float)) and math.isfinite(out.alpha) and out.alpha > 0,
         "must be a finite number > 0 (the adapters' scale is alpha/rank)"),
        ("targets", bool(out.targets) and all(isinstance(t, str) and t for t in out.targets),
         'must be a non-empty tuple of kernel path patterns, e.g. ("*",)'),
        ("train_in_full", set(out.train_in_full) <= set(FULL_TRAINABLE), f"may name only {FULL_TRAINABLE}"),
        ("rank", not (out.rank and model_config.get("train_base")),
         "needs model.train_base=False (LoRA adapts the control branch of a frozen base)"),
    )
    for key, ok, what in checks:
      if not ok:
        raise ValueError(f"model.lora.{key}={getattr(out, key)!r}: {what}")
    return out

  @property
  def scale(self) -> float:
    return self.alpha / self.rank if self.rank else 0.0

  def is_trainable(self, path: Sequence[Any]) -> bool:
    """With LoRA on: the adapters and the `train_in_full` groups train, everything else is frozen."""
    return str(path[-1]) in (A, B) or str(path[0]) in self.train_in_full


def adapted_kernels(params, lora: LoraConfig) -> list[Path]:
  """Paths of the control-block kernels `lora.targets` selects; ValueError naming the key if a pattern selects none."""
  kernels = [p for p in traverse_util.flatten_dict(params) if p[0] == GROUP and p[-1] == KERNEL]
  inside = {p: "/".join(p[1:-1]) for p in kernels}
  for pattern in lora.targets:
    if not any(fnmatch.fnmatchcase(name, pattern) for name in inside.values()):
      raise ValueError(f"model.lora.targets: {pattern!r} matches no kernel of {GROUP} "
                       f"({', '.join(sorted(inside.values()))})")
  return sorted(p for p, name in inside.items() if any(fnmatch.fnmatchcase(name, t) for t in lora.targets))


def init_adapters(params, lora: LoraConfig, seed: int) -> dict:
  """The adapters of `params`' targeted kernels (arrays or ShapeDtypeStructs), as a tree beside the kernels."""
  flat = traverse_util.flatten_dict(params)
  paths = adapted_kernels(params, lora)
  a_shapes = [(*flat[p].shape[:-1], lora.rank) for p in paths]
  # One draw cut into the A's: one random-bits computation to compile, not one per kernel.
  key = jax.random.fold_in(jax.random.key(seed), INIT_STREAM)
  draws = jax.random.uniform(key, (sum(math.prod(s) for s in a_shapes),), jnp.float32, -1.0, 1.0)
  out, start = {}, 0
  for path, a_shape in zip(paths, a_shapes):
    size = math.prod(a_shape)
    out[path[:-1] + (A,)] = draws[start:start + size].reshape(a_shape) / math.sqrt(a_shape[-2])
    out[path[:-1] + (B,)] = jnp.zeros((*a_shape[:-2], lora.rank, flat[path].shape[-1]), jnp.float32)
    start += size
  return traverse_util.unflatten_dict(out)


def merged(params, scale: float, dtype_of: Callable[[Path], Any] = lambda path: jnp.float32):
  """`params` with each kernel that has adapters replaced by W + scale·A@B, the adapters dropped. A tree without
  adapters comes back as it is. The sum is float32, rounded to `dtype_of(kernel path)`: the train step rounds to the
  dtype each layer computes in (`dit.kernel_compute_dtype`), which is what the layer's own cast would do, so the
  forward is unchanged while the merged kernels and their gradients take half the memory (1.34 -> 0.67 GiB each on
  the 2B in bf16)."""
  flat = traverse_util.flatten_dict(params)
  if not any(p[-1] == A for p in flat):
    return params
  for path in [p for p in flat if p[-1] == A]:
    a, b = flat.pop(path), flat.pop(path[:-1] + (B,))
    kernel = path[:-1] + (KERNEL,)
    summed = jnp.asarray(flat[kernel], jnp.float32) + scale * jnp.matmul(a, b)
    flat[kernel] = summed.astype(dtype_of(kernel))
  return traverse_util.unflatten_dict(flat)


def adapter_axes(kernel_axes: Sequence, name: str) -> tuple:
  """The axes (logical names, or a PartitionSpec's entries) of adapter `name` (A or B) of a kernel with `kernel_axes`:
  the kernel's on the stacked blocks and on A's input or B's output, the rank axis replicated."""
  *blocks, axis_in, axis_out = kernel_axes
  return (*blocks, axis_in, None) if name == A else (*blocks, None, axis_out)
