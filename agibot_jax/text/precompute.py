r"""Precompute the text embeddings of every caption of a dataset once (see agibot_jax/text/cache.py).

  python -m agibot_jax.text.precompute --config configs/edge.py \
      --config.dataloader_train.dataset.dataset_dir=DIR --text_encoder CKPT [--tokenizer DIR] \
      [--cache_dir DIR] [--projected --crossattn_proj DIT_CKPT_OR_NPZ] [--batch_size 1]
  python -m agibot_jax.text.precompute --config configs/edge.py:tiny \
      --config.dataloader_train.dataset.dataset_dir=DIR --cache_dir DIR/text_cache   # the tiny random encoder

CKPT is a folder written by `python -m convert.text_encoder` (default: `model.text_encoder.path`, or the
text_encoder/ of a `checkpoint.load_path` bundle); the tokenizer defaults to the Hugging Face folder it was converted
from. Without one, a config that allows random weights (the `:tiny` configs) embeds with the same random stand-in
encoder its training run would build, so every step of the README can be tried without the 7B weights. The cache
folder defaults to `config.dataloader_train.dataset.text_cache_dir`. The captions are those training reads: the
dataset is validated as training does (agibot_jax/preflight.py), and each sample's per-view captions are built by
the rig (`agibot_jax.rig.Rig.captions`, `config.rig`). Captions already cached are skipped; the captions of the
cameras without the prompt are the same for every sample and are computed once.

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

from agibot_jax import assemble, cli, logs, params_io, preflight
from agibot_jax import rig as rig_lib
from agibot_jax.data import layout
from agibot_jax.text.cache import (TextEmbeddingCache, cache_meta, load_crossattn_proj, project_context,
                                   projection_fingerprint)
from agibot_jax.text.tokenize import NUM_TOKENS

log = logging.getLogger(__name__)


def dataset_captions(samples: Sequence[layout.Sample], rig: rig_lib.Rig) -> list[str]:
  """Every distinct per-view caption of validated `samples` (the cameras of `rig`), in sample then view order."""
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


def text_embedder(config, text_encoder: str, tokenizer: str | None, *, dtype: str, batch_size: int):
  """(lazy embed function, cache_meta arguments): the converted encoder at `text_encoder`, or, without one, the random
  stand-in encoder of a config that allows random weights. The encoder is loaded at the first call only, so a rerun
  on a complete cache is cheap."""
  from agibot_jax.models.qwen import QwenTextConfig
  from agibot_jax.text.embed import OnlineTextEmbedder

  if text_encoder:
    meta = params_io.read_meta(text_encoder)
    tokenizer = tokenizer or config.model.text_encoder.tokenizer or meta.get("source")
    if not tokenizer:
      raise cli.UsageError(f"{text_encoder}: no source folder recorded; pass --tokenizer")
    encoder = functools.cache(lambda: OnlineTextEmbedder.from_paths(text_encoder, tokenizer, dtype=dtype,
                                                                     batch_size=batch_size))
    channels = QwenTextConfig.from_hf(meta["config"]).embedding_channels
    return (lambda batch: encoder().embed(batch)), {"channels": channels, "text_encoder": os.path.abspath(
        text_encoder)}
  if not config.model.allow_random_init:
    raise cli.UsageError("no text encoder: pass --text_encoder (a python -m convert.text_encoder folder) or set "
                         "model.text_encoder.path; the random stand-in is for the tiny configs "
                         "(model.allow_random_init=True)")
  cfg = assemble.dit_config(config)
  encoder = functools.cache(lambda: assemble.random_text_embedder(config, cfg))
  # float32 as the tiny configs compute: training from this cache sees what its online random encoder gives.
  return (lambda batch: encoder().embed(batch)), {
      "channels": cfg.crossattn_proj_in_channels, "text_encoder": f"random (seed {config.seed + 2})",
      "num_tokens": int(cfg.text_tokens_per_view), "dtype": "float32"}


def main() -> int:
  f = flags.FLAGS
  cache_dir = f.cache_dir or f.config.dataloader_train.dataset.text_cache_dir
  if not cache_dir:
    raise cli.UsageError("set --cache_dir or --config.dataloader_train.dataset.text_cache_dir")
  if f.projected and not f.crossattn_proj:
    raise cli.UsageError("--projected needs --crossattn_proj (a converted DiT checkpoint or an .npz)")
  config, samples = preflight.for_text_cache(f.config, cache_dir=cache_dir, text_encoder=f.text_encoder,
                                             crossattn_proj=f.crossattn_proj if f.projected else None)
  captions = dataset_captions(samples, rig_lib.of_config(config))
  if f.dry_run:
    cli.print_result({"dry_run": True, "captions": len(captions), "cache_dir": os.path.abspath(cache_dir)})
    return 0
  embed, meta = text_embedder(config, f.text_encoder or config.model.text_encoder.path, f.tokenizer,
                              dtype=f.dtype, batch_size=f.batch_size)
  if f.projected:
    # As the training state holds the frozen base: in model.precision.
    kernel, bias = (np.asarray(a).astype(jnp.dtype(config.model.precision))
                    for a in load_crossattn_proj(f.crossattn_proj))
    meta = cache_meta("projected", kernel.shape[1], meta["text_encoder"], projection_fingerprint(kernel, bias),
                      num_tokens=meta.get("num_tokens", NUM_TOKENS), dtype=config.model.precision)
    raw_embed = embed
    embed = lambda batch: np.asarray(project_context(raw_embed(batch), kernel, bias))
  else:
    meta = cache_meta("full_concat", **meta)
  cache = TextEmbeddingCache(cache_dir, meta)

  def progress(batches, **kwargs):
    with logs.progress(**kwargs) as bar:
      for batch in batches:
        yield batch
        bar.update(1)

  n = precompute(captions, cache, embed, batch_size=f.batch_size, progress=progress)
  log.info("%d distinct captions, %d computed, %d already cached -> %s", len(captions), n, len(captions) - n,
           cache_dir)
  cli.print_result({"captions": len(captions), "computed": n, "cache_dir": os.path.abspath(cache_dir)})
  return 0


if __name__ == "__main__":
  cli.define_config_flag()
  cli.define_dry_run_flag()
  flags.DEFINE_string("text_encoder", None, "converted text encoder (python -m convert.text_encoder); default "
                      "model.text_encoder.path, or the random stand-in of a tiny config")
  flags.DEFINE_string("tokenizer", None, "local tokenizer folder (default: the encoder's source folder)")
  flags.DEFINE_string("cache_dir", None, "cache folder (default: config.dataloader_train.dataset.text_cache_dir)")
  flags.DEFINE_bool("projected", False, "cache crossattn_proj(embedding) (1024-d) instead of the raw embedding")
  flags.DEFINE_string("crossattn_proj", None, "with --projected: DiT checkpoint or .npz holding the projection")
  flags.DEFINE_integer("batch_size", 1, "captions per forward")
  flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "text encoder compute dtype")
  # missing inputs, mismatched caches, a full disk: one line
  cli.run(main, required=("config",), bad_input=(*preflight.USER_ERRORS, OSError, ValueError))
