"""agibot_jax/preflight.py: every up-front check, found before any model is built (issue 31; issue 33 rows 2, 3, 6).

Pure-Python checks on configs, folders and config-only checkpoints (tests/conftest.py `write_config_checkpoint`);
the same checks through the commands, one line on stderr and exit status 2, are in tests/test_cli.py.
"""

import dataclasses
import functools
import json
import os
import re

import pytest

from agibot_jax import cli, params_io, preflight
from agibot_jax import rig as rig_lib
from agibot_jax.data import layout, synthetic
from agibot_jax.models import dit_config
from configs import base
from tests.conftest import write_config_checkpoint


def tiny(control_type="edge", **overrides):
  config = base.get_config(control_type, "tiny")
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    setattr(functools.reduce(getattr, parents, config), leaf, value)
  return config


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
  """One 9-frame sample at the tiny configs' aspect ratio."""
  out = tmp_path_factory.mktemp("data")
  synthetic.write_example(str(out), num_samples=1, frames=9, height=48, width=72)
  return str(out)


def test_resolve_fills_paths_into_a_frozen_copy(tmp_path):
  bundle = tmp_path / "base"
  for part in ("dit", "vae", "text_encoder"):
    (bundle / part).mkdir(parents=True)
  config = tiny(**{"checkpoint.load_path": str(bundle), "model.text_encoder.path": "my_encoder"})
  resolved = preflight.resolve(config, str(tmp_path / "run"))
  assert resolved.checkpoint.load_path == str(bundle / "dit")
  assert resolved.model.tokenizer.path == str(bundle / "vae")
  assert resolved.model.text_encoder.path == os.path.abspath("my_encoder")  # given: kept, made absolute
  assert resolved.dataloader_train.dataset.dataset_dir == str(tmp_path / "run" / preflight.EXAMPLE_DATA)
  assert config.checkpoint.load_path == str(bundle) and config.dataloader_train.dataset.dataset_dir == ""
  with pytest.raises(AttributeError, match="immutable"):
    resolved.seed = 1


TWO_CAMERAS = [{"name": "top", "caption_prefix": "The video is captured from a camera above the table."},
               {"name": "wrist", "caption_prefix": "The video is captured from the wrist camera."}]


def test_resolve_records_the_rig_and_its_views(tmp_path):
  resolved = preflight.resolve(base.get_config("edge", "tiny"))
  assert resolved.rig == "agibot"
  assert resolved.dataloader_train.dataset.views == ("head_color", "hand_left", "hand_right")
  config = base.get_config("edge", "tiny")
  config.rig = TWO_CAMERAS
  config.dataloader_train.dataset.views = ("wrist",)
  resolved = preflight.resolve(config)  # a list of cameras becomes JSON text: a frozen config holds no dicts in lists
  assert rig_lib.parse(resolved.rig).names == ("top", "wrist") and resolved.dataloader_train.dataset.views == ("wrist",)
  (tmp_path / "rig.json").write_text(json.dumps(rig_lib.AGIBOT.to_json()))
  config.rig, config.dataloader_train.dataset.views = str(tmp_path / "rig.json"), ()
  assert preflight.resolve(config).rig == "agibot"  # the preset's cameras, from a file
  config.dataloader_train.dataset.views = ("wrist",)
  with pytest.raises(cli.ConfigError, match=r"^dataloader_train.dataset.views=\('wrist',\): must be distinct "
                                            r"cameras of rig agibot .*not cameras of it: wrist$"):
    preflight.resolve(config)


def test_check_config_names_what_contradicts_the_rig():
  config = base.get_config("edge", "tiny")
  config.model.net.n_cameras_emb = 2
  config.model.net.cross_view_attn_map = ((1,), (0,))
  with pytest.raises(cli.ConfigError) as e:
    preflight.check_config(preflight.resolve(config))
  assert "model.net.n_cameras_emb=2: rig agibot (head_color=0, hand_left=1, hand_right=2) uses view rows up to 2" in (
      str(e.value))
  assert "model.net.cross_view_attn_map: the cross-view neighbours are the rig's" in str(e.value)


@pytest.mark.parametrize("settings,message", [
    ({"remat_policy": "save_self_attention", "offload_block_inputs": True},
     "model.net: offload_block_inputs keeps only the block inputs, in host memory: it needs remat_policy 'full', "
     "got 'save_self_attention'"),
    ({"remat_segment_blocks": 0}, "model.net: remat_segment_blocks must be >= 1, got 0")])
