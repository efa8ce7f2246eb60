"""XLA's memory analysis of the 2B train step compiled on the CPU, for comparing memory plans without a GPU.

  PYTHONPATH=. python benchmarks/cpu_step_memory.py --config configs/edge.py \
      --config.dataloader_train.dataset.resolution_hw="(720,1280)" --config.model.net.remat_policy=full ...

Compiles (never runs) the train step of the config at full size from abstract inputs, as the memory-budget chooser
does (`memory_plans.compile_step`), and prints its `StepMemory` as one JSON line. Attention goes through a stand-in
with the fused kernel's memory shape: it keeps q, k, v, the output and float32 row statistics for the backward and
returns dq, dk, dv, where the XLA path would materialise every (queries x keys) score matrix. XLA's CPU compiler
schedules for no memory limit and keeps far more alive than the GPU's, so its totals are not a GPU's: only the
difference between two settings means something, and a GPU run decides (benchmarks/gpu_card_table.sh).
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
from absl import flags

from agibot_jax import assemble, cli, memory_plans, preflight
from agibot_jax.models import attention


@jax.custom_vjp
def _stand_in(q, k, v):
  return q * jnp.mean(v, axis=1, keepdims=True) + jnp.mean(k).astype(q.dtype)


def _stand_in_fwd(q, k, v):
  stats_BHQ = jnp.sum(q.astype(jnp.float32), axis=-1).transpose(0, 2, 1)  # the softmax statistics a fused kernel keeps
  o = _stand_in(q, k, v)
  return o, (q, k, v, o, stats_BHQ)


def _stand_in_bwd(residuals, g):
  q, k, v, o, stats_BHQ = residuals
  dq = g * o + stats_BHQ.transpose(0, 2, 1)[..., None].astype(g.dtype)
  dk = jnp.sum(g, axis=1, keepdims=True)[:, :1].astype(k.dtype) * k
  dv = jnp.sum(dq, axis=1, keepdims=True)[:, :1].astype(v.dtype) * v
  return dq, dk, dv


_stand_in.defvjp(_stand_in_fwd, _stand_in_bwd)


def fused_attention_stand_in(q, k, v, kv_lengths, is_causal):
  """In the place of `attention._reference_attention`: bf16 operands, as the cuDNN kernel takes them."""
  del kv_lengths, is_causal
  return _stand_in(*(a.astype(jnp.bfloat16) for a in (q, k, v))).astype(q.dtype)


def main() -> int:
  config = memory_plans.with_overrides(preflight.resolve(flags.FLAGS.config), {"model.net.attention": "xla"})
  attention._reference_attention = fused_attention_stand_in
  t0 = time.perf_counter()
  step = memory_plans.compile_step(config, assemble.make_mesh(config), int(config.model.net.crossattn_proj_in_channels))
  net = config.model.net
  print(json.dumps({
      "backend": jax.default_backend(), "resolution": list(config.dataloader_train.dataset.resolution_hw),
      **{k: net[k] for k in ("remat_policy", "offload_block_inputs", "remat_sublayers", "mlp_chunks",
                             "cross_view_chunks")},
      "device_gib": round(step.memory.device, 3), "memory": step.memory.describe(),
      "compile_s": round(time.perf_counter() - t0, 1)}))
  return 0


if __name__ == "__main__":
  cli.define_config_flag("configs/edge.py")
  cli.run(main, bad_input=preflight.USER_ERRORS)
