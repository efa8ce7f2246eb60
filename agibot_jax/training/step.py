"""One training step as a pure function of (state, model batch).

The model batch holds what the network consumes, already on device: VAE latents of the video and
of the control video, the raw text embedding, view ids and the padding mask. It comes either from
online encoding (`agibot_jax.assemble.model_batch`) or from the latent/text caches, so the step is the
same either way.

  model batch:
    x0_BTHWC               float32 (B, V·T, h, w, 16) normalised video latent, view-major
    control_BTHWC          float32 (B, V·T, h, w, 16) control latent
    crossattn_emb_BMC      (B, V·512, C) text embedding, raw or projected (dropout happens in the network)
    view_indices_BT        int32 (B, V·T)
    padding_mask_BHW       float32 (B, H, W) pixel-space padding mask
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from agibot_jax import rig as rig_lib
from agibot_jax.models import dit, lora
from agibot_jax.training import ema as ema_lib
from agibot_jax.training import objective
from agibot_jax.training import optimizer as optim
from agibot_jax.training import state as state_lib
from agibot_jax.training.state import TrainState


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the step (hashable, so the step can be a jit static argument)."""

  objective: objective.ObjectiveConfig
  clip_norm: float
  grad_accum: int
  num_views: int

  @classmethod
  def from_config(cls, config) -> "StepConfig":
    return cls(objective.ObjectiveConfig.from_config(config), float(config.optimizer.clip_norm),
               int(config.trainer.grad_accum_iter), len(rig_lib.of_config(config).cameras))


def network_fn(model: dit.MultiViewControlDiT, params, batch: dict[str, Any],
               control_weight: float) -> objective.ApplyFn:
  """The network as the objective's `apply_fn`: the batch's control latent, view ids and padding mask bound."""

  def apply_fn(x_in, timesteps, context, mask, text_keep):
    return model.apply({"params": params}, x_in, timesteps, context, batch["control_BTHWC"], mask,
                       batch["view_indices_BT"], batch["padding_mask_BHW"], control_weight, text_keep)

  return apply_fn


def make_loss_fn(model: dit.MultiViewControlDiT, config):
  """`loss_fn(trainable, frozen, micro) -> (loss, ())` for one (micro-)batch carrying its PRNG key at "key".

  LoRA adapters in `trainable` are merged into their frozen kernels here, so their gradients come through the
  effective kernels W + (alpha/rank)·A@B (models/lora.py).
  """
  step_cfg = StepConfig.from_config(config)
  compute_dtype = jnp.dtype(model.cfg.dtype)
  control_weight = float(config.model.control_weight)
  lora_scale = lora.LoraConfig.from_config(config.model).scale
  kernel_dtype = functools.partial(dit.kernel_compute_dtype, model.cfg)  # merged kernels as their layers compute

  def loss_fn(trainable, frozen, micro):
    params = lora.merged(optim.merge_params(trainable, frozen), lora_scale, kernel_dtype)
    apply_fn = network_fn(model, params, micro, control_weight)
    draws = objective.sample_draws(micro["key"], step_cfg.objective, micro["x0_BTHWC"].shape, step_cfg.num_views)
    loss, _ = objective.rectified_flow_loss(apply_fn, micro["x0_BTHWC"], micro["crossattn_emb_BMC"], draws,
                                            num_views=step_cfg.num_views, compute_dtype=compute_dtype)
    return loss, ()

  return loss_fn


def step_key(state: TrainState) -> jax.Array:
  """The step's PRNG key: a function of the run's key and the step only, so a resumed run draws the same."""
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def make_train_step(model: dit.MultiViewControlDiT, tx: optax.GradientTransformation, config,
                    ema: ema_lib.PowerEMA | None):
  """`train_step(state, batch) -> (state, metrics)`, pure and jit-able.

  With `trainer.grad_accum_iter` = k > 1 the batch is split into k micro-batches of B/k samples along
  the batch axis, micro-batch i drawing with `jax.random.split(step_key(state), k)[i]`.

  A step whose loss or gradient norm is not finite changes nothing but the step count: the trainable weights, the
  optimizer state (Adam moments, update count) and the EMA are returned as they came in. Its metrics say so
  (`nonfinite` 1, else 0) and carry the real gradient norm, taken before the optimizer zeroes non-finite entries.
  """
  step_cfg = StepConfig.from_config(config)
  loss_fn = make_loss_fn(model, config)
  offloaded = bool(config.model.offload_optimizer_state)

  def train_step(state: TrainState, batch: dict[str, Any]):
    key = step_key(state)
    grad_fn = jax.value_and_grad(lambda t, micro: loss_fn(t, state.frozen, micro), has_aux=True)
    k = step_cfg.grad_accum
    if k == 1:
      (loss, _), grads = grad_fn(state.trainable, {**batch, "key": key})
    else:
      b = batch["x0_BTHWC"].shape[0]
      if b % k:
        raise ValueError(f"batch size {b} is not divisible by trainer.grad_accum_iter={k}")
      micro = jax.tree.map(lambda a: a.reshape((k, b // k) + a.shape[1:]), batch)
      micro["key"] = jax.random.split(key, k)
      loss, _, grads = optim.accumulate_gradients(grad_fn, state.trainable, micro)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update(trainable, opt_state, ema_state):
      trainable, opt_state, _ = optim.apply_gradients(tx, trainable, opt_state, grads, step_cfg.clip_norm)
      return trainable, opt_state, None if ema is None else ema.update(ema_state, trainable, state.step)

    # A conditional rather than a select over the trees: a select keeps the old and the new weights, moments and EMA
    # alive together (0.6 GiB more at the 2B step's peak, measured), a conditional updates them in place.
    opt_state, ema_state = state.opt_state, None if ema is None else state.ema
    if offloaded:  # from host memory for the update only (state.py)
      # XLA starts a copy as soon as its operand exists: at the step's start, which kept the moments and the EMA on
      # the device through the forward and backward. Tied to the gradients by the barrier, they are copied after the
      # backward (2.35 GiB off the 2B step at 432x768 in the MLP-slices plan, measured: BENCHMARKS.md).
      (opt_state, ema_state), grads = jax.lax.optimization_barrier(((opt_state, ema_state), grads))
      opt_state, ema_state = state_lib.to_memory((opt_state, ema_state), jax.memory.Space.Device)
    trainable, opt_state, new_ema = jax.lax.cond(finite, update, lambda *old: old, state.trainable, opt_state,
                                                 ema_state)
    if offloaded:
      opt_state, new_ema = state_lib.to_memory((opt_state, new_ema), jax.memory.Space.Host)
    metrics = {"loss": loss, "grad_norm": grad_norm, "nonfinite": (~finite).astype(jnp.int32)}
    if optim.learning_rate(opt_state) is not None:
      metrics["lr"] = optim.learning_rate(opt_state)
    return state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state, ema=new_ema), metrics

  return train_step
