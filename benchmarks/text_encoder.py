"""Speed and memory of the Qwen2.5-VL-7B text path + FULL_CONCAT for one 512-token caption.

  PYTHONPATH=. python benchmarks/text_encoder.py                 # GPU: 7B shapes, bf16, random weights
  PYTHONPATH=. python benchmarks/text_encoder.py --small         # CPU smoke test

Weights are random with the real shapes, created directly on the device (no download). Prints
progress lines, then one JSON line: compile time, seconds per caption after warm-up (device
only, and including the copy of the (512, 100352) bf16 embedding to the host), peak device memory.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from agibot_jax.text.embed import embed_token_ids
from agibot_jax.models.qwen import QwenTextConfig, QwenTextModel

SMALL = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4, num_kv_heads=2)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--small", action="store_true", help="tiny model for a CPU smoke test")
  parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  parser.add_argument("--attention", default="auto", choices=("auto", "xla", "cudnn"))
  parser.add_argument("--batch", type=int, default=1, help="captions per forward")
  parser.add_argument("--iters", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  args = parser.parse_args(argv)

  config = QwenTextConfig(**(SMALL if args.small else {}), dtype=args.dtype, param_dtype=args.dtype,
                          attention=args.attention)
  device = jax.devices()[0]
  print(f"device={device.device_kind} layers={config.num_layers} hidden={config.hidden_size} dtype={args.dtype}",
        flush=True)
  t0 = time.perf_counter()
  params = jax.jit(lambda key: QwenTextModel(config).init(key, jnp.zeros((1, 1), jnp.int32))["params"])(
      jax.random.key(0))
  jax.block_until_ready(params)
  init_s = time.perf_counter() - t0
  param_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(params))
  print(f"init {init_s:.1f}s, {param_bytes / 2**30:.2f} GiB of parameters", flush=True)

  ids_BS = jax.random.randint(jax.random.key(1), (args.batch, 512), 0, config.vocab_size, jnp.int32)
  forward = jax.jit(functools.partial(embed_token_ids, config=config))
  t0 = time.perf_counter()
  compiled = forward.lower(params, ids_BS).compile()
  compile_s = time.perf_counter() - t0
  print(f"compile {compile_s:.1f}s", flush=True)

  for _ in range(args.warmup):
    jax.block_until_ready(compiled(params, ids_BS))
  times = []
  for _ in range(args.iters):
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(params, ids_BS))
    times.append(time.perf_counter() - t0)
  t0 = time.perf_counter()
  host = np.asarray(compiled(params, ids_BS))
  with_copy_s = time.perf_counter() - t0
  assert host.shape == (args.batch, 512, config.embedding_channels), host.shape
  finite = bool(np.isfinite(host.astype(np.float32)).all())

  stats = device.memory_stats() or {}
  result = {
      "bench": "text_encoder",
      "device": device.device_kind,
      "model": "small" if args.small else "qwen2.5_vl_7b_text",
      "dtype": args.dtype,
      "attention": args.attention,
      "batch": args.batch,
      "param_gib": round(param_bytes / 2**30, 3),
      "init_s": round(init_s, 3),
      "compile_s": round(compile_s, 3),
      "s_per_caption": round(float(np.median(times)) / args.batch, 5),
      "s_per_caption_with_host_copy": round(with_copy_s / args.batch, 5),
      "embedding_shape": list(out.shape),
      "finite": finite,
      "peak_gib": round(stats["peak_bytes_in_use"] / 2**30, 3) if "peak_bytes_in_use" in stats else None,
  }
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
