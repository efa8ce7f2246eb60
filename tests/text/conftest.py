"""Fixtures for the text-encoder tests: a tiny local tokenizer with the Qwen2.5-VL chat template."""

import pytest

from agibot_jax.text.demo import build_demo_tokenizer as build_tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tokenizer")
  build_tokenizer().save_pretrained(path)
  return str(path)
