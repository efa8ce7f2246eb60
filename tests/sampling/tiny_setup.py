"""Tiny networks and model batches shared by the sampling tests (generate, callback, the CLI)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from agibot_jax.models import dit, dit_config
from agibot_jax.models import vae as vae_lib

NUM_VIEWS = 3
LATENT_HW = (4, 4)


def random_vae_params(model: vae_lib.WanVAE, seed: int):
  """The VAE's own init distribution (LeCun-normal kernels, zero biases, unit norm scales), drawn with NumPy:
  tracing the VAE's init is cheap but compiling it costs tens of seconds on CPU."""
  rng = np.random.RandomState(seed)

  def one(path, leaf):
    name = path[-1].key
    if name == "scale":
      return jnp.ones(leaf.shape, leaf.dtype)
    if name == "bias":
      return jnp.zeros(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(fan_in), leaf.dtype)

  return jax.tree_util.tree_map_with_path(one, vae_lib.abstract_params(model))


def make_model_batch(cfg: dit_config.DiTConfig, rng: np.random.RandomState, b: int = 1) -> dict:
  """A random model batch (agibot_jax.assemble.model_batch's keys) at LATENT_HW."""
  h, w = LATENT_HW
  vt = NUM_VIEWS * cfg.state_t
  f = lambda *s: jnp.asarray(rng.standard_normal(s).astype(np.float32))
  return {
      "x0_BTHWC": f(b, vt, h, w, cfg.in_channels),
      "control_BTHWC": f(b, vt, h, w, cfg.in_channels),
      "crossattn_emb_BMC": f(b, NUM_VIEWS * cfg.text_tokens_per_view, cfg.crossattn_proj_in_channels),
      "view_indices_BT": jnp.repeat(jnp.arange(NUM_VIEWS, dtype=jnp.int32), cfg.state_t)[None].repeat(b, 0),
      "padding_mask_BHW": jnp.zeros((b, 8 * h, 8 * w), jnp.float32),
  }


def tiny_models(config):
  """(DiT model, DiT params, VAE model, VAE params) for a tiny config, at LATENT_HW."""
  cfg = dit_config.DiTConfig.from_config(config.model.net)
  params = jax.jit(functools.partial(dit.init_params, cfg, latent_hw=LATENT_HW))(jax.random.key(0))
  # The zero-initialised control output projections would hide the control path: make them non-zero.
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.02 if "after_proj" in jax.tree_util.keystr(p) else x, params)
  vae_model = vae_lib.WanVAE(vae_lib.VAEConfig.from_tokenizer_config(config.model.tokenizer))
  return dit.MultiViewControlDiT(cfg), params, vae_model, random_vae_params(vae_model, 1)
