r"""Precompute the text embeddings of every caption of a dataset once (see agibot_jax/text/cache.py).

  python -m agibot_jax.text.precompute --config configs/edge.py \
      --config.dataloader_train.dataset.dataset_dir=DIR --text_encoder CKPT [--tokenizer DIR] \
      [--cache_dir DIR] [--projected --crossattn_proj DIT_CKPT_OR_NPZ] [--batch_size 1]

CKPT is a folder written by `python -m convert.text_encoder`; the tokenizer defaults to the Hugging Face folder it
was converted from. The cache folder defaults to `config.dataloader_train.dataset.text_cache_dir`. The captions are
those training reads: the dataset is scanned and validated as training does (`agibot_jax.data.layout`), and each
sample's per-view captions are built by the rig (`agibot_jax.rig.Rig.captions`, `config.rig`). Captions already
cached are skipped; the captions of the cameras without the prompt are the same for every sample and are computed
once.

`--projected` stores the DiT's crossattn_proj applied to each embedding (1024-d, 98x smaller in bf16), in
`model.precision`. The projection weights are cast to `model.precision` first, as the training state holds them, so
the cache's fingerprint matches the run that uses it.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np
from absl import flags

from agibot_jax import cli, logs, params_io
from agibot_jax import rig as rig_lib
from agibot_jax.data import layout
from agibot_jax.text.cache import (TextEmbeddingCache, cache_meta, load_crossattn_proj, project_context,
                                   projection_fingerprint)

log = logging.getLogger(__name__)


def dataset_captions(config) -> list[str]:
  """Every distinct per-view caption of the config's dataset, in sample then view order."""
  ds = config.dataloader_train.dataset
  rig = rig_lib.of_config(config)
  samples = layout.load_index(ds.dataset_dir, rig, ds.control_input_type, int(ds.num_video_frames),
                              bool(ds.skip_invalid), control_stretch=bool(ds.allow_control_stretch))
  captions: dict[str, None] = {}
  for sample in samples:
    captions.update(dict.fromkeys(rig.captions(sample.prompt)))
  return list(captions)


def precompute(captions: Sequence[str], cache: TextEmbeddingCache, embed: Callable[[list[str]], np.ndarray],
               *, batch_size: int = 1, progress: Callable = lambda it, **kw: it) -> int:
  """Store `embed(batch)` for each caption not yet in `cache`; returns how many were computed."""
  todo = [c for c in captions if c not in cache]
  batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
  for batch in progress(batches, total=len(batches), unit="batch"):
    for caption, emb in zip(batch, embed(batch)):
      cache.put(caption, emb)
  return len(todo)


def main() -> int:
  from agibot_jax.models.qwen import QwenTextConfig
  from agibot_jax.text.embed import OnlineTextEmbedder

  f = flags.FLAGS
  config = f.config
  if not config.dataloader_train.dataset.dataset_dir:
    raise ValueError("set --config.dataloader_train.dataset.dataset_dir")
  cache_dir = f.cache_dir or config.dataloader_train.dataset.text_cache_dir
  if not cache_dir:
    raise ValueError("set --cache_dir or --config.dataloader_train.dataset.text_cache_dir")
  encoder_meta = params_io.read_meta(f.text_encoder)
  tokenizer = f.tokenizer or encoder_meta.get("source")
  if not tokenizer:
    raise ValueError(f"{f.text_encoder}: no source folder recorded; pass --tokenizer")
  captions = dataset_captions(config)

  # The 7B is loaded only when some caption is missing, so re-running on a complete cache is cheap.
  embedder = functools.cache(lambda: OnlineTextEmbedder.from_paths(
      f.text_encoder, tokenizer, dtype=f.dtype, batch_size=f.batch_size))
  if f.projected:
    if not f.crossattn_proj:
      raise ValueError("--projected needs --crossattn_proj (a converted DiT checkpoint or an .npz)")
    # As the training state holds the frozen base: in model.precision.
    kernel, bias = (np.asarray(a).astype(jnp.dtype(config.model.precision))
                    for a in load_crossattn_proj(f.crossattn_proj))
    meta = cache_meta("projected", kernel.shape[1], os.path.abspath(f.text_encoder),
                      projection_fingerprint(kernel, bias), dtype=config.model.precision)
    embed = lambda batch: np.asarray(project_context(embedder().embed(batch), kernel, bias))
  else:
    channels = QwenTextConfig.from_hf(encoder_meta["config"]).embedding_channels
    meta = cache_meta("full_concat", channels, os.path.abspath(f.text_encoder))
    embed = lambda batch: embedder().embed(batch)
  cache = TextEmbeddingCache(cache_dir, meta)

  def progress(batches, **kwargs):
    with logs.progress(**kwargs) as bar:
      for batch in batches:
        yield batch
        bar.update(1)

  n = precompute(captions, cache, embed, batch_size=f.batch_size, progress=progress)
  print(f"{len(captions)} distinct captions, {n} computed, {len(captions) - n} already cached -> {cache_dir}")
  return 0


if __name__ == "__main__":
  cli.define_config_flag()
  flags.DEFINE_string("text_encoder", None, "converted text encoder (python -m convert.text_encoder)", required=True)
  flags.DEFINE_string("tokenizer", None, "local tokenizer folder (default: the encoder's source folder)")
  flags.DEFINE_string("cache_dir", None, "cache folder (default: config.dataloader_train.dataset.text_cache_dir)")
  flags.DEFINE_bool("projected", False, "cache crossattn_proj(embedding) (1024-d) instead of the raw embedding")
  flags.DEFINE_string("crossattn_proj", None, "with --projected: DiT checkpoint or .npz holding the projection")
  flags.DEFINE_integer("batch_size", 1, "captions per forward")
  flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "text encoder compute dtype")
  flags.mark_flags_as_required(["config"])
  cli.run(main, bad_input=(OSError, ValueError))  # missing inputs, mismatched caches, a full disk: one line
