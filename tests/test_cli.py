"""agibot_jax/cli.py and the commands' command lines: the reference's positional overrides act exactly like
--config.KEY=VALUE; every user error is one line on stderr with exit status 2 (issue 31; issue 33 rows 2, 3, 6, 7).

The command lines run through tests/command_runner.py, one interpreter start for all of them."""

import json
import os
import subprocess
import sys
import types

import pytest

from agibot_jax import cli
from agibot_jax.data import synthetic
from configs import edge
from tests import command_runner
from tests.conftest import REPO, write_config_checkpoint


def test_positional_overrides_become_config_flags():
  line = cli.rewrite_overrides(["prog", "--workdir", "w", "--", "experiment=transfer2_agibot_posttrain_seg_example",
                                "dataloader_train.dataset.dataset_dir=/data", "'dataloader_train.sampler.dataset="
                                "${dataloader_train.dataset}'", "dataloader_train.sampler.dataset=${x}",
                                "job.wandb_mode=disabled", "scheduler.warm_up_steps=[500]", "OUT"])
  assert line.argv == ["prog", f"--config={os.path.join(cli.CONFIG_DIR, 'seg.py')}", "--workdir", "w",
                       "--config.dataloader_train.dataset.dataset_dir=/data",
                       "'dataloader_train.sampler.dataset=${dataloader_train.dataset}'",
                       "--config.scheduler.warm_up_steps=[500]", "OUT"]
  assert line.experiment == "seg" and len(line.notes) == 2
  with pytest.raises(cli.UsageError, match="experiment=foo"):
    cli.rewrite_overrides(["prog", "experiment=foo"])
  # The value of a flag that takes one stays its value (import_lerobot's `--cameras feature=camera`).
  line = cli.rewrite_overrides(["prog", "--cameras", "observation.images.top=top", "--verbose", "a.b=1"],
                               takes_value=lambda name: name == "cameras")
  assert line.argv == ["prog", "--cameras", "observation.images.top=top", "--verbose", "--config.a.b=1"]


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
  """Each command line of `lines`, run once (tests/command_runner.py: one interpreter start for all of them), in a
  folder holding a 9-frame dataset `data` and a config-only training checkpoint `run` of configs/edge.py:tiny."""
  root = tmp_path_factory.mktemp("cli")
  (root / "configs").symlink_to(REPO / "configs")  # the commands run from the repository root
  synthetic.write_example(str(root / "data"), num_samples=1, frames=9, height=48, width=72)
  config = edge.get_config("tiny")
  config.dataloader_train.dataset.dataset_dir = str(root / "data")
  write_config_checkpoint(str(root / "run"), config)
  gone = edge.get_config("tiny")
  gone.dataloader_train.dataset.dataset_dir = str(root / "gone")
  write_config_checkpoint(str(root / "run_of_gone_data"), gone)
  (root / "no_videos").mkdir()
  tiny = ["--config", "configs/seg.py:tiny"]
  sample = ["agibot_jax.sample", "--config", "configs/edge.py:tiny"]
  lines = {
      "flags": ["agibot_jax.data.inspect", *tiny, "--config.trainer.max_iter=7",
                "--config.scheduler.warm_up_steps=(3,)", "--print_config"],
      "positional": ["agibot_jax.data.inspect", *tiny, "--", "trainer.max_iter=7", "scheduler.warm_up_steps=[3]",
                     "job.wandb_mode=disabled", "--print_config"],
      "stray": ["agibot_jax.data.inspect", *tiny, "stray", "--print_config"],
      "no_such_key": ["agibot_jax.data.inspect", *tiny, "trainer.no_such_key=1", "--print_config"],
      "experiment_mismatch": ["agibot_jax.data.inspect", *tiny, "experiment=transfer2_agibot_posttrain_edge_example",
                              "--print_config"],
      "help": ["agibot_jax.train", "--help"],
      "row7_no_config_file": ["agibot_jax.train", "--config", "configs/nope/seg.py", "--workdir", "w"],
      "config_file_typo": ["agibot_jax.train", "--config", "configs/sag.py", "--workdir", "w"],
      "config_arg_typo": ["agibot_jax.train", "--config", "configs/seg.py:tine", "--workdir", "w"],
      "key_typo": ["agibot_jax.train", *tiny, "--workdir", "w", "trainer.max_itr=5"],
      "value_typo": ["agibot_jax.train", *tiny, "--workdir", "w", "trainer.max_iter=five"],
      "experiment_tiny": ["agibot_jax.train", "--workdir", "w",
                          "experiment=transfer2_agibot_posttrain_seg_example:tiny"],
      "print_config_train": ["agibot_jax.train", *tiny, "--print_config"],
      "print_config_sample": [*sample, "--print_config"],
      "print_config_eval": ["agibot_jax.eval", "--config", "configs/edge.py:tiny", "--print_config"],
      "full_size_on_cpu": ["agibot_jax.train", "--config", "configs/seg.py", "--workdir", "w",
                           f"--config.dataloader_train.dataset.dataset_dir={root / 'data'}"],
      "load_path_missing": ["agibot_jax.train", *tiny, "--workdir", "w", "--config.checkpoint.load_path=base"],
      "inspect_positional_dir": ["agibot_jax.data.inspect", *tiny, "data"],
      "row6_no_checkpoint": [*sample, "--checkpoint", "absent", "--out", "o.mp4"],
      "row6_eval_no_checkpoint": ["agibot_jax.eval", "--config", "configs/edge.py:tiny", "--checkpoint", "absent"],
      "row3_unwritable_out": [*sample, "--checkpoint", "run", "--out", "/proc/agibot_jax/o.mp4"],
      "row2_other_model": [*sample, "--checkpoint", "run", "--out", "o.mp4", "--config.model.net.num_blocks=2"],
      "row3_eval_unwritable_out": ["agibot_jax.eval", "--config", "configs/edge.py:tiny", "--checkpoint", "run",
                                   "--out", "/proc/agibot_jax/eval.json"],
      "row2_eval_other_model": ["agibot_jax.eval", "--config", "configs/edge.py:tiny", "--checkpoint", "run",
                                "--config.model.net.num_blocks=2"],
      "trained_data_gone": [*sample, "--checkpoint", "run_of_gone_data", "--out", "o.mp4"],
      "sample_dry_run": [*sample, "--checkpoint", "run", "--out", "o.mp4", "--sample_id", "synthetic_000",
                         "--dry_run"],
      "bad_sample_id": [*sample, "--checkpoint", "run", "--out", "o.mp4", "--sample_id", "synthetic_009"],
      "sample_bad_dataset": [*sample, "--checkpoint", "run", "--out", "o.mp4",
                             "--config.dataloader_train.dataset.dataset_dir=no_videos"],
      "eval_bad_dataset": ["agibot_jax.eval", "--config", "configs/edge.py:tiny", "--checkpoint", "run",
                           "--config.dataloader_val.dataset_dir=no_videos"],
  }
  results = command_runner.run_commands(list(lines.values()), cwd=str(root), stop_on_error=False)
  return dict(zip(lines, results)), root


