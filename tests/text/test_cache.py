"""agibot_jax/text/cache.py: cache round trips, the projected mode's size and fingerprint, the projection."""

import ml_dtypes
import numpy as np
import pytest

from agibot_jax.params_io import save_params
from agibot_jax.text.cache import (TextEmbeddingCache, cache_meta, caption_key, load_crossattn_proj, project_context,
                                   projection_fingerprint)

C, D = 96, 16  # tiny stand-ins for 100352 and 1024


def _proj(seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(C, D)) / np.sqrt(C)).astype(np.float32), rng.normal(size=(D,)).astype(np.float32)


def test_full_concat_cache_roundtrip_bf16(tmp_path):
  cache = TextEmbeddingCache(str(tmp_path), cache_meta("full_concat", C, "enc", num_tokens=8))
  emb = np.random.default_rng(0).normal(size=(8, C)).astype(np.float32)
  cache.put("a caption", emb)
  assert not list(tmp_path.glob("*.tmp*"))
  reader = TextEmbeddingCache(str(tmp_path))
  got = reader.embed(["a caption", "a caption"])
  assert got.dtype == ml_dtypes.bfloat16 and got.shape == (2, 8, C)
  np.testing.assert_array_equal(got[1], emb.astype(ml_dtypes.bfloat16))
  with np.load(tmp_path / f"{caption_key('a caption')}.npz", allow_pickle=False) as f:
    assert str(f["caption"]) == "a caption"  # each entry says which caption it holds
  with pytest.raises(KeyError, match="other"):
    reader.embed(["other"])
  with pytest.raises(ValueError, match="text_encoder='enc'.*text_encoder='another encoder'"):
    TextEmbeddingCache(str(tmp_path), cache_meta("full_concat", C, "another encoder", num_tokens=8))
  with pytest.raises(ValueError, match="shape"):
    cache.put("bad", emb[:, :5])
  with pytest.raises(FileNotFoundError, match="precompute"):
    TextEmbeddingCache(str(tmp_path / "empty"))


def test_fallback_fills_the_cache(tmp_path):
  calls = []

  def embed(captions):
    calls.append(list(captions))
    return np.stack([np.full((4, C), len(c), np.float32) for c in captions])

  cache = TextEmbeddingCache(str(tmp_path), cache_meta("full_concat", C, "enc", num_tokens=4), fallback=embed)
  out = cache.embed(["ab", "abc", "ab"])
  assert calls == [["ab", "abc"]] and out[2, 0, 0] == 2
  cache.embed(["abc"])
  assert len(calls) == 1


def test_projected_cache_is_98x_smaller_and_checks_its_weights(tmp_path):
  """At the real widths (100352 raw, 1024 projected; bf16 both) an entry is 98x smaller; the fingerprint of the
  projection weights is checked (the equal training loss is tested in tests/training/test_step.py)."""
  tokens, raw_c, proj_c = 32, 100352, 1024
  kernel, bias = _proj()
  raw = TextEmbeddingCache(str(tmp_path / "raw"), cache_meta("full_concat", raw_c, "enc", num_tokens=tokens))
  proj = TextEmbeddingCache(str(tmp_path / "proj"), cache_meta("projected", proj_c, "enc",
                                                               projection_fingerprint(kernel, bias),
                                                               num_tokens=tokens, dtype="bfloat16"))
  raw.put("c", np.ones((tokens, raw_c), np.float32))
  proj.put("c", np.ones((tokens, proj_c), np.float32))
  size = lambda cache: (tmp_path / cache / f"{caption_key('c')}.npz").stat().st_size
  assert size("raw") / size("proj") == pytest.approx(98, rel=0.03)  # 98 up to the npz headers
  assert proj.projected and not raw.projected
  proj.check_projection(kernel, bias)
  with pytest.raises(ValueError, match="other crossattn_proj"):
    proj.check_projection(kernel, bias + 1)
  with pytest.raises(ValueError, match="not 'projected'"):
    raw.check_projection(kernel, bias)


def test_project_context_is_exact_gelu_linear():
  kernel, bias = _proj(2)
  x = np.random.default_rng(3).normal(size=(5, C)).astype(np.float32)
  y = x.astype(np.float64) @ kernel + bias
  from math import erf
  want = 0.5 * y * (1 + np.vectorize(erf)(y / np.sqrt(2)))
  np.testing.assert_allclose(np.asarray(project_context(x, kernel, bias)), want, atol=1e-5)


def test_load_crossattn_proj_from_npz_and_checkpoint(tmp_path):
  kernel, bias = _proj(4)
  np.savez(tmp_path / "p.npz", kernel=kernel, bias=bias)
  k, b = load_crossattn_proj(str(tmp_path / "p.npz"))
  np.testing.assert_array_equal(k, kernel)
  tree = {"crossattn_proj": {"kernel": kernel, "bias": bias}, "blocks": {"kernel": np.zeros((2, 2), np.float32)}}
  save_params(str(tmp_path / "dit"), tree, {"model": "dit"})
  k, b = load_crossattn_proj(str(tmp_path / "dit"))
  assert projection_fingerprint(k, b) == projection_fingerprint(kernel, bias)
  np.savez(tmp_path / "bad.npz", w=kernel)
  with pytest.raises(KeyError, match="kernel"):
    load_crossattn_proj(str(tmp_path / "bad.npz"))
