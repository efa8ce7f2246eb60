"""Tests for agibot_jax/sampling/guidance.py: batched CFG, g = 0, masks, the reference's starting noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agibot_jax.sampling import guidance, unipc

jax.config.update("jax_default_matmul_precision", "highest")


def _model(x, timesteps_int_B, inputs):
  """A toy network with a text input and a control input, batch on axis 0 of everything."""
  tau = unipc.timestep_to_tau(timesteps_int_B)[:, None, None]
  text = inputs["text"].sum(axis=1, keepdims=True)
  return jnp.tanh(x @ inputs["w"][0]) * text + inputs["control"] * tau


def _inputs(rng, batch=2):
  cond = {
      "text": jnp.asarray(rng.standard_normal((batch, 5, 6)).astype(np.float32)),
      "control": jnp.asarray(rng.standard_normal((batch, 3, 6)).astype(np.float32)),
      "w": jnp.asarray(np.broadcast_to(rng.standard_normal((1, 6, 6)), (batch, 6, 6)).astype(np.float32)),
  }
  uncond = dict(cond, text=jnp.zeros_like(cond["text"]))
  return cond, uncond


@pytest.mark.parametrize("g", [0.0, 3.0, 5.0])
def test_batched_call_equals_two_calls(g):
  rng = np.random.RandomState(0)
  cond, uncond = _inputs(rng)
  x = jnp.asarray(rng.standard_normal((2, 3, 6)).astype(np.float32))
  t = jnp.array([999, 500], jnp.int32)
  batched = guidance.guided_velocity_fn(_model, cond, uncond, g)(x, t)
  separate = guidance.guided_velocity_fn(_model, cond, uncond, g, batched=False)(x, t)
  v_c, v_u = _model(x, t, cond), _model(x, t, uncond)
  # A 2B-batch matmul may round differently from a B-batch one (CPU blocking), hence float32-ulp tolerances.
  np.testing.assert_allclose(np.asarray(batched), np.asarray(separate), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(separate), np.asarray(v_c + g * (v_c - v_u)))


def test_batched_is_one_call_and_zero_guidance_is_conditional():
  rng = np.random.RandomState(1)
  cond, uncond = _inputs(rng)
  x = jnp.asarray(rng.standard_normal((2, 3, 6)).astype(np.float32))
  t = jnp.array([999, 999], jnp.int32)
  batch_sizes = []

  def counting(x, t, inputs):
    batch_sizes.append(x.shape[0])
    return _model(x, t, inputs)

  v = guidance.guided_velocity_fn(counting, cond, uncond, 0.0)(x, t)
  assert batch_sizes == [4]
  np.testing.assert_allclose(np.asarray(v), np.asarray(_model(x, t, cond)), rtol=1e-5, atol=1e-6)
  v_two_calls = guidance.guided_velocity_fn(_model, cond, uncond, 0.0, batched=False)(x, t)
  np.testing.assert_array_equal(np.asarray(v_two_calls), np.asarray(_model(x, t, cond)))


def test_guidance_is_traced_inside_one_compiled_loop():
  """One jit of the whole sampler serves every guidance value (g is an argument, not a constant)."""
  rng = np.random.RandomState(2)
  cond, uncond = _inputs(rng, batch=1)
  x_init = jnp.asarray(guidance.initial_noise((1, 3, 6), seed=1))
  traces = []

  @jax.jit
  def run(g, x):
    traces.append(1)
    return unipc.sample(guidance.guided_velocity_fn(_model, cond, uncond, g), x, num_steps=6, shift=5.0)

  out = {g: np.asarray(run(jnp.float32(g), x_init)) for g in (0.0, 3.0, 5.0)}
  assert len(traces) == 1
  cond_only = unipc.sample(lambda x, t: _model(x, t, cond), x_init, num_steps=6, shift=5.0)
  np.testing.assert_allclose(out[0.0], np.asarray(cond_only), rtol=1e-5, atol=1e-5)
  assert np.abs(out[5.0] - out[0.0]).max() > 1e-3


def test_initial_noise_is_numpy_randomstate():
  noise = guidance.initial_noise((1, 16, 6, 2, 3), seed=1)
  assert noise.dtype == np.float32 and noise.shape == (1, 16, 6, 2, 3)
  # First draws of RandomState(1).standard_normal, fixed by NumPy's legacy generator.
  np.testing.assert_allclose(noise.ravel()[:3], [1.6243454, -0.6117564, -0.5281718], rtol=0, atol=1e-6)


def test_mismatched_branches_are_rejected():
  rng = np.random.RandomState(3)
  cond, uncond = _inputs(rng)
  with pytest.raises(ValueError, match="shapes differ"):
    guidance.guided_velocity_fn(_model, cond, dict(uncond, text=jnp.zeros((2, 4, 6))), 1.0)
