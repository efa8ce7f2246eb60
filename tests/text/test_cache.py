"""agibot_jax/text/cache.py: caption strings, cache round trips, projection and text dropout equivalence."""

import json

import jax
import ml_dtypes
import numpy as np
import pytest

from agibot_jax.params_io import save_params
from agibot_jax.text.cache import (VIEW_PREFIXES, TextEmbeddingCache, apply_text_dropout, cache_meta, fingerprint,
                                   load_crossattn_proj, project_context, read_prompt, sample_ids, view_captions)

C, D = 96, 16  # tiny stand-ins for 100352 and 1024


def _proj(seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(C, D)) / np.sqrt(C)).astype(np.float32), rng.normal(size=(D,)).astype(np.float32)


def test_view_captions_follow_spec():
  head, left, right = view_captions("A robot folds a towel.")
  assert head == "The video is captured from a camera mounted on the head of the subject, facing forward. " \
                 "A robot folds a towel."
  assert left == "The video is captured from a camera mounted on the left hand of the subject. "
  assert right == VIEW_PREFIXES["hand_right"] + " "
  assert view_captions("")[0] == VIEW_PREFIXES["head_color"] + " "


def test_real_dataset_captions(data_dir):
  root = str(data_dir / "night_3view")
  assert sample_ids(root) == ["night_000", "night_001"]
  assert read_prompt(root, "night_000").startswith("The video captures a nighttime urban driving scene")
  assert read_prompt(root, "no_such_clip") == ""


def test_bad_caption_file_names_the_file(tmp_path):
  (tmp_path / "captions" / "head_color").mkdir(parents=True)
  (tmp_path / "captions" / "head_color" / "x.json").write_text('{"text": "no caption key"}')
  with pytest.raises(ValueError, match="x.json"):
    read_prompt(str(tmp_path), "x")
  with pytest.raises(FileNotFoundError, match="videos/head_color"):
    sample_ids(str(tmp_path))


def test_full_concat_cache_roundtrip_bf16(tmp_path):
  cache = TextEmbeddingCache(str(tmp_path), cache_meta("full_concat", C, "enc", num_tokens=8))
  emb = np.random.default_rng(0).normal(size=(8, C)).astype(np.float32)
  cache.put("a caption", emb)
  cache.write_index()
  assert not list(tmp_path.glob("*.tmp*"))
  reader = TextEmbeddingCache(str(tmp_path))
  got = reader.embed(["a caption", "a caption"])
  assert got.dtype == ml_dtypes.bfloat16 and got.shape == (2, 8, C)
  np.testing.assert_array_equal(got[1], emb.astype(ml_dtypes.bfloat16))
  assert json.loads((tmp_path / "index.json").read_text())["captions"] == {
      reader.path("a caption").split("/")[-1][:-4]: "a caption"}
  with pytest.raises(KeyError, match="other"):
    reader.embed(["other"])
  with pytest.raises(ValueError, match="different settings"):
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


def test_training_context_identical_from_raw_or_projected_cache(tmp_path):
  """Raw cache -> dropout -> crossattn_proj equals projected cache -> dropout, for every keep pattern."""
  kernel, bias = _proj()
  rng = np.random.default_rng(1)
  # The encoder's bf16 output: both caches are filled from these same values.
  captions = [f"caption {i}" for i in range(3)]
  emb = rng.normal(size=(3, 8, C)).astype(ml_dtypes.bfloat16)
  raw = TextEmbeddingCache(str(tmp_path / "raw"), cache_meta("full_concat", C, "enc", num_tokens=8))
  proj = TextEmbeddingCache(str(tmp_path / "proj"),
                            cache_meta("projected", D, "enc", fingerprint(kernel, bias), num_tokens=8))
  for caption, e in zip(captions, emb):
    raw.put(caption, e)
    proj.put(caption, np.asarray(project_context(e, kernel, bias)))
  proj.check_projection(kernel, bias)

  keep_BV = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], bool)  # all 8 patterns
  B = keep_BV.shape[0]
  raw_BVNC = np.broadcast_to(raw.embed(captions)[None], (B, 3, 8, C))
  ctx_BVND = np.broadcast_to(proj.embed(captions)[None], (B, 3, 8, D))
  via_raw = project_context(apply_text_dropout(raw_BVNC, keep_BV, projected=False), kernel, bias)
  via_proj = apply_text_dropout(ctx_BVND, keep_BV, projected=True, bias=bias)
  np.testing.assert_allclose(np.asarray(via_proj), np.asarray(via_raw), atol=1e-6, rtol=0)
  dropped = np.asarray(via_proj)[0, 1]
  np.testing.assert_array_equal(dropped, np.broadcast_to(np.asarray(jax.nn.gelu(bias, approximate=False)), (8, D)))
  assert not np.allclose(np.asarray(via_proj)[7, 1], dropped)

  with pytest.raises(ValueError, match="other crossattn_proj"):
    proj.check_projection(kernel, bias + 1)
  with pytest.raises(ValueError, match="bias"):
    apply_text_dropout(ctx_BVND, keep_BV, projected=True)


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
  assert fingerprint(k, b) == fingerprint(kernel, bias)
  np.savez(tmp_path / "bad.npz", w=kernel)
  with pytest.raises(KeyError, match="kernel"):
    load_crossattn_proj(str(tmp_path / "bad.npz"))
