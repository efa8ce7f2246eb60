"""Remat policies: each saves the block input and the residuals its attention call sites name, nothing else, under
jax.checkpoint, nn.remat, both layer scans and the context-local shard_map; the backward re-runs no saved kernel;
same gradients as no checkpointing (slow run); block inputs offloaded; a kernel whose residuals are not the expected ones
fails loudly.

The shard_map check needs 4 devices, which XLA only fakes on CPU when XLA_FLAGS is set before jax starts, so it
runs this file as a script in a subprocess (`python tests/models/test_remat.py --context-worker`).
"""

import collections
import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals  # the list that jax.ad_checkpoint.print_saved_residuals prints
from jax.extend import core as jax_core

from agibot_jax import bench, sharding
from agibot_jax.models import dit, dit_config, dit_ops, remat
from configs import base
from tests.conftest import run_on_fake_cpu_devices

SAVE_POLICIES = tuple(p for p in remat.POLICIES if remat.SAVED_ATTENTION[p])
VIEWS, TOKENS_PER_FRAME = 3, 6  # one block's input: 3 views of state_t frames of 2 x 3 tokens

jax.config.update("jax_default_matmul_precision", "highest")


def _tiny_cfg(**changes) -> dit_config.DiTConfig:
  return dataclasses.replace(dit_config.DiTConfig.from_config(base.get_config("edge", "tiny").model.net), **changes)


def _what(aval, src: str) -> str:
  """What a saved residual is: the name it carries, "host" (offloaded), or jax's words for where it comes from."""
  if src.startswith("named '"):
    return src.split("'")[1]
  if aval.memory_space.name.lower() == "host":
    return "host"
  return src.split(" from /")[0]


def _block_loss(cfg: dit_config.DiTConfig, policy):
  """The sum of one control block's output under `jax.checkpoint(policy)` (None: no checkpoint), and its arguments
  (abstract weights, random block input and shared block context)."""
  t, s = cfg.state_t, TOKENS_PER_FRAME
  block = dit.ControlBlock(cfg, t, s)
  keys = iter(jax.random.split(jax.random.key(0), 8))
  normal = lambda *shape: jax.random.normal(next(keys), shape)
  nbr_pos, nbr_count = dit_ops.cross_view_neighbors(cfg, jnp.arange(VIEWS)[None])
  d, l = cfg.model_channels, t * s
  ctx = dit.BlockContext(normal(1, d), normal(1, 3 * d), normal(1, VIEWS, 9 * d),
                         normal(1, VIEWS, cfg.text_tokens_per_view, cfg.crossattn_emb_channels),
                         normal(l, cfg.head_dim), normal(l, cfg.head_dim), nbr_pos, nbr_count)
  x_BVLD = normal(1, VIEWS, l, d)
  params = jax.eval_shape(lambda: block.init(jax.random.key(0), x_BVLD, None, ctx)["params"])
  apply = lambda p, x, c: block.apply({"params": p}, x, None, c)[0]
  if policy is not None:
    apply = jax.checkpoint(apply, policy=policy, prevent_cse=False)
  return (lambda p, x, c: jnp.sum(apply(p, x, c))), (params, x_BVLD, ctx)


def _block_saves(cfg: dit_config.DiTConfig, policy) -> collections.Counter:
  """What the backward of one control block under `policy` reads, other than the weights and the shared block
  context (arguments, always at hand): a count per `_what`. Traced only."""
  loss, args = _block_loss(cfg, policy)
  return collections.Counter(_what(a, src) for a, src in saved_residuals(loss, *args)
                             if not src.startswith(("from the argument p", "from the argument c")))


@pytest.mark.parametrize("name,offload", [*((name, False) for name in remat.POLICIES[1:]), ("full", True)])
def test_block_saves_its_input_and_its_policys_attention_only(name, offload):
  saved = _block_saves(_tiny_cfg(), remat.policy(name, offload))
  block_input = "host" if offload else "from the argument x"
  assert saved[block_input] == 1, saved
  # Every attention call site of the policy is found by its name (a call site that lost its `name=` fails here),
  # and nothing is saved that is neither the block input nor named by the policy.
  assert set(saved) == {block_input, *remat.SAVED_ATTENTION[name]}, saved


def _attention_matmuls(cfg: dit_config.DiTConfig, policy) -> int:
  """Matmuls in the gradient of one control block that read or write attention probabilities (…, H, Q, K)."""
  v, t, s, h = VIEWS, cfg.state_t, TOKENS_PER_FRAME, cfg.num_heads
  # Self-attention per view, cross-view attention per frame over 2 neighbours' tokens, text attention per view.
  probs = {(v, h, t * s, t * s), (v * t, h, s, 2 * s), (v, h, t * s, cfg.text_tokens_per_view)}

  def count(jaxpr) -> int:
    return sum(sum(count(j) for j in jax_core.jaxprs_in_params(e.params))
               + (e.primitive.name == "dot_general" and any(x.aval.shape in probs for x in (*e.invars, *e.outvars)))
               for e in jaxpr.eqns)

  loss, args = _block_loss(cfg, policy)
  return count(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(*args).jaxpr)


