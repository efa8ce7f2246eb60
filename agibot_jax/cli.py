r"""What every command shares: absl flags, the `--config` flag and its overrides, the console, the result line.

Config overrides come in two spellings that do exactly the same thing:

  python -m agibot_jax.train --config configs/seg.py --workdir runs/seg --config.optimizer.lr=1e-4
  python -m agibot_jax.train --workdir runs/seg -- experiment=transfer2_agibot_posttrain_seg_example \
      optimizer.lr=1e-4 'scheduler.warm_up_steps=[500]'            # the reference's positional form

A positional `key=value` becomes `--config.key=value` before absl parses the flags; `experiment=<name>` selects
`configs/<ct>.py` (or must agree with `--config`); keys of the reference that mean nothing here (its W&B mode, its
sampler's dataset) are acknowledged with one line and dropped. Any other stray argument is an error naming it.
`--print_config` prints the resolved config and exits (only `--config` and overrides are needed); `--help` prints
the command's docstring, its flags and the config keys a reference command uses, and exits 0.

A command line that cannot run (a config file or config argument that does not exist, an override key that does
not exist or a value that does not parse, a missing flag) and every `UserError` a command raises end in one line on
stderr naming what to change, as typed, with exit status 2. A command's last line on stdout is its result as one
JSON object (`print_result`).
"""

from __future__ import annotations

import dataclasses
import difflib
import faulthandler
import importlib.util
import json
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
# Where compiled programs are kept between runs when JAX_COMPILATION_CACHE_DIR is not set: a resumed run, or a sample
# of the same config, reuses them instead of compiling again.
COMPILATION_CACHE = os.path.join("agibot_jax", "xla_cache")
_HELP = ("-h", "--help", "-help", "--helpshort", "-?")
_OVERRIDE = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)=(.*)$", re.S)


class UserError(ValueError):
  """An input the command cannot use; the message is one line saying what to change (exit status 2)."""


class UsageError(UserError):
  """A command line that cannot run; the message names the argument as typed."""