def test_check_config_names_what_the_network_refuses(settings, message):
  config = base.get_config("edge", "tiny")
  for key, value in settings.items():
    config.model.net[key] = value
  with pytest.raises(cli.ConfigError, match="^config: " + re.escape(message) + "$"):
    preflight.check_config(preflight.resolve(config))


def test_sampling_reads_the_data_the_checkpoint_was_trained_on(tmp_path, dataset_dir):
  """Issue 31, item 1: sample/eval of a run trained with its own dataset_dir read that dataset (and its held-out
  fraction), not `<workdir>/example_data`; a path given on the command line wins."""
  workdir = str(tmp_path / "run")
  write_config_checkpoint(workdir, tiny(**{"dataloader_train.dataset.dataset_dir": dataset_dir,
                                           "dataloader_val.held_out_fraction": 0.5}))
  checked = preflight.for_sampling(tiny(), checkpoint=workdir, out=str(tmp_path / "o.mp4"), out_suffix=".mp4")
  assert checked.config.dataloader_train.dataset.dataset_dir == dataset_dir
  assert checked.config.dataloader_val.held_out_fraction == 0.5 and checked.checkpoint.step == 1
  given = tiny(**{"dataloader_train.dataset.dataset_dir": str(tmp_path)})
  checked = preflight.for_sampling(given, checkpoint=workdir, out=str(tmp_path / "o.mp4"), out_suffix=".mp4")
  assert checked.config.dataloader_train.dataset.dataset_dir == str(tmp_path)


def test_trained_dataset_that_moved_is_named_with_where_it_came_from(tmp_path):
  workdir = str(tmp_path / "run")
  write_config_checkpoint(workdir, tiny(**{"dataloader_train.dataset.dataset_dir": str(tmp_path / "gone")}))
  with pytest.raises(cli.ConfigError, match=r"dataset_dir=.*gone \(from the config checkpoint 1 was trained "
                                            r"with\): not found"):
    preflight.for_sampling(tiny(), checkpoint=workdir, out=str(tmp_path / "o.mp4"), out_suffix=".mp4")


def test_issue33_row2_checkpoint_of_another_model_refused_naming_the_keys(tmp_path, dataset_dir):
  workdir = str(tmp_path / "run")
  write_config_checkpoint(workdir, tiny(**{"dataloader_train.dataset.dataset_dir": dataset_dir}))
  other = tiny(**{"model.net.num_blocks": 2, "dataloader_train.dataset.resolution_hw": (32, 48)})
  with pytest.raises(cli.ConfigError) as err:
    preflight.for_sampling(other, checkpoint=workdir, out=str(tmp_path / "o.mp4"), out_suffix=".mp4")
  message = str(err.value)
  assert "\n" not in message and message.startswith(f"--checkpoint {workdir}: step 1 was trained with another model")
  assert "model.net.num_blocks: 4 -> 2" in message and "dataloader_train.dataset.resolution_hw" in message
  # Settings that do not change the model (sampling, optimizer, memory) are free.
  preflight.for_sampling(tiny(**{"optimizer.lr": 1.0, "model.net.remat_policy": "full"}), checkpoint=workdir,
                         out=str(tmp_path / "o.mp4"), out_suffix=".mp4")


def test_issue33_row2_converted_dit_of_another_model_refused(tmp_path):
  dit_dir = tmp_path / "dit"
  dit_dir.mkdir()
  config = tiny()
  net = json.loads(json.dumps(dataclasses.asdict(dit_config.DiTConfig.from_config(config.model.net))))
  (dit_dir / params_io.META_FILE).write_text(json.dumps({"model": "dit", "config": {**net, "model_channels": 256}}))
  with pytest.raises(cli.ConfigError, match=r"it was converted with another model .*model.net.model_channels: 256 "
                                            r"-> 128"):
    preflight.for_sampling(config, checkpoint=str(dit_dir), out=str(tmp_path / "o.mp4"), out_suffix=".mp4")