def _one_line_error(result, *pieces):
  """Exit status 2, no traceback, and the last line of stderr the error naming every piece."""
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and all(p in last for p in pieces), last
  return last


def test_both_spellings_give_the_same_config(ran):
  results, _ = ran
  flags, positional = results["flags"], results["positional"]
  assert flags.returncode == 0 and positional.returncode == 0, positional.stderr[-2000:]
  assert "max_iter: 7" in flags.stdout and flags.stdout == positional.stdout
  assert "ignoring job.wandb_mode" in positional.stderr


@pytest.mark.parametrize("name, message", [
    ("stray", "unexpected argument(s) ['stray']"),
    ("no_such_key", "trainer.no_such_key"),
    ("experiment_mismatch", "asks for control 'edge' but --config gives 'seg'"),
])
def test_bad_command_lines_are_named(ran, name, message):
  _one_line_error(ran[0][name], message)


def test_help_prints_the_usage_verbatim_and_exits_0(ran):
  result = ran[0]["help"]
  assert result.returncode == 0, result.stderr[-2000:]
  assert "python -m agibot_jax.train --config configs/seg.py --workdir runs/seg \\\n" in result.stdout  # not joined
  assert "--workdir" in result.stdout and "trainer.max_iter" in result.stdout and "--print_config" in result.stdout
  assert "--dry_run" in result.stdout


def test_issue33_row7_missing_config_file_one_line(ran):
  _one_line_error(ran[0]["row7_no_config_file"], "--config configs/nope/seg.py: no such file")
  _one_line_error(ran[0]["config_file_typo"], "--config configs/sag.py: no such file; did you mean configs/seg.py?")
  _one_line_error(ran[0]["config_arg_typo"], "--config configs/seg.py:tine:", "'tiny', got 'tine'")


def test_override_typos_are_named_as_typed_with_the_nearest_key(ran):
  """Issue 31, item 6: not a Python repr, and a positional override shown as typed."""
  last = _one_line_error(ran[0]["key_typo"])
  assert last == "error: trainer.max_itr=5: trainer has no key 'max_itr'; did you mean trainer.max_iter?"
  _one_line_error(ran[0]["value_typo"], "trainer.max_iter=five", "invalid literal")


def test_experiment_with_tiny_says_how_to_get_the_tiny_config(ran):
  """Issue 31, item 3."""
  _one_line_error(ran[0]["experiment_tiny"], "--config configs/seg.py:tiny",
                  "experiment=transfer2_agibot_posttrain_seg_example")


@pytest.mark.parametrize("name", ["print_config_train", "print_config_sample", "print_config_eval"])
def test_print_config_needs_only_the_config(ran, name):
  """Issue 31, item 5: no --workdir, --checkpoint or --out for --print_config."""
  result = ran[0][name]
  assert result.returncode == 0 and "max_iter: 4" in result.stdout, result.stderr[-2000:]


