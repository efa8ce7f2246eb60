"""Rectified-flow objective: each formula against spec/training.md §4/§12, and golden/loss_tiny parity."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agibot_jax.training import objective
from agibot_jax.training.objective import Draws, ObjectiveConfig
from configs import base

CFG = ObjectiveConfig()


def _draws(b, v, shape, *, n=0, timesteps=500.0, keep=True, uvc=True, seed=0):
  eps = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
  return Draws(
      eps_BTHWC=jnp.asarray(eps),
      timesteps_B=jnp.full((b,), timesteps, jnp.float32),
      num_cond_frames_B=jnp.broadcast_to(jnp.asarray(n, jnp.int32), (b,)),
      text_keep_BV=jnp.broadcast_to(jnp.asarray(keep), (b, v)),
      use_video_condition=jnp.asarray(uvc),
  )


def _identity_net(calls=None):
  def apply_fn(x, t, ctx, m, keep):
    if calls is not None:
      calls.append(dict(x=x, t=t, ctx=ctx, m=m, keep=keep))
    return x.astype(jnp.float32) * 0.5
  return apply_fn


# ---------------------------------------------------------------------------------------------
# Time distribution


def test_shifted_timesteps():
  u = jnp.array([0.0, 1.0, 0.07894736842105263, 0.53125], jnp.float32)
  np.testing.assert_allclose(objective.shifted_timesteps(u, 5.0), [0.0, 1000.0, 300.0, 850.0], rtol=1e-6, atol=1e-4)
  # shift 1 is the identity (scaled).
  np.testing.assert_allclose(objective.shifted_timesteps(u, 1.0), np.asarray(u) * 1000, rtol=1e-6)


def test_sigma_moments_match_the_shifted_logit_normal():
  n = 200_000
  draws = objective.sample_draws(jax.random.key(1), CFG, (n, 1, 1, 1, 1), num_views=1)
  sigma = np.asarray(draws.timesteps_B, np.float64) / 1000
  assert sigma.shape == (n,) and sigma.min() >= 0 and sigma.max() <= 1
  # E[g(σ)] = ∫ φ(z) g(s(sigmoid(z))) dz with s(u) = 5u/(1+4u).
  z = np.linspace(-12, 12, 200_001)
  u = 1 / (1 + np.exp(-z))
  s = 5 * u / (1 + 4 * u)
  phi = np.exp(-z**2 / 2) / np.sqrt(2 * np.pi)
  mean = np.trapezoid(phi * s, z)
  second = np.trapezoid(phi * s**2, z)
  std = np.sqrt(second - mean**2)
  # 5 standard errors of the Monte-Carlo estimates.
  assert sigma.mean() == pytest.approx(mean, abs=5 * std / np.sqrt(n))
  assert (sigma**2).mean() == pytest.approx(second, abs=5 * np.std(sigma**2) / np.sqrt(n))
  # The median of σ is s(sigmoid(0)) = s(0.5) = 5/6.
  assert np.median(sigma) == pytest.approx(5 / 6, abs=3e-3)


# ---------------------------------------------------------------------------------------------
# Discrete draws


def test_draw_shapes_dtypes_and_rates():
  b, v = 4000, 3
  draws = objective.sample_draws(jax.random.key(2), CFG, (b, v * 2, 2, 2, 4), num_views=v)
  assert draws.eps_BTHWC.shape == (b, 6, 2, 2, 4) and draws.eps_BTHWC.dtype == jnp.float32
  assert draws.timesteps_B.shape == (b,) and draws.timesteps_B.dtype == jnp.float32
  assert draws.num_cond_frames_B.shape == (b,) and draws.num_cond_frames_B.dtype == jnp.int32
  assert draws.text_keep_BV.shape == (b, v) and draws.text_keep_BV.dtype == jnp.bool_
  assert draws.use_video_condition.shape == ()
  eps = np.asarray(draws.eps_BTHWC)
  assert abs(eps.mean()) < 0.01 and abs(eps.std() - 1) < 0.01
  # P(n=0) = P(n=1) = 0.5, n = 2 never.
  counts = np.bincount(np.asarray(draws.num_cond_frames_B), minlength=3)
  assert counts[2] == 0 and abs(counts[1] / b - 0.5) < 0.03
  # Text keep rate 0.8, independent per view: the views of one sample disagree often.
  keep = np.asarray(draws.text_keep_BV)
  assert abs(keep.mean() - 0.8) < 0.02
  assert abs((keep[:, 0] != keep[:, 1]).mean() - 2 * 0.8 * 0.2) < 0.03


def test_use_video_condition_is_one_draw_per_step_at_rate_08():
  keys = jax.random.split(jax.random.key(3), 4000)
  uvc = jax.vmap(lambda k: objective.sample_draws(k, CFG, (2, 3, 1, 1, 1), num_views=3).use_video_condition)(keys)
  assert uvc.shape == (4000,)
  assert abs(float(uvc.mean()) - 0.8) < 0.02


def test_conditional_frames_probs_from_config_and_validation():
  cfg = ObjectiveConfig.from_config(base.get_config("seg"))
  assert cfg == ObjectiveConfig(5.0, (0.5, 0.5, 0.0), 0.2, 0.2)
  assert cfg.max_conditional_frames == 1
  # Only one latent frame per view: n = 1 fits, n = 2 (probability 0.5) does not.
  objective.sample_draws(jax.random.key(0), cfg, (1, 3, 2, 2, 16), num_views=3)
  with pytest.raises(ValueError, match="conditional frames per view"):
    objective.sample_draws(jax.random.key(0), ObjectiveConfig(conditional_frames_probs=(0.5, 0.0, 0.5)),
                           (1, 3, 2, 2, 16), num_views=3)
  with pytest.raises(ValueError, match="sum to 1"):
    ObjectiveConfig(conditional_frames_probs=(0.5, 0.6))
  with pytest.raises(ValueError, match="not a multiple of 3 views"):
    objective.sample_draws(jax.random.key(0), cfg, (1, 4, 2, 2, 16), num_views=3)


# ---------------------------------------------------------------------------------------------
# Mask, noising, target, substitution, loss


def test_noising_target_substitution_and_loss():
  b, v, t, h, w, c = 2, 3, 2, 2, 3, 4
  x0 = jnp.asarray(np.random.default_rng(5).normal(size=(b, v * t, h, w, c)).astype(np.float32))
  draws = _draws(b, v, x0.shape, n=1, timesteps=300.0)
  draws = draws.replace(timesteps_B=jnp.array([300.0, 850.0]))
  calls = []
  loss, parts = objective.rectified_flow_loss(_identity_net(calls), x0, jnp.ones((b, v * 4, 7)), draws, num_views=v)
  x0_, eps = np.asarray(x0), np.asarray(draws.eps_BTHWC)
  sigma = np.array([0.3, 0.85], np.float32)[:, None, None, None, None]
  np.testing.assert_allclose(parts.x_t, sigma * eps + (1 - sigma) * x0_, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(parts.target, eps - x0_)
  cond = np.zeros((v * t,), bool)
  cond[::t] = True
  # Input: clean latent on conditional frames, x_t elsewhere.
  np.testing.assert_array_equal(np.asarray(parts.x_in)[:, cond], x0_[:, cond])
  np.testing.assert_array_equal(np.asarray(parts.x_in)[:, ~cond], np.asarray(parts.x_t)[:, ~cond])
  # The net gets the mask and the timesteps on the 0..1000 scale.
  np.testing.assert_array_equal(calls[0]["m"], parts.condition_mask)
  np.testing.assert_allclose(calls[0]["t"], [300.0, 850.0])
  # Output: exact target on conditional frames (zero error), net output elsewhere.
  np.testing.assert_array_equal(np.asarray(parts.pred)[:, cond], (eps - x0_)[:, cond])
  np.testing.assert_array_equal(np.asarray(parts.pred)[:, ~cond], np.asarray(parts.net_out)[:, ~cond])
  lm = np.asarray(parts.loss_map)
  assert (lm[:, cond] == 0).all() and (lm[:, ~cond] > 0).any()
  # The conditional frames stay in the denominator: mean over all elements.
  want = np.mean((np.asarray(parts.x_in) * 0.5 - (eps - x0_))[:, ~cond] ** 2) * (~cond).sum() / cond.size
  assert float(loss) == pytest.approx(want, rel=1e-6)
  assert loss.dtype == jnp.float32 and loss.shape == ()


def test_use_video_condition_off_feeds_zeros_on_conditional_frames():
  b, v, t = 1, 3, 2
  x0 = jnp.asarray(np.random.default_rng(6).normal(size=(b, v * t, 2, 2, 4)).astype(np.float32))
  draws = _draws(b, v, x0.shape, n=1, uvc=False)
  _, parts = objective.rectified_flow_loss(_identity_net(), x0, jnp.ones((b, v * 4, 7)), draws, num_views=v)
  x_in = np.asarray(parts.x_in)
  assert (x_in[:, ::t] == 0).all()
  np.testing.assert_array_equal(x_in[:, 1::t], np.asarray(parts.x_t)[:, 1::t])
  assert (np.asarray(parts.loss_map)[:, ::t] == 0).all()  # still replaced by the true target


def test_text_keep_mask_reaches_the_net():
  """The raw embedding goes to the net unchanged with the draws' keep mask; the net drops the text (tests/models)."""
  b, v, n_tok, d = 2, 3, 4, 5
  emb = jnp.asarray(np.random.default_rng(7).normal(size=(b, v * n_tok, d)).astype(np.float32))
  keep = jnp.array([[True, False, True], [False, False, True]])
  x0 = jnp.zeros((b, v, 2, 2, 4))
  calls = []
  objective.rectified_flow_loss(_identity_net(calls), x0, emb, _draws(b, v, x0.shape).replace(text_keep_BV=keep),
                                num_views=v)
  np.testing.assert_array_equal(calls[0]["ctx"], emb)
  np.testing.assert_array_equal(calls[0]["keep"], keep)


