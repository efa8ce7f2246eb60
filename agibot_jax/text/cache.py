"""Per-caption text-embedding cache, the Agibot caption strings, context projection and text dropout.

Cache layout (one folder per text encoder and mode):

  <cache_dir>/index.json        {"meta": {...}, "captions": {key: caption}}
  <cache_dir>/<key>.npy         one caption's (512, C) array; key = sha256 of the caption string

Mode "full_concat" stores the raw FULL_CONCAT embedding (C = 100352 for the 7B) in bf16, 98 MiB
per caption. Mode "projected" stores `project_context(emb, kernel, bias)` (C = 1024) in float32,
2 MiB per caption; it is valid only while the DiT's `crossattn_proj` stays frozen at the weights
it was computed with (their fingerprint is in the meta, and the reader checks it). Every file is
written to a temporary name and renamed, so an interrupted precompute leaves no partial entry.
bf16 arrays are stored as their uint16 bit pattern (`.npy` has no bf16 type).

Training inputs are the same with either mode: `apply_text_dropout` on projected contexts
replaces a dropped view by GELU(bias), the projection of the zeros the raw path uses.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from agibot_jax.text.tokenize import NUM_TOKENS
from agibot_jax.utils import atomic_write

VIEWS = ("head_color", "hand_left", "hand_right")
# spec training.md §1.3: prepended to every view's caption (exact strings).
VIEW_PREFIXES = {
    "head_color": "The video is captured from a camera mounted on the head of the subject, facing forward.",
    "hand_left": "The video is captured from a camera mounted on the left hand of the subject.",
    "hand_right": "The video is captured from a camera mounted on the right hand of the subject.",
}
MODES = {"full_concat": "bfloat16", "projected": "float32"}
_NP_DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32}
INDEX_FILE = "index.json"
CACHE_FORMAT = 1


# --- captions -------------------------------------------------------------------------------

def view_captions(prompt: str) -> list[str]:
  """The three per-view captions of a sample: head = prefix + " " + prompt; hands = prefix + " "."""
  return [VIEW_PREFIXES[v] + " " + (prompt if v == "head_color" else "") for v in VIEWS]


def sample_ids(dataset_dir: str) -> list[str]:
  """Sorted stems of `videos/head_color/*.mp4` (the reference's sample list)."""
  video_dir = os.path.join(dataset_dir, "videos", "head_color")
  if not os.path.isdir(video_dir):
    raise FileNotFoundError(f"{dataset_dir}: no videos/head_color/ folder")
  ids = sorted(f[:-4] for f in os.listdir(video_dir) if f.endswith(".mp4"))
  if not ids:
    raise FileNotFoundError(f"{video_dir}: no .mp4 files")
  return ids


def read_prompt(dataset_dir: str, sample_id: str) -> str:
  """The `"caption"` of `captions/head_color/<id>.json`; "" when the file does not exist."""
  path = os.path.join(dataset_dir, "captions", "head_color", sample_id + ".json")
  if not os.path.exists(path):
    return ""
  try:
    with open(path) as f:
      caption = json.load(f)["caption"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: expected a JSON object with a string 'caption' ({e!r})") from e
  if not isinstance(caption, str):
    raise ValueError(f"{path}: 'caption' is {type(caption).__name__}, expected a string")
  return caption


# --- projection and dropout -----------------------------------------------------------------

def project_context(emb_NC: jax.Array, kernel_CD: jax.Array, bias_D: jax.Array) -> jax.Array:
  """The DiT's `crossattn_proj`: exact GELU(emb @ kernel + bias), float32 with HIGHEST precision.

  emb (..., C) any float dtype; kernel (C, D) in Flax Dense layout; bias (D,). Returns float32 (..., D).
  """
  f32 = jnp.float32
  y = jnp.matmul(jnp.asarray(emb_NC, f32), jnp.asarray(kernel_CD, f32), precision=jax.lax.Precision.HIGHEST)
  return jax.nn.gelu(y + jnp.asarray(bias_D, f32), approximate=False)


def apply_text_dropout(x_BVNC: jax.Array, keep_BV: jax.Array, *, projected: bool,
                       bias: jax.Array | None = None) -> jax.Array:
  """Per-view text dropout (spec training.md §3.5): a dropped view's raw embedding becomes zeros.

  x_BVNC: raw embeddings (B, V, 512, C) when `projected` is False, or projected contexts
  (B, V, 512, D) when True; keep_BV: bool (B, V). On projected contexts a dropped view becomes
  GELU(bias) (D,), i.e. `project_context(zeros)`, so both paths feed the DiT the same context.
  """
  keep = jnp.asarray(keep_BV, bool)[:, :, None, None]
  if not projected:
    return jnp.where(keep, x_BVNC, jnp.zeros((), x_BVNC.dtype))
  if bias is None:
    raise ValueError("apply_text_dropout(projected=True) needs the crossattn_proj bias")
  dropped_D = jax.nn.gelu(jnp.asarray(bias, jnp.float32), approximate=False).astype(x_BVNC.dtype)
  return jnp.where(keep, x_BVNC, dropped_D)


def fingerprint(*arrays: np.ndarray) -> str:
  """Short hash of the arrays' float32 values (so bf16 and f32 copies of one weight agree only if equal)."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(np.asarray(a, np.float32))
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def load_crossattn_proj(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(kernel (C, D), bias (D,)) of the DiT's crossattn_proj.

  path: an `.npz` with `kernel` and `bias`, or a converted DiT checkpoint (`params_io`), where
  the one Dense whose path contains `crossattn_proj` is used.
  """
  if path.endswith(".npz"):
    with np.load(path) as f:
      if "kernel" not in f or "bias" not in f:
        raise KeyError(f"{path}: expected arrays 'kernel' and 'bias', found {sorted(f.files)}")
      return np.asarray(f["kernel"]), np.asarray(f["bias"])
  from agibot_jax.params_io import restore_params

  leaves = jax.tree_util.tree_flatten_with_path(restore_params(path))[0]
  found: dict[str, np.ndarray] = {}
  for key_path, leaf in leaves:
    names = [str(getattr(k, "key", k)) for k in key_path]
    if any("crossattn_proj" in n for n in names) and names[-1] in ("kernel", "bias"):
      if names[-1] in found:
        raise ValueError(f"{path}: more than one crossattn_proj {names[-1]}")
      found[names[-1]] = np.asarray(leaf)
  if set(found) != {"kernel", "bias"}:
    raise KeyError(f"{path}: no crossattn_proj kernel and bias in the parameter tree")
  return found["kernel"], found["bias"]


# --- the cache ------------------------------------------------------------------------------

def caption_key(caption: str) -> str:
  return hashlib.sha256(caption.encode("utf-8")).hexdigest()


class TextEmbeddingCache:
  """Reader/writer of one cache folder; `embed(captions) -> np.ndarray (n, 512, C)` in the stored dtype.

  Implements agibot_jax.data.text_provider.TextEmbeddingProvider (`num_tokens`, `dim`, `embed`).

  meta: written on the first `put`, checked against an existing index on open:
    mode ("full_concat" | "projected"), channels, num_tokens, text_encoder (a label), projection
    (fingerprint of crossattn_proj for "projected", else None).
  fallback: optional `embed(captions)` (e.g. `OnlineTextEmbedder.embed`, or a function adding the
    projection) used for captions not in the cache; its results are stored.
  """

  def __init__(self, root: str, meta: dict | None = None, *, fallback: Callable | None = None):
    self.root, self.fallback = root, fallback
    self._captions: dict[str, str] = {}
    stored = None
    index = os.path.join(root, INDEX_FILE)
    if os.path.exists(index):
      with open(index) as f:
        data = json.load(f)
      stored, self._captions = data["meta"], data["captions"]
    if meta is not None:
      if meta.get("mode") not in MODES:
        raise ValueError(f"cache mode must be one of {tuple(MODES)}, got {meta.get('mode')!r}")
      meta = dict(meta, format=CACHE_FORMAT, dtype=MODES[meta["mode"]])
      if stored is not None and stored != meta:
        diff = {k: (stored.get(k), meta.get(k)) for k in set(stored) | set(meta) if stored.get(k) != meta.get(k)}
        raise ValueError(f"{root}: cache was written with different settings (stored, requested): {diff}")
    elif stored is None:
      raise FileNotFoundError(f"{root}: no {INDEX_FILE}; run `python -m agibot_jax.text.precompute` first")
    self.meta = meta or stored

  @property
  def num_tokens(self) -> int:
    return int(self.meta["num_tokens"])

  @property
  def dim(self) -> int:
    return int(self.meta["channels"])

  def check_projection(self, kernel_CD: np.ndarray, bias_D: np.ndarray) -> None:
    """Raise unless this is a projected cache made with exactly these crossattn_proj weights."""
    if self.meta["mode"] != "projected":
      raise ValueError(f"{self.root}: cache mode is {self.meta['mode']!r}, not 'projected'")
    if self.meta["projection"] != fingerprint(kernel_CD, bias_D):
      raise ValueError(f"{self.root}: projected contexts were computed with other crossattn_proj weights "
                       "(the projection must stay frozen and equal to the one used at precompute time)")

  def path(self, caption: str) -> str:
    return os.path.join(self.root, caption_key(caption) + ".npy")

  def __contains__(self, caption: str) -> bool:
    return os.path.exists(self.path(caption))

  def put(self, caption: str, emb_NC: np.ndarray) -> None:
    want = (self.num_tokens, self.dim)
    if tuple(emb_NC.shape) != want:
      raise ValueError(f"embedding for {caption[:60]!r} has shape {emb_NC.shape}, cache expects {want}")
    os.makedirs(self.root, exist_ok=True)
    arr = np.asarray(emb_NC, dtype=_NP_DTYPES[self.meta["dtype"]])
    bits = arr.view(np.uint16) if arr.dtype == ml_dtypes.bfloat16 else arr
    atomic_write(self.path(caption), lambda f: np.save(f, bits))
    self._captions[caption_key(caption)] = caption

  def get(self, caption: str) -> np.ndarray:
    path = self.path(caption)
    if not os.path.exists(path):
      raise KeyError(f"caption not in text cache {self.root}: {caption[:80]!r}")
    arr = np.load(path)
    return arr.view(ml_dtypes.bfloat16) if self.meta["dtype"] == "bfloat16" else arr

  def write_index(self) -> None:
    os.makedirs(self.root, exist_ok=True)
    payload = json.dumps({"meta": self.meta, "captions": self._captions}, indent=1, sort_keys=True)
    atomic_write(os.path.join(self.root, INDEX_FILE), lambda f: f.write(payload.encode()))

  def embed(self, captions: Sequence[str]) -> np.ndarray:
    missing = [c for c in dict.fromkeys(captions) if c not in self]
    if missing and self.fallback is not None:
      for caption, emb in zip(missing, self.fallback(missing)):
        self.put(caption, emb)
      self.write_index()
    if not captions:
      return np.zeros((0, self.num_tokens, self.dim), _NP_DTYPES[self.meta["dtype"]])
    return np.stack([self.get(c) for c in captions])


def cache_meta(mode: str, channels: int, text_encoder: str, projection: str | None = None,
               num_tokens: int = NUM_TOKENS) -> dict:
  return {"mode": mode, "channels": int(channels), "num_tokens": int(num_tokens),
          "text_encoder": text_encoder, "projection": projection}
