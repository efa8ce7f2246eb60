"""A LoRA train state of the tiny DiT without compiling the network: random weights of the right shapes, adapters
that are not zero, and an EMA that differs from them (for the merge tests of the state, sampling and export)."""

from __future__ import annotations

import functools

import jax
import numpy as np

from agibot_jax.models import dit
from agibot_jax.training import ema as ema_lib
from agibot_jax.training import optimizer as optim
from agibot_jax.training.state import TrainState, new_state


@functools.cache
def abstract_params(cfg: dit.DiTConfig) -> dict:
  """`dit.abstract_params`, traced once per test session and DiT config (a trace of the init takes 1-2 s)."""
  return dit.abstract_params(cfg)


def random_params(cfg: dit.DiTConfig, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: (0.05 * rng.standard_normal(a.shape)).astype(a.dtype), abstract_params(cfg))


def lora_state(config) -> TrainState:
  """`new_state` of `config` (LoRA on) from random weights, with B ~ 0.1·N(0, 1) and EMA = regular + 0.01."""
  cfg = dit.DiTConfig.from_config(config.model.net)
  state = new_state(random_params(cfg), config, optim.make_optimizer(config), ema_lib.PowerEMA.from_config(config),
                    seed=0)
  rng = np.random.default_rng(1)
  trainable = jax.tree_util.tree_map_with_path(
      lambda path, a: (0.1 * rng.standard_normal(a.shape)).astype(a.dtype) if path[-1].key == "lora_b" else a,
      state.trainable)
  return state.replace(trainable=trainable, ema=jax.tree.map(lambda a: a + 0.01, trainable))
