"""agibot_jax/assemble.py: the launch environment, memory plans, the text provider's checks."""

import pytest

from agibot_jax import assemble, cli, preflight
from configs import base


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


def test_memory_budget_picks_the_fastest_plan_that_fits():
  # model.memory_budget_gib (issue 23): the plans are measured in turn and the first that fits is taken; no plan
  # fitting is a ConfigError that lists what each needs. Scripted needs here; the compiled measure below.
  config = base.get_config("edge", "tiny")
  resolved = preflight.resolve(config)
  assert assemble.choose_memory_plan(resolved, None, 96) is resolved  # budget 0: the settings as written

  needs = iter([5.0, 3.0, 2.0, 1.5, 1.0])
  measured = []

  def measure(candidate, mesh, text_channels):
    measured.append(candidate)
    return {"argument_gib": next(needs), "output_gib": 1.0, "alias_gib": 1.0, "temp_gib": 0.0}

  config.model.memory_budget_gib = 2.5
  chosen = assemble.choose_memory_plan(preflight.resolve(config), None, 96, measure=measure)
  assert len(measured) == 3 and chosen is measured[-1]
  assert chosen.model.net.remat_policy == "full" and chosen.model.net.offload_block_inputs
  assert not chosen.model.offload_optimizer_state and chosen.model.net.mlp_chunks == 1
  assert resolved.model.net.remat_policy == "none"  # the input config is unchanged

  needs = iter([5.0, 3.0, 2.0, 1.5, 1.0])
  config.model.memory_budget_gib = 0.5
  with pytest.raises(cli.ConfigError, match=r"memory_budget_gib=0.5: no memory plan fits \(as configured: 5 "):
    assemble.choose_memory_plan(preflight.resolve(config), None, 96, measure=measure)
  smallest = measured[-1]
  # The tiny clip has 3 x 4 x 6 = 72 tokens per view: 8 slices.
  assert smallest.model.offload_optimizer_state and smallest.model.net.mlp_chunks == 8


@pytest.mark.slow  # ~12 s (a step compile)
def test_compiled_step_memory_in_gib():
  from agibot_jax import sharding

  config = base.get_config("edge", "tiny")
  config.model.net.num_blocks, config.model.net.vace_block_every_n = 2, 2
  mesh = sharding.make_mesh(**config.mesh)
  parts = assemble.compiled_step_memory(preflight.resolve(config), mesh, 96)
  # The state is donated: its outputs reuse its arguments. The arguments are the state (2.5 M parameters in the
  # float32 masters and bf16/f32 base, Adam moments, EMA) and the batch: well under 1 GiB, well over 10 MiB.
  assert parts["alias_gib"] > 0 and parts["output_gib"] - parts["alias_gib"] < 1e-3
  assert 0.01 < parts["argument_gib"] < 1 and parts["temp_gib"] > 0
  assert assemble.device_memory_gib(parts) == pytest.approx(parts["argument_gib"] + parts["temp_gib"], abs=1e-3)


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