def test_backward_reruns_no_saved_attention():
  # Per attention: q·kᵀ and p·v forward, four matmuls backward. A policy that saves a kernel's residuals but not
  # its output would recompute p·v for the block's output projection (on cuDNN: re-run the whole forward).
  cfg = _tiny_cfg()
  without_remat = _attention_matmuls(cfg, None)
  assert without_remat == 6 * len(remat.ATTENTION)
  assert _attention_matmuls(cfg, remat.policy("full")) == without_remat + 2 * len(remat.ATTENTION)
  assert _attention_matmuls(cfg, remat.policy("save_self_attention")) == without_remat + 2 * 2
  assert _attention_matmuls(cfg, remat.policy("save_attention")) == without_remat


def test_sublayer_checkpoints_keep_what_the_block_saves_and_rerun_no_attention():
  # model.net.remat_sublayers: each sub-layer's own checkpoint keeps the attention kernels' residuals, so the block's
  # backward still reads only what its policy names, and no attention kernel runs a third time.
  # (What a sub-layer's checkpoint hands out carries no name: "output of remat2".)
  for name in ("full", "save_self_attention"):
    whole = _block_saves(_tiny_cfg(remat_policy=name), remat.policy(name))
    per_sublayer = _block_saves(_tiny_cfg(remat_policy=name, remat_sublayers=True), remat.policy(name))
    assert per_sublayer["from the argument x"] == 1 and per_sublayer.total() == whole.total(), (whole, per_sublayer)
  cfg = _tiny_cfg(remat_policy="full", remat_sublayers=True)
  assert _attention_matmuls(cfg, remat.policy("full")) == _attention_matmuls(_tiny_cfg(), remat.policy("full"))


def test_sublayer_checkpoints_hold_one_sublayer_at_a_time():
  # What a block's backward reads once its forward has been recomputed (the block without an outer checkpoint): with a
  # checkpoint per sub-layer, only the inputs of the four sub-layers and the attention kernels' residuals; the rest
  # of a sub-layer is recomputed just before its own backward. Without them, every intermediate of the block.
  whole = _block_saves(_tiny_cfg(remat_policy="full"), None)
  per_sublayer = _block_saves(_tiny_cfg(remat_policy="full", remat_sublayers=True), None)
  sublayer_inputs = per_sublayer.pop("block_input", 0) + per_sublayer.pop("output of add", 0)
  assert sublayer_inputs == 4 and set(per_sublayer) == set(remat.ATTENTION), per_sublayer
  assert whole.total() > 3 * (sublayer_inputs + per_sublayer.total()), whole


def test_saved_kernel_runs_once():
  # exp keeps its output for its backward, as cuDNN does: the output that the next op reads is the saved one.
  def grad_jaxpr(policy):
    f = lambda w, x: jnp.sum(w * remat.named_residuals(jnp.exp, "self_attention")(x))
    return str(jax.make_jaxpr(jax.grad(jax.checkpoint(f, policy=policy), argnums=(0, 1)))(jnp.ones(3), jnp.ones(3)))
  assert grad_jaxpr(remat.policy("save_self_attention")).count(" exp ") == 1
  assert grad_jaxpr(remat.policy("full")).count(" exp ") == 2


def _model_saves(name: str):
  """(aval, `_what`) of each residual the tiny DiT's backward reads under policy `name`. Traced only."""
  cfg = _tiny_cfg(remat_policy=name)
  model = dit.MultiViewControlDiT(cfg)
  inputs = bench.synthetic_inputs(cfg, (4, 6), num_views=3, batch=1, key=jax.random.key(1))
  loss = lambda p: jnp.mean(jnp.square(model.apply({"params": p}, **inputs)))
  return cfg, [(a, _what(a, src)) for a, src in saved_residuals(loss, dit.abstract_params(cfg))]


