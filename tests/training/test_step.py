"""The train step (agibot_jax/training/step.py) on synthetic model batches: gradient accumulation,
which parameters train, and that the frozen base stays bit-identical."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from agibot_jax.models import dit, dit_config
from agibot_jax.training import ema as ema_lib
from agibot_jax.training import optimizer as optim
from agibot_jax.training.state import new_state
from agibot_jax.training.step import make_loss_fn, make_train_step, step_key
from configs import edge

LATENT_HW = (4, 6)


@pytest.fixture(autouse=True)
def _exact_matmuls():
  with jax.default_matmul_precision("highest"):
    yield


def small_config(**overrides):
  config = edge.get_config("tiny")
  config.model.net.num_blocks = 2
  config.model.net.vace_block_every_n = 2
  config.model.net.text_tokens_per_view = 8
  config.optimizer.clip_norm = 1e9  # no clipping: gradients compare as computed
  for k, v in overrides.items():
    node = config
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return config


def synthetic_batch(cfg: dit_config.DiTConfig, batch: int, num_views: int = 3, seed: int = 0) -> dict:
  """A model batch of the step's documented shapes (random latents and text)."""
  rng = np.random.default_rng(seed)
  h, w = LATENT_HW
  vt = num_views * cfg.state_t
  return {
      "x0_BTHWC": jnp.asarray(rng.standard_normal((batch, vt, h, w, cfg.in_channels)), jnp.float32),
      "control_BTHWC": jnp.asarray(rng.standard_normal((batch, vt, h, w, cfg.in_channels)), jnp.float32),
      "crossattn_emb_BMC": jnp.asarray(
          rng.standard_normal((batch, num_views * cfg.text_tokens_per_view, cfg.crossattn_proj_in_channels)),
          jnp.float32),
      "view_indices_BT": jnp.repeat(jnp.arange(num_views, dtype=jnp.int32), cfg.state_t)[None].repeat(batch, 0),
      "padding_mask_BHW": jnp.zeros((batch, 8 * h, 8 * w), jnp.float32),
  }


def gradient_capture() -> optax.GradientTransformation:
  """A 'optimizer' that leaves the params alone and keeps the last (clipped) gradients as its state."""
  return optax.GradientTransformation(lambda p: jax.tree.map(jnp.zeros_like, p),
                                      lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g))


def build(config, tx):
  cfg = dit_config.DiTConfig.from_config(config.model.net)
  params = jax.jit(lambda k: dit.init_params(cfg, k))(jax.random.key(0))
  ema = ema_lib.PowerEMA.from_config(config)
  return cfg, dit.MultiViewControlDiT(cfg), new_state(params, config, tx, ema, seed=0), ema


def test_grad_accumulation_averages_micro_batches():
  """grad_accum_iter=2 on a batch of 2 == the mean of loss/grad of each sample with its micro-batch key.

  Checked: loss to rtol 1e-6, every gradient leaf to 1e-6 of its largest entry (float32, scan vs. two
  separate calls of the same computation), and the pre-clip grad norm of the mean gradient.
  """
  config = small_config(**{"trainer.grad_accum_iter": 2})
  cfg, model, state, _ = build(config, gradient_capture())
  batch = synthetic_batch(cfg, 2)
  new, metrics = jax.jit(make_train_step(model, gradient_capture(), config, None))(state, batch)
  grads = new.opt_state

  grad_fn = jax.jit(jax.value_and_grad(make_loss_fn(model, config), has_aux=True))
  keys = jax.random.split(step_key(state), 2)
  per_micro = [grad_fn(state.trainable, state.frozen, {**jax.tree.map(lambda a: a[i:i + 1], batch), "key": keys[i]})
               for i in range(2)]
  want_loss = (per_micro[0][0][0] + per_micro[1][0][0]) / 2
  want_grads = jax.tree.map(lambda a, b: (a + b) / 2, per_micro[0][1], per_micro[1][1])

  assert np.isfinite(float(metrics["loss"]))
  np.testing.assert_allclose(float(metrics["loss"]), float(want_loss), rtol=1e-6)
  for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(want_grads)):
    scale = float(jnp.max(jnp.abs(want))) or 1.0
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-6 * scale,
                               err_msg=jax.tree_util.keystr(path))
  norm = np.sqrt(sum(float(jnp.sum(g.astype(jnp.float32) ** 2)) for g in jax.tree.leaves(want_grads)))
  np.testing.assert_allclose(float(metrics["grad_norm"]), norm, rtol=1e-5)
  # The micro-batches really differ (else averaging would prove nothing).
  assert abs(float(per_micro[0][0][0]) - float(per_micro[1][0][0])) > 1e-3


