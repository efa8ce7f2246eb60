"""benchmarks/cpu_step_memory.py: XLA's memory analysis of a train step compiled on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.ad_checkpoint import saved_residuals  # the list that jax.ad_checkpoint.print_saved_residuals prints

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import cpu_step_memory  # noqa: E402


def test_the_attention_stand_in_keeps_what_a_fused_kernel_keeps():
  # Its residuals are q, k, v, the output and float32 statistics (B, H, Q), never a (Q x K) score matrix; its
  # gradients have the operands' shapes.
  q, k, v = (jnp.ones((2, 5, 4, 8), jnp.float32) for _ in range(3))
  f = lambda q, k, v: jnp.sum(cpu_step_memory.fused_attention_stand_in(q, k, v, None, False))
  shapes = sorted(tuple(a.shape) for a, _ in saved_residuals(f, q, k, v))
  assert shapes == sorted([(2, 5, 4, 8)] * 4 + [(2, 4, 5)]), shapes
  grads = jax.grad(f, argnums=(0, 1, 2))(q, k, v)
  assert all(g.shape == q.shape and np.isfinite(np.asarray(g)).all() for g in grads)


def test_it_prints_the_step_memory_of_the_config():
  proc = subprocess.run([sys.executable, "benchmarks/cpu_step_memory.py", "--config", "configs/edge.py:tiny",
                         "--config.model.net.cross_view_chunks=3"], capture_output=True, text=True, timeout=300,
                        cwd=REPO, env={"PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["backend"] == "cpu" and out["cross_view_chunks"] == 3 and out["device_gib"] > 0
  assert "temp" in out["memory"]
