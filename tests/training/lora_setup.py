"""A LoRA train state of the tiny DiT without computing anything in JAX: random weights of the right shapes, adapters
that are not zero, and an EMA that differs from them (for the merge tests of the state, sampling and export)."""

from __future__ import annotations

import functools

import jax
import numpy as np

from agibot_jax.models import dit, dit_config
from agibot_jax.training import ema as ema_lib
from agibot_jax.training import optimizer as optim
from agibot_jax.training.state import TrainState, new_state


@functools.cache
def abstract_params(cfg: dit_config.DiTConfig) -> dict:
  """`dit.abstract_params`, traced once per test session and DiT config (a trace of the init takes 1-2 s)."""
  return dit.abstract_params(cfg)


def random_params(cfg: dit_config.DiTConfig, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: (0.05 * rng.standard_normal(a.shape)).astype(a.dtype), abstract_params(cfg))


def lora_state(config) -> TrainState:
  """A state of `config` (LoRA on) shaped as `new_state` makes it, filled with NumPy draws (B not zero) and an EMA
  that differs from the regular branch by 0.01: no JAX computation, so nothing to compile."""
  cfg = dit_config.DiTConfig.from_config(config.model.net)
  tx, ema = optim.make_optimizer(config), ema_lib.PowerEMA.from_config(config)
  abstract = jax.eval_shape(lambda p: new_state(p, config, tx, ema, seed=0), abstract_params(cfg))
  rng = np.random.default_rng(1)
  state = jax.tree.map(lambda a: (0.1 * rng.standard_normal(a.shape)).astype(a.dtype)
                       if np.issubdtype(a.dtype, np.floating) else np.zeros(a.shape, a.dtype), abstract)
  return state.replace(ema=jax.tree.map(lambda a: a + 0.01, state.trainable))
