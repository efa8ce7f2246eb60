"""Trainable partition, AdamW vs torch.optim.AdamW, clipping with non-finite gradients, accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from agibot_jax.models import dit_config
from agibot_jax.training import optimizer, schedule
from configs import base


def _toy_params():
  """A DiT-shaped tree: a frozen base (bf16, as the live base may be) and a control branch."""
  rng = np.random.default_rng(0)
  f = lambda *s: rng.normal(size=s).astype(np.float32)
  return {
      "blocks": {"mlp_layer1": {"kernel": jnp.asarray(f(2, 4, 3), jnp.bfloat16)}},
      "x_embedder": {"kernel": jnp.asarray(f(8, 4), jnp.bfloat16)},
      "control_embedder": {"kernel": f(8, 4)},
      "control_before_proj": {"kernel": f(4, 4), "bias": f(4)},
      "control_blocks": {"after_proj": {"kernel": f(2, 4, 4), "bias": f(2, 4)},
                         "q_norm": {"scale": jnp.asarray(1 + 0.1 * f(2, 4), jnp.bfloat16)}},
  }


def _config(**optimizer_overrides):
  config = base.get_config("edge", "tiny")
  config.scheduler.warm_up_steps = (3,)
  config.scheduler.cycle_lengths = (10,)
  config.optimizer.lr = 1e-2
  for k, v in optimizer_overrides.items():
    setattr(config.optimizer, k, v)
  return config


def test_partition_keeps_frozen_out_and_masters_in_fp32():
  params = _toy_params()
  trainable, frozen = optimizer.partition_params(params, dit_config.is_trainable)
  assert set(trainable) == {"control_embedder", "control_before_proj", "control_blocks"}
  assert set(frozen) == {"blocks", "x_embedder"}
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(trainable))  # bf16 q_norm promoted
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(frozen))  # frozen dtype kept
  merged = optimizer.merge_params(trainable, frozen)
  assert jax.tree.structure(merged) == jax.tree.structure(params)
  np.testing.assert_array_equal(merged["blocks"]["mlp_layer1"]["kernel"], params["blocks"]["mlp_layer1"]["kernel"])
  with pytest.raises(ValueError, match="no trainable parameters"):
    optimizer.partition_params(params, lambda path: False)


def test_trainable_predicate_follows_train_base():
  config = base.get_config("edge")
  assert optimizer.trainable_predicate(config) is dit_config.is_trainable
  config.model.train_base = True
  params = _toy_params()
  params["rope_buffers"] = {"n_cameras_3_dim_spatial_range": np.arange(4, dtype=np.float32) / 8}
  trainable, frozen = optimizer.partition_params(params, optimizer.trainable_predicate(config))
  assert list(frozen) == ["rope_buffers"]  # buffers never train or decay
  assert len(jax.tree.leaves(trainable)) == len(jax.tree.leaves(params)) - 1


def test_optimizer_state_covers_only_trainable_and_frozen_stay_untouched():
  params = _toy_params()
  trainable, frozen = optimizer.partition_params(params, dit_config.is_trainable)
  opt = optimizer.make_optimizer(_config())
  state = opt.init(trainable)
  moments = [x for x in jax.tree.leaves(state) if getattr(x, "ndim", 0) > 0]
  # mu and nu for each of the 5 trainable tensors, nothing for the frozen base.
  assert len(moments) == 2 * len(jax.tree.leaves(trainable))
  assert sorted(x.shape for x in moments) == sorted(2 * [x.shape for x in jax.tree.leaves(trainable)])
  assert all(x.dtype == jnp.float32 for x in moments)
  grads = jax.tree.map(jnp.ones_like, trainable)
  new, state, _ = optimizer.apply_gradients(opt, trainable, state, grads, clip_norm=1.0)
  merged = optimizer.merge_params(new, frozen)
  jax.tree.map(np.testing.assert_array_equal, {k: merged[k] for k in frozen}, {k: params[k] for k in frozen})
  assert not np.array_equal(merged["control_embedder"]["kernel"], params["control_embedder"]["kernel"])


def test_weight_decay_applies_to_1d_params():
  """With zero gradients Adam's step is 0, leaving only decoupled decay: p ← p·(1 − lr·f(n)·wd)."""
  trainable = {"bias": jnp.full((4,), 2.0), "scale": jnp.full((3,), -1.0), "kernel": jnp.ones((2, 2))}
  config = _config()
  opt = optimizer.make_optimizer(config)
  state = opt.init(trainable)
  lr = schedule.learning_rate_schedule(config)
  want = dict(jax.tree.map(np.asarray, trainable))
  for n in range(3):
    updates, state = opt.update(jax.tree.map(jnp.zeros_like, trainable), state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    want = {k: v * (1 - float(lr(n)) * 0.1) for k, v in want.items()}
  for k in want:
    np.testing.assert_allclose(trainable[k], want[k], rtol=1e-6)
    assert not np.allclose(trainable[k], 2.0 if k == "bias" else (-1.0 if k == "scale" else 1.0))


def test_adamw_matches_torch_adamw_with_lambda_linear():
  """Our update == torch.optim.AdamW (decoupled decay on every tensor) stepped by LambdaLR."""
  config = _config()
  rng = np.random.default_rng(1)
  init = {"w": rng.normal(size=(5, 3)).astype(np.float32), "b": rng.normal(size=(3,)).astype(np.float32)}
  grads_seq = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in init.items()} for _ in range(6)]

  opt = optimizer.make_optimizer(config)
  ours = jax.tree.map(jnp.asarray, init)
  state = opt.init(ours)
  step = jax.jit(opt.update)
  for g in grads_seq:
    updates, state = step(g, state, ours)
    ours = optax.apply_updates(ours, updates)

  theirs = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init.items()}
  topt = torch.optim.AdamW(list(theirs.values()), lr=config.optimizer.lr, betas=tuple(config.optimizer.betas),
                           eps=config.optimizer.eps, weight_decay=config.optimizer.weight_decay)
  f = schedule.LambdaLinear.from_config(config.scheduler)
  sched = torch.optim.lr_scheduler.LambdaLR(topt, lambda n: float(f(n)))
  for g in grads_seq:
    for k, p in theirs.items():
      p.grad = torch.tensor(g[k])
    topt.step()
    sched.step()
  for k in init:
    np.testing.assert_allclose(ours[k], theirs[k].detach().numpy(), rtol=2e-6, atol=2e-7)


