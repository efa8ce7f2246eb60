"""agibot_jax/assemble.py: config resolution, the launch environment, the text provider's checks."""

import os

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


def test_resolve_fills_paths_into_a_frozen_copy(tmp_path):
  bundle = tmp_path / "base"
  for part in ("dit", "vae", "text_encoder"):
    (bundle / part).mkdir(parents=True)
  config = base.get_config("edge", "tiny")
  config.checkpoint.load_path = str(bundle)
  config.model.text_encoder.path = "my_encoder"
  resolved = assemble.resolve(config, str(tmp_path / "run"))
  assert resolved.checkpoint.load_path == str(bundle / "dit")
  assert resolved.model.tokenizer.path == str(bundle / "vae")
  assert resolved.model.text_encoder.path == os.path.abspath("my_encoder")  # given: kept, made absolute
  assert resolved.dataloader_train.dataset.dataset_dir == str(tmp_path / "run" / assemble.EXAMPLE_DATA)
  assert config.checkpoint.load_path == str(bundle) and config.dataloader_train.dataset.dataset_dir == ""
  with pytest.raises(AttributeError, match="immutable"):
    resolved.seed = 1
