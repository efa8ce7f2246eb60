"""EDM2-style power-function EMA of the weights (spec/training.md §6.5, §12.10–11).

  gamma   = largest real root of x³ + 7x² + (16 − rate⁻²)·x + (12 − rate⁻²)
  beta(k) = 0                                if k' < 1,   k' = k + iteration_shift
          = (1 − 1/(k' + 1))^(gamma + 1)     otherwise
  ema    ← beta · ema + (1 − beta) · live

k is the iteration index *before* it is incremented (0 for the first optimizer step), and the
update runs after the optimizer step. The iteration is part of the checkpoint, so a resumed run
continues with beta(k) > 0; only a fresh start at k = 0 copies the live weights.

The EMA is float32. When the live weights are low precision (bf16 forward), the EMA averages
the *rounded* copy the network actually runs with, not the fp32 masters (§12.11): pass
`live_dtype=jnp.bfloat16`.

Pass the trainable partition (optimizer.partition_params): the EMA of a frozen tensor is the
tensor itself, so the frozen base needs no EMA copy (export it as is next to the averaged branch).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def power_ema_gamma(rate: float) -> float:
  """The power-EMA exponent for relative standard deviation `rate` (6.937203937601809 for 0.1)."""
  if not 0.0 < rate < 1.0:
    raise ValueError(f"ema.rate must be in (0, 1), got {rate}")
  # np.roots may leave rounding-level imaginary parts; like the reference, keep the largest real part.
  return float(np.roots([1.0, 7.0, 16.0 - rate**-2, 12.0 - rate**-2]).real.max())


def ema_decay(iteration: jax.Array | int, gamma: float, iteration_shift: int = 0) -> tuple[jax.Array, jax.Array]:
  """(beta, 1 − beta) for iteration index `iteration`, as float32, jit-able.

  Computed through log1p/expm1 so that 1 − beta (≈ 8e-4 at k = 10⁴) keeps full float32
  relative precision instead of inheriting the rounding of 1 − 1/(k+1).
  """
  k = jnp.asarray(iteration) + iteration_shift
  log_beta = (gamma + 1.0) * jnp.log1p(-1.0 / (k.astype(jnp.float32) + 1.0))
  started = k >= 1
  beta = jnp.where(started, jnp.exp(log_beta), 0.0)
  one_minus_beta = jnp.where(started, -jnp.expm1(log_beta), 1.0)
  return beta.astype(jnp.float32), one_minus_beta.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class PowerEMA:
  """Power EMA settings: `gamma` from `rate`, the iteration shift, and the live weights' dtype."""

  gamma: float
  iteration_shift: int = 0
  live_dtype: Any = None

  @classmethod
  def from_config(cls, config) -> PowerEMA | None:
    """From `config.ema` (rate, iteration_shift, enabled) and `config.model.precision`; None if disabled."""
    if not config.ema.enabled:
      return None
    live_dtype = jnp.bfloat16 if config.model.precision == "bfloat16" else None
    return cls(power_ema_gamma(float(config.ema.rate)), int(config.ema.iteration_shift), live_dtype)

  def init(self, live_params: Any) -> Any:
    return init_ema(live_params, self.live_dtype)

  def update(self, ema_params: Any, live_params: Any, iteration: jax.Array | int) -> Any:
    return update_ema(
        ema_params, live_params, iteration, gamma=self.gamma, iteration_shift=self.iteration_shift,
        live_dtype=self.live_dtype,
    )


def init_ema(live_params: Any, live_dtype: Any = None) -> Any:
  """A float32 EMA tree equal to the live weights (rounded to `live_dtype` when given)."""
  return jax.tree.map(lambda p: _as_live(p, live_dtype), live_params)


def update_ema(
    ema_params: Any,
    live_params: Any,
    iteration: jax.Array | int,
    *,
    gamma: float,
    iteration_shift: int = 0,
    live_dtype: Any = None,
) -> Any:
  """One EMA step after the optimizer step of iteration index `iteration` (before increment).

  Args:
    ema_params: float32 tree.
    live_params: tree of the same structure (any float dtype; typically the fp32 masters).
    live_dtype: dtype the network runs its weights in (e.g. jnp.bfloat16); the live weights are
      rounded to it before averaging. None averages them as given.
  Returns:
    The new float32 EMA tree.
  """
  beta, one_minus_beta = ema_decay(iteration, gamma, iteration_shift)
  return jax.tree.map(
      lambda e, p: beta * e + one_minus_beta * _as_live(p, live_dtype), ema_params, live_params
  )


def _as_live(p: jax.Array, live_dtype: Any) -> jax.Array:
  if live_dtype is not None:
    p = jnp.asarray(p).astype(live_dtype)
  return jnp.asarray(p).astype(jnp.float32)
