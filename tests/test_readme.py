"""README.md's commands run as written (issue 31), and README's Quickstart and CI stay in step.

Every command of README.md's ```bash blocks is extracted (not copied here) and run on CPU with one change: a
full-size config `configs/<ct>.py` becomes its CPU-sized `configs/<ct>.py:tiny` (an `experiment=` without `--config`
gets `--config configs/<ct>.py:tiny`). The placeholders DIR, ID and HELD_OUT become a dataset folder, one of its
sample ids and a held-out dataset. They run from a folder holding what the README assumes to exist: `base` (the
bundle the three converters write, here tiny random weights), HELD_OUT, the control videos, and for each workdir a
README command trains, its checkpoint. Commands that cannot run here are in NOT_RUN with the reason, and a command
that is neither run nor listed there fails the test.

Default run (`test_readme_commands_run_as_written`): the commands whose work is small run in full (make_example,
inspect); the others with --dry_run: every up-front check (the config, every path it names, the dataset, the
checkpoint and its model, the output locations) and the result line, no model built, against config-only
checkpoints; convert.dit --export and convert.parity only in the slow run. All commands run in one interpreter
(tests/command_runner.py). Slow run (`test_readme_commands_run_in_full`): every command in full, against a tiny run
trained 2 steps for each README workdir, except the README's training runs themselves (10000 steps: --dry_run).
"""

import ast
import dataclasses
import functools
import json
import os
import pathlib
import re
import shlex

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agibot_jax import cli, params_io, preflight
from agibot_jax import rig as rig_lib
from agibot_jax import video_io as video
from agibot_jax.data import synthetic
from agibot_jax.data.agibot_world import lerobot
from agibot_jax.models import dit, dit_config
from agibot_jax.models import vae as vae_lib
from agibot_jax.models.qwen import QwenTextModel
from agibot_jax.text import demo
from tests import command_runner
from tests.conftest import SHARED, write_config_checkpoint
from tests.sampling.tiny_setup import random_vae_params

REPO = pathlib.Path(__file__).resolve().parents[1]
PLACEHOLDERS = {"DIR": "data", "ID": "synthetic_000", "HELD_OUT": "held_out"}
# Command prefixes that cannot run in a test, and why.
NOT_RUN = {
    "python -m pytest": "the test suite itself (CI runs it as written)",
    "huggingface-cli": "the Hugging Face Hub (network, gated repositories)",
    "python -m convert.dit --src hf://": "the released weights (gated; tests/convert convert a tiny reference)",
    "python -m convert.vae --src hf://": "the released weights (gated; tests/convert convert a tiny reference)",
    "python -m convert.vae --src tokenizer.pth": "the released VAE file (tests/convert convert a tiny reference)",
    "python -m convert.text_encoder --src Cosmos-Reason1-7B/": "the released text encoder (tests/convert convert a "
                                                              "tiny one)",
    "python -m agibot_jax.data.import_agibot_world": "a copy of AgiBot World (tests/data/agibot_world import a "
                                                     "replica)",
    "python -m agibot_jax.data.import_lerobot": "a LeRobot dataset (tests/data/test_import_lerobot.py imports a "
                                                "replica; `sandbox` writes what the import would: DST and its rig)",
    "srun": "a SLURM cluster", "HOSTS=": "several hosts", "ssh": "several hosts", "done;": "several hosts",
}
# Commands whose own work is small: run in full in the default run too.
RUN_IN_FULL = ("agibot_jax.data.make_example", "agibot_jax.data.inspect")
# Commands with --dry_run; the README's training runs (10000 steps) are only ever dry runs.
DRY_RUN = ("agibot_jax.train", "agibot_jax.sample", "agibot_jax.eval", "agibot_jax.cache_latents",
           "agibot_jax.text.precompute")