def test_clip_zeroes_non_finite_then_clips_global_norm():
  grads = {"a": jnp.array([3.0, jnp.nan, 0.0]), "b": {"c": jnp.array([[jnp.inf, 4.0], [-jnp.inf, 0.0]])}}
  clipped, norm = optimizer.clip_gradients(grads, clip_norm=1.0)
  assert float(norm) == pytest.approx(5.0, rel=1e-7)  # pre-clip norm of the finite entries
  scale = 1.0 / (5.0 + 1e-6)
  np.testing.assert_allclose(clipped["a"], [3 * scale, 0, 0], rtol=1e-7)
  np.testing.assert_allclose(clipped["b"]["c"], [[0, 4 * scale], [0, 0]], rtol=1e-7)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(clipped))
  # Below the threshold nothing changes (scale clamps at 1).
  small = {"a": jnp.array([0.3, 0.4])}
  same, norm = optimizer.clip_gradients(small, clip_norm=1.0)
  np.testing.assert_array_equal(same["a"], small["a"])
  assert float(norm) == pytest.approx(0.5, rel=1e-7)


def test_clip_matches_torch_clip_grad_norm():
  rng = np.random.default_rng(2)
  grads = [rng.normal(size=s).astype(np.float32) * 3 for s in [(4, 5), (7,), (2, 3, 2)]]
  clipped, norm = optimizer.clip_gradients(list(map(jnp.asarray, grads)), clip_norm=1.0)
  params = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
  for p, g in zip(params, grads):
    p.grad = torch.tensor(g)
  torch_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
  assert float(norm) == pytest.approx(float(torch_norm), rel=1e-6)
  for c, p in zip(clipped, params):
    np.testing.assert_allclose(c, p.grad.numpy(), rtol=1e-6, atol=1e-8)


def test_accumulated_gradients_equal_the_full_batch_gradient():
  rng = np.random.default_rng(3)
  params = {"w": jnp.asarray(rng.normal(size=(3,)).astype(np.float32))}
  xs = jnp.asarray(rng.normal(size=(4, 2, 3)).astype(np.float32))  # K=4 micro-batches of 2

  def loss_fn(p, x):
    loss = jnp.mean((x @ p["w"] - 1.0) ** 2)
    return loss, {"batch_mean": x.mean()}

  loss, aux, grads = jax.jit(
      lambda p, x: optimizer.accumulate_gradients(jax.value_and_grad(loss_fn, has_aux=True), p, x))(params, xs)
  (full_loss, _), full_grads = jax.value_and_grad(loss_fn, has_aux=True)(params, xs.reshape(8, 3))
  assert float(loss) == pytest.approx(float(full_loss), rel=1e-6)
  np.testing.assert_allclose(grads["w"], full_grads["w"], rtol=1e-5)
  assert float(aux["batch_mean"]) == pytest.approx(float(xs[-1].mean()))
