"""The multiview control DiT: golden parity and the network paths no golden exercises (its ops: test_dit_ops.py)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agibot_jax.models import dit, dit_config, dit_ops
from convert import dit as convert_dit

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="module")
def golden(golden_dir):
  path = str(golden_dir / "dit_tiny.safetensors")
  meta = json.loads((golden_dir / "dit_tiny.json").read_text())
  cfg = dit_config.DiTConfig.from_reference_kwargs(meta["constructor_kwargs"], param_dtype="float32", dtype="float32",
                                                   attention="xla")
  from safetensors.numpy import load_file

  tensors = load_file(path)
  params = convert_dit.params_from_golden(path, cfg)
  inputs = convert_dit.golden_inputs(tensors)
  return dict(path=path, meta=meta, cfg=cfg, tensors=tensors, params=params, inputs=inputs)


@pytest.fixture(scope="module")
def apply(golden):
  model = dit.MultiViewControlDiT(golden["cfg"])
  return jax.jit(lambda p, scale, kw: model.apply({"params": p}, **kw, control_context_scale=scale))


def test_golden_parity_both_outputs(golden):
  # A faithful float32 port lands near 1e-6; the acceptance bound is 1e-4.
  checks = convert_dit.golden_parity(golden["path"], golden["meta"])
  assert [c.name for c in checks] == ["outputs/x", "outputs/x_control_scale_2"]
  for c in checks:
    assert c.max_abs_err < 1e-5, c


def _permute_views(inputs, perm, t):
  """Reorder the views of a sample (frames, view ids and text blocks move together)."""
  frames = np.concatenate([np.arange(p * t, (p + 1) * t) for p in perm])
  out = dict(inputs)
  for k in ("x_BTHWC", "latent_control_BTHWC", "condition_mask_BTHW1", "view_indices_BT"):
    out[k] = np.asarray(inputs[k])[:, frames]
  emb = np.asarray(inputs["crossattn_emb_BMC"])
  m = emb.shape[1] // len(perm)
  out["crossattn_emb_BMC"] = np.concatenate([emb[:, p * m:(p + 1) * m] for p in perm], axis=1)
  return out, frames


def test_view_permutation_equivariance(golden, apply):
  # View embedding is looked up by id, text by position, cross-view neighbours by id: permuting
  # the views of a sample (with their text) permutes the output and changes nothing else.
  t = golden["cfg"].state_t
  base = np.asarray(apply(golden["params"], 1.0, golden["inputs"]))
  permuted_inputs, frames = _permute_views(golden["inputs"], (2, 0, 1), t)
  permuted = np.asarray(apply(golden["params"], 1.0, permuted_inputs))
  np.testing.assert_allclose(permuted, base[:, frames], atol=2e-5)


def test_batch_two_and_per_sample_control_scale(golden, apply):
  t = golden["cfg"].state_t
  other, _ = _permute_views(golden["inputs"], (1, 2, 0), t)
  other["x_BTHWC"] = np.asarray(other["x_BTHWC"]) * 0.5
  batch = {k: None if v is None else np.concatenate([np.asarray(golden["inputs"][k]), np.asarray(other[k])])
           for k, v in golden["inputs"].items()}
  out = np.asarray(apply(golden["params"], jnp.array([1.0, 0.5]), batch))
  np.testing.assert_allclose(out[:1], np.moveaxis(golden["tensors"]["outputs/x"], 1, -1), atol=1e-5)
  single = np.asarray(apply(golden["params"], 0.5, other))
  np.testing.assert_allclose(out[1:], single, atol=2e-5)


def test_control_with_fewer_channels_is_zero_padded(golden, apply):
  inputs = dict(golden["inputs"])
  ctrl = np.asarray(inputs["latent_control_BTHWC"]).copy()
  ctrl[..., 10:] = 0
  padded = np.asarray(apply(golden["params"], 1.0, {**inputs, "latent_control_BTHWC": ctrl}))
  short = np.asarray(apply(golden["params"], 1.0, {**inputs, "latent_control_BTHWC": ctrl[..., :10]}))
  np.testing.assert_array_equal(padded, short)


def test_one_camera_rig_forward():
  """A one-camera rig (its camera on view row 2): no camera has a neighbour (an empty cross_view_attn_map, K = 0
  before one absent slot was kept), and the cross-view branch adds exactly nothing, whatever its weights. The golden
  network's own one- and two-view runs: test_single_view_gets_no_cross_view_term and
  test_missing_view_is_masked_like_an_absent_neighbour (slow)."""
  from agibot_jax import rig

  one = rig.from_cameras([{"name": "wrist", "view": 2, "caption_prefix": "From the wrist."}])
  cfg = dit_config.DiTConfig(model_channels=32, num_heads=2, num_blocks=1, vace_block_every_n=1, state_t=2,
                             crossattn_proj_in_channels=24, crossattn_emb_channels=16, text_tokens_per_view=4,
                             adaln_lora_dim=8, param_dtype="float32", dtype="float32", attention="xla",
                             cross_view_attn_map=one.cross_view_attn_map())
  assert cfg.cross_view_attn_map == ((), (), ())
  rng = np.random.default_rng(0)
  x, t, emb, control, mask, views = dit.example_inputs(cfg, num_views=1, latent_hw=(4, 4))
  x, emb, control = (jnp.asarray(rng.normal(size=a.shape), jnp.float32) for a in (x, emb, control))
  views = jnp.full_like(views, one.view_ids[0])
  # Random weights, non-zero everywhere (several projections start at zero), then the cross-view outputs zeroed.
  params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape) * 0.1, a.dtype), dit.abstract_params(cfg))
  no_cross_view = jax.tree_util.tree_map_with_path(
      lambda path, a: a * 0 if "cross_view_attn" in jax.tree_util.keystr(path) and "output_proj" in
      jax.tree_util.keystr(path) else a, params)
  apply = jax.jit(lambda p: dit.MultiViewControlDiT(cfg).apply({"params": p}, x, t + 0.5, emb, control, mask, views))
  out = np.asarray(apply(params))
  assert out.shape == (1, 2, 4, 4, 16) and np.isfinite(out).all() and np.abs(out).max() > 0
  np.testing.assert_array_equal(out, np.asarray(apply(no_cross_view)))


@pytest.mark.slow  # ~15-28 s on 2 CPU cores
def test_missing_view_is_masked_like_an_absent_neighbour(golden):
  # Views 0 and 2 only: hand_left (id 1) is missing, its gathered key slot is masked. That must equal
  # a network whose neighbour map never listed id 1.
  kwargs = golden["meta"]["constructor_kwargs"]
  common = dict(param_dtype="float32", dtype="float32", attention="xla")
  cfg = dit_config.DiTConfig.from_reference_kwargs(kwargs, **common)
  pruned = dit_config.DiTConfig.from_reference_kwargs(kwargs, cross_view_attn_map=((2,), (0, 2), (0,)), **common)
  inputs, t = golden["inputs"], cfg.state_t
  keep = np.r_[0:t, 2 * t:3 * t]
  two = {k: np.asarray(inputs[k])[:, keep] for k in ("x_BTHWC", "latent_control_BTHWC", "condition_mask_BTHW1",
                                                     "view_indices_BT")}
  emb = inputs["crossattn_emb_BMC"]
  two.update(crossattn_emb_BMC=np.concatenate([emb[:, :512], emb[:, 1024:]], 1), timesteps_B=inputs["timesteps_B"],
             padding_mask_BHW=inputs["padding_mask_BHW"])
  masked = np.asarray(dit.MultiViewControlDiT(cfg).apply({"params": golden["params"]}, **two))
  absent = np.asarray(dit.MultiViewControlDiT(pruned).apply({"params": golden["params"]}, **two))
  assert masked.shape == (1, 2 * t, 8, 8, 16)
  np.testing.assert_allclose(masked, absent, atol=1e-5)
  # And the missing neighbour matters at all: with 3 views the two views' outputs differ.
  full = np.asarray(dit.MultiViewControlDiT(cfg).apply({"params": golden["params"]}, **inputs))
  assert np.abs(full[:, keep] - masked).max() > 1e-2


@pytest.mark.slow  # ~15-28 s on 2 CPU cores
def test_single_view_gets_no_cross_view_term(golden):
  # One view: no neighbour is present, so the cross-view branch must add nothing, as if its output projection
  # were zero (whatever an attention kernel returns for a frame without keys).
  inputs, t = golden["inputs"], golden["cfg"].state_t
  one = {k: np.asarray(inputs[k])[:, :t] for k in ("x_BTHWC", "latent_control_BTHWC", "condition_mask_BTHW1",
                                                  "view_indices_BT")}
  one.update(crossattn_emb_BMC=inputs["crossattn_emb_BMC"][:, :512], timesteps_B=inputs["timesteps_B"],
             padding_mask_BHW=inputs["padding_mask_BHW"])
  no_cross_view = jax.tree_util.tree_map_with_path(
      lambda path, a: a * 0 if "cross_view_attn" in jax.tree_util.keystr(path) and "output_proj" in
      jax.tree_util.keystr(path) else a, golden["params"])
  model = dit.MultiViewControlDiT(golden["cfg"])
  got = np.asarray(model.apply({"params": golden["params"]}, **one))
  want = np.asarray(model.apply({"params": no_cross_view}, **one))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
  assert np.abs(np.asarray(jax.tree.leaves(golden["params"]["blocks"]["cross_view_attn"]["output_proj"])[0])).max() > 0


@pytest.mark.slow  # ~23 s: a compile-structure property, not a value
def test_training_gives_no_backward_pass_to_main_blocks_before_the_first_hint():
  # Hints enter after main blocks 0 and 2 of 4: the control branch's gradient flows back through main blocks 1-3,
  # so the main blocks' backward scan runs 3 iterations (one scan over all 4 ran 4) and the control branch's 2.
  cfg = dit_config.DiTConfig(model_channels=64, num_heads=2, num_blocks=4, vace_block_every_n=2, state_t=2,
                             crossattn_proj_in_channels=32, text_tokens_per_view=8, adaln_lora_dim=16,
                             remat_policy="full", attention="xla")
  params = dit.init_params(cfg, jax.random.key(0), latent_hw=(4, 4))
  trainable = {k: v for k, v in params.items() if dit_config.is_trainable((k,))}
  frozen = {k: v for k, v in params.items() if not dit_config.is_trainable((k,))}
  inputs = dit.example_inputs(cfg, 3, (4, 4))
  loss = lambda t: jnp.sum(dit.MultiViewControlDiT(cfg).apply({"params": {**t, **frozen}}, *inputs) ** 2)
  jaxpr = jax.make_jaxpr(jax.grad(loss))(trainable).jaxpr
  lengths = sorted(e.params["length"] for e in jaxpr.eqns if e.primitive.name == "scan")
  assert lengths == [2, 2, 3, 3]  # forward and backward: control blocks, main blocks 1-3


def test_control_weight_zero_removes_the_control(golden, apply):
  """Weight 0: the output no longer depends on the control latent (weight 1 does), and equals the network without
  its hints; a weight in between moves the output."""
  other = dict(golden["inputs"])
  other["latent_control_BTHWC"] = np.asarray(other["latent_control_BTHWC"]) * -2.0 + 0.5
  p = golden["params"]
  at = lambda w, inputs: np.asarray(apply(p, w, inputs))
  assert np.abs(at(1.0, golden["inputs"]) - at(1.0, other)).max() > 1e-3
  np.testing.assert_array_equal(at(0.0, golden["inputs"]), at(0.0, other))
  no_hints = {**p, "control_blocks": {**p["control_blocks"],
                                      "after_proj": jax.tree.map(np.zeros_like, p["control_blocks"]["after_proj"])}}
  np.testing.assert_allclose(at(0.0, golden["inputs"]), np.asarray(apply(no_hints, 1.0, golden["inputs"])),
                             atol=1e-6)
  half, zero, one = (at(w, golden["inputs"]) for w in (0.5, 0.0, 1.0))
  assert np.abs(half - zero).max() > 1e-4 and np.abs(half - one).max() > 1e-4


def test_text_dropout_and_projected_text_give_the_same_output(golden):
  """Dropped views' raw text is zeroed before crossattn_proj; projected input (crossattn_proj applied outside) with
  the same keep mask gives the same output, dropped views getting the projection of zeros (float32, 1e-5)."""
  from agibot_jax.text.cache import project_context

  cfg, p, inputs = golden["cfg"], golden["params"], golden["inputs"]
  model = dit.MultiViewControlDiT(cfg)
  run = jax.jit(lambda kw, keep: model.apply({"params": p}, **kw, text_keep_BV=keep))
  emb = np.asarray(inputs["crossattn_emb_BMC"])
  v = emb.shape[1] // cfg.text_tokens_per_view
  keep = np.array([[True, False, True]])[:, :v]
  zeroed = emb.reshape(1, v, cfg.text_tokens_per_view, -1) * keep[:, :, None, None]
  want = np.asarray(run({**inputs, "crossattn_emb_BMC": zeroed.reshape(emb.shape)}, None))
  np.testing.assert_array_equal(np.asarray(run(inputs, keep)), want)
  assert np.abs(want - np.asarray(run(inputs, None))).max() > 1e-4  # dropping changes the output

  projected = np.asarray(project_context(emb, p["crossattn_proj"]["kernel"], p["crossattn_proj"]["bias"]))
  assert projected.shape[-1] == cfg.crossattn_emb_channels
  np.testing.assert_allclose(np.asarray(run({**inputs, "crossattn_emb_BMC": projected}, keep)), want, atol=1e-5)
  with pytest.raises(ValueError, match="projected text embeddings"):
    model.apply({"params": p}, **{**inputs, "crossattn_emb_BMC": projected[:, :, :-1]}, text_projected=True)


def test_chunked_mlp_gives_the_golden_output(golden):
  # model.net.mlp_chunks runs each block's MLP over interleaved token slices (a memory plan, issue 23): the output
  # keeps the golden tensor's float32 parity and equals the unchunked one up to summation order. Its gradients:
  # tests/models/test_remat.py::test_policy_keeps_the_gradients (slow run).
  def output(chunks):
    model = dit.MultiViewControlDiT(dataclasses.replace(golden["cfg"], mlp_chunks=chunks))
    return np.asarray(jax.jit(lambda p, kw: model.apply({"params": p}, **kw))(golden["params"], golden["inputs"]))

  chunked = output(4)
  expected = np.moveaxis(golden["tensors"]["outputs/x"], 1, -1)  # the reference's (B, C, T, H, W)
  np.testing.assert_allclose(chunked, expected, rtol=0, atol=1e-5)
  np.testing.assert_allclose(chunked, output(1), rtol=0, atol=5e-6)
  with pytest.raises(ValueError, match="mlp_chunks=5 does not divide"):
    dit_ops.chunked_mlp(jnp.zeros((1, 1, 12, 4)), jnp.zeros((4, 8)), jnp.zeros((8, 4)), 5)


def test_cross_view_attention_in_frame_slices_gives_the_golden_output(golden):
  # model.net.cross_view_chunks runs the cross-view sub-layer over interleaved frame slices (a memory plan, issue 30):
  # frames are independent there, so the output keeps the golden parity and equals the unsliced one to rounding.
  # Its gradients: tests/models/test_remat.py::test_policy_keeps_the_gradients (slow run).
  def output(chunks):
    model = dit.MultiViewControlDiT(dataclasses.replace(golden["cfg"], cross_view_chunks=chunks))
    return np.asarray(jax.jit(lambda p, kw: model.apply({"params": p}, **kw))(golden["params"], golden["inputs"]))

  frames = golden["inputs"]["x_BTHWC"].shape[1] // 3  # 3 views stacked along time
  sliced = output(frames)
  expected = np.moveaxis(golden["tensors"]["outputs/x"], 1, -1)  # the reference's (B, C, T, H, W)
  np.testing.assert_allclose(sliced, expected, rtol=0, atol=1e-5)
  np.testing.assert_allclose(sliced, output(1), rtol=0, atol=5e-6)
  with pytest.raises(ValueError, match=f"cross_view_chunks={frames + 1} does not divide the {frames} latent frames"):
    output(frames + 1)