def test_bf16_compute_precision():
  """x_t formed in fp32 then cast; the net sees bf16; output, target and loss are fp32 (§12.6)."""
  b, v = 1, 3
  x0 = jnp.asarray(np.random.default_rng(8).normal(size=(b, v * 2, 2, 2, 4)).astype(np.float32))
  calls = []
  loss, parts = objective.rectified_flow_loss(_identity_net(calls), x0, jnp.ones((b, v * 4, 7)),
                                              _draws(b, v, x0.shape, n=1), num_views=v, compute_dtype=jnp.bfloat16)
  assert calls[0]["x"].dtype == jnp.bfloat16 and calls[0]["m"].dtype == jnp.bfloat16
  assert parts.x_t.dtype == jnp.float32 and parts.net_out.dtype == jnp.float32 and loss.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(parts.x_in)[:, 1::2], np.asarray(parts.x_t.astype(jnp.bfloat16))[:, 1::2])


# ---------------------------------------------------------------------------------------------
# golden/loss_tiny: the reference's training_step_multiview on the tiny DiT


@pytest.fixture(scope="module")
def loss_golden(golden_dir):
  from safetensors.numpy import load_file

  from agibot_jax.models import dit, dit_config
  from agibot_jax.training import optimizer
  from convert import dit as convert_dit

  with open(golden_dir / "dit_tiny.json") as f:
    dit_meta = json.load(f)
  with open(golden_dir / "loss_tiny.json") as f:
    meta = json.load(f)
  cfg = dit_config.DiTConfig.from_reference_kwargs(dit_meta["constructor_kwargs"], param_dtype="float32",
                                                   dtype="float32", attention="xla", remat_policy="none")
  params = convert_dit.params_from_golden(str(golden_dir / "dit_tiny.safetensors"), cfg)
  trainable, frozen = optimizer.partition_params(params, dit_config.is_trainable)
  t = load_file(str(golden_dir / "loss_tiny.safetensors"))
  to_last = lambda a: jnp.asarray(np.moveaxis(a, 1, -1))
  model = dit.MultiViewControlDiT(cfg)
  control = to_last(t["inputs/latent_control_input"])
  views = jnp.asarray(t["inputs/view_indices_B_T"].astype(np.int32))
  padding = jnp.asarray(t["inputs/padding_mask"][:, 0])

  def loss_fn(trainable, x0, emb, draws):
    def apply_fn(x, timesteps, ctx, mask, keep):
      p = optimizer.merge_params(trainable, frozen)
      return model.apply({"params": p}, x, timesteps, ctx, control, mask, views, padding, control_context_scale=1.0,
                         text_keep_BV=keep)
    return objective.rectified_flow_loss(apply_fn, x0, emb, draws, num_views=3)

  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))  # traced under "highest" at the call
  table = {e.torch_key: e for e in convert_dit.key_table(cfg)}
  return dict(meta=meta, t=t, dit_kwargs=dit_meta["constructor_kwargs"], trainable=trainable, frozen=frozen,
              grad_fn=grad_fn, table=table,
              x0=to_last(t["inputs/x0"]), emb=jnp.asarray(t["inputs/crossattn_emb"]), to_last=to_last)


