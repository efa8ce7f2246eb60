"""README's Quickstart and CI stay in step: CI runs exactly the README's test command."""

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
  assert "python -m agibot_jax.train --config configs/edge.py:tiny" in commands[0][0]
  assert "pytest" in commands[1][0]


def test_ci_runs_the_readme_test_command():
  ci = (REPO / ".ci" / "run").read_text()
  assert _quickstart_commands()[1][0] in ci.splitlines()
