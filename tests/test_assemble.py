"""agibot_jax/assemble.py: the launch environment, the random VAE's log line, the rig's network, the LoRA state."""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from agibot_jax import assemble, params_io, preflight, sharding
from agibot_jax.models import dit_config, lora
from agibot_jax.training import ema as ema_lib
from agibot_jax.training import optimizer as optim
from configs import base, edge
from tests.test_preflight import TWO_CAMERAS
from tests.training.lora_setup import abstract_params, random_params


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"SLURM_NTASKS": "1"}, None),
    ({"SLURM_NTASKS": "4"}, {}),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, {}),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
     {"num_processes": 2, "process_id": 1}),
])
def test_distributed_init_args(environ, expected):
  assert assemble.distributed_init_args(environ) == expected


def test_distributed_init_args_needs_process_count():
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
    assemble.distributed_init_args({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})


def test_a_random_vae_beside_a_latent_cache_says_what_it_is_for(monkeypatch, caplog):
  """Issue 31, item 10: training from the latent cache does not log a bare "VAE: randomly initialised"."""
  class Built(Exception):
    pass

  def init_params(*args, **kwargs):
    raise Built  # stop before compiling the VAE's initialisation

  monkeypatch.setattr(assemble.vae_lib, "init_params", init_params)
  config = base.get_config("edge", "tiny")
  config.dataloader_train.dataset.latent_cache_dir = "/data/latents"
  caplog.set_level("INFO", logger="agibot_jax")
  with pytest.raises(Built):
    assemble.build_vae(config)
  assert ("VAE: randomly initialised (demo; it decodes sample videos only: training reads the latent cache "
          "/data/latents; set model.tokenizer.path for real weights)") in caplog.text


def test_agibot_rig_builds_todays_network_step_and_resumes_todays_checkpoints():
  """The agibot rig (the default) gives the network and train step main gave (be348e4: cross_view_attn_map set in
  configs/base.py, 3 views): with equal batches (tests/data/test_pipeline.py), the losses are bit-identical (and
  tests/training/test_train.py checks them against values recorded from main, slow run). A checkpoint main wrote
  resumes; another rig does not."""
  from agibot_jax.training import checkpointing, step

  config = preflight.resolve(base.get_config("edge", "tiny"))
  todays = dit_config.DiTConfig.from_config({**config.model.net, "cross_view_attn_map": ((1, 2), (0, 2), (0, 1))})
  assert assemble.dit_config(config) == todays
  assert step.StepConfig.from_config(config).num_views == 3
  saved = json.loads(config.to_json_best_effort())
  mains = json.loads(config.to_json_best_effort())
  del mains["rig"]
  mains["model"]["net"]["cross_view_attn_map"] = [[1, 2], [0, 2], [0, 1]]
  structural, other = checkpointing.config_changes(mains, saved)
  assert structural == [] and [c.split(":")[0] for c in other] == ["model.net.cross_view_attn_map", "rig"]
  two = base.get_config("edge", "tiny")
  two.rig = TWO_CAMERAS
  two = preflight.resolve(two)
  assert assemble.dit_config(two).cross_view_attn_map == ((1,), (0,), ())
  structural, _ = checkpointing.config_changes(saved, json.loads(two.to_json_best_effort()))
  assert [c.split(":")[0] for c in structural] == ["dataloader_train.dataset.views", "rig"]


def lora_config(tmp_path):
  config = edge.get_config("tiny")
  config.model.precision = "bfloat16"
  config.model.lora.rank = 4
  config.checkpoint.load_path = str(tmp_path / "dit")
  return config


def test_lora_state_dtypes_freeze_the_control_kernels_in_the_precision(tmp_path):
  """Issue 30: with LoRA, `initial_state` reads the control blocks' kernels in `model.precision` (they join the frozen
  base), the groups still trained in full in float32. The build itself: the slow test below."""
  config = lora_config(tmp_path)
  cfg = dit_config.DiTConfig.from_config(config.model.net)
  dtypes = traverse_util.flatten_dict(assemble.state_dtypes(config, abstract_params(cfg)))
  assert dtypes[("control_blocks", "mlp_layer1", "kernel")] == np.dtype("bfloat16")
  assert dtypes[("control_embedder", "kernel")] == np.dtype("float32")


@pytest.mark.slow  # compiles the state's init (~8-20 s); the default run checks the dtypes it reads (test above)
def test_lora_state_builds_from_converted_weights_read_in_the_state_dtypes(tmp_path):
  """Issue 30: `initial_state` from a converted DiT builds the LoRA state target's shapes and dtypes: the weights as
  stored (cast), the adapters drawn from the seed (`lora.init_adapters`), B = 0."""
  config = lora_config(tmp_path)
  cfg = dit_config.DiTConfig.from_config(config.model.net)
  params = random_params(cfg)
  params_io.save_params(config.checkpoint.load_path, params, {"model": "dit"})
  tx, ema = optim.make_optimizer(config), ema_lib.PowerEMA.from_config(config)
  target, shardings, make = assemble.state_target(config, cfg, sharding.make_mesh(1, 1, 1), tx, ema)
  state = assemble.initial_state(config, cfg, sharding.make_mesh(1, 1, 1), make, shardings)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), state) == jax.tree.map(lambda a: (a.shape, a.dtype), target)
  got = traverse_util.flatten_dict(optim.merge_params(state.trainable, state.frozen))
  want = traverse_util.flatten_dict(params)
  want.update(traverse_util.flatten_dict(jax.tree.map(np.asarray, lora.init_adapters(
      params, lora.LoraConfig.from_config(config.model), config.seed))))
  assert set(got) == set(want)
  for path, leaf in got.items():
    np.testing.assert_array_equal(np.asarray(leaf), want[path].astype(leaf.dtype), err_msg=str(path))
  assert not want[("control_blocks", "mlp_layer1", "lora_b")].any()
