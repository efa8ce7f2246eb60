"""The caption-embedding source of a training run, chosen from its config.

Both sources have the `TextEmbeddingProvider` shape the data loader expects:
`embed(captions: list[str]) -> np.ndarray (n, 512, C)`.

- `config.dataloader_train.dataset.text_cache_dir` set: read that cache (agibot_jax.text.cache).
  For a "full_concat" cache, captions it lacks are embedded online and stored when
  `config.model.text_encoder.path` is set; a "projected" cache must be complete (its projection
  weights are not part of the text encoder).
- otherwise: embed online with the converted encoder at `config.model.text_encoder.path`.

The tokenizer is `config.model.text_encoder.tokenizer` when present, else the Hugging Face folder
the encoder was converted from (recorded in its meta).
"""

from __future__ import annotations

from agibot_jax.text.cache import TextEmbeddingCache
from agibot_jax.text.embed import OnlineTextEmbedder


def _online(config) -> OnlineTextEmbedder:
  from agibot_jax.params_io import read_meta

  te = config.model.text_encoder
  if not te.path:
    raise ValueError("no text cache and no text encoder: set config.dataloader_train.dataset.text_cache_dir "
                     "or config.model.text_encoder.path")
  tokenizer = te.get("tokenizer", "") or read_meta(te.path).get("source")
  if not tokenizer:
    raise ValueError(f"{te.path}: no tokenizer folder recorded; set config.model.text_encoder.tokenizer")
  return OnlineTextEmbedder.from_paths(te.path, tokenizer, dtype=config.model.precision)


def text_provider(config) -> TextEmbeddingCache | OnlineTextEmbedder:
  cache_dir = config.dataloader_train.dataset.text_cache_dir
  if not cache_dir:
    return _online(config)
  cache = TextEmbeddingCache(cache_dir)
  if cache.meta["mode"] == "full_concat" and config.model.text_encoder.path:
    cache.fallback = _online(config).embed
  return cache