def test_layer_scans_save_the_named_attention():
  # Main block 0 runs ahead of the layer scans (`dit._main_blocks`), so its residuals keep their names; the other
  # blocks' come out of the control blocks' nn.scan (of nn.remat) and the main blocks' lax.scan (of jax.checkpoint)
  # stacked by layer. Whatever the policy saves beyond `full` is named, or a stack of what block 0 names.
  cfg, full = _model_saves("full")
  _, saved = _model_saves("save_attention")
  avals = {a.str_short(): a for a, _ in saved}
  extra = collections.Counter((a.str_short(), what) for a, what in saved)
  extra.subtract(collections.Counter((a.str_short(), what) for a, what in full))
  named = {a.shape for a, what in saved if what in remat.ATTENTION}
  assert {what for _, what in saved if what in remat.ATTENTION} == set(remat.ATTENTION)
  stacked = collections.Counter()
  for (short, what), n in extra.items():
    assert n >= 0, (short, what)  # nothing that full saves goes missing
    if n and what not in remat.ATTENTION:
      assert what == "output of scan" and avals[short].shape[1:] in named, (short, what)
      stacked[avals[short].shape[0]] += n
  first = cfg.control_layers[0] + 1
  assert set(stacked) == {cfg.num_control_blocks, cfg.num_blocks - first}, stacked


@pytest.mark.parametrize("segment,offload,want", [
    (1, False, {("device", 7)}), (1, True, {("host", 7)}),
    (2, False, {("device", 3), ("device", 1)}), (2, True, {("host", 3), ("device", 1)})])
def test_segments_keep_every_kth_main_block_input(segment, offload, want):
  # 8 blocks: block 0 runs ahead, 7 scanned, whose stacked inputs are kept on the device or, offloaded, in host
  # memory (the main blocks' by offload_scan). Segments of 2: the scan keeps 3 segment inputs (one per 2 blocks), the
  # last block, outside any segment, its own; a segment's 2 block inputs live only during its backward.
  cfg = _tiny_cfg(num_blocks=8, remat_policy="full", remat_segment_blocks=segment, offload_block_inputs=offload)
  model = dit.MultiViewControlDiT(cfg)
  inputs = bench.synthetic_inputs(cfg, (4, 6), num_views=3, batch=1, key=jax.random.key(1))
  saved = saved_residuals(lambda p: jnp.mean(jnp.square(model.apply({"params": p}, **inputs))), dit.abstract_params(cfg))
  # (The 4 control blocks' inputs and their 4 hints are stacks of 4: not counted.)
  stacks = {(a.memory_space.name.lower(), a.shape[0]) for a, _ in saved
            if a.ndim == 5 and a.shape[-1] == cfg.model_channels and a.shape[0] != cfg.num_control_blocks}
  assert stacks == want, stacks


@pytest.fixture(scope="module")
def tiny():
  cfg = _tiny_cfg()
  params = dit.init_params(cfg, jax.random.key(0))
  # Zero-initialised output projections would leave most gradients zero: perturb every weight.
  # NumPy draws: one jax.random call per leaf shape would compile a kernel per shape (~20 s on 2 CPU cores).
  rng = np.random.default_rng(2)
  params = jax.tree.map(lambda p: p + (0.05 * rng.standard_normal(p.shape)).astype(p.dtype), params)
  inputs = bench.synthetic_inputs(cfg, (4, 6), num_views=3, batch=1, key=jax.random.key(1))
  return cfg, params, inputs


def _loss_and_grads(cfg, params, inputs):
  model = dit.MultiViewControlDiT(cfg)
  return jax.jit(jax.value_and_grad(lambda p: jnp.mean(jnp.square(model.apply({"params": p}, **inputs)))))(params)


@pytest.fixture(scope="module")
def no_remat(tiny):
  return _loss_and_grads(*tiny)


# ~35 s for the no-remat reference and ~15 s per policy on 2 CPU cores; the default run checks what each policy saves
# (test_block_saves_its_input_and_its_policys_attention_only), the slow run that the gradients stay the same.
@pytest.mark.slow
@pytest.mark.parametrize("name,offload,sublayers,mlp_chunks,segment,cross_view_chunks", [
    ("full", False, False, 1, 1, 1),
    ("save_self_and_cross_view_attention", False, False, 1, 1, 1),
    ("full", True, False, 1, 1, 1),
    ("full", False, False, 1, 2, 1),  # 3 scanned blocks: a segment of 2 and one block outside
    # the smallest memory plan's network (MLP in 3 token slices: summation order only changes), with the cross-view
    # attention one frame at a time
    ("full", True, True, 3, 2, 3)])
def test_policy_keeps_the_gradients(tiny, no_remat, name, offload, sublayers, mlp_chunks, segment, cross_view_chunks):
  cfg, params, inputs = tiny
  want_loss, want_grads = no_remat
  loss, grads = _loss_and_grads(dataclasses.replace(cfg, remat_policy=name, offload_block_inputs=offload,
                                                    remat_sublayers=sublayers, mlp_chunks=mlp_chunks,
                                                    remat_segment_blocks=segment,
                                                    cross_view_chunks=cross_view_chunks), params, inputs)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


