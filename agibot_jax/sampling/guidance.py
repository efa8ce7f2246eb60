"""Inputs around the sampler: classifier-free guidance, conditional-frame masks, the starting noise.

Guidance follows the transfer model class (training.md §9.4): v = v_cond + g·(v_cond − v_uncond), so g = 0 is the
pure conditional prediction (the predict2 parent's v_uncond + g·(…) form is overridden there). The unconditional
branch differs from the conditional one only in its inputs (all text views zeroed; same control latent, same
clean conditional frames), which the caller builds; both branches go through one batched network call.

Conditional frames: both branches see the same clean frames and the same mask, and the reference replaces the
velocity on those frames by the same value in each branch, so the guided result there is that value for every g.
The substitution can therefore be applied once around the guided function (`unipc.sample(cond_latent=…,
cond_mask=…)` does it), which is what the reference's per-branch `denoise` amounts to.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from agibot_jax.sampling.unipc import VelocityFn

ModelFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


def guided_velocity_fn(
    model_fn: ModelFn,
    cond_inputs: Any,
    uncond_inputs: Any,
    guidance: float | jax.Array,
    *,
    batched: bool = True,
) -> VelocityFn:
  """Classifier-free-guided velocity from any network callable.

  Args:
    model_fn: (x_B..., timesteps_int_B, inputs) -> v_B... (float32, x's shape); inputs is a pytree whose array
      leaves all have the batch on axis 0.
    cond_inputs, uncond_inputs: pytrees of identical structure and shapes for the two branches.
    guidance: g; may be a traced scalar, so one compiled loop serves every guidance value.
    batched: True evaluates both branches in ONE call on a 2B batch (cond first); False makes two calls
      (half the activation memory).

  Returns:
    velocity_fn(x, timesteps_int_B) -> v_cond + g·(v_cond − v_uncond).
  """
  if jax.tree.structure(cond_inputs) != jax.tree.structure(uncond_inputs):
    raise ValueError("cond_inputs and uncond_inputs must have the same pytree structure")
  for c, u in zip(jax.tree.leaves(cond_inputs), jax.tree.leaves(uncond_inputs)):
    if jnp.shape(c) != jnp.shape(u):
      raise ValueError(f"cond/uncond input shapes differ: {jnp.shape(c)} vs {jnp.shape(u)}")
  if batched:
    both_inputs = jax.tree.map(lambda c, u: jnp.concatenate([c, u], axis=0), cond_inputs, uncond_inputs)

  def velocity_fn(x, timesteps_int_B):
    if batched:
      v_both = model_fn(
          jnp.concatenate([x, x], axis=0), jnp.concatenate([timesteps_int_B, timesteps_int_B], axis=0), both_inputs
      )
      v_cond, v_uncond = jnp.split(v_both.astype(jnp.float32), 2, axis=0)
    else:
      v_cond = model_fn(x, timesteps_int_B, cond_inputs).astype(jnp.float32)
      v_uncond = model_fn(x, timesteps_int_B, uncond_inputs).astype(jnp.float32)
    return v_cond + guidance * (v_cond - v_uncond)

  return velocity_fn


def initial_noise(shape_BCTHW: tuple[int, ...], seed: int = 1) -> np.ndarray:
  """The reference's starting latent: NumPy `RandomState(seed).standard_normal(shape)` in float32.

  The values depend on the draw order, so draw in the reference layout (B, C, V·T, H, W) and transpose to
  another layout afterwards (e.g. `.transpose(0, 2, 3, 4, 1)` for channels-last) to get the same noise.
  The training callback uses seed 1.
  """
  return np.random.RandomState(seed).standard_normal(shape_BCTHW).astype(np.float32)
