"""Sharding rules (agibot_jax/sharding.py) and mesh equivalence of the train step.

The equivalence check needs 8 devices, which XLA only fakes on CPU when XLA_FLAGS is set before jax
starts, so it runs this file as a script in a subprocess (`python tests/test_sharding.py --mesh-worker`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import pytest

from tests.conftest import run_on_fake_cpu_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (2, 1, 4): 4-way context parallelism splits the 4 frames per view (cross-view attention per device), the
# tokens (text attention per device) and the 4 heads (self-attention).
MESHES = ((8, 1, 1), (1, 8, 1), (2, 2, 2), (2, 1, 4))
# Meshes also run with model.net.context_local_attention (per-device cross-view and text attention).
LOCAL_MESHES = ((2, 1, 4), (1, 1, 8))
# Meshes also run with the cross-view attention over 2 frame slices (model.net.cross_view_chunks=2, per device).
SLICED_MESHES = ((2, 1, 2),)
# float32 with different reduction orders across shards: loss to 1e-5 relative, each gradient leaf to
# 1e-5 of its largest entry (observed on CPU: loss 1.5e-7 relative, gradients 3.0e-7 of the leaf maximum).
LOSS_RTOL, GRAD_ATOL_REL = 1e-5, 1e-5


def _mesh_worker() -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from agibot_jax import sharding
  from agibot_jax.models import dit, dit_config
  from agibot_jax.training.state import new_state, state_shardings
  from agibot_jax.training.step import make_train_step
  from configs import edge

  jax.config.update("jax_default_matmul_precision", "highest")
  assert jax.device_count() == 8, jax.devices()
  config = edge.get_config("tiny")  # 64x96 pixels -> latent 8x12 -> 4x6 tokens/frame, L = 4 x 24 = 96
  config.model.net.state_t = 4
  config.model.net.num_blocks = 2
  config.model.net.vace_block_every_n = 2
  config.model.net.text_tokens_per_view = 8
  config.optimizer.clip_norm = 1e9
  # `step`: cross-view and text attention resharded by heads; `local_step` below: per device (the default).
  cfg = dataclasses.replace(dit_config.DiTConfig.from_config(config.model.net), context_local_attention=False)
  model = dit.MultiViewControlDiT(cfg)
  capture = optax.GradientTransformation(lambda p: jax.tree.map(jnp.zeros_like, p),
                                         lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g))
  params = jax.jit(lambda k: dit.init_params(cfg, k))(jax.random.key(0))
  state = new_state(params, config, capture, None, seed=0)
  rng = np.random.default_rng(0)
  b, vt, (h, w) = 8, 3 * cfg.state_t, (8, 12)
  batch = {
      "x0_BTHWC": rng.standard_normal((b, vt, h, w, 16)).astype(np.float32),
      "control_BTHWC": rng.standard_normal((b, vt, h, w, 16)).astype(np.float32),
      "crossattn_emb_BMC": rng.standard_normal((b, 3 * cfg.text_tokens_per_view, cfg.crossattn_proj_in_channels)
                                               ).astype(np.float32),
      "view_indices_BT": np.repeat(np.arange(3, dtype=np.int32), cfg.state_t)[None].repeat(b, 0),
      "padding_mask_BHW": np.zeros((b, 8 * h, 8 * w), np.float32),
  }
  step = make_train_step(model, capture, config, None)
  boxed = dit.abstract_params(cfg, boxed=True)

  # The same network with cross-view and text attention run per device (model.net.context_local_attention=True).
  local_step = make_train_step(dit.MultiViewControlDiT(dataclasses.replace(cfg, context_local_attention=True)),
                               capture, config, None)
  sliced_step = make_train_step(dit.MultiViewControlDiT(dataclasses.replace(cfg, context_local_attention=True,
                                                                            cross_view_chunks=2)),
                                capture, config, None)

  def run(mesh_shape, step_fn=step):
    devices = jax.devices()[:int(np.prod(mesh_shape))]
    mesh = sharding.make_mesh(*mesh_shape, devices=devices)
    with jax.set_mesh(mesh):
      sh = state_shardings(jax.eval_shape(lambda: state), boxed, mesh)
      st = jax.device_put(state, sh)
      bt = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.shape)) for k, v in batch.items()}
      fn = jax.jit(step_fn, out_shardings=(sh, None))
      text = fn.lower(st, bt).as_text()
      new, metrics = fn(st, bt)
    return new, metrics, text

  ref, ref_metrics, _ = run((1, 1, 1))
  out = {"ref_loss": float(ref_metrics["loss"]), "meshes": {}}
  ref_grads = jax.tree_util.tree_flatten_with_path(ref.opt_state)[0]
  variants = ([(m, "", step) for m in MESHES] + [(m, " local", local_step) for m in LOCAL_MESHES]
              + [(m, " sliced", sliced_step) for m in SLICED_MESHES])
  for mesh_shape, variant, step_fn in variants:
    new, metrics, text = run(mesh_shape, step_fn)
    worst = 0.0
    for (path, want), got in zip(ref_grads, jax.tree.leaves(new.opt_state)):
      scale = float(np.max(np.abs(np.asarray(want)))) or 1.0
      worst = max(worst, float(np.max(np.abs(np.asarray(got) - np.asarray(want)))) / scale)
    specs = {jax.tree_util.keystr(p): str(leaf.sharding.spec)
             for p, leaf in jax.tree_util.tree_flatten_with_path(new.trainable)[0]}
    out["meshes"][str(mesh_shape) + variant] = {
        "loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"]),
        "ref_grad_norm": float(ref_metrics["grad_norm"]), "worst_grad_rel": worst, "specs": specs,
        "context_constraint": '[{"data", "fsdp"}, {}, {"context"}, {}]' in text,
        "per_device_attention": "manual_computation" in text or "SPMDFullToShardShape" in text,
    }
  print("RESULT " + json.dumps(out))


def test_logical_to_spec_rules():
  from jax.sharding import PartitionSpec as P

  from agibot_jax import sharding

  mesh = {"data": 2, "fsdp": 2, "context": 2}
  act = ("activation_batch", "activation_view", "activation_length", "activation_embed")
  assert sharding.logical_to_spec(act, (8, 3, 72, 128), mesh) == P(("data", "fsdp"), None, "context", None)
  # A batch of 2 keeps the longest dividing prefix of (data, fsdp); a batch of 1 stays replicated.
  assert sharding.logical_to_spec(act, (2, 3, 72, 128), mesh) == P("data", None, "context", None)
  assert sharding.logical_to_spec(act, (1, 3, 71, 128), mesh) == P(None, None, None, None)
  assert sharding.logical_to_spec(("embed", "mlp"), (128, 512), {"data": 1, "fsdp": 8, "context": 1}) == P("fsdp", None)
  # Size-1 mesh axes are dropped.
  assert sharding.logical_to_spec(("embed", "mlp"), (128, 512), {"data": 8, "fsdp": 1, "context": 1}) == P(None, None)
  # VAE clips (3 views x video/control) spread over a context-parallel mesh; heads take the context axis in attention.
  cp2 = {"data": 1, "fsdp": 1, "context": 2}
  assert sharding.logical_to_spec(("activation_clips", None), (6, 93), cp2) == P("context", None)
  assert sharding.logical_to_spec(("activation_clips", None), (6, 93), {"data": 1, "fsdp": 1, "context": 4}) == P(None, None)
  heads = ("activation_batch", None, "activation_heads", None)
  assert sharding.logical_to_spec(heads, (3, 31104, 16, 128), cp2) == P(None, None, "context", None)


def test_make_mesh_errors():
  import jax

  from agibot_jax import sharding

  n = jax.device_count()
  with pytest.raises(ValueError, match="at most one"):
    sharding.make_mesh(-1, -1, 1)
  with pytest.raises(ValueError, match="needs"):
    sharding.make_mesh(n + 1, 1, 1)
  assert dict(sharding.make_mesh(1, -1, 1).shape) == {"data": 1, "fsdp": n, "context": 1}


@pytest.mark.slow  # ~80 s on 2 CPU cores; the default run covers meshes in test_multiprocess and evaluation tests
def test_mesh_equivalence_on_8_fake_cpu_devices():
  out = run_on_fake_cpu_devices(__file__, "--mesh-worker", 8)
  for mesh_shape, r in out["meshes"].items():
    assert abs(r["loss"] - out["ref_loss"]) <= LOSS_RTOL * abs(out["ref_loss"]), (mesh_shape, r["loss"], out["ref_loss"])
    assert r["worst_grad_rel"] <= GRAD_ATOL_REL, (mesh_shape, r["worst_grad_rel"])
    assert abs(r["grad_norm"] - r["ref_grad_norm"]) <= 1e-5 * r["ref_grad_norm"], mesh_shape
  # FSDP: kernels with a model-width ("embed") axis are split over fsdp; with fsdp=1 nothing is.
  fsdp_specs = out["meshes"]["(1, 8, 1)"]["specs"]
  assert fsdp_specs["['control_before_proj']['kernel']"] == "P('fsdp', None)", fsdp_specs
  assert out["meshes"]["(2, 2, 2)"]["specs"]["['control_before_proj']['kernel']"] == "P('fsdp', None)"
  assert not any("fsdp" in s for s in out["meshes"]["(8, 1, 1)"]["specs"].values())
  # The token axis of each view is constrained onto `context` in the (2, 2, 2) program (batch 8 over
  # data x fsdp, L = 96 over context); not on (8, 1, 1), where context has size 1.
  assert out["meshes"]["(2, 2, 2)"]["context_constraint"]
  assert not out["meshes"]["(8, 1, 1)"]["context_constraint"]
  # With context_local_attention, cross-view and text attention run per device (shard_map) where context is split.
  assert out["meshes"]["(2, 1, 4) local"]["per_device_attention"]
  assert not out["meshes"]["(2, 1, 4)"]["per_device_attention"]
  assert out["meshes"]["(2, 1, 2) sliced"]["per_device_attention"]


if __name__ == "__main__" and "--mesh-worker" in sys.argv:
  sys.path.insert(0, REPO)
  _mesh_worker()
