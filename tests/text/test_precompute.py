"""agibot_jax/text/precompute.py: distinct captions, skipping, and the CLI in raw and projected modes."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agibot_jax import preflight, rig
from agibot_jax.data import synthetic
from agibot_jax.models.qwen import QwenTextConfig, QwenTextModel
from agibot_jax.params_io import save_params
from agibot_jax.text.cache import TextEmbeddingCache, cache_meta, project_context
from agibot_jax.text.embed import OnlineTextEmbedder
from agibot_jax.text.precompute import dataset_captions, precompute
from configs import base

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = QwenTextConfig(vocab_size=64, hidden_size=32, intermediate_size=24, num_layers=2, num_heads=4,
                      num_kv_heads=2, dtype="float32", param_dtype="float32", attention="xla")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """3 valid samples; their prompts are 'The robot picks up the red cup', 'a cup' and '' (training reads these)."""
  root = tmp_path_factory.mktemp("ds")
  synthetic.write_example(str(root), num_samples=3, frames=9, height=48, width=64)
  for sid, prompt in zip(("synthetic_000", "synthetic_001", "synthetic_002"), PROMPTS):
    (root / "captions" / "head_color" / f"{sid}.json").write_text(f'{{"caption": "{prompt}"}}')
  return str(root)


PROMPTS = ("The robot picks up the red cup", "a cup", "")


def _config(dataset):
  config = base.get_config("edge", "tiny")
  config.dataloader_train.dataset.dataset_dir = dataset
  return config


def _captions(dataset):
  config = preflight.resolve(_config(dataset))
  return dataset_captions(preflight.prepare_dataset(config), rig.of_config(config))


def test_distinct_captions_and_skip(dataset, tmp_path):
  captions = _captions(dataset)
  assert captions == [*rig.AGIBOT.captions(PROMPTS[0]), rig.AGIBOT.captions(PROMPTS[1])[0],
                      rig.AGIBOT.captions(PROMPTS[2])[0]]
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
  assert json.loads(raw.stdout.strip().splitlines()[-1])["computed"] == 5
  proj = subprocess.run(base + ["--cache_dir", str(tmp_path / "proj"), "--projected", "--crossattn_proj",
                                str(tmp_path / "proj.npz")], cwd=REPO, env=env, capture_output=True, text=True)
  assert proj.returncode == 0, proj.stderr

  captions = _captions(dataset)
  want = OnlineTextEmbedder.from_paths(enc, tokenizer_dir, dtype="float32", attention="xla").embed(captions)
  got_raw = TextEmbeddingCache(str(tmp_path / "raw")).embed(captions)
  # The raw cache stores bf16: within bf16 rounding of O(1) standardised values.
  np.testing.assert_allclose(got_raw.astype(np.float32), want, atol=2e-2, rtol=1e-2)
  proj_cache = TextEmbeddingCache(str(tmp_path / "proj"))
  proj_cache.check_projection(kernel, bias)
  np.testing.assert_allclose(proj_cache.embed(captions), np.asarray(project_context(want, kernel, bias)),
                             atol=1e-4)


def test_tiny_config_precomputes_with_a_random_encoder_and_full_size_asks_for_one():
  """Issue 31, item 3: without --text_encoder a :tiny config precomputes with a random stand-in encoder (so the
  README's cache step runs without the 7B weights); a full-size config asks for a converted one. (That its
  embeddings are those of the training run's own random encoder: the slow test below.)"""
  from agibot_jax import cli
  from agibot_jax.text import precompute as precompute_lib

  _, meta = precompute_lib.text_embedder(preflight.resolve(base.get_config("edge", "tiny")), "", None,
                                         dtype="float32", batch_size=1)
  assert meta == {"channels": 96, "text_encoder": "random (seed 2)", "num_tokens": 512, "dtype": "float32"}
  with pytest.raises(cli.UsageError, match="no text encoder: pass --text_encoder"):
    precompute_lib.text_embedder(preflight.resolve(base.get_config("edge")), "", None, dtype="float32", batch_size=1)


@pytest.mark.slow  # compiles the tiny random encoder twice (25 s on a loaded 2-core machine)
def test_tiny_random_cache_holds_what_the_training_run_embeds_online():
  from agibot_jax import assemble
  from agibot_jax.text import precompute as precompute_lib

  config = preflight.resolve(base.get_config("edge", "tiny"))
  embed, _ = precompute_lib.text_embedder(config, "", None, dtype="float32", batch_size=1)
  caption = rig.AGIBOT.captions("a cup")[:1]
  online = assemble.random_text_embedder(config, assemble.dit_config(config))
  np.testing.assert_array_equal(embed(caption), online.embed(caption))
