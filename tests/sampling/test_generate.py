"""Tests for agibot_jax/sampling/generate.py: the jitted guided denoiser and decoding on the tiny networks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agibot_jax.models import vae as vae_lib
from agibot_jax.sampling import generate, unipc
from tests.sampling.tiny_setup import LATENT_HW, NUM_VIEWS, make_model_batch

jax.config.update("jax_default_matmul_precision", "highest")

STEPS = 3


@pytest.fixture(scope="module")
def tiny(tiny_models):
  config, model, params, vae_model, vae_params = tiny_models
  gen = generate.Generator(model, vae_model, num_views=NUM_VIEWS, num_steps=STEPS, shift=5.0)
  return model.cfg, model, params, vae_model, vae_params, gen


_batch = make_model_batch


def _reference_denoise(model, params, batch, g, n, num_views):
  """Independent wiring: two separate network calls per step, masks built by hand, noise drawn here."""
  x0 = batch["x0_BTHWC"]
  b, vt, h, w, c = x0.shape
  t = vt // num_views
  mask = np.zeros((b, num_views, t, h, w, 1), np.float32)
  mask[:, :, :n] = 1.0
  mask = jnp.asarray(mask.reshape(b, vt, h, w, 1))
  noise = jnp.asarray(np.random.RandomState(1).standard_normal((b, c, vt, h, w)).astype(np.float32)
                      .transpose(0, 2, 3, 4, 1))

  def net(x, t_int, emb):
    return model.apply({"params": params}, x, t_int.astype(jnp.float32), emb, batch["control_BTHWC"], mask,
                       batch["view_indices_BT"], batch["padding_mask_BHW"])

  def velocity(x, t_int):
    v_c = net(x, t_int, batch["crossattn_emb_BMC"])
    v_u = net(x, t_int, jnp.zeros_like(batch["crossattn_emb_BMC"]))
    return v_c + g * (v_c - v_u)

  return unipc.sample(velocity, noise, num_steps=STEPS, shift=5.0, cond_latent=x0, cond_mask=mask)


@pytest.mark.parametrize("g,n", [(0.0, 0), (3.0, 1), (5.0, 1)])
def test_denoise_matches_unbatched_reference(tiny, g, n):
  cfg, model, params, _, _, gen = tiny
  batch = _batch(cfg, np.random.RandomState(0))
  got = gen.denoise(params, batch, guidance=g, num_cond_frames=n)
  want = jax.jit(lambda p, bt: _reference_denoise(model, p, bt, g, n, NUM_VIEWS))(params, batch)
  assert got.shape == batch["x0_BTHWC"].shape and got.dtype == jnp.float32
  # One batched 2B call vs. two B calls: float32 matmul blocking differs, accumulated over 3 steps.
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_one_compile_serves_every_guidance_and_cond_frame_count(tiny):
  cfg, _, params, _, _, gen = tiny
  batch = _batch(cfg, np.random.RandomState(1))
  before = gen._denoise._cache_size()
  outs = [gen.denoise(params, batch, guidance=g, num_cond_frames=n) for n in (0, 1) for g in (0.0, 3.0, 5.0)]
  assert gen._denoise._cache_size() - before <= 1
  # Guidance and the clean frame both change the result.
  assert not np.allclose(np.asarray(outs[0]), np.asarray(outs[1]))
  assert not np.allclose(np.asarray(outs[0]), np.asarray(outs[3]))


def test_guidance_changes_nothing_when_text_is_zero(tiny):
  cfg, _, params, _, _, gen = tiny
  batch = _batch(cfg, np.random.RandomState(2))
  batch["crossattn_emb_BMC"] = jnp.zeros_like(batch["crossattn_emb_BMC"])
  a = gen.denoise(params, batch, guidance=0.0, num_cond_frames=0)
  b = gen.denoise(params, batch, guidance=5.0, num_cond_frames=0)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_generate_decodes_each_view(tiny):
  cfg, _, params, vae_model, vae_params, gen = tiny
  batch = _batch(cfg, np.random.RandomState(3))
  video = gen.generate(params, vae_params, batch, guidance=3.0, num_cond_frames=1)
  frames = 4 * (cfg.state_t - 1) + 1
  assert video.shape == (1, NUM_VIEWS, frames, 8 * LATENT_HW[0], 8 * LATENT_HW[1], 3)
  assert video.dtype == np.float32 and np.isfinite(video).all()
  latents = gen.denoise(params, batch, guidance=3.0, num_cond_frames=1)
  want = vae_lib.decode_multiview(vae_model, vae_params, latents, num_views=NUM_VIEWS)
  np.testing.assert_allclose(video, np.asarray(want).reshape(video.shape), rtol=1e-5, atol=1e-5)


def test_progress_bar_ticks_once_per_step(tiny, capsys):
  cfg, model, params, vae_model, _, _ = tiny
  gen = generate.Generator(model, vae_model, num_views=NUM_VIEWS, num_steps=STEPS, progress=True)
  gen.denoise(params, _batch(cfg, np.random.RandomState(4)), guidance=3.0, num_cond_frames=0)
  assert f"{STEPS}/{STEPS}" in capsys.readouterr().err


def test_initial_noise_is_the_reference_draw_channels_last(tiny):
  gen = tiny[-1]
  noise = gen.initial_noise((1, 9, 4, 4, 16))
  want = np.random.RandomState(1).standard_normal((1, 16, 9, 4, 4)).astype(np.float32)
  np.testing.assert_array_equal(noise, want.transpose(0, 2, 3, 4, 1))


def test_bad_batch_is_named(tiny):
  cfg, _, params, _, _, gen = tiny
  batch = _batch(cfg, np.random.RandomState(5))
  with pytest.raises(ValueError, match="crossattn_emb_BMC"):
    gen.denoise(params, {k: v for k, v in batch.items() if k != "crossattn_emb_BMC"}, guidance=0.0,
                num_cond_frames=0)
  with pytest.raises(ValueError, match="num_cond_frames=4"):
    gen.denoise(params, batch, guidance=0.0, num_cond_frames=4)


def test_pixels_to_rows_splits_views():
  pixels = np.zeros((2, 3, 6, 4, 5), np.uint8)
  pixels[:, 0, 2:4] = 255  # view 1, channel R
  rows = generate.pixels_to_rows(pixels, 3)
  assert rows.shape == (2, 3, 2, 4, 5, 3)
  assert (rows[:, 1, :, :, :, 0] == 1.0).all() and (rows[:, 0] == -1.0).all()
