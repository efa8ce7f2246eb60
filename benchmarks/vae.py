"""Wan2.1 VAE encode/decode speed: one view of 93 frames at 432x768 and 720x1280, random real-size weights.

  PYTHONPATH=. python benchmarks/vae.py                      # GPU box, bf16, tw=16
  PYTHONPATH=. python benchmarks/vae.py --small              # CPU smoke test (dim 16, 9x32x64)

Reference (PyTorch, cuDNN, bf16, tw=16, one H100; spec A.10): encode 1.00 s / 2.80 s and decode 1.88 s /
4.87 s at 432x768 / 720x1280; peak 8.4 / 21.2 GiB (encode), 4.9 / 11.4 GiB (decode).

Per resolution: compile time (lower + compile), then the best and mean of `--repeats` timed runs after
one warm-up, each ended by block_until_ready. Peak memory is the process-wide peak so far
(resolutions run small to large, so each figure is that resolution's peak). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from agibot_jax.models import vae


def _peak_gib() -> float | None:
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**30


def _timed(fn, args, repeats: int) -> dict:
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))  # warm-up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return {"compile_s": round(compile_s, 2), "best_s": round(min(times), 4), "mean_s": round(float(np.mean(times)), 4),
          "peak_gib": None if _peak_gib() is None else round(_peak_gib(), 2), "out_shape": list(out.shape)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--small", action="store_true", help="CPU smoke test: dim 16, 9 frames, 32x64")
  parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  parser.add_argument("--temporal-window", type=int, default=16)
  parser.add_argument("--attention", default="auto", choices=("auto", "xla", "cudnn"))
  parser.add_argument("--attention-frames", type=int, default=4)
  parser.add_argument("--frames", type=int, default=93)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no-decode", action="store_true")
  args = parser.parse_args()

  if args.small:
    dim, frames, sizes = 16, 9, [(32, 64)]
  else:
    dim, frames, sizes = 96, args.frames, [(432, 768), (720, 1280)]
  cfg = vae.VAEConfig(dim=dim, temporal_window=args.temporal_window, dtype=args.dtype, param_dtype=args.dtype,
                      attention=args.attention, attention_frames=args.attention_frames)
  model = vae.WanVAE(cfg)
  params = jax.jit(lambda k: vae.init_params(model, k))(jax.random.key(0))
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))

  def encode(p, video_uint8):
    return vae.encode(model, p, vae.to_model_range(video_uint8))

  def decode(p, z):
    return vae.decode(model, p, z)

  results = []
  for h, w in sizes:
    video = jax.random.randint(jax.random.key(1), (1, frames, h, w, 3), 0, 256).astype(jnp.uint8)
    enc = _timed(encode, (params, video), args.repeats)
    row = {"H": h, "W": w, "T": frames, "encode": enc, "encode_frames_per_s": round(frames / enc["best_s"], 2)}
    if not args.no_decode:
      z = jax.jit(encode)(params, video)
      dec = _timed(decode, (params, z), args.repeats)
      row.update(decode=dec, decode_frames_per_s=round(frames / dec["best_s"], 2))
    print(json.dumps(row), flush=True)
    results.append(row)

  print(json.dumps({"benchmark": "vae", "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
                    "jax": jax.__version__, "dtype": args.dtype, "dim": dim, "params": n_params,
                    "temporal_window": args.temporal_window, "attention": args.attention, "results": results}))


if __name__ == "__main__":
  main()
