"""Per-sample VAE latent cache of a training dataset: format, writer and the checks of the reader.

Written once by `python -m agibot_jax.cache_latents` and read by the data pipeline when
`config.dataloader_train.dataset.latent_cache_dir` is set, so epochs skip video decoding and VAE encoding.

  <cache_dir>/index.json   {"meta": {...}}: what the latents were made from (see `cache_meta`)
  <cache_dir>/<id>.npz     one sample: latent_video, latent_control (V·t, h, w, z_dim), start_frame ()

Latents are the normalised VAE latents the train step receives, views concatenated in time (view-major).
They are stored float32 (bit-exact with online encoding) or bfloat16 (half the disk, rounded) and always read
back as float32. The folder is an `agibot_jax.array_cache.ArrayCache` (atomic entries, an index the reader checks).

What a cache freezes: the online pipeline draws per-sample randomness from (seed, epoch, index): the random
parameters of the randomised controls (registry: edge thresholds, vis blur) and, with `random_start_frame`, the
clip start. The cache stores ONE
draw per sample, the epoch-0 draw of `seed` (or, for edge/vis, a fixed inference preset with
`--control_preset`), and every epoch then sees that draw. File controls (depth/seg) without
`random_start_frame` carry no randomness: their cached latents equal the online ones exactly.

The reader refuses a cache whose index disagrees with the training config (control type, views,
resolution, frames, random_start_frame, VAE architecture, and the VAE weights' fingerprint when the
weights are given), naming the key that differs, and a cache missing a sample file, naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable

import numpy as np

from agibot_jax import array_cache, registry
from agibot_jax.array_cache import CacheMismatchError  # noqa: F401  (re-exported: what readers catch)

CACHE_FORMAT = 2
DTYPES = tuple(array_cache.DTYPES)
_HINT = "write one with `python -m agibot_jax.cache_latents --config ... --workdir ...`"


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
  {"seed", "epoch": 0, "control_preset"}; control_preset is the inference preset of a randomised control, or None
  for the training randomisation.
  """
  randomized = registry.control(settings.control_type).randomized
  frozen = None
  if settings.random_start_frame or randomized:
    frozen = {"seed": int(seed), "epoch": 0,
              "control_preset": (settings.control_preset or None) if randomized else None}
  return {"format": CACHE_FORMAT, **data_meta(settings), "vae": vae_meta(vae_cfg),
          "vae_fingerprint": array_cache.fingerprint(vae_params), "latent_shape": latent_shape(settings, vae_cfg),
          "dtype": dtype, "frozen_draw": frozen, "dataset_dir": os.path.abspath(settings.dataset_dir)}


class LatentCache:
  """One cache folder. `read(id)` -> (latent_video, latent_control) float32 (V·t, h, w, z_dim), start_frame."""

  def __init__(self, root: str, cache: array_cache.ArrayCache | None = None):
    self.root = root
    self.cache = cache or array_cache.ArrayCache(root, what="latent cache", hint=_HINT)
    self.cache.check({"format": CACHE_FORMAT})

  @property
  def meta(self) -> dict:
    return self.cache.meta

  @classmethod
  def create(cls, root: str, meta: dict) -> LatentCache:
    """Opens `root` for writing: a new cache gets `meta` as its index; an existing one must have the same."""
    return cls(root, array_cache.ArrayCache.create(root, meta, what="latent cache", hint=_HINT))

  def check(self, wanted: dict) -> None:
    """Raise CacheMismatchError naming the first key of `wanted` (dotted for `vae.*`) the index disagrees with."""
    self.cache.check(wanted)

  def check_vae(self, vae_cfg, vae_params=None) -> None:
    """The cache was encoded by this VAE architecture (and these weights, when given)."""
    wanted = {"vae": vae_meta(vae_cfg)}
    if vae_params is not None:
      wanted["vae_fingerprint"] = array_cache.fingerprint(vae_params)
    self.check(wanted)

  def __contains__(self, sample_id: str) -> bool:
    return sample_id in self.cache

  def check_samples(self, sample_ids: Iterable[str]) -> None:
    """Raise FileNotFoundError naming the sample files of `sample_ids` the cache lacks."""
    missing = [self.cache.path(s) for s in self.cache.missing(sample_ids)]
    if missing:
      shown = "\n".join(f"  - {p}" for p in missing[:10])
      more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
      raise FileNotFoundError(f"latent cache {self.root} lacks {len(missing)} sample file(s) of the dataset "
                              f"(rerun python -m agibot_jax.cache_latents to fill it):\n{shown}{more}")

  def write(self, sample_id: str, latent_video: np.ndarray, latent_control: np.ndarray, start_frame: int) -> None:
    want = tuple(self.meta["latent_shape"])
    for name, x in (("latent_video", latent_video), ("latent_control", latent_control)):
      if tuple(x.shape) != want:
        raise ValueError(f"{name} of sample {sample_id!r} has shape {x.shape}, the cache expects {want}")
    self.cache.put(sample_id, latent_video=latent_video, latent_control=latent_control,
                   start_frame=np.int64(start_frame))

  def read(self, sample_id: str) -> tuple[np.ndarray, np.ndarray, int]:
    entry = self.cache.get(sample_id)
    video, control = (np.asarray(entry[k], np.float32) for k in ("latent_video", "latent_control"))
    want = tuple(self.meta["latent_shape"])
    if video.shape != want or control.shape != want:
      raise ValueError(f"{self.cache.path(sample_id)}: latents of shape {video.shape} / {control.shape}, "
                       f"the index says {want}")
    return video, control, int(entry["start_frame"])
