"""Remat policies: same gradients as no checkpointing, block inputs offloaded, cuDNN kernels recognised."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals

from agibot_jax import bench
from agibot_jax.models import dit, remat
from configs import base

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="module")
def tiny():
  cfg = dit.DiTConfig.from_config(base.get_config("edge", "tiny").model.net)
  params = dit.init_params(cfg, jax.random.key(0))
  # Zero-initialised output projections would leave most gradients zero: perturb every weight.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = treedef.unflatten([p + 0.05 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])
  inputs = bench.synthetic_inputs(cfg, (4, 6), num_views=3, batch=1, key=jax.random.key(1))
  return cfg, params, inputs


def _loss_and_grad(cfg, params, inputs):
  model = dit.MultiViewControlDiT(cfg)
  loss = lambda p: jnp.mean(jnp.square(model.apply({"params": p}, **inputs)))
  return loss, jax.jit(jax.value_and_grad(loss))(params)


@pytest.fixture(scope="module")
def no_remat(tiny):
  return _loss_and_grad(*tiny)[1]


@pytest.mark.parametrize("name,offload", [("full", False), ("full", True), ("save_attention", True)])
def test_policy_keeps_the_gradients(tiny, no_remat, name, offload):
  cfg, params, inputs = tiny
  want_loss, want_grads = no_remat
  cfg = dataclasses.replace(cfg, remat_policy=name, offload_block_inputs=offload)
  _, (loss, grads) = _loss_and_grad(cfg, params, inputs)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def _stacked_block_inputs(cfg, params, inputs):
  """Memory spaces of the saved residuals shaped like the stacked inputs (layers, B, V, L, D) of the main blocks'
  scan, which starts after block 0 (`dit._main_blocks`)."""
  loss, _ = _loss_and_grad(cfg, params, inputs)
  found = []
  for aval, _ in saved_residuals(loss, params):
    if aval.ndim == 5 and aval.shape[0] == cfg.num_blocks - 1 and aval.shape[-1] == cfg.model_channels:
      found.append(aval.memory_space.name.lower())
  return found


def test_offload_moves_block_inputs_to_host(tiny):
  cfg, params, inputs = tiny
  for name in ("full", "save_attention"):
    for offload, where in ((False, "device"), (True, "host")):
      got = _stacked_block_inputs(dataclasses.replace(cfg, remat_policy=name, offload_block_inputs=offload), params, inputs)
      assert got == [where], (name, offload)


def test_attention_kernel_recognised_by_primitive_and_shapes():
  kernel = remat._cudnn_attention_forward()
  assert kernel is not None, "jax no longer has the cuDNN attention forward primitive the policies save"
  aval = lambda *shape: jax.core.ShapedArray(shape, jnp.bfloat16)
  self_attn = (aval(3, 96, 16, 128), aval(3, 96, 16, 128), aval(3, 96, 16, 128))
  text_attn = (aval(3, 96, 16, 128), aval(3, 512, 16, 128), aval(3, 512, 16, 128))
  cross_view_attn = (aval(72, 24, 16, 128), aval(72, 48, 16, 128), aval(72, 48, 16, 128))
  assert remat.attention_kernel_kind(kernel, *self_attn) == "self"
  assert remat.attention_kernel_kind(kernel, *text_attn) == "text"
  assert remat.attention_kernel_kind(kernel, *text_attn, text_tokens=256) == "cross_view"
  assert remat.attention_kernel_kind(kernel, *cross_view_attn) == "cross_view"
  assert remat.attention_kernel_kind(jax.lax.exp_p, *self_attn) is None


def test_unknown_policy_named():
  with pytest.raises(ValueError, match="save_everything"):
    remat.policy("save_everything")
  with pytest.raises(ValueError, match="offload_block_inputs"):
    remat.policy("none", offload_block_inputs=True)
