"""agibot_jax/cli.py: the reference's positional overrides act exactly like --config.KEY=VALUE; strays are named."""

import os
import subprocess
import sys

import pytest

from agibot_jax import cli
from tests.conftest import REPO


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


def _print_config(*args):
  return subprocess.run([sys.executable, "-m", "agibot_jax.data.inspect", *args, "--print_config"], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


def test_both_spellings_give_the_same_config():
  flags = _print_config("--config", "configs/seg.py:tiny", "--config.trainer.max_iter=7",
                        "--config.scheduler.warm_up_steps=(3,)")
  positional = _print_config("--config", "configs/seg.py:tiny", "--", "trainer.max_iter=7",
                             "scheduler.warm_up_steps=[3]", "job.wandb_mode=disabled")
  assert flags.returncode == 0 and positional.returncode == 0, positional.stderr[-2000:]
  assert "max_iter: 7" in flags.stdout and flags.stdout == positional.stdout
  assert "ignoring job.wandb_mode" in positional.stderr


@pytest.mark.parametrize("args, message", [
    (["--config", "configs/seg.py:tiny", "stray"], "unexpected argument(s) ['stray']"),
    (["--config", "configs/seg.py:tiny", "trainer.no_such_key=1"], "trainer.no_such_key"),
    (["--config", "configs/seg.py:tiny", "experiment=transfer2_agibot_posttrain_edge_example"],
     "asks for control 'edge' but --config gives 'seg'"),
])
def test_bad_command_lines_are_named(args, message):
  result = _print_config(*args)
  assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]


def test_help_prints_the_usage_verbatim_and_exits_0():
  result = subprocess.run([sys.executable, "-m", "agibot_jax.train", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "python -m agibot_jax.train --config configs/seg.py --workdir runs/seg \\\n" in result.stdout  # not joined
  assert "--workdir" in result.stdout and "trainer.max_iter" in result.stdout and "--print_config" in result.stdout


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
