"""What each remat policy saves on the cuDNN attention path (issue 16): one GPU call shows the kernels' tags are found.

  PYTHONPATH=. python3 benchmarks/remat_check.py [--num_blocks 2] [--height 432 --width 768]
      [--offload_block_inputs] [--grads]
  PYTHONPATH=. python3 benchmarks/remat_check.py --attention xla --height 64 --width 96   # a smoke run on CPU

The 2B network cut to `--num_blocks` main blocks, at the training token count, with cuDNN attention and bf16
weights (as benchmarks/gpu_train_remat.sh). For each policy it traces the loss's gradient (nothing runs) and
prints what the backward reads instead of recomputing: main block 0's named residuals, one line each (block 0 runs
ahead of the layer scans, so their names show; the scanned blocks' come out of the scans stacked), the bytes of all
saved residuals other than the arguments, their difference from `full`, and how many cuDNN attention forwards the
backward re-runs (in the gradient's jaxpr: forward less backward kernel calls, as each kernel's forward runs once
per backward in the forward pass). It raises if a save_* policy saves nothing named for one of its attention
kernels or re-runs the forward of a kernel it saves (and tracing raises, in `remat.named_residuals`, if a cuDNN
kernel's output and residuals are not its output and softmax statistics). `--grads` also runs each policy's
gradient once and prints its largest difference from `full`'s. The last line is one JSON object.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import jax
import jax.numpy as jnp
from absl import app, flags
from jax._src.ad_checkpoint import saved_residuals  # the list that jax.ad_checkpoint.print_saved_residuals prints

from agibot_jax import bench
from agibot_jax.models import dit, dit_config, remat
from configs import base

log = logging.getLogger(__name__)
GIB = 2**30
# jax's cuDNN attention primitives (jax/_src/cudnn/fused_attention_stablehlo.py), as the gradient's jaxpr names them.
CUDNN_FORWARD, CUDNN_BACKWARD = "dot_product_attention_fwd_wrapper", "dot_product_attention_bwd_wrapper"


def named(src: str) -> str | None:
  """The checkpoint name of a residual from its `saved_residuals` description, if it has one."""
  return src.split("'")[1] if src.startswith("named '") else None


def report(cfg: dit_config.DiTConfig, params, inputs) -> dict:
  """What the backward of `cfg`'s policy reads (block 0's named residuals, bytes) and which forwards it re-runs."""
  model = dit.MultiViewControlDiT(cfg)
  loss = lambda p, kw: jnp.mean(jnp.square(model.apply({"params": p}, **kw)))
  saved = saved_residuals(loss, params, inputs)
  by_name = {}
  for aval, src in saved:
    if (name := named(src)) is not None:
      by_name.setdefault(name, []).append(f"{aval.str_short()} {aval.size * aval.dtype.itemsize / GIB:.3f} GiB")
  policy = cfg.remat_policy
  missing = set(remat.SAVED_ATTENTION[policy]) - set(by_name)
  if missing:
    raise RuntimeError(f"remat policy {policy}: nothing saved for the attention kernels {sorted(missing)}")
  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params, inputs))
  forwards, backwards = jaxpr.count(CUDNN_FORWARD), jaxpr.count(CUDNN_BACKWARD)
  if cfg.attention == "cudnn":
    # Per block, each of the 3 kernels' forward runs once in the forward pass; the backward re-runs those it does
    # not save.
    want = backwards * (len(remat.ATTENTION) - len(remat.SAVED_ATTENTION[policy])) // len(remat.ATTENTION)
    if forwards - backwards != want:
      raise RuntimeError(f"remat policy {policy}: the backward re-runs {forwards - backwards} attention forwards "
                         f"({forwards} forward and {backwards} backward cuDNN calls), expected {want}")
  return dict(named=by_name, forwards_rerun=forwards - backwards, cudnn_calls=[forwards, backwards],
              saved_gib=round(sum(a.size * a.dtype.itemsize for a, src in saved if "argument" not in src) / GIB, 3))


def max_grad_diff(grads, want) -> float:
  return max(float(jnp.max(jnp.abs(g.astype(jnp.float32) - w.astype(jnp.float32))))
             for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want)))


def main(_):
  f = flags.FLAGS
  net = base.get_config("edge").model.net
  cfg = dataclasses.replace(dit_config.DiTConfig.from_config(net), num_blocks=f.num_blocks, attention=f.attention,
                            param_dtype="bfloat16", remat_policy="full", offload_block_inputs=f.offload_block_inputs)
  latent_hw = (f.height // 8, f.width // 8)
  inputs = bench.synthetic_inputs(cfg, latent_hw, num_views=3, batch=1, key=jax.random.key(1))
  params = jax.jit(lambda k: dit.init_params(cfg, k))(jax.random.key(0)) if f.grads else dit.abstract_params(cfg)
  results, want = {}, None
  # Block inputs in host memory go with `full` only (remat.policy).
  policies = ("full",) if f.offload_block_inputs else ("full", "save_self_attention",
                                                       "save_self_and_cross_view_attention", "save_attention")
  for policy in policies:
    pcfg = dataclasses.replace(cfg, remat_policy=policy)
    results[policy] = report(pcfg, params, inputs)
    results[policy]["vs_full_gib"] = round(results[policy]["saved_gib"] - results["full"]["saved_gib"], 3)
    if f.grads:
      model = dit.MultiViewControlDiT(pcfg)
      grads = jax.jit(jax.grad(lambda p, kw: jnp.mean(jnp.square(model.apply({"params": p}, **kw)))))(params, inputs)
      want = grads if want is None else want
      results[policy]["max_grad_diff_vs_full"] = max_grad_diff(grads, want)
    log.info("%s: %s", policy, {k: v for k, v in results[policy].items() if k != "named"})
    for name, arrays in results[policy]["named"].items():
      for a in arrays:
        log.info("  %s %s", name, a)
  print(json.dumps(dict(jax=jax.__version__, device=jax.devices()[0].device_kind, attention=f.attention,
                        num_blocks=f.num_blocks, resolution=[f.height, f.width],
                        offload_block_inputs=f.offload_block_inputs, policies=results)))


if __name__ == "__main__":
  flags.DEFINE_integer("num_blocks", 2, "main blocks of the 2B network (28 in training)")
  flags.DEFINE_integer("height", 432, "video height in pixels (latent /8, tokens /16)")
  flags.DEFINE_integer("width", 768, "video width in pixels")
  flags.DEFINE_enum("attention", "cudnn", ["cudnn", "xla"], "attention kernels (xla: a smoke run without a GPU)")
  flags.DEFINE_bool("offload_block_inputs", False, "model.net.offload_block_inputs")
  flags.DEFINE_bool("grads", False, "also run each policy's gradient and compare it with full's")
  app.run(main)
