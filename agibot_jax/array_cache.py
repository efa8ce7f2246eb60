"""One on-disk design for the package's array caches (VAE latents, text embeddings).

  <root>/index.json   {"meta": {...}}   what the entries were made from (settings, weights' fingerprints, dtype)
  <root>/<key>.npz    one entry: named arrays

A reader states what it needs (`check`) and a cache written with anything else is refused, naming the first key
that differs. Floating arrays are stored in the cache's `meta["dtype"]` ("float32" or "bfloat16"; bfloat16 as its
uint16 bit pattern, since `.npy` has no bfloat16) and read back in it. Every file is written to a temporary name
and renamed, so an interrupted writer leaves no partial entry and a rerun resumes where it stopped. Entries are
read with `allow_pickle=False`: a cache file cannot execute code.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

import ml_dtypes
import numpy as np

from agibot_jax.utils import atomic_write

INDEX_FILE = "index.json"
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
# The values of a few evenly spaced elements per array go into a fingerprint (see `fingerprint`).
_FINGERPRINT_VALUES = 4096


class CacheMismatchError(ValueError):
  """The cache was written with other settings than the reader's; `key` names the first difference."""

  def __init__(self, root: str, key: str, stored: Any, wanted: Any):
    self.key = key
    super().__init__(f"cache {root} was written with {key}={stored!r} but {key}={wanted!r} is asked for; "
                     "rebuild it into another folder or fix the config")


def fingerprint(tree: Any) -> str:
  """Short hash of an array tree: every leaf's path and shape, and float32 values of a strided subset.

  Tells two sets of weights apart (random and real, or two checkpoints) without hashing all of their values;
  casting to float32 first makes a bfloat16 and a float32 copy of the same values agree.
  """
  import jax

  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    flat = np.ravel(np.asarray(leaf, np.float32))
    stride = max(1, flat.size // _FINGERPRINT_VALUES)
    h.update(f"{jax.tree_util.keystr(path)}{tuple(np.shape(leaf))}".encode())
    h.update(np.ascontiguousarray(flat[::stride]).tobytes())
  return h.hexdigest()[:16]


def first_difference(stored: dict, wanted: dict, prefix: str = "") -> tuple[str, Any, Any] | None:
  """(dotted key, stored value, wanted value) of the first key of `wanted` that `stored` disagrees with."""
  for key, b in wanted.items():
    a = stored.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      found = first_difference(a, b, f"{prefix}{key}.")
      if found:
        return found
    elif a != b:
      return f"{prefix}{key}", a, b
  return None


def _jsonable(meta: dict) -> dict:
  return json.loads(json.dumps(meta))  # tuples -> lists, as they come back from the file


class ArrayCache:
  """One cache folder: `put(key, **arrays)`, `get(key) -> {name: array}`, `key in cache`."""

  def __init__(self, root: str, *, what: str = "cache", hint: str = ""):
    """Opens an existing cache; `what` names it in errors and `hint` says how to write one."""
    self.root, self.what = root, what
    index = os.path.join(root, INDEX_FILE)
    if not os.path.exists(index):
      raise FileNotFoundError(f"{index} not found: {root} is not a {what}" + (f"; {hint}" if hint else ""))
    try:
      with open(index, encoding="utf-8") as f:
        self.meta = json.load(f)["meta"]
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{index}: not a readable {what} index ({e})") from e
    if self.meta.get("dtype") not in DTYPES:
      raise ValueError(f"{index}: dtype {self.meta.get('dtype')!r} is not one of {tuple(DTYPES)}")

  @classmethod
  def create(cls, root: str, meta: dict, **kwargs) -> ArrayCache:
    """Opens `root` for writing: a new cache gets `meta` as its index; an existing one must have the same."""
    meta = _jsonable(meta)
    if meta.get("dtype") not in DTYPES:
      raise ValueError(f"cache dtype must be one of {tuple(DTYPES)}, got {meta.get('dtype')!r}")
    if not os.path.exists(os.path.join(root, INDEX_FILE)):
      os.makedirs(root, exist_ok=True)
      payload = json.dumps({"meta": meta}, indent=1, sort_keys=True).encode()
      atomic_write(os.path.join(root, INDEX_FILE), lambda f: f.write(payload))
    cache = cls(root, **kwargs)
    cache.check(meta)
    return cache

  def check(self, wanted: dict) -> None:
    """Raise CacheMismatchError naming the first key of `wanted` (dotted when nested) the index disagrees with."""
    found = first_difference(self.meta, _jsonable(wanted))
    if found:
      raise CacheMismatchError(self.root, *found)

  @property
  def dtype(self) -> np.dtype:
    return DTYPES[self.meta["dtype"]]

  def path(self, key: str) -> str:
    return os.path.join(self.root, f"{key}.npz")

  def __contains__(self, key: str) -> bool:
    return os.path.exists(self.path(key))

  def missing(self, keys: Iterable[str]) -> list[str]:
    return [k for k in keys if k not in self]

  def put(self, key: str, **arrays: np.ndarray) -> None:
    stored = {}
    for name, a in arrays.items():
      a = np.asarray(a)
      if np.issubdtype(a.dtype, np.floating) or a.dtype == DTYPES["bfloat16"]:
        a = a.astype(self.dtype)
        if a.dtype == DTYPES["bfloat16"]:
          a = a.view(np.uint16)
      stored[name] = a
    atomic_write(self.path(key), lambda f: np.savez(f, **stored))

  def get(self, key: str) -> dict[str, np.ndarray]:
    path = self.path(key)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{self.what} entry missing: {path}")
    try:
      with np.load(path, allow_pickle=False) as f:
        arrays = {name: f[name] for name in f.files}
    except (OSError, ValueError, EOFError) as e:
      raise ValueError(f"{path}: unreadable {self.what} entry ({e}); delete it and rerun the command that wrote it")
    bf16 = self.dtype == DTYPES["bfloat16"]
    return {name: a.view(ml_dtypes.bfloat16) if bf16 and a.dtype == np.uint16 else a for name, a in arrays.items()}
