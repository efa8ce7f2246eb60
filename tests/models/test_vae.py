"""Wan2.1 VAE (agibot_jax/models/vae.py) against the golden `vae_tiny` and against its own full pass.

Tolerances (float32): latents 1e-5 and decoded video 1e-4 absolute against the PyTorch reference
(golden README §3: the reference itself moves by 2e-7 / 2.2e-6 between fp32 and fp64); chunked vs
full-sequence passes of our own model to 1e-5 relative.
"""

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

from agibot_jax.models import vae
from convert.vae import convert_state_dict

jax.config.update("jax_default_matmul_precision", "highest")

TINY = vae.VAEConfig(dim=16, z_dim=16, temporal_window=16, attention="xla")


def _cl(a_BCTHW):
  return np.moveaxis(a_BCTHW, 1, -1)


@pytest.fixture(scope="module")
def golden(golden_dir):
  tensors = load_file(str(golden_dir / "vae_tiny.safetensors"))
  state = {k[len("params/"):]: v for k, v in tensors.items() if k.startswith("params/")}
  return tensors, convert_state_dict(state, TINY)


@functools.lru_cache(maxsize=None)
def _encoder(cfg: vae.VAEConfig):
  return jax.jit(functools.partial(vae.encode, vae.WanVAE(cfg)))


@functools.lru_cache(maxsize=None)
def _decoder(cfg: vae.VAEConfig, frame_by_frame: bool = True):
  return jax.jit(functools.partial(vae.decode, vae.WanVAE(cfg), frame_by_frame=frame_by_frame))