# Issue 30: host offload of scanned residuals once gave silently wrong gradients in XLA's GPU backend (fixed in 2026),
# with memory that looked right. Only a GPU run can check it: offload against the same policy without it, on the
# cuDNN path in the training dtypes and on the float32 XLA path. Offloading copies values, it computes nothing, so
# the float32 gradients must agree to float32 rounding of a differently fused program; the bfloat16 ones to bf16's.
@pytest.mark.gpu
@pytest.mark.parametrize("dtype,attention,rtol,sublayers", [("float32", "xla", 1e-5, False),
                                                            ("bfloat16", "cudnn", 1e-2, True)])  # the smallest plan's
def test_offload_keeps_the_gradients_on_the_gpu(tiny, dtype, attention, rtol, sublayers):
  assert jax.default_backend() == "gpu", "a GPU test: run it on the GPU machine (pytest -m gpu)"
  cfg, params, inputs = tiny
  cfg = dataclasses.replace(cfg, dtype=dtype, attention=attention, remat_policy="full", remat_sublayers=sublayers)
  want_loss, want_grads = _loss_and_grads(dataclasses.replace(cfg, offload_block_inputs=False), params, inputs)
  loss, grads = _loss_and_grads(dataclasses.replace(cfg, offload_block_inputs=True), params, inputs)
  np.testing.assert_allclose(loss, want_loss, rtol=rtol)
  worst = 0.0
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    scale = float(np.max(np.abs(want))) or 1.0  # relative to the leaf's largest gradient: bf16 rounds per element
    worst = max(worst, float(np.max(np.abs(got - want))) / scale)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)
  print(f"offload vs none, {dtype} {attention} sublayers={sublayers}: largest difference {worst:.2e} of a leaf's max")


def test_unexpected_residuals_fail_loudly():
  x = jnp.arange(6.0).reshape(2, 3)
  kept = jax.ShapeDtypeStruct((2, 3), jnp.float32)  # exp keeps its output for the backward
  grad = lambda expected: jax.grad(lambda x: remat.named_residuals(jnp.exp, "text_attention", expected)(x).sum())(x)
  np.testing.assert_array_equal(grad([kept]), jnp.exp(x))
  with pytest.raises(RuntimeError, match=r"text_attention: .*float32\[2, 3\].*expected.*bfloat16.*'save_attention'"):
    grad([jax.ShapeDtypeStruct((2, 3), jnp.bfloat16)])
  with pytest.raises(RuntimeError, match="text_attention"):
    grad([kept, jax.ShapeDtypeStruct((2, 3), jnp.float32)])


def test_unknown_names_rejected():
  with pytest.raises(ValueError, match="remat_sublayers needs a remat_policy"):
    _tiny_cfg(remat_policy="none", remat_sublayers=True)
  with pytest.raises(ValueError, match="save_everything"):
    remat.policy("save_everything")
  for name in ("none", "save_self_attention"):
    with pytest.raises(ValueError, match="offload_block_inputs keeps only the block inputs.*'full'"):
      remat.policy(name, offload_block_inputs=True)
  with pytest.raises(ValueError, match="selfattention"):
    remat.named_residuals(jnp.exp, "selfattention")


def _context_worker() -> None:
  """Prints what one control block saves per policy on one device and on a 4-way context mesh."""
  assert jax.device_count() == 4, jax.devices()
  cfg = _tiny_cfg(state_t=4, context_local_attention=True)  # 4 frames, split over the context axis
  out = {"one_device": {p: _block_saves(cfg, remat.policy(p)) for p in ("full", "save_attention")}}
  with jax.set_mesh(sharding.make_mesh(1, 1, 4)):
    out["context_4"] = {p: _block_saves(cfg, remat.policy(p)) for p in ("full", *SAVE_POLICIES)}
  print("RESULT " + json.dumps(out))


def test_context_local_attention_saves_the_named_attention_on_4_fake_cpu_devices():
  out = run_on_fake_cpu_devices(__file__, "--context-worker", 4)
  one, ctx = out["one_device"], out["context_4"]
  # Cross-view and text attention run inside the shard_map (`sharding.context_local`), whose outputs carry no
  # names: under save_attention it hands out one residual per residual those two call sites name on one device.
  local = one["save_attention"]["cross_view_attention"] + one["save_attention"]["text_attention"]
  assert ctx["save_attention"].get("output of shard_map") == local, ctx["save_attention"]
  assert ctx["save_self_and_cross_view_attention"].get("output of shard_map") == one["save_attention"][
      "cross_view_attention"], ctx["save_self_and_cross_view_attention"]
  for name in ("full", "save_self_attention"):
    assert "output of shard_map" not in ctx[name], (name, ctx[name])
  # Self-attention reshards by heads outside the shard_map: its residuals keep their name.
  assert ctx["save_self_attention"]["self_attention"] == one["save_attention"]["self_attention"]
  assert set(ctx["full"]) == {"from the argument x"}, ctx["full"]


if __name__ == "__main__":
  if sys.argv[1:] == ["--context-worker"]:
    _context_worker()