def test_grad_accumulation_rejects_indivisible_batch():
  config = small_config(**{"trainer.grad_accum_iter": 2})
  cfg, model, state, _ = build(config, gradient_capture())
  with pytest.raises(ValueError, match="grad_accum_iter=2"):
    jax.eval_shape(make_train_step(model, gradient_capture(), config, None), state, synthetic_batch(cfg, 3))


def released_like(params):
  """`params` with the zero-initialised tensors (control input and output projections, biases) made non-zero, as in
  a released checkpoint, so that every control-branch parameter gets a gradient at once."""
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda p: p if np.asarray(p).any() else 0.02 * rng.standard_normal(p.shape).astype(p.dtype),
                      params)


@functools.cache
def two_adamw_steps(train_base: bool, lora_rank: int):
  """(state, state after two AdamW steps, metrics of each step) on one batch from `released_like` weights, with lr
  1e-2 after one warm-up step. Cached (call it with positional arguments: the cache keys on them as passed): the
  tests below share each compiled step."""
  config = small_config(**{"model.train_base": train_base, "model.lora.rank": lora_rank, "optimizer.lr": 1e-2,
                           "scheduler.warm_up_steps": (1,)})
  cfg = dit_config.DiTConfig.from_config(config.model.net)
  tx, ema = optim.make_optimizer(config), ema_lib.PowerEMA.from_config(config)
  state = new_state(released_like(jax.jit(lambda k: dit.init_params(cfg, k))(jax.random.key(0))), config, tx, ema,
                    seed=0)
  step = jax.jit(make_train_step(dit.MultiViewControlDiT(cfg), tx, config, ema))
  new, metrics = state, []
  for _ in range(2):
    new, m = step(new, synthetic_batch(cfg, 1))
    metrics.append(m)
  return state, new, metrics


@pytest.mark.parametrize("train_base", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_trainable_partition_and_frozen_base(train_base):
  """Two AdamW steps: the frozen partition is bit-identical, the trained one moves; only it has Adam moments.

  train_base=False trains the control branch only; train_base=True everything but the RoPE buffers.
  """
  state, new, metrics = two_adamw_steps(train_base, 0)
  groups = set(state.params())
  if train_base:
    assert set(state.trainable) == groups - set(dit_config.BUFFER_GROUPS)
    assert set(state.frozen) == set(dit_config.BUFFER_GROUPS) & groups
  else:
    assert set(state.trainable) == set(dit_config.TRAINABLE_GROUPS) & groups and state.trainable
    assert set(state.frozen) == groups - set(dit_config.TRAINABLE_GROUPS)
  adam = state.opt_state.inner_state[0]
  assert jax.tree.structure(adam.mu) == jax.tree.structure(state.trainable)

  for m in metrics:
    assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["grad_norm"]))
  for path, leaf in traverse_util.flatten_dict(state.frozen).items():
    np.testing.assert_array_equal(np.asarray(traverse_util.flatten_dict(new.frozen)[path]), np.asarray(leaf),
                                  err_msg=str(path))
  old_t, new_t = traverse_util.flatten_dict(state.trainable), traverse_util.flatten_dict(new.trainable)
  moved = [p for p in old_t if not np.array_equal(np.asarray(old_t[p]), np.asarray(new_t[p]))]
  # With lr 1e-2 (after one warm-up step) nearly every trained tensor moves.
  assert len(moved) >= 0.5 * len(old_t), (len(moved), len(old_t))
  if train_base:
    assert any(p[0] not in dit_config.TRAINABLE_GROUPS for p in moved), "the base must train with train_base=True"


@pytest.mark.slow  # ~27 s; the default run checks the projected text at the model (test_dit)
def test_projected_text_gives_the_raw_loss_and_control_gradients():
  """Issue 16: a batch of projected embeddings (crossattn_proj applied outside, as the projected text cache stores)
  gives the loss and the control-branch gradients of the raw batch, dropped views included (float32; loss to 1e-6
  relative, every gradient leaf to 1e-5 of its largest entry)."""
  from agibot_jax.text.cache import project_context

  config = small_config(**{"model.text_dropout": 0.5})
  cfg, model, state, _ = build(config, gradient_capture())
  batch = synthetic_batch(cfg, 2)
  proj = state.frozen["crossattn_proj"]
  projected = {**batch, "crossattn_emb_BMC": project_context(batch["crossattn_emb_BMC"], proj["kernel"],
                                                              proj["bias"])}
  loss_fn = make_loss_fn(model, config)
  grad_fn = jax.jit(jax.value_and_grad(lambda t, micro: loss_fn(t, state.frozen, micro), has_aux=True))
  key = jax.random.key(3)
  keep = objective_keep(key, config, batch)
  assert not keep.all() and keep.any(), keep  # the draw drops some views and keeps others
  (loss_raw, _), grads_raw = grad_fn(state.trainable, {**batch, "key": key})
  (loss_proj, _), grads_proj = grad_fn(state.trainable, {**projected, "key": key})
  assert float(loss_proj) == pytest.approx(float(loss_raw), rel=1e-6)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(grads_raw)[0], jax.tree.leaves(grads_proj)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-5 * float(np.abs(a).max()) + 1e-12,
                               err_msg=jax.tree_util.keystr(path))


