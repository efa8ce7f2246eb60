"""Fixtures shared by the sampling tests."""

import pytest

from configs import edge
from tests.sampling import tiny_setup


@pytest.fixture(scope="session")
def tiny_models():
  """(config, DiT model, DiT params, VAE model, VAE params) of configs/edge.py:tiny."""
  config = edge.get_config("tiny")
  return (config,) + tiny_setup.tiny_models(config)
