"""agibot_jax/text/embed.py: FULL_CONCAT standardisation/layout and the online embedder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agibot_jax.params_io import save_params
from agibot_jax.text.embed import OnlineTextEmbedder, embed_token_ids, full_concat, load_text_encoder, \
    standardize_per_token
from agibot_jax.models.qwen import QwenTextConfig, QwenTextModel
from agibot_jax.text.tokenize import load_tokenizer, tokenize_captions

TINY = QwenTextConfig(vocab_size=64, hidden_size=32, intermediate_size=24, num_layers=2, num_heads=4,
                      num_kv_heads=2, dtype="float32", param_dtype="float32", attention="xla")


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
  params = QwenTextModel(TINY).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  path = str(tmp_path_factory.mktemp("enc") / "ckpt")
  save_params(path, params, {"model": "qwen2.5_vl_text", "config": TINY.to_hf_fields(), "dtype": "float32"})
  return path


def test_standardize_is_unbiased_per_token():
  h = np.random.default_rng(0).normal(3.0, 2.0, size=(2, 5, 7)).astype(np.float32)
  want = (h - h.mean(-1, keepdims=True)) / (h.std(-1, ddof=1, keepdims=True) + 1e-8)
  np.testing.assert_allclose(np.asarray(standardize_per_token(h)), want, atol=1e-6)


def test_full_concat_drops_embeddings_and_orders_layers():
  hidden_LBSD = np.random.default_rng(1).normal(size=(4, 2, 3, 5)).astype(np.float32)
  out = np.asarray(full_concat(hidden_LBSD))
  assert out.shape == (2, 3, 15)
  for layer in (1, 2, 3):
    np.testing.assert_allclose(out[..., (layer - 1) * 5:layer * 5],
                               np.asarray(standardize_per_token(hidden_LBSD[layer])), atol=1e-6)


def test_online_embedder_matches_model_any_batch(encoder_dir, tokenizer_dir):
  jax.config.update("jax_default_matmul_precision", "highest")
  config, params = load_text_encoder(encoder_dir, attention="xla")
  assert config == TINY
  tok = load_tokenizer(tokenizer_dir)
  captions = ["The robot picks up the red cup", "a cup", ""]
  want = np.asarray(embed_token_ids(params, jnp.asarray(tokenize_captions(tok, captions)), config))
  one = OnlineTextEmbedder(config, params, tok, batch_size=1).embed(captions)
  two = OnlineTextEmbedder(config, params, tok, batch_size=2).embed(captions)  # last batch padded
  assert one.shape == (3, 512, 2 * 32)
  np.testing.assert_allclose(one, want, atol=1e-5)
  np.testing.assert_allclose(two, want, atol=1e-5)
  assert OnlineTextEmbedder(config, params, tok).embed([]).shape == (0, 512, 64)


def test_bf16_online_embedding(encoder_dir, tokenizer_dir):
  embedder = OnlineTextEmbedder.from_paths(encoder_dir, tokenizer_dir, dtype="bfloat16", attention="xla")
  out = embedder.embed(["a cup"])
  assert out.dtype == jnp.bfloat16 and out.shape == (1, 512, 64)
  f32 = OnlineTextEmbedder.from_paths(encoder_dir, tokenizer_dir, dtype="float32", attention="xla").embed(["a cup"])
  # Standardised values are O(1); bf16 rounding of weights and activations stays well below 0.1.
  assert np.abs(out.astype(np.float32) - f32).max() < 0.1


def test_load_rejects_other_checkpoints(tmp_path):
  save_params(str(tmp_path / "x"), {"w": np.zeros(2, np.float32)}, {"model": "wan2.1_vae"})
  with pytest.raises(ValueError, match="not a text encoder"):
    load_text_encoder(str(tmp_path / "x"))


def test_text_provider_from_config(encoder_dir, tokenizer_dir, tmp_path):
  from agibot_jax import assemble, preflight
  from agibot_jax.text.cache import TextEmbeddingCache, cache_meta
  from configs import edge

  config = edge.get_config("tiny")
  config.model.allow_random_init = False
  config.model.net.crossattn_proj_in_channels = 64  # the test encoder's FULL_CONCAT width
  config.model.text_encoder.num_tokens = config.model.net.text_tokens_per_view = 512
  provider = lambda c: assemble.build_text_provider(preflight.resolve(c), assemble.dit_config(c))
  with pytest.raises(ValueError, match="model.text_encoder.path"):
    provider(config)
  config.model.text_encoder.path = encoder_dir
  config.model.text_encoder.tokenizer = tokenizer_dir
  online = provider(config)
  assert isinstance(online, OnlineTextEmbedder) and online.config.dtype == "float32"
  cache_dir = str(tmp_path / "cache")
  TextEmbeddingCache(cache_dir, cache_meta("full_concat", 64, encoder_dir))
  config.dataloader_train.dataset.text_cache_dir = cache_dir
  cached = provider(config)
  out = cached.embed(["a cup"])  # missing: embedded online, then stored
  assert "a cup" in TextEmbeddingCache(cache_dir)
  np.testing.assert_allclose(out.astype(np.float32), online.embed(["a cup"]), atol=2e-2, rtol=1e-2)


def test_sources_satisfy_the_loader_protocol(encoder_dir, tokenizer_dir, tmp_path):
  from agibot_jax.text.provider import TextEmbeddingProvider, embed_batch
  from agibot_jax.text.cache import TextEmbeddingCache, cache_meta

  online = OnlineTextEmbedder.from_paths(encoder_dir, tokenizer_dir, dtype="float32", attention="xla")
  cache = TextEmbeddingCache(str(tmp_path), cache_meta("full_concat", 64, encoder_dir), fallback=online.embed)
  for source in (online, cache):
    assert isinstance(source, TextEmbeddingProvider)
    assert (source.num_tokens, source.dim) == (512, 64)
  packed = embed_batch(cache, [["a cup", "red cup", "a cup"]])
  assert packed.shape == (1, 3 * 512, 64)
  np.testing.assert_array_equal(packed[0, :512], packed[0, 1024:])
