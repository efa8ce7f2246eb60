"""Throughput of the 3-view training input pipeline (decode + resize + control) on CPU.

  PYTHONPATH=. python benchmarks/data_loader.py --dataset_dir ../shared/data/night_3view \
      --control edge --workers 1,4,16 --batches 8

Per worker count w: samples/s through the grain iterator (batch 1) over max(--batches, 2·w) batches, after a
warm-up batch that absorbs worker start-up (2·w keeps every worker busy for two samples, so the rate is the
steady one rather than the samples already decoded during the warm-up). Also the single-process cost of one
sample split into decode, resize and control. Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from agibot_jax import video_io as video
from agibot_jax.data import controls, pipeline, resize


def sample_cost(source: pipeline.AgibotMultiviewSource, repeats: int) -> dict:
  s = source.settings
  sample = source.samples[0]
  paths = list(sample.videos) + list(sample.controls or ())
  t_decode = t_resize = t_control = 0.0
  for r in range(repeats):
    frames = []
    for p in paths:
      t0 = time.perf_counter()
      raw = video.read_frames(p, 0, s.num_video_frames, source._backend)  # pylint: disable=protected-access
      t1 = time.perf_counter()
      frames.append(resize.resize_uint8(raw, s.resolution_hw))
      t2 = time.perf_counter()
      t_decode += t1 - t0
      t_resize += t2 - t1
    if sample.controls is None:
      t0 = time.perf_counter()
      controls.compute(s.control_type, np.concatenate(frames[:len(sample.videos)]), np.random.default_rng(r))
      t_control += time.perf_counter() - t0
  return {"decode_s": t_decode / repeats, "resize_s": t_resize / repeats, "control_s": t_control / repeats,
          "total_s": (t_decode + t_resize + t_control) / repeats}


def throughput(source: pipeline.AgibotMultiviewSource, workers: int, batches: int, prefetch: int) -> float:
  ds = pipeline.build_dataset(source, batch_size=1, seed=0)
  it = pipeline.make_iterator(ds, num_workers=workers, prefetch_buffer_size=prefetch)
  next(it)  # warm-up: worker start-up and first decode
  t0 = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
  dt = time.perf_counter() - t0
  assert batch["video"].shape[1:3] == (3, len(source.settings.views) * source.settings.num_video_frames)
  it.close()
  return batches / dt


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset_dir", default="../shared/data/night_3view")
  parser.add_argument("--control", default="edge", choices=["edge", "vis", "depth", "seg"])
  parser.add_argument("--height", type=int, default=432)
  parser.add_argument("--width", type=int, default=768)
  parser.add_argument("--frames", type=int, default=93)
  parser.add_argument("--workers", default="1,4,16", help="comma-separated worker counts (0 = in-process)")
  parser.add_argument("--batches", type=int, default=8, help="timed batches per worker count")
  parser.add_argument("--prefetch", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=1, help="repeats of the single-sample cost breakdown")
  parser.add_argument("--backend", default="auto", choices=["auto", "imageio", "opencv"])
  args = parser.parse_args()

  settings = pipeline.DataSettings(dataset_dir=args.dataset_dir, control_type=args.control,
                                   resolution_hw=(args.height, args.width), num_video_frames=args.frames,
                                   video_backend=args.backend)
  source = pipeline.AgibotMultiviewSource(settings)
  result = {"dataset_dir": args.dataset_dir, "control": args.control, "frames": args.frames,
            "resolution_hw": [args.height, args.width], "views": len(settings.views),
            "backend": video.resolve_backend(args.backend), "cpu_count": os.cpu_count(),
            "per_sample": sample_cost(source, args.repeats), "samples_per_s": {}}
  print(json.dumps({"per_sample": result["per_sample"]}), flush=True)
  for w in (int(x) for x in args.workers.split(",")):
    result["samples_per_s"][str(w)] = throughput(source, w, max(args.batches, 2 * w), args.prefetch)
    print(json.dumps({"workers": w, "samples_per_s": result["samples_per_s"][str(w)]}), flush=True)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
