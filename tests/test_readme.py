"""README's Quickstart and CI stay in step: CI runs both README commands exactly as written, in fresh venvs."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]


def _quickstart_commands():
  text = (REPO / "README.md").read_text()
  section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
  blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
  return [[l for l in b.splitlines() if l and not l.startswith("#")] for b in blocks]


def test_quickstart_has_exactly_two_commands():
  commands = _quickstart_commands()
  assert [len(c) for c in commands] == [1, 1]
  demo, tests = commands[0][0], commands[1][0]
  assert "python -m agibot_jax.train --config configs/edge.py:tiny" in demo
  assert "pip install -e . &&" in demo and "[" not in demo.split("pip install -e .")[1].split("&&")[0]  # no extras
  assert "pytest" in tests


def test_ci_runs_both_readme_commands_in_fresh_venvs():
  ci = (REPO / ".ci" / "run").read_text().splitlines()
  demo, tests = (c[0] for c in _quickstart_commands())
  assert demo in ci and tests in ci and ci.index(demo) < ci.index(tests)
  for command in (demo, tests):
    venv = re.match(r"python3 -m venv (\S+) && \. \1/bin/activate && ", command)
    assert venv, f"README command must create and activate its own venv: {command}"
    removed = [l for l in ci[:ci.index(command)] if l.startswith("rm -rf")]
    assert any(venv.group(1) in l.split() for l in removed), f"CI must start {venv.group(1)} afresh"
