"""agibot_jax/assemble.py: the launch environment, the text provider's checks, the random VAE's log line."""

import pytest

from agibot_jax import assemble
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
