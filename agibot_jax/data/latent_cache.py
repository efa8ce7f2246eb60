"""Per-sample VAE latent cache of a training dataset: format, writer and the checks of the reader.

Written once by `python -m agibot_jax.data.cache_latents` and read by the data pipeline when
`config.dataloader_train.dataset.latent_cache_dir` is set, so epochs skip video decoding and VAE encoding.

  <cache_dir>/index.json   {"meta": {...}}: what the latents were made from (see `cache_meta`)
  <cache_dir>/<id>.npz     one sample: latent_video, latent_control (V·t, h, w, z_dim), start_frame ()

Latents are the normalised VAE latents the train step receives, views concatenated in time (view-major).
They are stored float32 (bit-exact with online encoding) or bfloat16 (half the disk, rounded; stored as
the uint16 bit pattern since `.npy` has no bfloat16) and always read back as float32. Every file is written
to a temporary name and renamed, so an interrupted run leaves no partial entry and resumes where it stopped.

What a cache freezes: the online pipeline draws per-sample randomness from (seed, epoch, index): the edge
Canny thresholds, the vis blur chain and, with `random_start_frame`, the clip start. The cache stores ONE
draw per sample, the epoch-0 draw of `seed` (or, for edge/vis, a fixed inference preset with
`--control_preset`), and every epoch then sees that draw. depth/seg controls are files and, without
`random_start_frame`, carry no randomness: their cached latents equal the online ones exactly.

The reader refuses a cache whose index disagrees with the training config (control type, views,
resolution, frames, random_start_frame, VAE architecture, and the VAE weights' fingerprint when the
weights are given), naming the key that differs, and a cache missing a sample file, naming the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

import ml_dtypes
import numpy as np
from agibot_jax.utils import atomic_write

INDEX_FILE = "index.json"
CACHE_FORMAT = 1
DTYPES = ("float32", "bfloat16")
RANDOM_CONTROLS = ("edge", "vis")
# The values of a few evenly spaced elements per parameter go into the fingerprint (see params_fingerprint).
_FINGERPRINT_VALUES = 4096


class CacheMismatchError(ValueError):
  """The cache was written with other settings than the ones asked for; `key` names the first difference."""

  def __init__(self, root: str, key: str, stored: Any, wanted: Any):
    self.key = key
    super().__init__(
        f"latent cache {root} was written with {key}={stored!r} but the config asks for {key}={wanted!r}; "
        "rebuild it (python -m agibot_jax.data.cache_latents) into another folder or fix the config")


def params_fingerprint(params: Any) -> str:
  """Short hash of a parameter tree: every leaf's path and shape, and float32 values of a strided subset.

  Tells apart two VAE checkpoints (or random and real weights) without hashing all 127M values; float32
  casting makes a bfloat16 and a float32 copy of equal weights agree.
  """
  import jax

  h = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0], key=lambda kv: jax.tree_util.keystr(kv[0])):
    flat = np.ravel(np.asarray(leaf, np.float32))
    stride = max(1, flat.size // _FINGERPRINT_VALUES)
    h.update(f"{jax.tree_util.keystr(path)}{tuple(np.shape(leaf))}".encode())
    h.update(np.ascontiguousarray(flat[::stride]).tobytes())
  return h.hexdigest()[:16]


def data_meta(settings) -> dict:
  """The index keys fixed by the data settings (pipeline.DataSettings), as stored in JSON."""
  return {"control_type": settings.control_type, "views": list(settings.views),
          "resolution_hw": [int(x) for x in settings.resolution_hw],
          "num_video_frames": int(settings.num_video_frames),
          "random_start_frame": bool(settings.random_start_frame)}


def vae_meta(vae_cfg) -> dict:
  """A VAEConfig as stored in JSON (tuples become lists)."""
  return json.loads(json.dumps(dataclasses.asdict(vae_cfg)))


def latent_shape(settings, vae_cfg) -> list[int]:
  """(V·t, h, w, z_dim) of one sample's latent video (and control)."""
  t = (settings.num_video_frames - 1) // vae_cfg.temporal_factor + 1
  h, w = (x // vae_cfg.spatial_factor for x in settings.resolution_hw)
  return [len(settings.views) * t, h, w, vae_cfg.z_dim]


def cache_meta(settings, vae_cfg, vae_params, *, seed: int, dtype: str = "float32") -> dict:
  """The full index of a cache written from `settings` (pipeline.DataSettings) with these VAE weights.

  frozen_draw records which per-sample random draw the cache holds (None when nothing is random):
  {"seed", "epoch": 0, "control_preset"}; control_preset is the edge/vis inference preset, or None for the
  training randomisation.
  """
  if dtype not in DTYPES:
    raise ValueError(f"cache dtype must be one of {DTYPES}, got {dtype!r}")
  random_controls = settings.control_type in RANDOM_CONTROLS
  frozen = None
  if settings.random_start_frame or random_controls:
    frozen = {"seed": int(seed), "epoch": 0,
              "control_preset": (settings.control_preset or None) if random_controls else None}
  return {"format": CACHE_FORMAT, **data_meta(settings), "vae": vae_meta(vae_cfg),
          "vae_fingerprint": params_fingerprint(vae_params), "latent_shape": latent_shape(settings, vae_cfg),
          "dtype": dtype, "frozen_draw": frozen, "dataset_dir": os.path.abspath(settings.dataset_dir)}


def _first_difference(stored: dict, wanted: dict, prefix: str = "") -> tuple[str, Any, Any] | None:
  for key in wanted:
    a, b = stored.get(key), wanted[key]
    if isinstance(a, dict) and isinstance(b, dict):
      found = _first_difference(a, b, f"{prefix}{key}.")
      if found:
        return found
    elif a != b:
      return f"{prefix}{key}", a, b
  return None


class LatentCache:
  """One cache folder. `read(id)` -> (latent_video, latent_control) float32 (V·t, h, w, z_dim), start_frame."""

  def __init__(self, root: str):
    self.root = root
    index = os.path.join(root, INDEX_FILE)
    if not os.path.exists(index):
      raise FileNotFoundError(f"{index} not found: {root} is not a latent cache; write one with "
                              "`python -m agibot_jax.data.cache_latents --config ... --workdir ...`")
    with open(index) as f:
      self.meta = json.load(f)["meta"]
    if self.meta.get("format") != CACHE_FORMAT:
      raise CacheMismatchError(root, "format", self.meta.get("format"), CACHE_FORMAT)

  @classmethod
  def create(cls, root: str, meta: dict) -> LatentCache:
    """Opens `root` for writing: a new cache gets `meta` as its index; an existing one must have the same."""
    index = os.path.join(root, INDEX_FILE)
    if os.path.exists(index):
      cache = cls(root)
      cache.check(meta)
      return cache
    os.makedirs(root, exist_ok=True)
    payload = json.dumps({"meta": meta}, indent=1, sort_keys=True)
    atomic_write(index, lambda f: f.write(payload.encode()))
    return cls(root)

  def check(self, wanted: dict) -> None:
    """Raise CacheMismatchError naming the first key of `wanted` (dotted for `vae.*`) the index disagrees with."""
    found = _first_difference(self.meta, wanted)
    if found:
      raise CacheMismatchError(self.root, *found)

  def check_vae(self, vae_cfg, vae_params=None) -> None:
    """The cache was encoded by this VAE architecture (and these weights, when given)."""
    wanted = {"vae": vae_meta(vae_cfg)}
    if vae_params is not None:
      wanted["vae_fingerprint"] = params_fingerprint(vae_params)
    self.check(wanted)

  def path(self, sample_id: str) -> str:
    return os.path.join(self.root, f"{sample_id}.npz")

  def __contains__(self, sample_id: str) -> bool:
    return os.path.exists(self.path(sample_id))

  def check_samples(self, sample_ids: Iterable[str]) -> None:
    """Raise FileNotFoundError naming the sample files of `sample_ids` the cache lacks."""
    missing = [self.path(s) for s in sample_ids if s not in self]
    if missing:
      shown = "\n".join(f"  - {p}" for p in missing[:10])
      more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
      raise FileNotFoundError(f"latent cache {self.root} lacks {len(missing)} sample file(s) of the dataset "
                              f"(rerun python -m agibot_jax.data.cache_latents to fill it):\n{shown}{more}")

  def write(self, sample_id: str, latent_video: np.ndarray, latent_control: np.ndarray, start_frame: int) -> None:
    want = tuple(self.meta["latent_shape"])
    for name, x in (("latent_video", latent_video), ("latent_control", latent_control)):
      if tuple(x.shape) != want:
        raise ValueError(f"{name} of sample {sample_id!r} has shape {x.shape}, the cache expects {want}")
    if self.meta["dtype"] == "bfloat16":
      store = lambda x: np.asarray(x, ml_dtypes.bfloat16).view(np.uint16)
    else:
      store = lambda x: np.asarray(x, np.float32)
    arrays = {"latent_video": store(latent_video), "latent_control": store(latent_control),
              "start_frame": np.int64(start_frame)}
    atomic_write(self.path(sample_id), lambda f: np.savez(f, **arrays))

  def read(self, sample_id: str) -> tuple[np.ndarray, np.ndarray, int]:
    path = self.path(sample_id)
    if not os.path.exists(path):
      raise FileNotFoundError(f"latent cache file missing: {path} (sample {sample_id!r})")
    with np.load(path) as f:
      video, control, start = f["latent_video"], f["latent_control"], int(f["start_frame"])
    if self.meta["dtype"] == "bfloat16":
      video, control = (x.view(ml_dtypes.bfloat16).astype(np.float32) for x in (video, control))
    want = tuple(self.meta["latent_shape"])
    if video.shape != want or control.shape != want:
      raise ValueError(f"{path}: latents of shape {video.shape} / {control.shape}, the index says {want}")
    return video, control, start
