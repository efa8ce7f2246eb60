"""Precompute the text embeddings of every caption of a dataset once (see agibot_jax/text/cache.py).

  python -m agibot_jax.text.precompute --config configs/edge.py \
      --config.dataloader_train.dataset.dataset_dir=DIR --text_encoder CKPT [--tokenizer DIR] \
      [--cache_dir DIR] [--projected --crossattn_proj DIT_CKPT_OR_NPZ] [--batch_size 1]

CKPT is a folder written by `python -m convert.text_encoder`; the tokenizer defaults to the
Hugging Face folder it was converted from. The cache folder defaults to
`config.dataloader_train.dataset.text_cache_dir`. Captions already cached are skipped; the two
hand-view captions are the same for every sample and are computed once.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence

import numpy as np

from agibot_jax.text.cache import (TextEmbeddingCache, cache_meta, fingerprint, project_context, read_prompt,
                                   sample_ids, view_captions)


def dataset_captions(dataset_dir: str) -> list[str]:
  """Every distinct per-view caption of the dataset, in sample then view order."""
  captions: dict[str, None] = {}
  for sample_id in sample_ids(dataset_dir):
    captions.update(dict.fromkeys(view_captions(read_prompt(dataset_dir, sample_id))))
  return list(captions)


def precompute(captions: Sequence[str], cache: TextEmbeddingCache, embed: Callable[[list[str]], np.ndarray],
               *, batch_size: int = 1, progress: Callable = lambda it, **kw: it) -> int:
  """Store `embed(batch)` for each caption not yet in `cache`; returns how many were computed."""
  todo = [c for c in captions if c not in cache]
  batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
  for batch in progress(batches, total=len(batches), unit="batch"):
    for caption, emb in zip(batch, embed(batch)):
      cache.put(caption, emb)
    cache.write_index()  # after every batch: an interrupted run keeps its index
  cache.write_index()  # also when nothing was missing (creates the index of a new, empty cache)
  return len(todo)


def main(argv) -> int:
  from absl import flags
  from tqdm import tqdm

  from agibot_jax.params_io import read_meta
  from agibot_jax.text.cache import load_crossattn_proj
  from agibot_jax.text.embed import OnlineTextEmbedder
  from agibot_jax.text.qwen import QwenTextConfig

  f = flags.FLAGS
  if f.config is None:
    raise ValueError("pass --config configs/<control>.py")
  ds = f.config.dataloader_train.dataset
  if not ds.dataset_dir:
    raise ValueError("set --config.dataloader_train.dataset.dataset_dir")
  cache_dir = f.cache_dir or ds.text_cache_dir
  if not cache_dir:
    raise ValueError("set --cache_dir or --config.dataloader_train.dataset.text_cache_dir")
  encoder_meta = read_meta(f.text_encoder)
  tokenizer = f.tokenizer or encoder_meta.get("source")
  if not tokenizer:
    raise ValueError(f"{f.text_encoder}: no source folder recorded; pass --tokenizer")

  # The 7B is loaded only when some caption is missing, so re-running on a complete cache is cheap.
  embedder = functools.cache(lambda: OnlineTextEmbedder.from_paths(
      f.text_encoder, tokenizer, dtype=f.dtype, batch_size=f.batch_size))
  if f.projected:
    if not f.crossattn_proj:
      raise ValueError("--projected needs --crossattn_proj (a converted DiT checkpoint or an .npz)")
    kernel, bias = load_crossattn_proj(f.crossattn_proj)
    meta = cache_meta("projected", kernel.shape[1], os.path.abspath(f.text_encoder), fingerprint(kernel, bias))
    embed = lambda batch: np.asarray(project_context(embedder().embed(batch), kernel, bias))
  else:
    channels = QwenTextConfig.from_hf(encoder_meta["config"]).embedding_channels
    meta = cache_meta("full_concat", channels, os.path.abspath(f.text_encoder))
    embed = lambda batch: embedder().embed(batch)
  captions = dataset_captions(ds.dataset_dir)
  cache = TextEmbeddingCache(cache_dir, meta)
  n = precompute(captions, cache, embed, batch_size=f.batch_size, progress=tqdm)
  print(f"{len(captions)} distinct captions, {n} computed, {len(captions) - n} already cached -> {cache_dir}")
  return 0


def _define_flags():
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "training config file (configs/<ct>.py)", lock_config=True)
  flags.DEFINE_string("text_encoder", None, "converted text encoder (python -m convert.text_encoder)", required=True)
  flags.DEFINE_string("tokenizer", None, "local tokenizer folder (default: the encoder's source folder)")
  flags.DEFINE_string("cache_dir", None, "cache folder (default: config.dataloader_train.dataset.text_cache_dir)")
  flags.DEFINE_bool("projected", False, "cache crossattn_proj(embedding) (1024-d) instead of the raw embedding")
  flags.DEFINE_string("crossattn_proj", None, "with --projected: DiT checkpoint or .npz holding the projection")
  flags.DEFINE_integer("batch_size", 1, "captions per forward")
  flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "text encoder compute dtype")


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
