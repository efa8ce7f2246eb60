"""`DiTConfig`: construction from `config.model.net` and from the reference constructor's kwargs."""

import json

import pytest

from agibot_jax.models import dit_config


def test_config_rejects_unknown_keys():
  with pytest.raises(KeyError, match="nonsense"):
    dit_config.DiTConfig.from_config({"nonsense": 1})


def test_unsupported_reference_options_are_rejected(golden_dir):
  meta = json.loads((golden_dir / "dit_tiny.json").read_text())
  kwargs = dict(meta["constructor_kwargs"], concat_view_embedding=True)
  with pytest.raises(ValueError, match="concat_view_embedding"):
    dit_config.DiTConfig.from_reference_kwargs(kwargs)