def test_trainable_partition_matches_the_reference_freeze(loss_golden):
  from convert import mapping

  torch_keys = set(mapping.flax_to_torch(loss_golden["trainable"],
                                         [e for e in loss_golden["table"].values()
                                          if e.flax_path in mapping.flatten_tree(loss_golden["trainable"])]))
  assert torch_keys == set(loss_golden["meta"]["trainable_params_after_freeze"])
  assert len(torch_keys) == 63


@pytest.mark.parametrize("case", ["c0", "c1", "c1_nouvc"])
def test_loss_tiny_parity(loss_golden, case):
  from convert import mapping

  g, t = loss_golden, loss_golden["t"]
  info = g["meta"]["cases"][case]
  timesteps = t[f"{case}/inputs/timesteps_B_T"][:, 0]
  draws = Draws(
      eps_BTHWC=g["to_last"](t[f"{case}/inputs/noise"]),
      timesteps_B=jnp.asarray(timesteps),
      num_cond_frames_B=jnp.full((1,), info["n_cond_per_view"], jnp.int32),
      text_keep_BV=jnp.ones((1, 3), bool),
      use_video_condition=jnp.asarray(info["use_video_condition"]),
  )
  with jax.default_matmul_precision("highest"):
    (loss, parts), grads = g["grad_fn"](g["trainable"], g["x0"], g["emb"], draws)

  stored_mask = t[f"{case}/inputs/condition_video_input_mask_B_C_T_H_W"]
  np.testing.assert_array_equal(parts.condition_mask, g["to_last"](stored_mask))
  errors = {}
  for ours, theirs in [("x_t", "xt_before_mask"), ("x_in", "net_x_in"), ("net_out", "net_out_raw"),
                       ("pred", "pred_after_replace"), ("target", "target"), ("loss_map", "loss_map")]:
    got, want = np.asarray(getattr(parts, ours)), np.asarray(g["to_last"](t[f"{case}/outputs/{theirs}"]))
    errors[ours] = float(np.max(np.abs(got - want)))
  # Observed ≤ 1.2e-6 for the O(1) tensors and ≤ 7.7e-6 for loss_map (values up to ~57).
  assert errors.pop("loss_map") <= 1e-4, errors
  assert max(errors.values()) <= 1e-5, errors
  assert float(loss) == pytest.approx(float(t[f"{case}/outputs/loss"][0]), rel=1e-5)

  for key in ("control_embedder.proj.1.weight", "control_blocks.0.after_proj.weight"):
    got = mapping.flax_to_torch(grads, [g["table"][key]])[key]
    want = t[f"{case}/outputs/grad/{key}"]
    assert got.shape == want.shape
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel <= 1e-4, (key, rel)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
  total = np.sqrt(sum(float(np.sum(np.square(np.asarray(x)))) for x in jax.tree.leaves(grads)))
  assert total == pytest.approx(info["grad_total_norm"], rel=1e-4)


