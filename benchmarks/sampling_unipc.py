"""Cost of the compiled UniPC loop itself at the callback's latent size, with a near-free guided toy network.

Run on a GPU box:  PYTHONPATH=. python benchmarks/sampling_unipc.py --steps 35 --repeats 3
Prints one JSON line last: compile seconds, seconds per 35-step guided sample, peak device bytes.
The toy network is a 16×16 channel mix, so the numbers are the solver + guidance overhead the DiT adds to.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from agibot_jax.sampling import guidance, unipc


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=35)
  parser.add_argument("--shift", type=float, default=5.0)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--shape", default="1,16,72,54,96", help="B,C,V*T,H,W latent shape")
  args = parser.parse_args()
  shape = tuple(int(s) for s in args.shape.split(","))

  rng = np.random.RandomState(0)
  w_cond = jnp.asarray(rng.standard_normal((shape[0], 16, 16)).astype(np.float32) * 0.1)
  cond = {"w": w_cond}
  uncond = {"w": w_cond * 0.5}

  def model_fn(x, t, inputs):
    tau = unipc.timestep_to_tau(t)[:, None, None, None, None]
    return jnp.einsum("bcthw,bcd->bdthw", x, inputs["w"]) + tau

  @jax.jit
  def run(g, x_init, gt, mask):
    vf = guidance.guided_velocity_fn(model_fn, cond, uncond, g)
    return unipc.sample(vf, x_init, num_steps=args.steps, shift=args.shift, cond_latent=gt, cond_mask=mask)

  x_init = jnp.asarray(guidance.initial_noise(shape, seed=1))
  gt = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
  mask_T = (np.arange(shape[2]) % (shape[2] // 3) == 0).astype(np.float32)  # the first latent frame of each view
  mask = jnp.asarray(mask_T.reshape(1, 1, -1, 1, 1))

  t0 = time.perf_counter()
  run(jnp.float32(3.0), x_init, gt, mask).block_until_ready()
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(args.repeats):
    t0 = time.perf_counter()
    run(jnp.float32(i), x_init, gt, mask).block_until_ready()
    times.append(time.perf_counter() - t0)
  stats = jax.devices()[0].memory_stats() or {}
  print(json.dumps({
      "bench": "sampling_unipc",
      "device": str(jax.devices()[0]),
      "shape": shape,
      "steps": args.steps,
      "first_call_s": round(compile_s, 3),
      "sample_s_median": round(float(np.median(times)), 4),
      "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
  }))


if __name__ == "__main__":
  main()
