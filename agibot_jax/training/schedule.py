"""The reference's `LambdaLinearScheduler` learning-rate multiplier (spec/training.md §6.3).

Cycle c spans steps (E[c-1], E[c]] with E the cumulative cycle ends (step 0 belongs to cycle 0).
Within a cycle, with n counted from the cycle's start, warm-up W and length L:

  f(n) = (f_max − f_start) / W · n + f_start          for n < W
  f(n) = f_min + (f_max − f_min) · (L − n) / (L − W)   for n ≥ W

The arithmetic is done in that order, so in float64 (`jax.enable_x64`) it reproduces the
reference to the last bit or so. Past the end of the last cycle the reference crashes; we hold
the last cycle's final value f_min[-1] instead, so a run that is extended beyond the schedule
keeps training at the floor learning rate.

The learning rate of optimizer update n (n = completed updates, 0 for the first) is
base_lr · f(n), matching the reference's LambdaLR which is stepped after every update.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class LambdaLinear:
  """Per-cycle settings (one entry per cycle, all the same length)."""

  f_start: tuple[float, ...]
  f_max: tuple[float, ...]
  f_min: tuple[float, ...]
  warm_up_steps: tuple[int, ...]
  cycle_lengths: tuple[int, ...]

  def __post_init__(self):
    fields = {f.name: tuple(getattr(self, f.name)) for f in dataclasses.fields(self)}
    lengths = {k: len(v) for k, v in fields.items()}
    if len(set(lengths.values())) != 1 or not fields["cycle_lengths"]:
      raise ValueError(f"scheduler: every per-cycle list must have the same non-zero length, got {lengths}")
    for i, (w, length) in enumerate(zip(fields["warm_up_steps"], fields["cycle_lengths"])):
      if not 0 <= w < length:
        raise ValueError(f"scheduler cycle {i}: need 0 <= warm_up_steps < cycle_lengths, got {w} and {length}")
    for k, v in fields.items():
      object.__setattr__(self, k, v)

  @classmethod
  def from_config(cls, scheduler) -> LambdaLinear:
    """From the `config.scheduler` section (configs/base.py)."""
    return cls(
        f_start=tuple(float(x) for x in scheduler.f_start),
        f_max=tuple(float(x) for x in scheduler.f_max),
        f_min=tuple(float(x) for x in scheduler.f_min),
        warm_up_steps=tuple(int(x) for x in scheduler.warm_up_steps),
        cycle_lengths=tuple(int(x) for x in scheduler.cycle_lengths),
    )

  def __call__(self, step: jax.Array | int) -> jax.Array:
    """Multiplier f(step) for an integer step (scalar or array), jit-able.

    Returns the default float dtype: float32, or float64 under `jax.enable_x64`.
    """
    dtype = jnp.asarray(0.0).dtype
    n = jnp.asarray(step).astype(dtype)
    ends = np.cumsum(self.cycle_lengths)
    starts = np.concatenate([[0], ends[:-1]])
    # First cycle whose end is >= n; steps past the last end are handled below.
    cycle = jnp.minimum(jnp.sum(n[..., None] > jnp.asarray(ends, dtype), axis=-1), len(ends) - 1)

    def per_cycle(values: Sequence[float]) -> jax.Array:
      return jnp.asarray(values, dtype)[cycle]

    f_start, f_max, f_min = per_cycle(self.f_start), per_cycle(self.f_max), per_cycle(self.f_min)
    warm, length = per_cycle(self.warm_up_steps), per_cycle(self.cycle_lengths)
    n_local = n - per_cycle(starts)
    # The warm-up branch divides by W, which is 0 when a cycle has no warm-up; keep that
    # (never selected) branch finite.
    warm_value = (f_max - f_start) / jnp.maximum(warm, 1) * n_local + f_start
    decay_value = f_min + (f_max - f_min) * (length - n_local) / (length - warm)
    f = jnp.where(n_local < warm, warm_value, decay_value)
    return jnp.where(n > float(ends[-1]), jnp.asarray(self.f_min[-1], dtype), f)


def learning_rate_schedule(config) -> Callable[[jax.Array], jax.Array]:
  """optax schedule `count -> config.optimizer.lr · f(count)` from the full config."""
  base_lr = float(config.optimizer.lr)
  multiplier = LambdaLinear.from_config(config.scheduler)
  return lambda count: base_lr * multiplier(count)