def test_full_size_config_on_cpu_stops_before_any_model(ran):
  """Issue 31, item 3: at once, not after building a 2B model."""
  result = ran[0]["full_size_on_cpu"]
  _one_line_error(result, "no GPU", "configs/seg.py:tiny", "job.allow_cpu=True")
  assert "randomly initialised" not in result.stderr and result.seconds < 30


def test_missing_load_path_is_one_line_before_any_model(ran):
  """Issue 31, item 2 (the preflight test checks that no model is built)."""
  _one_line_error(ran[0]["load_path_missing"], "checkpoint.load_path=", "base: not found")


def test_a_positional_dataset_folder_points_to_dataset_dir(ran):
  """Issue 31, item 10."""
  _one_line_error(ran[0]["inspect_positional_dir"], "unexpected argument(s) ['data']",
                  "--config.dataloader_train.dataset.dataset_dir=DIR")


def test_issue33_row6_missing_checkpoint_one_line_exit_2(ran):
  _one_line_error(ran[0]["row6_no_checkpoint"], "--checkpoint absent: no such file or folder")
  _one_line_error(ran[0]["row6_eval_no_checkpoint"], "--checkpoint absent: no such file or folder")


@pytest.mark.parametrize("name, out", [("row3_unwritable_out", "o.mp4"), ("row3_eval_unwritable_out", "eval.json")])
def test_issue33_row3_unwritable_out_one_line_before_any_work(ran, name, out):
  result = ran[0][name]
  _one_line_error(result, f"--out /proc/agibot_jax/{out}: not a writable folder")
  assert "restored step" not in result.stderr


@pytest.mark.parametrize("name", ["row2_other_model", "row2_eval_other_model"])
def test_issue33_row2_checkpoint_of_another_model_one_line(ran, name):
  result = ran[0][name]
  _one_line_error(result, "step 1 was trained with another model", "model.net.num_blocks: 4 -> 2")
  assert "restored step" not in result.stderr


def test_dataset_problems_of_sample_are_one_line_before_any_model(ran):
  """Issue 31, items 1 and 2: the dataset the checkpoint was trained on, checked up front."""
  _one_line_error(ran[0]["trained_data_gone"], "gone (from the config checkpoint 1 was trained with): not found")
  _one_line_error(ran[0]["bad_sample_id"], "--sample_id 'synthetic_009' is not in")


@pytest.mark.parametrize("name", ["sample_bad_dataset", "eval_bad_dataset"])
def test_a_dataset_error_of_sample_and_eval_is_listed_without_a_traceback(ran, name):
  """Issue 31, item 2: a DatasetError (here a folder without videos/) ends the command with its problems listed,
  exit status 2, no traceback."""
  result = ran[0][name]
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
  folder = ran[1] / "no_videos"
  assert f"error: dataset {folder} has 7 problem(s):\n  - {folder}/videos/head_color: folder missing" in result.stderr


def test_dry_run_checks_and_ends_with_its_json_line(ran):
  result = ran[0]["sample_dry_run"]
  assert result.returncode == 0, result.stderr[-2000:]
  assert json.loads(result.stdout.strip().splitlines()[-1]) == {
      "dry_run": True, "checkpoint": str(ran[1] / "run"), "step": 1, "out": str(ran[1] / "o.mp4")}


def test_compilation_cache_in_the_user_cache_folder(monkeypatch, tmp_path):
  """Issue 31, item 7: a resumed run finds its compiled step in JAX's persistent cache; a folder chosen with
  JAX_COMPILATION_CACHE_DIR (as tests/conftest.py does) is left alone."""
  import jax

  updates = []
  monkeypatch.setattr(jax, "config", types.SimpleNamespace(jax_compilation_cache_dir=None,
                                                           update=lambda *setting: updates.append(setting)))
  assert cli.enable_compilation_cache({"JAX_COMPILATION_CACHE_DIR": "/x"}) is None and updates == []
  folder = cli.enable_compilation_cache({"XDG_CACHE_HOME": str(tmp_path)})
  assert folder == str(tmp_path / "agibot_jax" / "xla_cache")
  assert updates == [("jax_compilation_cache_dir", folder)]


_STUCK_AT_EXIT = """
import threading, time
from agibot_jax import cli

def stuck_forever():
  time.sleep(10_000)

def main():
  threading.Thread(target=stuck_forever).start()  # not a daemon: the interpreter waits for it at exit
  return 3

cli.EXIT_GRACE_S = 1.0
cli.run(main)
"""


def test_a_command_stuck_at_exit_ends_with_its_status_and_the_stuck_stack():
  result = subprocess.run([sys.executable, "-c", _STUCK_AT_EXIT], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 3, result.stderr[-2000:]
  assert "did not exit within 1 s" in result.stderr and "stuck_forever" in result.stderr, result.stderr[-2000:]