@pytest.mark.parametrize("out, why", [
    ("folder.mp4", "is a folder; give a file name"),
    ("file/o.mp4", "is a file, not a folder"),
    ("/proc/agibot_jax/o.mp4", "not a writable folder"),  # cannot be created, even by root
    ("o.avi", "must end in .mp4"),
])
def test_issue33_row3_unwritable_out_is_refused_before_any_work(tmp_path, out, why):
  (tmp_path / "folder.mp4").mkdir()
  (tmp_path / "file").write_text("")
  write_config_checkpoint(str(tmp_path / "run"), tiny())
  out = out if out.startswith("/") else str(tmp_path / out)
  with pytest.raises(cli.UserError, match=f"^--out {re.escape(out)}: .*{why}"):
    preflight.for_sampling(tiny(), checkpoint=str(tmp_path / "run"), out=out, out_suffix=".mp4")


def test_issue33_row6_missing_checkpoint_one_line(tmp_path):
  for path, why in ((tmp_path / "absent", "no such file or folder"),
                    (tmp_path, "is neither a training workdir"),
                    (tmp_path / "run", "holds no complete checkpoint")):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True, exist_ok=True)
    with pytest.raises(cli.UserError, match=why) as err:
      preflight.find_checkpoint(str(path))
    assert "\n" not in str(err.value)


def test_every_missing_path_is_named_before_any_model(tmp_path, dataset_dir):
  """Issue 31, item 2: `checkpoint.load_path=base` that does not exist stops training before the VAE and the text
  encoder are built, with every other bad path of the config."""
  config = tiny(**{"dataloader_train.dataset.dataset_dir": dataset_dir, "checkpoint.load_path": "base",
                   "model.tokenizer.path": dataset_dir, "dataloader_train.dataset.text_cache_dir": dataset_dir})
  with pytest.raises(cli.ConfigError) as err:
    preflight.for_training(config, str(tmp_path / "run"))
  message = str(err.value)
  assert f"checkpoint.load_path={os.path.abspath('base')}: not found" in message
  assert f"model.tokenizer.path={dataset_dir}: not a converted wan2.1_vae model" in message
  assert "text_cache_dir" in message and "python -m agibot_jax.text.precompute" in message
  assert not (tmp_path / "run").exists(), "nothing written before the config is known to run"


def test_full_size_weights_are_required_up_front(tmp_path, dataset_dir):
  config = tiny(**{"dataloader_train.dataset.dataset_dir": dataset_dir, "model.allow_random_init": False})
  with pytest.raises(cli.ConfigError, match=r"no weights given for checkpoint.load_path, model.tokenizer.path, "
                                            r"model.text_encoder.path"):
    preflight.for_training(config, str(tmp_path / "run"))


def test_full_size_config_stops_at_once_without_a_gpu():
  """Issue 31, item 3: a 2B model is not built on a laptop; job.allow_cpu says the user means it."""
  with pytest.raises(cli.ConfigError, match=r"~2\.\d B parameters and this machine has no GPU .*configs/seg.py:tiny.*"
                                            r"job\.allow_cpu=True"):
    preflight.check_accelerator(base.get_config("seg"))
  allowed = base.get_config("seg")
  allowed.job.allow_cpu = True
  preflight.check_accelerator(allowed)
  preflight.check_accelerator(tiny())


def test_clips_too_short_for_the_config_say_how_to_change_either(dataset_dir):
  """Issue 31, item 3: a full-size config on make_example's 16-frame (here 9-frame) clips names the :tiny config and
  make_example --frames 93."""
  config = base.get_config("depth")
  config.dataloader_train.dataset.dataset_dir = dataset_dir
  with pytest.raises(layout.DatasetError) as err:
    preflight.prepare_dataset(preflight.resolve(config))
  hint = err.value.problems[-1].message
  assert "configs/depth.py:tiny reads 9" in hint and "make_example DIR --frames 93" in hint


def test_only_the_run_of_the_config_resumes(tmp_path):
  """A workdir's newest checkpoint of another model is refused before any model is built (training's key lists)."""
  from agibot_jax.training import checkpointing

  workdir = str(tmp_path / "run")
  write_config_checkpoint(workdir, tiny())
  with pytest.raises(checkpointing.ResumeError, match=r"model.net.num_blocks: 4 -> 2"):
    preflight.check_resume(preflight.resolve(tiny(**{"model.net.num_blocks": 2}), workdir), workdir)
  preflight.check_resume(preflight.resolve(tiny(**{"optimizer.lr": 1.0}), workdir), workdir)
