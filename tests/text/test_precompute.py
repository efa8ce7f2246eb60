"""agibot_jax/text/precompute.py: distinct captions, skipping, and the CLI in raw and projected modes."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agibot_jax.params_io import save_params
from agibot_jax.text.cache import TextEmbeddingCache, cache_meta, project_context, view_captions
from agibot_jax.text.embed import OnlineTextEmbedder
from agibot_jax.text.precompute import dataset_captions, precompute
from agibot_jax.text.qwen import QwenTextConfig, QwenTextModel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = QwenTextConfig(vocab_size=64, hidden_size=32, intermediate_size=24, num_layers=2, num_heads=4,
                      num_kv_heads=2, dtype="float32", param_dtype="float32", attention="xla")


@pytest.fixture
def dataset(tmp_path):
  root = tmp_path / "ds"
  for view in ("head_color", "hand_left", "hand_right"):
    (root / "videos" / view).mkdir(parents=True)
    (root / "captions" / view).mkdir(parents=True)
    for sid in ("s0", "s1", "s2"):
      (root / "videos" / view / f"{sid}.mp4").write_bytes(b"")
  (root / "captions" / "head_color" / "s0.json").write_text('{"caption": "The robot picks up the red cup"}')
  (root / "captions" / "head_color" / "s1.json").write_text('{"caption": "a cup"}')
  (root / "captions" / "hand_left" / "s1.json").write_text('{"caption": "ignored"}')
  return str(root)  # s2 has no caption: its prompt is ""


def test_distinct_captions_and_skip(dataset, tmp_path):
  captions = dataset_captions(dataset)
  assert captions == [*view_captions("The robot picks up the red cup"), view_captions("a cup")[0],
                      view_captions("")[0]]
  calls = []

  def embed(batch):
    calls.append(len(batch))
    return np.stack([np.full((512, 8), len(c), np.float32) for c in batch])

  cache = TextEmbeddingCache(str(tmp_path / "c"), cache_meta("full_concat", 8, "fake"))
  assert precompute(captions, cache, embed, batch_size=2) == 5 and calls == [2, 2, 1]
  assert precompute(captions, TextEmbeddingCache(str(tmp_path / "c"), cache_meta("full_concat", 8, "fake")),
                    embed) == 0
  assert TextEmbeddingCache(str(tmp_path / "c")).embed(captions[:1])[0, 0, 0] == len(captions[0])


def test_cli_raw_and_projected(dataset, tokenizer_dir, tmp_path):
  params = QwenTextModel(TINY).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  enc = str(tmp_path / "enc")
  save_params(enc, params, {"model": "qwen2.5_vl_text", "config": TINY.to_hf_fields(), "dtype": "float32"})
  rng = np.random.default_rng(0)
  kernel, bias = rng.normal(size=(64, 16)).astype(np.float32), rng.normal(size=16).astype(np.float32)
  np.savez(tmp_path / "proj.npz", kernel=kernel, bias=bias)
  base = [sys.executable, "-m", "agibot_jax.text.precompute", "--config", "configs/edge.py:tiny",
          f"--config.dataloader_train.dataset.dataset_dir={dataset}", "--text_encoder", enc,
          "--tokenizer", tokenizer_dir, "--dtype", "float32"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  raw = subprocess.run(base + ["--cache_dir", str(tmp_path / "raw")], cwd=REPO, env=env,
                       capture_output=True, text=True)
  assert raw.returncode == 0, raw.stderr
  assert "5 distinct captions, 5 computed" in raw.stdout
  proj = subprocess.run(base + ["--cache_dir", str(tmp_path / "proj"), "--projected", "--crossattn_proj",
                                str(tmp_path / "proj.npz")], cwd=REPO, env=env, capture_output=True, text=True)
  assert proj.returncode == 0, proj.stderr

  captions = dataset_captions(dataset)
  want = OnlineTextEmbedder.from_paths(enc, tokenizer_dir, dtype="float32", attention="xla").embed(captions)
  got_raw = TextEmbeddingCache(str(tmp_path / "raw")).embed(captions)
  # The raw cache stores bf16: within bf16 rounding of O(1) standardised values.
  np.testing.assert_allclose(got_raw.astype(np.float32), want, atol=2e-2, rtol=1e-2)
  proj_cache = TextEmbeddingCache(str(tmp_path / "proj"))
  proj_cache.check_projection(kernel, bias)
  np.testing.assert_allclose(proj_cache.embed(captions), np.asarray(project_context(want, kernel, bias)),
                             atol=1e-4)
