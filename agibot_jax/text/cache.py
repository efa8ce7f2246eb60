"""Per-caption text-embedding cache and the DiT's context projection.

The folder is an `agibot_jax.array_cache.ArrayCache`: `index.json` (mode, channels, tokens, encoder, projection
fingerprint, dtype) and one `<sha256(caption)>.npz` per caption holding `embedding` (512, C) and the `caption`.

Mode "full_concat" stores the raw FULL_CONCAT embedding (C = 100352 for the 7B) in bf16, 98 MiB per caption.
Mode "projected" stores the DiT's `crossattn_proj` applied to it (C = 1024) in the run's precision: 1 MiB per caption
in bf16, 98x smaller. The DiT then skips its projection (`MultiViewControlDiT` takes projected embeddings by their
width). That is exact only while `crossattn_proj` stays frozen at the weights the cache was made with: their
fingerprint is in the index, and training refuses a projected cache whose fingerprint differs from the run's
weights. In float32 both modes give the network the same context up to matmul rounding; in bf16 the projected
context is the float32 projection rounded once, the raw path's a bf16 matmul (the network computes in bf16 either
way).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from agibot_jax import array_cache
from agibot_jax.text.tokenize import NUM_TOKENS

MODES = ("full_concat", "projected")
CACHE_FORMAT = 2
_HINT = "run `python -m agibot_jax.text.precompute` first"


def project_context(emb_NC: jax.Array, kernel_CD: jax.Array, bias_D: jax.Array) -> jax.Array:
  """The DiT's `crossattn_proj`: exact GELU(emb @ kernel + bias), float32 with HIGHEST precision.

  emb (..., C) any float dtype; kernel (C, D) in Flax Dense layout; bias (D,). Returns float32 (..., D).
  """
  f32 = jnp.float32
  y = jnp.matmul(jnp.asarray(emb_NC, f32), jnp.asarray(kernel_CD, f32), precision=jax.lax.Precision.HIGHEST)
  return jax.nn.gelu(y + jnp.asarray(bias_D, f32), approximate=False)


def projection_fingerprint(kernel_CD, bias_D) -> str:
  return array_cache.fingerprint({"kernel": kernel_CD, "bias": bias_D})


def load_crossattn_proj(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(kernel (C, D), bias (D,)) of the DiT's crossattn_proj.

  path: an `.npz` with `kernel` and `bias`, or a converted DiT checkpoint (`params_io`).
  """
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as f:
      if "kernel" not in f or "bias" not in f:
        raise KeyError(f"{path}: expected arrays 'kernel' and 'bias', found {sorted(f.files)}")
      return np.asarray(f["kernel"]), np.asarray(f["bias"])
  from agibot_jax.params_io import restore_params

  params = restore_params(path)
  if "crossattn_proj" not in params:
    raise KeyError(f"{path}: no crossattn_proj in the parameter tree (top-level keys {sorted(params)[:8]}...)")
  proj = params["crossattn_proj"]
  return np.asarray(proj["kernel"]), np.asarray(proj["bias"])


def caption_key(caption: str) -> str:
  return hashlib.sha256(caption.encode("utf-8")).hexdigest()


def cache_meta(mode: str, channels: int, text_encoder: str, projection: str | None = None,
               num_tokens: int = NUM_TOKENS, dtype: str = "bfloat16") -> dict:
  """The index of a cache. dtype: the stored dtype (full_concat: bf16, as the encoder computes in production;
  projected: the run's `model.precision`)."""
  if mode not in MODES:
    raise ValueError(f"cache mode must be one of {MODES}, got {mode!r}")
  if (mode == "projected") != (projection is not None):
    raise ValueError("a projected cache needs the projection's fingerprint, a full_concat cache must not have one")
  return {"format": CACHE_FORMAT, "mode": mode, "channels": int(channels), "num_tokens": int(num_tokens),
          "text_encoder": text_encoder, "projection": projection, "dtype": dtype}


class TextEmbeddingCache:
  """Reader/writer of one cache folder; `embed(captions) -> np.ndarray (n, 512, C)` in the stored dtype.

  A text provider (agibot_jax.text.provider): `num_tokens`, `dim`, `projected`, `embed`.
  meta: given when writing (`cache_meta`), checked against an existing index; None opens an existing cache.
  fallback: optional `embed(captions)` (e.g. `OnlineTextEmbedder.embed`) for captions not in the cache; its
    results are stored.
  """

  def __init__(self, root: str, meta: dict | None = None, *, fallback: Callable | None = None):
    self.root, self.fallback = root, fallback
    if meta is None:
      self.cache = array_cache.ArrayCache(root, what="text cache", hint=_HINT)
      self.cache.check({"format": CACHE_FORMAT})
    else:
      self.cache = array_cache.ArrayCache.create(root, meta, what="text cache", hint=_HINT)

  @property
  def meta(self) -> dict:
    return self.cache.meta

  @property
  def num_tokens(self) -> int:
    return int(self.meta["num_tokens"])

  @property
  def dim(self) -> int:
    return int(self.meta["channels"])

  @property
  def projected(self) -> bool:
    return self.meta["mode"] == "projected"

  def check_projection(self, kernel_CD, bias_D) -> None:
    """Raise unless this is a projected cache made with exactly these crossattn_proj weights."""
    if not self.projected:
      raise ValueError(f"{self.root}: cache mode is {self.meta['mode']!r}, not 'projected'")
    if self.meta["projection"] != projection_fingerprint(kernel_CD, bias_D):
      raise ValueError(f"{self.root}: projected contexts were computed with other crossattn_proj weights than this "
                       "run's (fingerprint differs); recompute the cache with this run's DiT checkpoint and "
                       "model.precision, or use a full_concat cache")

  def __contains__(self, caption: str) -> bool:
    return caption_key(caption) in self.cache

  def put(self, caption: str, emb_NC: np.ndarray) -> None:
    want = (self.num_tokens, self.dim)
    if tuple(emb_NC.shape) != want:
      raise ValueError(f"embedding for {caption[:60]!r} has shape {emb_NC.shape}, cache expects {want}")
    self.cache.put(caption_key(caption), embedding=emb_NC, caption=np.asarray(caption))

  def get(self, caption: str) -> np.ndarray:
    if caption not in self:
      raise KeyError(f"caption not in text cache {self.root}: {caption[:80]!r}")
    return self.cache.get(caption_key(caption))["embedding"]

  def embed(self, captions: Sequence[str]) -> np.ndarray:
    missing = [c for c in dict.fromkeys(captions) if c not in self]
    if missing and self.fallback is not None:
      for caption, emb in zip(missing, self.fallback(missing)):
        self.put(caption, emb)
    if not captions:
      return np.zeros((0, self.num_tokens, self.dim), self.cache.dtype)
    return np.stack([self.get(c) for c in captions])
