"""Grain input pipeline of the multiview control post-training (spec §1.4–§1.9, §2): the rig's 1-3 cameras.

  AgibotMultiviewSource   RandomAccessDataSource: sample index -> decoded, resized sample dict
                          (or, with a latent cache, the sample's cached VAE latents)
  build_dataset           keys -> per-epoch shuffle -> repeat -> this process's rows of each global batch
                          -> load (+ per-sample RNG) -> batch
  make_iterator           the checkpointable grain iterator (worker processes, prefetch)

Per-sample randomness (edge thresholds, vis blur draws, optional random start frame) comes from
`np.random.default_rng([seed, epoch, index])`, so a sample is reproducible from (seed, epoch, index)
regardless of worker count or process layout.

A sample that fails to decode during training (a file gone bad after the start-up check) is replaced by the next
sample of the dataset that decodes, deterministically; each sample says what it replaced (`SKIPPED_KEY`), and
`SkippedSamples`, in the training process, warns about each one and stops the run (BadSamplesError) once more than
`dataloader_train.dataset.max_bad_samples` were skipped.

With `dataloader_train.dataset.latent_cache_dir` set, samples carry `latent_video` / `latent_control` read
from a cache written by `python -m agibot_jax.cache_latents` instead of `video` / `control_input_<ct>`;
the cache holds one frozen draw of that randomness (see agibot_jax/data/latent_cache.py).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
from typing import Any, Sequence

from absl import flags
import grain
import ml_collections
import numpy as np

from agibot_jax import registry, utils
from agibot_jax import rig as rig_lib
from agibot_jax import video_io as video
from agibot_jax.data import controls, latent_cache, layout, resize

log = logging.getLogger(__name__)

# Batch key: per sample, the samples skipped in its place ("sample 'id': reason", empty when none).
SKIPPED_KEY = "__skipped__"


class BadSamplesError(RuntimeError):
  """More samples failed to decode during training than `dataloader_train.dataset.max_bad_samples` allows."""


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """The `dataloader_train.dataset` keys the loader reads."""
  dataset_dir: str
  control_type: str
  rig: rig_lib.Rig = rig_lib.AGIBOT  # the run's cameras (rig.of_config), in batch order
  resolution_hw: tuple[int, int] = (432, 768)
  num_video_frames: int = 93
  random_start_frame: bool = False
  skip_invalid: bool = False
  video_backend: str = "auto"
  # None: training randomisation of edge/vis; a preset name ("medium", ...): inference maps.
  control_preset: str | None = None
  # A cache written by agibot_jax.cache_latents: samples carry its latents instead of pixels.
  latent_cache_dir: str = ""
  validate: str = "probe"  # probe | full: start-up check of the videos (layout.scan)
  max_bad_samples: int = 0  # undecodable samples the training iterator may skip
  allow_control_stretch: bool = False  # a control video of another aspect ratio than its RGB video is intended

  @property
  def views(self) -> tuple[str, ...]:
    return self.rig.names

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, control_preset: str | None = None) -> DataSettings:
    ds = config.dataloader_train.dataset
    return cls(dataset_dir=ds.dataset_dir, control_type=ds.control_input_type, rig=rig_lib.of_config(config),
               resolution_hw=tuple(ds.resolution_hw), num_video_frames=int(ds.num_video_frames),
               random_start_frame=bool(ds.random_start_frame), skip_invalid=bool(ds.skip_invalid),
               video_backend=ds.video_backend, control_preset=control_preset,
               latent_cache_dir=ds.get("latent_cache_dir", ""), validate=ds.validate,
               max_bad_samples=int(ds.max_bad_samples), allow_control_stretch=bool(ds.allow_control_stretch))


def validated_samples(settings: DataSettings) -> list[layout.Sample]:
  """The dataset's samples, checked as `settings.validate` says (layout.load_index; DatasetError lists problems)."""
  return layout.load_index(settings.dataset_dir, settings.rig, settings.control_type, settings.num_video_frames,
                           settings.skip_invalid, resolution_hw=settings.resolution_hw,
                           full=settings.validate == "full", random_start=settings.random_start_frame,
                           backend=settings.video_backend, control_stretch=settings.allow_control_stretch)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, epoch, index])


