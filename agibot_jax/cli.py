r"""What every command shares: absl flags, the `--config` flag and its overrides, the console.

Config overrides come in two spellings that do exactly the same thing:

  python -m agibot_jax.train --config configs/seg.py --workdir runs/seg --config.optimizer.lr=1e-4
  python -m agibot_jax.train --workdir runs/seg -- experiment=transfer2_agibot_posttrain_seg_example \
      optimizer.lr=1e-4 'scheduler.warm_up_steps=[500]'            # the reference's positional form

A positional `key=value` becomes `--config.key=value` before absl parses the flags; `experiment=<name>` selects
`configs/<ct>.py` (or must agree with `--config`); keys of the reference that mean nothing here (its W&B mode, its
sampler's dataset) are acknowledged with one line and dropped. Any other stray argument is an error naming it.
`--print_config` prints the resolved config and exits; `--help` prints the command's docstring, its flags and the
config keys a reference command uses, and exits 0.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import importlib.util
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from agibot_jax import logs

log = logging.getLogger(__name__)

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
EXPERIMENT = re.compile(r"^transfer2_agibot_posttrain_(\w+)_example$")
# Reference override keys with no counterpart here, and why they need none.
REFERENCE_ONLY_KEYS = {
    "job.wandb_mode": "no Weights & Biases here; metrics go to <workdir>/tensorboard and <workdir>/metrics.jsonl",
    "dataloader_train.sampler.dataset": "the sampler always reads dataloader_train.dataset here",
}
# Seconds a finished command may take to shut down (library threads, exit handlers) before it is ended.
EXIT_GRACE_S = 120.0
# The override keys of the reference's post-training guide, listed by --help.
REFERENCE_KEYS = ("dataloader_train.dataset.dataset_dir", "trainer.max_iter", "trainer.logging_iter", "optimizer.lr",
                  "checkpoint.save_iter", "checkpoint.load_path", "scheduler.warm_up_steps", "scheduler.cycle_lengths")
EXIT_BAD_INPUT = 2
# An unreadable or mismatched checkpoint (the converters' CheckpointError and ConversionError are ValueErrors;
# missing or existing files OSErrors): reported in one line by the converters.
BAD_CHECKPOINT = (OSError, ValueError)
_HELP = ("-h", "--help", "-help", "--helpshort", "-?")
_OVERRIDE = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)=(.*)$", re.S)


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`path/to/config.py[:arg]` -> the file's `get_config(arg)`, outside absl flags (tools, tests)."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file not found: {path}")
  module_spec = importlib.util.spec_from_file_location(f"_agibot_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def define_config_flag(default: str | None = None) -> None:
  config_flags.DEFINE_config_file(
      "config", default, "config file, e.g. configs/edge.py or configs/edge.py:tiny; override keys with "
      "--config.KEY=VALUE or a positional KEY=VALUE", lock_config=True)
  flags.DEFINE_bool("print_config", False, "print the resolved config and exit")


class UsageError(ValueError):
  """A command line that cannot run; the message names the argument."""


@dataclasses.dataclass(frozen=True)
class CommandLine:
  """A command line after the positional overrides were rewritten."""
  argv: list[str]  # for absl: positional `key=value` became `--config.key=value`
  notes: list[str]  # one line per reference-only key dropped
  experiment: str | None  # the control type an `experiment=` named


def rewrite_overrides(argv: Sequence[str], takes_value: Callable[[str], bool] = lambda name: False) -> CommandLine:
  """Positional `key=value` -> `--config.key=value`; the reference's `--` separator is dropped.

  Arguments that are not overrides stay in place (the command's positional arguments, the value of a flag given as
  `--flag value` where `takes_value(flag)`, e.g. `--cameras key=view`, or strays `run` reports).
  """
  out, notes, experiment = [argv[0]], [], None
  for previous, arg in zip(argv, argv[1:]):
    if arg == "--":
      continue
    flag_value = previous.startswith("-") and "=" not in previous and takes_value(previous.lstrip("-"))
    match = None if arg.startswith("-") or flag_value else _OVERRIDE.match(arg)
    if match is None:
      out.append(arg)
      continue
    key, value = match.groups()
    if key == "experiment":
      ct = EXPERIMENT.match(value)
      if ct is None:
        raise UsageError(f"experiment={value}: expected transfer2_agibot_posttrain_<control>_example")
      experiment = ct.group(1)
      if not any(a == "--config" or a.startswith("--config=") for a in argv):
        out.insert(1, f"--config={os.path.join(CONFIG_DIR, experiment + '.py')}")
    elif key in REFERENCE_ONLY_KEYS:
      notes.append(f"ignoring {key}: {REFERENCE_ONLY_KEYS[key]}")
    else:
      out.append(f"--config.{key}={value}")
  return CommandLine(out, notes, experiment)


def _flags_parser(argv: list[str]) -> list[str]:
  """absl's parser, with a config key that does not exist reported in one line instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"{os.path.basename(argv[0])}: {e}\nPass --help for the flags.")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    bad = [a for a in argv if a.startswith("--config.")]
    sys.exit(f"{os.path.basename(argv[0])}: bad config override among {bad}: {e}")


