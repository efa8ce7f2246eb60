"""Rectified-flow UniPC multistep sampler (order 2, bh2, x0-parameterised), as one compiled loop.

This reproduces the reference's `FlowUniPCMultistepScheduler` exactly as its in-training sampler drives it
(golden/sampler.json): built with `num_train_timesteps=1000, shift=1`, then `set_timesteps(num_steps, shift)`.

Conventions (training.md §4.3): x_σ = σ·ε + (1−σ)·x0, the network predicts v ≈ ε − x0, and the data estimate
is m = x − σ·v. Time runs from σ≈1 (noise) to σ=0 (data).

Two time values coexist and both are kept:
- the network is called with the *integer* timestep t_int = int(1000·σ) (it multiplies by 0.001 itself,
  so it sees the truncated τ = float32(t_int)·0.001, e.g. 0.999 at step 0);
- the solver's update uses the exact float32 σ (0.99980 at step 0).

The solver's per-step scalars depend only on the schedule, so they are computed once on the host (float64 from
the float32 sigmas, stored as float32) and fed to a `lax.scan` over the steps; the carry holds the solver
history (previous corrected sample and the last two x0 estimates). The velocity function is traced once for
the whole loop, whatever the number of steps.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

NUM_TRAIN_TIMESTEPS = 1000
# The reference's construction-time table is 1 − reversed(linspace(1, 1/1000, 1000)) in float32; its first
# entry (0.999 rounded to float32, read back as a Python float) is the top of every inference schedule.
SIGMA_MAX = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))
SOLVER_ORDER = 2

VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Timesteps, sigmas and the solver's per-step coefficients for N steps (NumPy, host side).

  Attributes:
    timesteps_N: int32, what the network receives (int(1000·σ_k), truncated).
    sigmas_N1: float32, the solver's σ_k for k = 0..N (σ_N = 0).
    predictor_orders_N: int32, UniP order of step k: min(2, N−k, k+1) (warm-up and lower-order final step).
    predictor_N3: float32 (a, c_m, c_m1): x_{k+1} = a·x̃_k + c_m·m_k + c_m1·m_{k−1}, x̃_k the corrected sample.
    use_corrector_N: bool, UniC runs on every step but the first.
    corrector_N4: float32 (c_xprev, c_m, c_m1, c_m2): x̃_k = c_xprev·x̃_{k−1} + c_m·m_k + c_m1·m_{k−1} + c_m2·m_{k−2}
      (row 0 is unused).
  """

  timesteps_N: np.ndarray
  sigmas_N1: np.ndarray
  predictor_orders_N: np.ndarray
  predictor_N3: np.ndarray
  use_corrector_N: np.ndarray
  corrector_N4: np.ndarray

  @property
  def num_steps(self) -> int:
    return int(self.timesteps_N.shape[0])