def _concat_views(per_view_THWC: Sequence[np.ndarray]) -> np.ndarray:
  """V arrays (T, H, W, 3) -> (3, V·T, H, W), views major along time (spec §1.7)."""
  return np.ascontiguousarray(np.concatenate(per_view_THWC, axis=0).transpose(3, 0, 1, 2))


class AgibotMultiviewSource(grain.sources.RandomAccessDataSource):
  """Validated samples of one dataset directory; `source[i]` is sample i with deterministic settings.

  Validation runs once in the constructor (layout.load_index) and raises layout.DatasetError listing every
  problem. `load(i, rng)` is the training entry: `rng` drives the start frame and the edge/vis draws.
  With `settings.latent_cache_dir`, the constructor also checks the cache against the settings and that it
  holds every sample (latent_cache.CacheMismatchError / FileNotFoundError), and `rng` is unused.
  """

  def __init__(self, settings: DataSettings, samples: Sequence[layout.Sample] | None = None):
    """`samples`: the dataset's validated samples when already scanned (`layout.load_index`), else scanned here."""
    self.settings = settings
    if samples is None:
      samples = validated_samples(settings)
    self.samples = list(samples)
    self._backend = video.resolve_backend(settings.video_backend)
    self.cache = None
    if settings.latent_cache_dir:
      self.cache = latent_cache.LatentCache(settings.latent_cache_dir)
      self.cache.check(latent_cache.data_meta(settings))
      self.cache.check_samples(s.sample_id for s in self.samples)

  def __len__(self) -> int:
    return len(self.samples)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self.load(index, rng=None)

  def __repr__(self) -> str:
    return f"AgibotMultiviewSource({self.settings.dataset_dir!r}, {len(self)} samples)"

  def _decode(self, path: str, start: int) -> np.ndarray:
    frames = video.read_frames(path, start, self.settings.num_video_frames, self._backend)
    return resize.resize_uint8(frames, self.settings.resolution_hw, "bilinear")

  def load(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
    """Sample dict of spec §1.8 before collation (numpy).

    Keys: video / control_input_<ct> uint8 (3, V·T, H, W); ai_caption list[str] (V); view_indices int64 (V·T,);
    fps float64; padding_mask float32 (1, H, W) zeros; frame_indices int64 (T,); original_hw int64 (V, 2);
    __key__ sample id; and the constant multiview fields of §1.8.
    From a latent cache, latent_video / latent_control float32 (V·t, H/8, W/8, 16) replace video / control.
    """
    s = self.settings
    sample = self.samples[index]
    t, (h, w), n_views = s.num_video_frames, s.resolution_hw, len(s.views)
    if self.cache is not None:
      latent_video, latent_control, start = self.cache.read(sample.sample_id)
      pixels_or_latents = {"latent_video": latent_video, "latent_control": latent_control}
    else:
      start = 0
      if s.random_start_frame and rng is not None:
        start = int(rng.integers(0, sample.num_frames - t + 1))
      per_view = [self._decode(p, start) for p in sample.videos]
      if sample.controls is not None:
        control = _concat_views([self._decode(p, start) for p in sample.controls])
      else:
        control = _concat_views([controls.compute(s.control_type, np.concatenate(per_view), rng,
                                                  s.control_preset or "medium")])
      pixels_or_latents = {"video": _concat_views(per_view), registry.control(s.control_type).key: control}
    view_ids = np.array(s.rig.view_ids, np.int64)
    return {
        **pixels_or_latents,
        "ai_caption": s.rig.captions(sample.prompt),
        "view_indices": np.repeat(view_ids, t),
        "fps": np.float64(sample.fps),
        "num_video_frames_per_view": np.int64(t),
        "sample_n_views": np.int64(n_views),
        "view_indices_selection": view_ids,
        "camera_keys_selection": list(s.views),
        "front_cam_view_idx_sample_position": np.int64(0),
        "ref_cam_view_idx_sample_position": np.int64(-1),
        "padding_mask": np.zeros((1, h, w), np.float32),
        "frame_indices": np.arange(start, start + t, dtype=np.int64),
        "chunk_index": np.int64(0),
        "original_hw": np.array(sample.original_hw, np.int64),
        "__key__": sample.sample_id,
        "__url__": s.dataset_dir,
    }


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Stacks array fields on a new batch axis; strings and string lists become Python lists (spec §1.8).

  grain's default batching would turn a list of captions into a tree of per-position string arrays, so
  the pipeline passes this as `batch_fn`.
  """
  out = {}
  for key, first in samples[0].items():
    if isinstance(first, (np.ndarray, np.generic)):
      out[key] = np.stack([s[key] for s in samples])
    else:
      out[key] = [s[key] for s in samples]
  return out


class _StreamPosition(grain.transforms.Map):
  """The i-th sample this process loads -> its position in the global sample stream.

  Global batch k holds stream positions [k·B, (k+1)·B); this process loads rows [rows.start, rows.stop) of each.
  """

  def __init__(self, batch_size: int, rows: slice):
    self._batch_size, self._rows = batch_size, rows

  def map(self, i: int) -> int:
    per_batch = self._rows.stop - self._rows.start
    return (i // per_batch) * self._batch_size + self._rows.start + i % per_batch


class _LoadSample(grain.transforms.Map):
  """Stream position -> that sample, loaded with its (seed, epoch, index) RNG.

  A sample that does not decode is replaced by the next one (index + 1, + 2, ... with their own RNGs), at most
  `max_bad_samples` + 1 tries; the result lists what it replaced under SKIPPED_KEY.
  """

  def __init__(self, source: AgibotMultiviewSource, stream: grain.MapDataset, seed: int):
    self._source, self._stream, self._seed = source, stream, seed

  def map(self, position: int) -> dict[str, Any]:
    index = int(self._stream[position])
    epoch = position // len(self._source)
    # The multi-process tests read these lines to check which process loaded which rows.
    log.debug("stream position %d: sample %s (index %d, epoch %d)", position, self._source.samples[index].sample_id,
              index, epoch)
    n, skipped = len(self._source), []
    for k in range(min(n, self._source.settings.max_bad_samples + 1)):
      candidate = (index + k) % n
      try:
        sample = self._source.load(candidate, sample_rng(self._seed, epoch, candidate))
      except (video.VideoError, OSError) as e:
        skipped.append(f"sample {self._source.samples[candidate].sample_id!r}: {e}")
        continue
      return {**sample, SKIPPED_KEY: skipped}
    raise BadSamplesError(f"{len(skipped)} samples in a row do not decode (dataloader_train.dataset.max_bad_samples="
                          f"{self._source.settings.max_bad_samples}); the last: {skipped[-1]}")


class SkippedSamples:
  """The training iterator, reporting the samples its loader skipped: a warning each (naming the sample and the
  file), and BadSamplesError once more than `max_bad` were skipped by this process since its start.

  get_state/set_state are the wrapped (checkpointable) iterator's.
  """

  def __init__(self, iterator: grain.DatasetIterator, max_bad: int):
    self.iterator, self.max_bad, self.count = iterator, max_bad, 0

  def __iter__(self) -> "SkippedSamples":
    return self

  def __next__(self) -> dict[str, Any]:
    batch = next(self.iterator)
    for reason in (r for per_sample in batch[SKIPPED_KEY] for r in per_sample):
      self.count += 1
      log.warning("skipped an undecodable sample (%d so far): %s", self.count, reason)
      if self.count > self.max_bad:
        raise BadSamplesError(f"{self.count} undecodable samples skipped, more than dataloader_train.dataset."
                              f"max_bad_samples={self.max_bad} (the last: {reason}); check the dataset with "
                              "python -m agibot_jax.data.inspect --full")
    return batch

  def get_state(self) -> Any:
    return self.iterator.get_state()

  def set_state(self, state: Any) -> None:
    self.iterator.set_state(state)


def build_dataset(source: AgibotMultiviewSource, *, batch_size: int, seed: int, shuffle: bool = True,
                  rows: slice | None = None, num_epochs: int | None = None) -> grain.MapDataset:
  """MapDataset of this process's part of every global batch of `batch_size` samples.

  The global sample stream is the same for every process layout: each epoch visits all samples in a fresh seeded
  permutation, and global batch k is stream positions [k·B, (k+1)·B) (batches run across epoch ends; an
  incomplete last batch is dropped, as the reference's drop_last=True). A process loads rows `rows` (default: all) of
  each global batch, those its devices hold (`agibot_jax.assemble.process_batch_rows`), so several processes
  together read exactly what one process would. `num_epochs=None` repeats forever.
  """
  rows = rows or slice(0, batch_size)
  if not 0 <= rows.start < rows.stop <= batch_size:
    raise ValueError(f"rows {rows.start}:{rows.stop} are not within a global batch of {batch_size}")
  stream = grain.MapDataset.range(len(source))
  if shuffle:
    stream = stream.shuffle(seed=seed)
  stream = stream.repeat(num_epochs)
  num_batches = len(stream) // batch_size
  ds = grain.MapDataset.range(num_batches * (rows.stop - rows.start))
  ds = ds.map(_StreamPosition(batch_size, rows)).map(_LoadSample(source, stream, seed))
  return ds.batch(rows.stop - rows.start, drop_remainder=True, batch_fn=collate)


def make_iterator(ds: grain.MapDataset, *, num_workers: int, prefetch_buffer_size: int) -> grain.DatasetIterator:
  """Checkpointable iterator: `it.get_state()` / `it.set_state(state)` (or grain.checkpoint with Orbax).

  `num_workers` > 0 decodes in that many worker processes, each keeping `prefetch_buffer_size` batches.
  """
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch_buffer_size))
  if num_workers > 0:
    # One sample per worker at a time: BLAS threads inside the workers (the resize's small matmuls) would only
    # oversubscribe the cores. Workers are fresh processes, so the variables apply to their numpy.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
      os.environ.setdefault(var, "1")
    # grain's worker processes read absl flags; outside an absl app (tests, scripts) they are unparsed.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                           per_worker_buffer_size=prefetch_buffer_size),
                              worker_init_fn=functools.partial(_worker_init, parent_pid=os.getpid()))
  return iter(it_ds)


def _worker_init(index: int, count: int, *, parent_pid: int) -> None:
  """Ctrl-C reaches the whole process group: the workers leave it to the training process, which writes a
  checkpoint before it stops them (agibot_jax/training/loop.py). A worker ends with the training process, also
  when that is killed (`utils.end_with_parent`), instead of holding its memory as an orphan."""
  del index, count
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  utils.end_with_parent(parent_pid)


def from_config(config: ml_collections.ConfigDict, rows: slice | None = None, num_epochs: int | None = None,
                vae_params: Any | None = None, samples: Sequence[layout.Sample] | None = None) -> SkippedSamples:
  """Training iterator from the `dataloader_train` section and `seed` of a configs/*.py config.

  With a latent cache, its VAE must match `config.model.tokenizer` and, when `vae_params` is given, those weights.
  rows: this process's rows of each global batch of `dataloader_train.batch_size` (default: all).
  samples: the dataset's validated samples, when already scanned.
  """
  dl = config.dataloader_train
  source = AgibotMultiviewSource(DataSettings.from_config(config), samples)
  if source.cache is not None:
    from agibot_jax.models.vae import VAEConfig

    source.cache.check_vae(VAEConfig.from_tokenizer_config(config.model.tokenizer), vae_params)
  ds = build_dataset(source, batch_size=dl.batch_size, seed=config.seed, shuffle=dl.shuffle,
                     rows=rows, num_epochs=num_epochs)
  return SkippedSamples(make_iterator(ds, num_workers=dl.num_workers, prefetch_buffer_size=dl.prefetch_buffer_size),
                        source.settings.max_bad_samples)