def print_help(positional: Sequence[str]) -> None:
  """The command's docstring (its usage examples verbatim), its own flags, and the config keys."""
  main_module = sys.modules["__main__"]
  print((main_module.__doc__ or "").strip() + "\n")
  if positional:
    print("positional arguments: " + " ".join(p.upper() for p in positional) + "\n")
  print(flags.FLAGS.module_help(sys.argv[0]))
  if "config" in flags.FLAGS:
    print("\n" + flags.FLAGS.module_help(__name__))
    print("\nconfig keys: --config.KEY=VALUE or KEY=VALUE, e.g. " + ", ".join(REFERENCE_KEYS) +
          "; --print_config lists every key and its value.")
  print("\n--helpfull lists the flags of every library.")


def run(main: Callable[..., int | None], *, positional: Sequence[str] = (),
        bad_input: tuple[type[Exception], ...] = ()) -> None:
  """`app.run` for a command: rewrites the overrides, sets up the console, and calls `main(*positional_values)`.

  positional: names of the command's positional arguments (e.g. ("out_dir",)); any other leftover argument is an
    error naming it.
  bad_input: exceptions that mean the input is unusable (their messages name the file or key): reported as one line
    `error: <message>`, exit status 2, instead of a traceback.
  """
  if any(a in _HELP for a in sys.argv[1:]):
    print_help(positional)
    sys.exit(0)
  try:
    line = rewrite_overrides(sys.argv, lambda name: name in flags.FLAGS and not flags.FLAGS[name].boolean)
  except UsageError as e:
    sys.exit(f"{os.path.basename(sys.argv[0])}: {e}")

  def absl_main(rest: list[str]):
    verbosity = flags.FLAGS["verbosity"]
    logs.setup(verbosity.value if verbosity.present else None)
    for note in line.notes:
      log.info("%s", note)
    extra = rest[1:]
    if len(extra) != len(positional):
      strays = extra[len(positional):]
      what = f"unexpected argument(s) {strays}" if strays else f"missing argument(s) {list(positional[len(extra):])}"
      raise app.UsageError(f"{what}; config overrides are KEY=VALUE (e.g. trainer.max_iter=10) or "
                           "--config.KEY=VALUE")
    config = flags.FLAGS.config if "config" in flags.FLAGS else None
    if line.experiment is not None and config is not None and config.control_type != line.experiment:
      raise app.UsageError(f"experiment=transfer2_agibot_posttrain_{line.experiment}_example asks for control "
                           f"{line.experiment!r} but --config gives {config.control_type!r}")
    if "print_config" in flags.FLAGS and flags.FLAGS.print_config:
      print(config)
      return 0
    try:
      code = main(*extra)
    except bad_input as e:
      print(f"error: {e}", file=sys.stderr)
      code = EXIT_BAD_INPUT
    end_within(EXIT_GRACE_S, code)
    return code

  # config_flags registers the override flags it finds in sys.argv, so the rewritten line becomes sys.argv.
  sys.argv[:] = line.argv
  app.run(absl_main, argv=line.argv, flags_parser=_flags_parser)


def end_within(grace_s: float, code: int | None) -> None:
  """Ends the process with `code` if interpreter shutdown takes longer than `grace_s` seconds.

  The command's work is done (checkpoints closed, files written) when this is armed, so a library thread or exit
  handler that never returns must not hold the shell, a CI job or a scheduler slot: the stuck stacks are printed to
  stderr and the process exits with the command's own status. A daemon thread keeps running while the interpreter
  waits for other threads and runs its exit handlers, which is where such a hang happens.
  """
  def watchdog():
    time.sleep(grace_s)
    print(f"[agibot-jax] the command finished but its process did not exit within {grace_s:g} s; stacks of every "
          "thread follow, then the process ends", file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stdout.flush()
    os._exit(code or 0)  # pylint: disable=protected-access

  threading.Thread(target=watchdog, name="exit-watchdog", daemon=True).start()
