"""Trainable/frozen split, AdamW, gradient clipping and accumulation (spec/training.md §6, §12.8–9).

- Only the control branch trains (`model.train_base=False`): the parameter tree is *partitioned*
  into a trainable and a frozen tree, so the frozen base never enters the optimizer (no Adam
  moments, no weight decay, no gradient). With `model.lora.rank` > 0 the control blocks' kernels
  are frozen too and their LoRA adapters train (models/lora.py).
- Trainable parameters are float32 masters; the frozen base may be kept in bf16.
- AdamW b1 0.9, b2 0.99, eps 1e-8, decoupled weight decay 0.1 on *every* trainable tensor
  (biases and norm gains too), learning rate lr · LambdaLinear(step).
- Before each update: non-finite gradient entries are set to 0, then the global L2 norm is
  clipped with scale min(1, clip / (norm + 1e-6)); the pre-clip norm is what gets logged.
- Gradient accumulation over `trainer.grad_accum_iter` micro-batches averages the gradients
  (the reference divides each micro-batch loss by the count) and clips once, on the average.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from agibot_jax.training.schedule import learning_rate_schedule

Params = dict[str, Any]
PathPredicate = Callable[[tuple[str, ...]], bool]


def trainable_predicate(config) -> PathPredicate:
  """Which parameter paths train: all but buffers with `model.train_base`; with `model.lora.rank` > 0 the control
  blocks' adapters and `model.lora.train_in_full` (models/lora.py); else the control branch."""
  from agibot_jax.models import dit_config, lora

  if config.model.train_base:
    return lambda path: str(path[0]) not in dit_config.BUFFER_GROUPS
  lora_cfg = lora.LoraConfig.from_config(config.model)
  return lora_cfg.is_trainable if lora_cfg.rank else dit_config.is_trainable


def partition_params(params: Params, is_trainable: PathPredicate) -> tuple[Params, Params]:
  """Split a nested parameter dict into (trainable, frozen) trees holding disjoint leaves.

  Trainable leaves are cast to float32 (the master weights); frozen leaves keep their dtype.
  """
  trainable, frozen = {}, {}
  for path, leaf in traverse_util.flatten_dict(params).items():
    if is_trainable(path):
      trainable[path] = leaf if leaf.dtype == np.float32 else leaf.astype(np.float32)
    else:
      frozen[path] = leaf
  if not trainable:
    raise ValueError("no trainable parameters: the predicate rejected every path of the parameter tree")
  return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge_params(trainable: Params, frozen: Params) -> Params:
  """The full parameter tree from the two partitions."""
  flat = traverse_util.flatten_dict(frozen)
  flat.update(traverse_util.flatten_dict(trainable))
  return traverse_util.unflatten_dict(flat)


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW with the LambdaLinear learning rate, from `config.optimizer` and `config.scheduler`.

  optax's update count starts at 0, so the first update uses lr · f(0), as in the reference. The learning rate is
  an injected hyperparameter: the optimizer state holds the rate its last update applied (`learning_rate`), which
  the step logs, so the schedule is evaluated in one place. Weight decay has no mask: every trainable tensor is
  decayed (§12.8).
  """
  opt = config.optimizer
  b1, b2 = (float(b) for b in opt.betas)
  adamw = optax.inject_hyperparams(optax.adamw, static_args=("b1", "b2", "eps", "weight_decay", "mu_dtype"))
  return adamw(
      learning_rate=learning_rate_schedule(config),
      b1=b1,
      b2=b2,
      eps=float(opt.eps),
      weight_decay=float(opt.weight_decay),
      mu_dtype=jnp.float32,
  )


def learning_rate(opt_state: optax.OptState) -> jax.Array | None:
  """The learning rate of the last update applied with this state: `make_optimizer`'s injected hyperparameter (None
  for an optimizer without one)."""
  hyperparams = getattr(opt_state, "hyperparams", None)
  return None if hyperparams is None else hyperparams["learning_rate"]


def clip_gradients(grads: Any, clip_norm: float) -> tuple[Any, jax.Array]:
  """Zero non-finite entries, then clip the global L2 norm to `clip_norm`.

  Returns (clipped gradients, pre-clip global norm as float32). The norm is taken after the
  non-finite entries are zeroed, like the reference.
  """
  grads = jax.tree.map(lambda g: jnp.where(jnp.isfinite(g), g, jnp.zeros_like(g)), grads)
  norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads)))
  scale = jnp.minimum(1.0, clip_norm / (norm + 1e-6))
  return jax.tree.map(lambda g: (g * scale).astype(g.dtype), grads), norm


def apply_gradients(
    optimizer: optax.GradientTransformation,
    trainable: Params,
    opt_state: optax.OptState,
    grads: Params,
    clip_norm: float,
) -> tuple[Params, optax.OptState, jax.Array]:
  """Clip and apply one optimizer update. Returns (new trainable, new state, pre-clip grad norm)."""
  grads, grad_norm = clip_gradients(grads, clip_norm)
  updates, opt_state = optimizer.update(grads, opt_state, trainable)
  return optax.apply_updates(trainable, updates), opt_state, grad_norm


def accumulate_gradients(
    loss_and_grad_fn: Callable[[Params, Any], tuple[tuple[jax.Array, Any], Params]],
    trainable: Params,
    microbatches_K: Any,
) -> tuple[jax.Array, Any, Params]:
  """Average loss and gradients over K micro-batches (leading axis of every leaf), one at a time.

  Args:
    loss_and_grad_fn: `jax.value_and_grad(loss_fn, has_aux=True)`-style function,
      (trainable, microbatch) -> ((loss, aux), grads). A micro-batch should carry its own PRNG key.
    trainable: the trainable parameters.
    microbatches_K: a pytree whose leaves have a leading axis K = `trainer.grad_accum_iter`.
  Returns:
    (mean loss, aux of the last micro-batch, mean gradients in float32).
  """
  num = jax.tree.leaves(microbatches_K)[0].shape[0]

  def step(acc, microbatch):
    (loss, aux), grads = loss_and_grad_fn(trainable, microbatch)
    acc_loss, acc_grads = acc
    acc_grads = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc_grads, grads)
    return (acc_loss + loss.astype(jnp.float32), acc_grads), aux

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable)
  (loss_sum, grad_sum), aux_K = jax.lax.scan(step, (jnp.zeros((), jnp.float32), zeros), microbatches_K)
  aux = jax.tree.map(lambda a: a[-1], aux_K)
  return loss_sum / num, aux, jax.tree.map(lambda g: g / num, grad_sum)