def objective_keep(key, config, batch) -> np.ndarray:
  """The text keep mask the step draws with `key`."""
  from agibot_jax.training import objective

  draws = objective.sample_draws(key, objective.ObjectiveConfig.from_config(config), batch["x0_BTHWC"].shape, 3)
  return np.asarray(draws.text_keep_BV)


@pytest.mark.slow  # ~43 s (two step compiles with host memory spaces)
def test_optimizer_state_in_host_memory_gives_the_same_step():
  # model.offload_optimizer_state keeps the Adam moments and EMA in pinned host memory between steps (issue 23): the
  # step's results are bit-identical, and they come back to host memory.
  from agibot_jax import assemble, sharding

  results = {}
  for offload in (False, True):
    config = small_config(**{"model.offload_optimizer_state": offload})
    cfg, mesh = dit_config.DiTConfig.from_config(config.model.net), sharding.make_mesh(**config.mesh)
    tx, ema = optim.make_optimizer(config), ema_lib.PowerEMA.from_config(config)
    _, state_sh, make = assemble.state_target(config, cfg, mesh, tx, ema)
    state = jax.jit(make, out_shardings=state_sh)(jax.jit(lambda k: dit.init_params(cfg, k))(jax.random.key(0)))
    step = jax.jit(make_train_step(dit.MultiViewControlDiT(cfg), tx, config, ema), out_shardings=(state_sh, None))
    for i in range(2):
      state, metrics = step(state, synthetic_batch(cfg, 1, seed=i))
    results[offload] = (state, metrics)
  (plain, plain_metrics), (offloaded, offloaded_metrics) = results[False], results[True]
  assert float(plain_metrics["loss"]) == float(offloaded_metrics["loss"])
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(offloaded)[0], jax.tree.leaves(plain)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
  kinds = lambda tree: {a.sharding.memory_kind for a in jax.tree.leaves(tree) if a.ndim}
  assert kinds(offloaded.opt_state) == kinds(offloaded.ema) == {"pinned_host"}
  assert kinds(offloaded.trainable) == kinds(plain.opt_state) == {"device"}


def test_lora_starts_at_the_base_and_trains_only_its_adapters():
  """Issue 30: LoRA at rank 4 (B = 0) gives the full control branch's step-0 loss bit for bit (float32); two AdamW
  steps then move every adapter and the control embedder and before_proj, while the control blocks' kernels and
  the rest of the base stay bit-identical."""
  _, _, base_metrics = two_adamw_steps(False, 0)  # shared with test_trainable_partition_and_frozen_base[False]
  state, new, metrics = two_adamw_steps(False, 4)
  assert float(metrics[0]["loss"]) == float(base_metrics[0]["loss"])
  assert float(metrics[1]["loss"]) != float(base_metrics[1]["loss"]), "the two trainings differ after their first step"

  flat = lambda tree: traverse_util.flatten_dict(jax.tree.map(np.asarray, tree))
  old_t, new_t = flat(state.trainable), flat(new.trainable)
  assert {p[0] for p in old_t} == {"control_blocks", "control_embedder", "control_before_proj"}
  assert all(p[-1] in ("lora_a", "lora_b") for p in old_t if p[0] == "control_blocks")
  assert not any(p[-1] == "lora_b" and a.any() for p, a in old_t.items())
  adam = state.opt_state.inner_state[0]
  assert jax.tree.structure(adam.mu) == jax.tree.structure(adam.nu) == jax.tree.structure(state.ema) == \
      jax.tree.structure(state.trainable), "Adam moments and EMA cover the adapters (+ train_in_full) only"
  unmoved = [p for p in old_t if np.array_equal(old_t[p], new_t[p])]
  assert not unmoved, unmoved
  old_f, new_f = flat(state.frozen), flat(new.frozen)
  assert ("control_blocks", "mlp_layer1", "kernel") in old_f
  for path, leaf in old_f.items():
    np.testing.assert_array_equal(new_f[path], leaf, err_msg=str(path))