# In the slow run only: the work is the point and has no dry run.
SLOW_ONLY = {"convert.dit": "exports a trained checkpoint's weights", "convert.parity": "runs the tiny golden models"}
# What a tiny trained fixture run changes of a README training command (slow run).
FIXTURE_TRAINING = ["--config.trainer.max_iter=2", "--config.checkpoint.save_iter=2",
                    "--config.trainer.callbacks.every_n_sample.every_n=0", "--config.trainer.validation_iter=0"]


def _quickstart_commands():
  text = (REPO / "README.md").read_text()
  section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
  blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
  return [[l for l in b.splitlines() if l and not l.startswith("#")] for b in blocks]


def test_quickstart_has_exactly_two_commands():
  commands = _quickstart_commands()
  assert [len(c) for c in commands] == [1, 1]
  demo_line, tests = commands[0][0], commands[1][0]
  assert "python -m agibot_jax.train --config configs/edge.py:tiny" in demo_line
  assert "pip install -e . &&" in demo_line and "[" not in demo_line.split("pip install -e .")[1].split("&&")[0]
  assert "pytest" in tests


def test_ci_runs_both_readme_commands_in_fresh_venvs():
  ci = (REPO / ".ci" / "run").read_text().splitlines()
  demo_line, tests = (c[0] for c in _quickstart_commands())
  assert demo_line in ci and tests in ci and ci.index(demo_line) < ci.index(tests)
  for command in (demo_line, tests):
    venv = re.match(r"python3 -m venv (\S+) && \. \1/bin/activate && ", command)
    assert venv, f"README command must create and activate its own venv: {command}"
    removed = [l for l in ci[:ci.index(command)] if l.startswith("rm -rf")]
    assert any(venv.group(1) in l.split() for l in removed), f"CI must start {venv.group(1)} afresh"


# ----------------------------------------------------------------------------------------------
# Every command, as written


@dataclasses.dataclass(frozen=True)
class Command:
  line: str  # as README.md writes it (continuations joined, comments dropped)
  argv: list[str] | None  # [module, args...] with the tiny configs and the placeholders filled in; None: not run
  why_not: str = ""


def tiny_argv(line: str) -> list[str]:
  """`python -m MODULE ARGS` as run here: `configs/<ct>.py` -> `configs/<ct>.py:tiny`, placeholders filled in."""
  args = shlex.split(line, comments=True)[2:]
  args = [re.sub(r"\b(configs/\w+\.py)$", r"\1:tiny", a) for a in args]
  experiment = next((cli.EXPERIMENT.match(a.split("=", 1)[1]) for a in args if a.startswith("experiment=")), None)
  if experiment and "--config" not in args:
    args[1:1] = ["--config", f"configs/{experiment.group(1)}.py:tiny"]
  return [re.sub(r"\b(" + "|".join(PLACEHOLDERS) + r")\b", lambda m: PLACEHOLDERS[m.group(1)], a) for a in args]


def readme_commands() -> list[Command]:
  text = (REPO / "README.md").read_text()
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    for line in re.sub(r"\\\n\s*", " ", block).splitlines():
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      if line.startswith("python3 -m venv "):  # Quickstart: the command after the virtualenv's set-up
        line = line.split(" && ")[-1]
      why = next((why for prefix, why in NOT_RUN.items() if line.startswith(prefix)), "")
      if not why and not line.startswith(("python -m agibot_jax.", "python -m convert.")):
        raise AssertionError(f"README command neither run by this test nor in NOT_RUN: {line}")
      commands.append(Command(line, None if why else tiny_argv(line), why))
  return commands


def test_readme_commands_are_found():
  commands = readme_commands()
  run = [c.argv[0] for c in commands if c.argv]
  assert {"agibot_jax.data.make_example", "agibot_jax.data.inspect", "agibot_jax.text.precompute",
          "agibot_jax.cache_latents", "agibot_jax.train", "agibot_jax.sample", "agibot_jax.eval",
          "convert.dit"} <= set(run)
  assert run.index("agibot_jax.data.make_example") < run.index("agibot_jax.data.inspect"), "data before its check"