def set_timesteps(num_steps: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
  """The reference's `set_timesteps(num_steps, shift=shift)` with Karras sigmas off and a final sigma of 0.

  Returns:
    timesteps_N: int64, int(1000·σ'_k) truncated; sigmas_N1: float32 σ'_k followed by 0.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  if shift <= 0:
    raise ValueError(f"shift must be > 0, got {shift}")
  sigmas = np.linspace(SIGMA_MAX, 0.0, num_steps + 1)[:-1]
  sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
  timesteps = (sigmas * NUM_TRAIN_TIMESTEPS).astype(np.int64)
  return timesteps, np.concatenate([sigmas, [0.0]]).astype(np.float32)


def _lambda(sigma: np.ndarray) -> np.ndarray:
  """Half log-SNR of the flow path, log(α/σ) with α = 1 − σ; +inf at σ = 0."""
  with np.errstate(divide="ignore"):
    return np.log1p(-sigma) - np.log(sigma)


def make_schedule(num_steps: int, shift: float) -> Schedule:
  """Schedule and UniPC coefficients for `num_steps` steps at the given time shift (5.0 in the callback)."""
  timesteps, sigmas32 = set_timesteps(num_steps, shift)
  if num_steps > 1 and timesteps[0] == timesteps[1]:
    # The reference locates its first step by searching the timestep table and takes the second match when the
    # first value repeats, so such a schedule would start one step late there; refuse rather than diverge.
    raise ValueError(f"num_steps={num_steps}, shift={shift} gives a repeated first timestep {timesteps[0]}")
  sigma = sigmas32.astype(np.float64)
  alpha = 1.0 - sigma
  lam = _lambda(sigma)
  n = num_steps

  orders = np.array([min(SOLVER_ORDER, n - k, k + 1) for k in range(n)], np.int32)

  predictor = np.zeros((n, 3), np.float64)
  for k in range(n):
    if sigma[k + 1] == 0.0:
      # λ = +∞ at the end: expm1(−∞) = −1, so the step returns the x0 estimate m_k exactly.
      predictor[k] = (0.0, 1.0, 0.0)
      continue
    h = lam[k + 1] - lam[k]
    phi1 = np.expm1(-h)
    a = sigma[k + 1] / sigma[k]
    c_m = -alpha[k + 1] * phi1
    c_m1 = 0.0
    if orders[k] == 2:
      # bh2 (B(h) = expm1(−h)) with the fixed order-2 weight ρ = 0.5 on D1 = (m_{k−1} − m_k)/r.
      r = (lam[k - 1] - lam[k]) / h
      w = alpha[k + 1] * phi1 * 0.5 / r
      c_m += w
      c_m1 = -w
    predictor[k] = (a, c_m, c_m1)

  corrector = np.zeros((n, 4), np.float64)
  use_corrector = np.arange(n) >= 1
  for k in range(1, n):
    order = orders[k - 1]
    h = lam[k] - lam[k - 1]
    hh = -h
    phi1 = np.expm1(hh)
    b_h = phi1
    a = sigma[k] / sigma[k - 1]
    if order == 1:
      rho_m, rho_d1, r = 0.5, 0.0, 1.0
    else:
      # UniC-2: ρ solves [[1, 1], [r, 1]] ρ = (b1, b2) with b_i from the φ-functions of hh.
      r = (lam[k - 2] - lam[k - 1]) / h
      phi_k = phi1 / hh - 1.0
      b1 = phi_k / b_h
      b2 = 2.0 * (phi_k / hh - 0.5) / b_h
      rho_d1, rho_m = np.linalg.solve(np.array([[1.0, 1.0], [r, 1.0]]), np.array([b1, b2]))
    # x̃_k = a·x̃_{k−1} − α·φ1·m_{k−1} − α·B_h·(ρ_d1·(m_{k−2} − m_{k−1})/r + ρ_m·(m_k − m_{k−1}))
    w_m = alpha[k] * b_h * rho_m
    w_d1 = alpha[k] * b_h * rho_d1 / r
    corrector[k] = (a, -w_m, -alpha[k] * phi1 + w_m + w_d1, -w_d1)

  return Schedule(
      timesteps_N=timesteps.astype(np.int32),
      sigmas_N1=sigmas32,
      predictor_orders_N=orders,
      predictor_N3=predictor.astype(np.float32),
      use_corrector_N=use_corrector,
      corrector_N4=corrector.astype(np.float32),
  )


def timestep_to_tau(timesteps_int: jax.Array) -> jax.Array:
  """What the DiT embeds for an integer timestep: float32(t_int)·0.001 (its timestep_scale)."""
  return timesteps_int.astype(jnp.float32) * jnp.float32(0.001)


def schedule_arrays(schedule: Schedule) -> tuple[jax.Array, ...]:
  """The per-step inputs `solver_step` scans over: (timestep, sigma, use_corrector, corrector, predictor)."""
  return (jnp.asarray(schedule.timesteps_N), jnp.asarray(schedule.sigmas_N1[:-1]),
          jnp.asarray(schedule.use_corrector_N), jnp.asarray(schedule.corrector_N4),
          jnp.asarray(schedule.predictor_N3))


def solver_step(velocity_fn: VelocityFn, batch: int):
  """One UniPC step as a `lax.scan` body: (x, x_prev, m1, m2), per-step inputs -> new carry, (x_next, m, v).

  m is the step's x0 prediction x − σ·v; the carry's start is (x_init, 0, 0, 0).
  """

  def step(carry, per_step):
    x, x_prev, m1, m2 = carry
    t_int, sigma, use_corrector, corr, pred = per_step
    v = velocity_fn(x, jnp.full((batch,), t_int, jnp.int32)).astype(jnp.float32)
    m = x - sigma * v
    corrected = corr[0] * x_prev + corr[1] * m + corr[2] * m1 + corr[3] * m2
    x = jnp.where(use_corrector, corrected, x)
    x_next = pred[0] * x + pred[1] * m + pred[2] * m1
    return (x_next, x, m, m1), (x_next, m, v)

  return step


def with_conditional_frames(
    velocity_fn: VelocityFn, noise: jax.Array, cond_latent: jax.Array, cond_mask: jax.Array
) -> VelocityFn:
  """The reference model's `denoise` substitution for conditional (clean) latent frames.

  Before the network the masked frames of x are replaced by the clean latent; after it the velocity there is
  replaced by `noise − gt`, where `noise` is the sampler's *starting* latent (the reference passes its initial
  noise into every denoise call), not the current x. The solver's own state is never overwritten.
  """
  gt = cond_latent.astype(jnp.float32)
  mask = cond_mask.astype(jnp.float32)
  v_gt = noise - gt

  def fn(x, timesteps_int_B):
    v = velocity_fn(gt * mask + x * (1 - mask), timesteps_int_B).astype(jnp.float32)
    return v_gt * mask + v * (1 - mask)

  return fn


def sample(
    velocity_fn: VelocityFn,
    x_init: jax.Array,
    *,
    num_steps: int = 35,
    shift: float = 5.0,
    cond_latent: jax.Array | None = None,
    cond_mask: jax.Array | None = None,
) -> jax.Array:
  """Runs the whole denoising loop as one `lax.scan`; traceable, so wrap the caller in `jax.jit`.

  Args:
    velocity_fn: (x, timesteps_int_B) -> v, x and v float32 of x_init's shape, timesteps int32 (B,) holding the
      integer scheduler timestep (the network applies its own 0.001 scale). Traced exactly once.
    x_init: float32 (B, ...) starting noise (see `guidance.initial_noise`). Any latent layout.
    num_steps, shift: static schedule parameters (35 and 5.0 in the training callback).
    cond_latent: optional clean latent (same shape as x_init) for conditional frames.
    cond_mask: optional mask broadcastable to x_init, 1 on conditional frames (`dit_ops.condition_mask` layout).

  Returns:
    x0: float32, x_init's shape, the sample at σ = 0.
  """
  if (cond_latent is None) != (cond_mask is None):
    raise ValueError("cond_latent and cond_mask must be given together")
  x_init = x_init.astype(jnp.float32)
  if cond_latent is not None:
    if cond_latent.shape != x_init.shape:
      raise ValueError(f"cond_latent shape {cond_latent.shape} != x_init shape {x_init.shape}")
    velocity_fn = with_conditional_frames(velocity_fn, x_init, cond_latent, cond_mask)
  zeros = jnp.zeros_like(x_init)
  step = solver_step(velocity_fn, x_init.shape[0])
  (x0, _, _, _), _ = jax.lax.scan(lambda c, p: (step(c, p)[0], None), (x_init, zeros, zeros, zeros),
                                  schedule_arrays(make_schedule(num_steps, shift)))
  return x0