def _max_err(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


@pytest.mark.parametrize("suffix,tw", [("", 16), ("_9f", 16), ("_9f", 4)])
def test_encode_matches_golden(golden, suffix, tw):
  # tw=4 on 9 frames runs frame 0 then a 2-step scan ([1:5], [5:9]); tw=16 a single partial chunk.
  # (The raw mu is checked by `python -m convert.parity`, tests/convert/test_vae.py.)
  tensors, params = golden
  cfg = vae.VAEConfig(**{**TINY.__dict__, "temporal_window": tw})
  z = _encoder(cfg)(params, _cl(tensors[f"inputs/video{suffix}"]))
  ref = _cl(tensors[f"outputs/latent{suffix}"])
  assert z.shape == ref.shape
  assert _max_err(z, ref) < 1e-5


@pytest.mark.parametrize("suffix", ["", "_9f"])
def test_decode_matches_golden(golden, suffix):
  tensors, params = golden
  video = _decoder(TINY)(params, _cl(tensors[f"outputs/latent{suffix}"]))
  ref = _cl(tensors[f"outputs/decoded{suffix}"])
  assert video.shape == ref.shape
  assert _max_err(video, ref) < 1e-4


@pytest.fixture(scope="module")
def clip37(golden):
  """A 37-frame clip (frame 0 + 9 groups of 4) and the golden tiny parameters."""
  video = jax.random.uniform(jax.random.key(3), (1, 37, 16, 16, 3), minval=-1.0, maxval=1.0)
  return np.asarray(video), golden[1]


def test_chunked_encode_equals_full_pass(clip37):
  # tw=16: frame 0, a 2-step scan, then a partial 4-frame chunk; tw=4: a 9-step scan; 0: no cache.
  video, params = clip37
  full = _encoder(vae.VAEConfig(**{**TINY.__dict__, "temporal_window": 0}))(params, video)
  assert full.shape == (1, 10, 2, 2, 16)
  scale = float(np.max(np.abs(full)))
  for tw in (16, 4):
    chunked = _encoder(vae.VAEConfig(**{**TINY.__dict__, "temporal_window": tw}))(params, video)
    assert _max_err(chunked, full) / scale < 1e-5, tw


def test_frame_by_frame_decode_equals_full_pass(clip37):
  video, params = clip37
  latents = _encoder(TINY)(params, video)
  by_frame = _decoder(TINY)(params, latents)
  full = _decoder(TINY, frame_by_frame=False)(params, latents)
  assert by_frame.shape == (1, 37, 16, 16, 3)
  assert _max_err(by_frame, full) / float(np.max(np.abs(full))) < 1e-5


def test_bf16_latent_constants_are_the_rounded_ones():
  bf16 = ml_dtypes.bfloat16
  mean = np.asarray(vae.LATENT_MEAN, np.float32).astype(bf16)
  inv_std = (np.float32(1.0) / np.asarray(vae.LATENT_STD, np.float32).astype(bf16).astype(np.float32)).astype(bf16)
  ours_mean, ours_inv_std = vae.latent_constants(vae.VAEConfig(latent_constants="bfloat16"))
  np.testing.assert_array_equal(np.asarray(ours_mean), mean.astype(np.float32))
  np.testing.assert_array_equal(np.asarray(ours_inv_std), inv_std.astype(np.float32))


def test_temporal_window_must_be_multiple_of_4():
  with pytest.raises(ValueError, match="multiple of 4"):
    vae.VAEConfig(temporal_window=6)


def _multiview_case():
  rng = np.random.default_rng(0)
  video_B3NHW = rng.integers(0, 256, size=(2, 3, 3 * 5, 16, 16), dtype=np.uint8)  # B=2, 3 views x 5 frames
  mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "context"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  return vae.loader_to_channels_last(jnp.asarray(video_B3NHW)), mesh


def test_multiview_encode_folds_views_and_keeps_view_major_order(golden):
  video, mesh = _multiview_case()
  enc = jax.jit(vae.encode_multiview, static_argnums=0, static_argnames=("num_views", "mesh"))
  latents = enc(vae.WanVAE(TINY), golden[1], video, num_views=3, mesh=mesh)
  assert latents.shape == (2, 3 * 2, 2, 2, 16)
  # Sample 1, view 2 (frames 10:15) alone, uint8 mapped by hand.
  one_view = vae.encode(vae.WanVAE(TINY), golden[1], np.asarray(video, np.float32)[1:2, 10:15] / 127.5 - 1.0)
  assert _max_err(latents[1:2, 4:6], one_view) < 1e-5


@pytest.mark.slow
def test_multiview_decode_unfolds_views(golden):
  video, mesh = _multiview_case()
  model, params = vae.WanVAE(TINY), golden[1]
  latents = vae.encode_multiview(model, params, video, num_views=3)
  dec = jax.jit(vae.decode_multiview, static_argnums=0, static_argnames=("num_views", "mesh"))
  decoded = dec(model, params, latents, num_views=3, mesh=mesh)
  assert decoded.shape == (2, 15, 16, 16, 3)
  assert _max_err(decoded[1:2, 10:15], vae.decode(model, params, latents[1:2, 4:6])) < 1e-4


@pytest.mark.slow
def test_bf16_compute_tracks_float32(golden):
  tensors, params = golden
  cfg = vae.VAEConfig(**{**TINY.__dict__, "dtype": "bfloat16", "param_dtype": "bfloat16"})
  params_bf16 = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), params)
  video = _cl(tensors["inputs/video"])
  z = _encoder(cfg)(params_bf16, video)
  assert z.dtype == jnp.float32
  ref = tensors["outputs/latent"]
  assert _max_err(z, _cl(ref)) / float(np.max(np.abs(ref))) < 5e-2


def test_bad_frame_count_is_rejected(golden):
  with pytest.raises(ValueError, match="1 \\+ 4k frames"):
    vae.encode(vae.WanVAE(TINY), golden[1], jnp.zeros((1, 6, 16, 16, 3)))


def test_config_from_training_config():
  from configs.base import get_config

  cfg = vae.VAEConfig.from_tokenizer_config(get_config("edge").model.tokenizer)
  assert (cfg.dim, cfg.z_dim, cfg.temporal_window, cfg.dtype) == (96, 16, 16, "bfloat16")
  assert vae.VAEConfig.from_tokenizer_config(get_config("edge", "tiny").model.tokenizer).dim == 16