def tiny_bundle(root: pathlib.Path, config) -> None:
  """`root` as the three converters write it for `config` (random tiny weights): dit/, vae/, text_encoder/ and the
  text encoder's tokenizer folder."""
  rng = np.random.default_rng(0)
  randomly = lambda tree: jax.tree.map(lambda a: (0.02 * rng.standard_normal(a.shape)).astype(a.dtype), tree)
  cfg = dit_config.DiTConfig.from_config(config.model.net)
  params_io.save_params(str(root / "dit"), randomly(dit.abstract_params(cfg)),
                        {"model": params_io.MODEL_DIT, "config": json.loads(json.dumps(dataclasses.asdict(cfg)))})
  vae_model = vae_lib.WanVAE(vae_lib.VAEConfig.from_tokenizer_config(config.model.tokenizer))
  params_io.save_params(str(root / "vae"), random_vae_params(vae_model, 0), {"model": params_io.MODEL_VAE})
  text_cfg = demo.demo_text_config(cfg.crossattn_proj_in_channels)
  demo.build_demo_tokenizer().save_pretrained(str(root / "tokenizer"))
  text_params = jax.eval_shape(lambda: QwenTextModel(text_cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
  params_io.save_params(str(root / "text_encoder"), randomly(text_params["params"]),
                        {"model": params_io.MODEL_TEXT_ENCODER, "config": text_cfg.to_hf_fields(),
                         "source": str(root / "tokenizer"), "dtype": "float32"})


def sandbox(root: pathlib.Path, commands: list[Command]) -> pathlib.Path:
  """The folder the commands run in (`root/agibot-jax`, with `../shared` beside it as in a checkout): configs/, the
  bundle `base`, HELD_OUT and the control videos the README names."""
  here = root / "agibot-jax"
  here.mkdir()
  (here / "configs").symlink_to(REPO / "configs")
  (root / "shared").symlink_to(SHARED)
  tiny_bundle(here / "base", cli.load_config(str(REPO / "configs/seg.py:tiny")))
  synthetic.write_example(str(here / PLACEHOLDERS["HELD_OUT"]), num_samples=2, frames=9, height=48, width=72)
  for command in commands:
    if command.line.startswith("python -m agibot_jax.data.import_lerobot"):
      imported_rig(here, command.line)
    if command.argv and "--control_videos" in command.argv:
      for i, name in enumerate(command.argv[command.argv.index("--control_videos") + 1].split(",")):
        frames = np.zeros((11, 48, 72, 3), np.uint8)
        frames[:, 10:30, 12 + 8 * i:36 + 8 * i] = 200
        video.write_video(str(here / name), frames, fps=16.0)
  return here


def imported_rig(here: pathlib.Path, line: str) -> None:
  """What README's `import_lerobot SRC DST --cameras ...` writes, with synthetic clips: DST with a folder per
  camera of the rig its camera map makes, and DST/rig.json; HELD_OUT gets those cameras too (the README evaluates
  that rig's run on it)."""
  args = shlex.split(line)[3:]
  pairs = [tuple(p.split("=", 1)) for p in args[args.index("--cameras") + 1].split(",")]
  rig, _ = lerobot.camera_map(pairs)
  for folder in (args[1], PLACEHOLDERS["HELD_OUT"]):
    synthetic.write_example(str(here / folder), num_samples=2, frames=9, height=48, width=72, views=rig.names)
  (here / args[1] / rig_lib.RIG_FILE).write_text(json.dumps(rig.to_json()))


def trained_runs(commands: list[Command]) -> dict[str, list[str]]:
  """{workdir another command reads: the arguments of the first README command that trains it} (what a checkpoint
  fixture stands for)."""
  runs = {}
  for c in commands:
    if c.argv and c.argv[0] == "agibot_jax.train":
      runs.setdefault(c.argv[c.argv.index("--workdir") + 1], c.argv)
  read = {a for c in commands if c.argv and c.argv[0] != "agibot_jax.train" for a in c.argv}
  return {workdir: argv for workdir, argv in runs.items() if workdir in read}


def config_of(argv: list[str], here: pathlib.Path):
  """The config a train command line gives: its --config file and `--config.KEY=VALUE` overrides (input paths taken
  from `here`, where the command runs)."""
  config = cli.load_config(str(REPO / argv[argv.index("--config") + 1]))
  for arg in argv:
    if arg.startswith("--config."):
      key, value = arg[len("--config."):].split("=", 1)
      try:
        value = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        pass
      *parents, leaf = key.split(".")
      node = functools.reduce(lambda n, k: n[k], parents, config)
      path = key in preflight.INPUT_PATHS or (key == "rig" and (here / str(value)).is_file())  # a rig file
      node[leaf] = str(here / value) if path else value
  return config


def run_readme(tmp_path: pathlib.Path, *, in_full: bool) -> list[tuple[Command, command_runner.Result]]:
  """(command, result) of each README command run here, in README order."""
  commands = readme_commands()
  here = sandbox(tmp_path, commands)
  to_run = []
  for c in commands:
    if c.argv and (in_full or c.argv[0] not in SLOW_ONLY):
      dry = c.argv[0] in DRY_RUN and (not in_full or c.argv[0] == "agibot_jax.train")
      to_run.append((c, c.argv + ["--dry_run"] * dry))
  runs = trained_runs(commands)
  if not in_full:
    for workdir, argv in runs.items():
      write_config_checkpoint(str(here / workdir), config_of(argv, here))
    return list(zip((c for c, _ in to_run), command_runner.run_commands([a for _, a in to_run], cwd=str(here))))
  # The fixture runs train on the README's dataset: after the commands that write it, before those that read them.
  first = next(i for i, (_, argv) in enumerate(to_run) if argv[0] != "agibot_jax.train" and set(runs) & set(argv))
  before = command_runner.run_commands([a for _, a in to_run[:first]], cwd=str(here))
  fixtures = command_runner.run_commands([argv + FIXTURE_TRAINING for argv in runs.values()], cwd=str(here))
  assert all(r.returncode == 0 for r in fixtures), fixtures[-1].stderr[-3000:]
  after = command_runner.run_commands([a for _, a in to_run[first:]], cwd=str(here)) if len(before) == first else []
  return list(zip((c for c, _ in to_run), before + after))


def assert_ran(ran: list[tuple[Command, command_runner.Result]]) -> None:
  for command, result in ran:
    assert result.returncode == 0, f"README: {command.line}\n{result.stderr[-4000:]}"
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert last.startswith("{") and isinstance(json.loads(last), dict), f"no result line: {command.line}\n{last}"


def test_readme_commands_run_as_written(tmp_path):
  ran = run_readme(tmp_path, in_full=False)
  assert_ran(ran)
  results = {c.line: r for c, r in ran}
  sample = next(r for line, r in results.items() if "agibot_jax.sample" in line and "--sample_id" in line)
  # Sampling a run trained with its own dataset_dir reads that dataset (issue 31, item 1).
  assert "from the training run's config" in sample.stderr and "dataset_dir=" in sample.stderr


@pytest.mark.slow  # several minutes: 2 tiny training runs, 3 samples and an evaluation of 35 steps, the caches
def test_readme_commands_run_in_full(tmp_path):
  ran = run_readme(tmp_path, in_full=True)
  assert_ran(ran)
  for command, result in ran:
    if command.argv[0] == "agibot_jax.sample":
      out = json.loads(result.stdout.strip().splitlines()[-1])
      assert os.path.isfile(out["mp4"]) and "wrote " in result.stderr
    if command.argv[0] == "convert.dit":
      assert "exporting step 2" in result.stderr and "(EMA weights)" in result.stderr