@pytest.mark.slow  # ~40 s on 2 CPU cores: compiles the bf16 tiny DiT forward and backward
def test_one_bf16_train_step_composes(loss_golden):
  """draws → loss (bf16 net) → grads of the trainable partition → clip → AdamW → EMA, in one jit."""
  import dataclasses

  from agibot_jax.models import dit, dit_config
  from agibot_jax.training import ema, optimizer

  g = loss_golden
  config = base.get_config("edge", "tiny")
  cfg = dit_config.DiTConfig.from_reference_kwargs(g["dit_kwargs"], param_dtype="float32", dtype="bfloat16",
                                                   attention="xla", remat_policy="none")
  model = dit.MultiViewControlDiT(cfg)
  obj = ObjectiveConfig.from_config(config)
  opt = optimizer.make_optimizer(config)
  tracker = dataclasses.replace(ema.PowerEMA.from_config(config), live_dtype=jnp.bfloat16)
  frozen = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), g["frozen"])
  control = g["to_last"](g["t"]["inputs/latent_control_input"])
  views = jnp.asarray(g["t"]["inputs/view_indices_B_T"].astype(np.int32))

  @jax.jit
  def train_step(trainable, opt_state, ema_params, key, iteration):
    draws = objective.sample_draws(key, obj, g["x0"].shape, num_views=3)

    def loss_fn(trainable):
      def apply_fn(x, timesteps, ctx, mask, keep):
        p = optimizer.merge_params(trainable, frozen)
        return model.apply({"params": p}, x, timesteps, ctx, control, mask, views, text_keep_BV=keep)
      return objective.rectified_flow_loss(apply_fn, g["x0"], g["emb"], draws, num_views=3,
                                           compute_dtype=jnp.bfloat16)

    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    trainable, opt_state, grad_norm = optimizer.apply_gradients(opt, trainable, opt_state, grads, 1.0)
    return trainable, opt_state, tracker.update(ema_params, trainable, iteration), loss, grad_norm

  trainable = g["trainable"]
  state, ema_params = opt.init(trainable), tracker.init(trainable)
  for i in range(2):
    trainable, state, ema_params, loss, grad_norm = train_step(trainable, state, ema_params, jax.random.key(i), i)
    assert np.isfinite(float(loss)) and float(grad_norm) > 0
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((trainable, ema_params)))
  changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(trainable), jax.tree.leaves(g["trainable"]))]
  assert all(changed)
