"""The imports form layers (README, Layout): commands -> composition -> features -> models -> core.

Read from the source with `ast` (imports inside functions count too):
  core         agibot_jax.{utils, logs, cli, registry, rig, sharding, params_io, array_cache, video_io, flops}
  models       agibot_jax.models.*
  features     agibot_jax.{data, text, training, sampling}.*, convert.*, configs.*
  composition  agibot_jax.{assemble, memory_plans, preflight}, agibot_jax.evaluation.*
  commands     every module that runs as a program (`if __name__ == "__main__":`)
A module imports only from lower layers, or from its own package within its layer (a feature package never
imports another feature package); commands may also import commands of their own package. No import cycles.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CORE = {"utils", "logs", "cli", "registry", "rig", "sharding", "params_io", "array_cache", "video_io", "flops"}
LAYERS = ("core", "models", "features", "composition", "commands")


def _modules() -> dict[str, pathlib.Path]:
  paths = [*REPO.glob("agibot_jax/**/*.py"), *REPO.glob("convert/*.py"), *REPO.glob("configs/*.py")]
  out = {}
  for p in paths:
    parts = p.relative_to(REPO).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    out[name] = p
  return out


MODULES = _modules()


def _is_command(tree: ast.Module) -> bool:
  return any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body)


def _resolve(name: str) -> str | None:
  while name and name not in MODULES:
    name = name.rpartition(".")[0]
  return name or None


def imports_of(name: str) -> tuple[set[str], bool]:
  """(project modules `name` imports, whether it is a command)."""
  tree = ast.parse(MODULES[name].read_text())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(_resolve(a.name) for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for a in node.names:
        found.add(_resolve(f"{node.module}.{a.name}") or _resolve(node.module))
  found.discard(None)
  found.discard(name)
  # `from agibot_jax import x` resolves to x; a bare package `__init__` holds nothing.
  found = {m for m in found if MODULES[m].name != "__init__.py" or MODULES[m].stat().st_size > 0}
  return found, _is_command(tree)


GRAPH = {name: imports_of(name) for name in MODULES}


def layer_and_package(name: str) -> tuple[int, str]:
  if GRAPH[name][1]:
    return LAYERS.index("commands"), name.rpartition(".")[0]
  parts = name.split(".")
  if parts[0] in ("convert", "configs"):
    return LAYERS.index("features"), parts[0]
  if len(parts) == 1 or parts[1] in CORE:
    return LAYERS.index("core"), "agibot_jax"
  if parts[1] == "models":
    return LAYERS.index("models"), "agibot_jax.models"
  if parts[1] in ("assemble", "memory_plans"):  # one package: memory_plans builds on assemble
    return LAYERS.index("composition"), "agibot_jax.assemble"
  if parts[1] in ("preflight", "evaluation"):
    return LAYERS.index("composition"), ".".join(parts[:2])
  return LAYERS.index("features"), ".".join(parts[:2])


def test_every_module_is_placed():
  unplaced = [n for n in MODULES if n.split(".")[0] == "agibot_jax" and len(n.split(".")) == 2
              and n.split(".")[1] not in CORE | {"models", "data", "text", "training", "sampling", "assemble",
                                                 "memory_plans", "preflight", "evaluation"} and not GRAPH[n][1]]
  assert not unplaced, f"modules outside the stated layers: {unplaced}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_upward_or_sideways_imports(name):
  layer, package = layer_and_package(name)
  bad = []
  for dep in sorted(GRAPH[name][0]):
    dep_layer, dep_package = layer_and_package(dep)
    same_package = dep_package == package or dep_package.startswith(package + ".")
    if dep_layer > layer or (dep_layer == layer and not same_package and LAYERS[layer] != "core"):
      bad.append(f"{dep} ({LAYERS[dep_layer]})")
  assert not bad, f"{name} ({LAYERS[layer]}) imports {bad}"


def test_no_import_cycles():
  state: dict[str, int] = {}

  def visit(node, path):
    state[node] = 1
    for dep in sorted(GRAPH[node][0]):
      if state.get(dep) == 1:
        raise AssertionError(" -> ".join(path[path.index(dep):] + [dep]) if dep in path else f"{node} -> {dep}")
      if dep not in state:
        visit(dep, path + [dep])
    state[node] = 2

  for name in sorted(MODULES):
    if name not in state:
      visit(name, [name])


def test_the_checker_sees_a_planted_upward_import(monkeypatch):
  """The rule fails on an upward import (so the checks above can fail)."""
  monkeypatch.setitem(GRAPH, "agibot_jax.models.dit", (GRAPH["agibot_jax.models.dit"][0] | {"agibot_jax.assemble"},
                                                        False))
  with pytest.raises(AssertionError, match="imports"):
    test_no_upward_or_sideways_imports("agibot_jax.models.dit")
