"""The interface between the loader's caption strings and the text embeddings the DiT consumes (spec §3).

The loader hands on per-view caption strings (`ai_caption`, one list of V strings per sample). A
`TextEmbeddingProvider` turns them into embeddings: the online encoder (`agibot_jax.text.embed`) or a cache
(`agibot_jax.text.cache`); `agibot_jax.assemble` picks one from the config.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class TextEmbeddingProvider(Protocol):
  """Maps caption strings to per-token embeddings."""

  @property
  def num_tokens(self) -> int:
    """Tokens per caption (512 for the reference encoder)."""

  @property
  def dim(self) -> int:
    """Channels per token: 100352 (= 28 layers x 3584, FULL_CONCAT) raw, or the DiT's 1024 when projected."""

  @property
  def projected(self) -> bool:
    """True when the embeddings already went through the DiT's crossattn_proj (the DiT then skips it)."""

  def embed(self, captions: Sequence[str]) -> np.ndarray:
    """(n, num_tokens, dim) for n captions, in order."""

  # Optional: `embed_on_device(captions) -> jax.Array`, the same embeddings left on the devices. Online encoders
  # provide it so that the train loop does not wait for the encoder and copy 3 x 512 x 100352 values per sample
  # through the host (BENCHMARKS.md, real data against synthetic inputs).


def embed_batch(provider: TextEmbeddingProvider, ai_caption: Sequence[Sequence[str]]):
  """Batch captions [[c_view0, ..., c_viewV-1], ...] (B lists) -> (B, V·num_tokens, dim), view-major.

  This is the multiview packing of spec §3.3: each view's caption is encoded separately and its
  `num_tokens` tokens occupy rows [v·num_tokens, (v+1)·num_tokens). A device array where the provider has
  `embed_on_device` (online encoders), else a host array.
  """
  n_views = {len(c) for c in ai_caption}
  if len(n_views) != 1:
    raise ValueError(f"every sample needs the same number of view captions, got {sorted(n_views)}")
  (v,) = n_views
  flat = [c for sample in ai_caption for c in sample]
  on_device = getattr(provider, "embed_on_device", None)
  emb_NLC = on_device(flat) if on_device else np.asarray(provider.embed(flat))
  expected = (len(flat), provider.num_tokens, provider.dim)
  if emb_NLC.shape != expected:
    method = "embed_on_device" if on_device else "embed"
    raise ValueError(f"{type(provider).__name__}.{method} returned {emb_NLC.shape}, expected {expected}")
  return emb_NLC.reshape(len(ai_caption), v * provider.num_tokens, provider.dim)
