"""The train state (agibot_jax/training/state.py) with LoRA on the control blocks (issue 30): what trains, what it
costs, where the adapters are placed, and the merged weights the state gives to sampling and validation. Abstract
states (eval_shape) and NumPy-sized arrays only: no network is compiled here."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import AbstractMesh, AxisType

from agibot_jax.models import dit, dit_config
from agibot_jax.training import ema as ema_lib
from agibot_jax.training import optimizer as optim
from agibot_jax.training.state import new_state, state_shardings
from configs import edge
from tests.training.lora_setup import abstract_params, lora_state

FULL_BRANCH = 365_081_600  # the 2B's control branch (tests/convert/test_dit.py)


def abstract_state(config):
  cfg = dit_config.DiTConfig.from_config(config.model.net)
  tx, ema = optim.make_optimizer(config), ema_lib.PowerEMA.from_config(config)
  return jax.eval_shape(lambda p: new_state(p, config, tx, ema, seed=0), abstract_params(cfg))


def size(tree) -> int:
  return sum(math.prod(a.shape) for a in jax.tree.leaves(tree))


def nbytes(tree) -> int:
  return sum(math.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(tree) if a.ndim)


@pytest.fixture(scope="module")
def full_2b():
  return abstract_state(edge.get_config(""))


@pytest.mark.parametrize("rank, trainable", [(16, 10_602_496), (64, 29_378_560)])
def test_lora_trains_r_times_in_plus_out_per_kernel_and_shrinks_the_state(full_2b, rank, trainable):
  """2B: every control-block kernel (blocks, in, out) trains blocks·r·(in + out) adapter parameters, plus the control
  embedder and before_proj in full; master, two Adam moments and EMA are 16 bytes per trained parameter (5.44 GiB
  for the full branch); the control blocks' 361M parameters join the frozen base in bfloat16."""
  config = edge.get_config("")
  config.model.lora.rank = rank
  state = abstract_state(config)
  kernels = [leaf.shape for path, leaf in traverse_util.flatten_dict(full_2b.trainable).items()
             if path[0] == "control_blocks" and path[-1] == "kernel"]
  in_full = size(full_2b.trainable["control_embedder"]) + size(full_2b.trainable["control_before_proj"])
  assert len(kernels) == 21 and in_full == 4_343_808
  assert size(state.trainable) == sum(b * rank * (i + o) for b, i, o in kernels) + in_full == trainable
  assert size(full_2b.trainable) == FULL_BRANCH
  state_bytes = nbytes((state.trainable, state.opt_state, state.ema))
  assert state_bytes == 16 * trainable and nbytes((full_2b.trainable, full_2b.opt_state, full_2b.ema)) == 16 * FULL_BRANCH
  assert nbytes(state.frozen) - nbytes(full_2b.frozen) == 2 * (FULL_BRANCH - in_full)
  assert all(a.dtype == np.float32 for a in jax.tree.leaves(state.trainable))
  assert {a.dtype for a in jax.tree.leaves(state.frozen["control_blocks"])} == {np.dtype("bfloat16")}


def test_adapters_are_sharded_like_their_kernel_with_the_rank_replicated():
  config = edge.get_config("tiny")
  config.model.lora.rank = 4
  state = abstract_state(config)
  mesh = AbstractMesh((1, 2, 1), ("data", "fsdp", "context"), axis_types=(AxisType.Auto,) * 3)
  shardings = state_shardings(state,
                              dit.abstract_params(dit_config.DiTConfig.from_config(config.model.net), boxed=True), mesh)
  spec = lambda tree, *path: tuple(traverse_util.flatten_dict(tree)[path].spec)
  mlp2, q = ("control_blocks", "mlp_layer2"), ("control_blocks", "self_attn", "q_proj")
  assert spec(shardings.frozen, *mlp2, "kernel") == (None, None, "fsdp")  # (layers, mlp, embed)
  for tree in (shardings.trainable, shardings.ema, shardings.opt_state.inner_state[0].mu):
    assert spec(tree, *mlp2, "lora_a") == (None, None, None) and spec(tree, *mlp2, "lora_b") == (None, None, "fsdp")
    assert spec(tree, *q, "lora_a") == (None, "fsdp", None) and spec(tree, *q, "lora_b") == (None, None, None)
  assert shardings.lora_scale == state.lora_scale == 4.0


def test_params_and_ema_params_merge_the_adapters():
  """What the sample callback and the validation loss run with: W + (alpha/r)·A@B, regular or EMA adapters."""
  config = edge.get_config("tiny")
  config.model.lora.rank, config.model.lora.alpha = 4, 2.0
  state = lora_state(config)
  path = ("control_blocks", "cross_attn", "k_proj")
  w = np.asarray(traverse_util.flatten_dict(state.frozen)[path + ("kernel",)])
  for params, branch in ((state.params(), state.trainable), (state.ema_params(), state.ema)):
    flat, adapters = traverse_util.flatten_dict(params), traverse_util.flatten_dict(branch)
    a, b = np.asarray(adapters[path + ("lora_a",)]), np.asarray(adapters[path + ("lora_b",)])
    np.testing.assert_allclose(np.asarray(flat[path + ("kernel",)]), w + 0.5 * a @ b, rtol=1e-6, atol=1e-7)
    assert not any(p[-1] in ("lora_a", "lora_b") for p in flat)
    assert set(flat) == set(traverse_util.flatten_dict(
        abstract_params(dit_config.DiTConfig.from_config(config.model.net))))
