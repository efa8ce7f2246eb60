"""agibot_jax/registry.py: the control types, and that a fifth control type needs only a registry entry."""

import shutil

import numpy as np
import pytest

from agibot_jax import registry, rig
from agibot_jax.data import latent_cache, layout, pipeline, synthetic
from configs import base


def test_controls():
  assert registry.control_types() == ("edge", "depth", "seg", "vis")
  assert [c.name for c in registry.CONTROLS.values() if c.from_files] == ["depth", "seg"]
  assert [c.name for c in registry.CONTROLS.values() if c.randomized] == ["edge", "vis"]
  with pytest.raises(ValueError, match="hdmap.*known"):
    registry.control("hdmap")
  with pytest.raises(ValueError, match="needs `compute`"):
    registry.ControlType("x", "computed", randomized=False)


def invert(frames_THWC, rng, preset):
  """A computed stand-in control for the test below: the negative image."""
  del rng, preset
  return 255 - frames_THWC


@pytest.mark.parametrize("control", [registry.ControlType("normal", "file", randomized=False),
                                     registry.ControlType("invert", "computed", randomized=False,
                                                          compute="tests.test_registry:invert")])
def test_a_fifth_control_type_needs_only_its_registry_entry(control, tmp_path, monkeypatch):
  """A new control (file or computed) registered, with its config: the config, the dataset scan, the loader and the
  latent cache's index take it with no other change."""
  monkeypatch.setitem(registry.CONTROLS, control.name, control)
  dataset = tmp_path / "ds"
  synthetic.write_example(str(dataset), num_samples=2, frames=9, height=64, width=96)
  if control.from_files:
    shutil.copytree(dataset / "control_input_depth", dataset / control.key)
  config = base.get_config(control.name, "tiny")  # what configs/<name>.py would return
  config.dataloader_train.dataset.dataset_dir = str(dataset)
  assert config.dataloader_train.dataset.control_input_type == control.name

  samples, problems = layout.scan(str(dataset), rig.AGIBOT, control.name, 9)
  assert problems == [] and len(samples) == 2
  assert (samples[0].controls is not None) == control.from_files
  sample = pipeline.AgibotMultiviewSource(pipeline.DataSettings.from_config(config))[0]
  if control.from_files:
    depth = pipeline.AgibotMultiviewSource(pipeline.DataSettings(str(dataset), "depth", resolution_hw=(64, 96),
                                                                 num_video_frames=9))[0]
    np.testing.assert_array_equal(sample[control.key], depth["control_input_depth"])
  else:
    np.testing.assert_array_equal(sample[control.key], 255 - sample["video"])
  settings = pipeline.DataSettings.from_config(config)
  assert latent_cache.data_meta(settings)["control_type"] == control.name