class ConfigError(UserError):
  """Config values that cannot run; the one-line message names every bad key."""


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`path/to/config.py[:arg]` -> the file's `get_config(arg)`; a file or argument that does not exist is a
  ConfigError naming it (with the nearest existing file)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    folder = os.path.dirname(path) or "."
    names = sorted(n for n in os.listdir(folder) if n.endswith(".py")) if os.path.isdir(folder) else []
    close = difflib.get_close_matches(os.path.basename(path), names, n=1)
    hint = f"; did you mean {os.path.join(os.path.dirname(path), close[0])}?" if close else (
        f" (configs: {', '.join(n for n in names if not n.startswith('_'))})" if names else "")
    raise ConfigError(f"--config {spec}: no such file{hint}")
  module_spec = importlib.util.spec_from_file_location(f"_agibot_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"--config {spec}: {_first_line(e)}") from e


def define_config_flag(default: str | None = None) -> None:
  config_flags.DEFINE_config_file(
      "config", default, "config file, e.g. configs/edge.py or configs/edge.py:tiny; override keys with "
      "--config.KEY=VALUE or a positional KEY=VALUE", lock_config=True)
  flags.DEFINE_bool("print_config", False, "print the resolved config and exit")


def define_dry_run_flag() -> None:
  flags.DEFINE_bool("dry_run", False, "run the up-front checks (config, every path it names, the dataset, the "
                    "checkpoint, the output locations), print the result line and exit without building a model")


@dataclasses.dataclass(frozen=True)
class CommandLine:
  """A command line after the positional overrides were rewritten."""
  argv: list[str]  # for absl: positional `key=value` became `--config.key=value`
  notes: list[str]  # one line per reference-only key dropped
  experiment: str | None  # the control type an `experiment=` named
  typed: dict[str, str] = dataclasses.field(default_factory=dict)  # rewritten argument -> as typed


def rewrite_overrides(argv: Sequence[str], takes_value: Callable[[str], bool] = lambda name: False) -> CommandLine:
  """Positional `key=value` -> `--config.key=value`; the reference's `--` separator is dropped.

  Arguments that are not overrides stay in place (the command's positional arguments, the value of a flag given as
  `--flag value` where `takes_value(flag)`, e.g. `--cameras key=view`, or strays `run` reports).
  """
  out, notes, experiment, typed = [argv[0]], [], None, {}
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
      ct = EXPERIMENT.match(value.partition(":")[0])
      if ct is None:
        raise UsageError(f"experiment={value}: expected transfer2_agibot_posttrain_<control>_example")
      if value != ct.group(0):
        raise UsageError(f"experiment={value}: an experiment is the reference's full-size setting; for the CPU-sized "
                         f"variant pass --config configs/{ct.group(1)}.py:tiny (with or without "
                         f"experiment={ct.group(0)})")
      experiment = ct.group(1)
      if not any(a == "--config" or a.startswith("--config=") for a in argv):
        out.insert(1, f"--config={os.path.join(CONFIG_DIR, experiment + '.py')}")
    elif key in REFERENCE_ONLY_KEYS:
      notes.append(f"ignoring {key}: {REFERENCE_ONLY_KEYS[key]}")
    else:
      out.append(f"--config.{key}={value}")
      typed[out[-1]] = arg
  return CommandLine(out, notes, experiment, typed)


def _config_spec(argv: Sequence[str]) -> str | None:
  """The `--config` value of a command line, else the flag's default."""
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith("--config="):
      return arg[len("--config="):]
  return flags.FLAGS["config"].default_as_str.strip("'\"") if flags.FLAGS["config"].default is not None else None


def missing_key(config: ml_collections.ConfigDict, key: str) -> str | None:
  """Why dotted `key` is not a key of `config` (the section lacking it and the nearest key there), else None."""
  node, parts = config, key.split(".")
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      section = ".".join(parts[:i])
      options = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(part, options, n=1)
      hint = f"; did you mean {'.'.join(parts[:i] + close)}?" if close else (
          f" (it has {', '.join(sorted(options))})" if options else f" ({section} is a value, not a section)")
      return f"{section or 'the config'} has no key {part!r}{hint}"
    node = node[part]
  return None


def check_command_line(line: CommandLine) -> None:
  """The config file loads and every override names one of its keys (UsageError / ConfigError, as typed)."""
  spec = _config_spec(line.argv)
  if spec is None:
    return
  config = load_config(spec)
  for arg in line.argv:
    if arg.startswith("--config."):
      key = arg[len("--config."):].partition("=")[0]
      why = missing_key(config, key)
      if why:
        raise UsageError(f"{line.typed.get(arg, arg)}: {why}")


def fail(message: str) -> None:
  """Ends the command: `message` as one line on stderr, exit status 2."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(EXIT_BAD_INPUT)


def _flags_parser(argv: list[str], typed: dict[str, str]) -> list[str]:
  """absl's parser; an error is one line naming the argument as typed."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:  # config_flags raises the latter
    message = _first_line(e)
    for rewritten, original in typed.items():
      message = message.replace(rewritten, original)
    fail(f"{message} (--help lists the flags)")


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


def print_result(result: dict) -> None:
  """The command's last line on stdout: its result as one JSON object (process 0 of a multi-process run)."""
  jax = sys.modules.get("jax")
  if jax is None or not jax.distributed.is_initialized() or jax.process_index() == 0:
    print(json.dumps(result), flush=True)


def enable_compilation_cache(environ=os.environ) -> str | None:
  """Keeps compiled programs between runs (JAX's persistent cache) in the user's cache folder, unless
  JAX_COMPILATION_CACHE_DIR chose one (JAX reads it itself); returns the folder it set, else None."""
  if "JAX_COMPILATION_CACHE_DIR" in environ:
    return None
  import jax

  if jax.config.jax_compilation_cache_dir:
    return None
  folder = os.path.join(environ.get("XDG_CACHE_HOME") or os.path.expanduser(os.path.join("~", ".cache")),
                        COMPILATION_CACHE)
  jax.config.update("jax_compilation_cache_dir", folder)
  return folder


def _stray_hint(strays: Sequence[str]) -> str:
  if "config" in flags.FLAGS and any(os.path.isdir(s) for s in strays):
    return "; a dataset folder is given as --config.dataloader_train.dataset.dataset_dir=DIR"
  return ""


def run(main: Callable[..., int | None], *, positional: Sequence[str] = (), required: Sequence[str] = (),
        bad_input: tuple[type[Exception], ...] = ()) -> None:
  """`app.run` for a command: rewrites the overrides, checks the command line, sets up the console, and calls
  `main(*positional_values)`.

  positional: names of the command's positional arguments (e.g. ("out_dir",)); any other leftover argument is an
    error naming it.
  required: flags the command needs (not needed for --print_config or --help).
  bad_input: exceptions besides UserError that mean the input is unusable (their messages name the file or key):
    reported as one line `error: <message>`, exit status 2, instead of a traceback.
  """
  if any(a in _HELP for a in sys.argv[1:]):
    print_help(positional)
    sys.exit(0)
  try:
    line = rewrite_overrides(sys.argv, lambda name: name in flags.FLAGS and not flags.FLAGS[name].boolean)
    if "config" in flags.FLAGS:
      check_command_line(line)
  except UserError as e:
    fail(str(e))

  def absl_main(rest: list[str]):
    verbosity = flags.FLAGS["verbosity"]
    logs.setup(verbosity.value if verbosity.present else None)
    for note in line.notes:
      log.info("%s", note)
    extra = rest[1:]
    if len(extra) != len(positional):
      strays = extra[len(positional):]
      what = f"unexpected argument(s) {strays}" if strays else f"missing argument(s) {list(positional[len(extra):])}"
      how = ("config overrides are KEY=VALUE (e.g. trainer.max_iter=10) or --config.KEY=VALUE"
             if "config" in flags.FLAGS else f"it takes {' '.join(positional).upper()} (--help)")
      fail(f"{what}; {how}{_stray_hint(strays)}")
    config = flags.FLAGS.config if "config" in flags.FLAGS else None
    if line.experiment is not None and config is not None and config.control_type != line.experiment:
      fail(f"experiment=transfer2_agibot_posttrain_{line.experiment}_example asks for control {line.experiment!r} "
           f"but --config gives {config.control_type!r}")
    if "print_config" in flags.FLAGS and flags.FLAGS.print_config:
      if config is None:
        fail("--print_config needs --config")
      print(config)
      return 0
    missing = [f"--{name}" for name in required if flags.FLAGS[name].value is None]
    if missing:
      fail(f"missing {', '.join(missing)} (--help lists the flags)")
    if "jax" in sys.modules:
      enable_compilation_cache()
    try:
      code = main(*extra)
    except (UserError, *bad_input) as e:
      print(f"error: {e}", file=sys.stderr)
      code = EXIT_BAD_INPUT
    end_within(EXIT_GRACE_S, code)
    return code

  # config_flags registers the override flags it finds in sys.argv, so the rewritten line becomes sys.argv.
  sys.argv[:] = line.argv
  app.run(absl_main, argv=line.argv, flags_parser=lambda argv: _flags_parser(argv, line.typed))


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
