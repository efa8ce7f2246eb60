"""Saving and restoring parameter trees with Orbax (no torch on this path).

A converted model is a directory holding `agibot_meta.json` (model kind, config, source, dtypes)
and `params/`: the parameter tree split into parts, each an Orbax checkpoint of a few leaves
(`params/part-000`, ...), listed in `params/parts.json`. Parts let a converter write a model larger
than the free memory leaf by leaf; `restore_params` joins them into one tree again.

Everything is written into a temporary sibling of the destination and renamed into place at the
end, so a failed or killed write leaves nothing under the destination's name.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

META_FILE = "agibot_meta.json"
PARTS_FILE = "parts.json"
# A part is closed once it holds this many bytes: memory holds at most this plus the largest leaf.
PART_BYTES = 256 << 20

# The `model` field of agibot_meta.json, one per converter.
MODEL_DIT = "dit"
MODEL_VAE = "wan2.1_vae"
MODEL_TEXT_ENCODER = "qwen2.5_vl_text"

Path = tuple[str, ...]


def flatten_tree(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, Any]:
  """Nested dicts -> {(key, ..., key): leaf}."""
  out: dict[Path, Any] = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten_tree(v, prefix + (str(k),)))
    else:
      out[prefix + (str(k),)] = v
  return out


def unflatten_tree(flat: Mapping[Path, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, v in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


def _temp_prefix(dst: str) -> str:
  return f"{dst}.tmp-{socket.gethostname()}-"


def _remove_stale_temps(dst: str) -> None:
  """Deletes the temporary siblings that killed writes of `dst` from this host left behind."""
  parent, prefix = os.path.dirname(dst), os.path.basename(_temp_prefix(dst))
  for name in os.listdir(parent):
    pid = name[len(prefix):]
    if name.startswith(prefix) and pid.isdigit() and not _is_running(int(pid)):
      log.info("removing %s, left by a killed write", os.path.join(parent, name))
      shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _is_running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, but another user's
    pass
  return True


def _parts(leaves: Iterable[tuple[Path, Any]], part_bytes: int):
  """Groups (path, array) pairs into dicts, each closed as soon as it holds `part_bytes`.

  A part is handed on before the next leaf is asked for, so a large leaf is never in memory
  together with the next one."""
  part: dict[Path, np.ndarray] = {}
  size = 0
  for path, leaf in leaves:
    part[tuple(path)] = np.asarray(leaf)
    size += part[tuple(path)].nbytes
    del leaf  # else this name would hold it while the next leaf is built
    if size >= part_bytes:
      yield part
      part, size = {}, 0
  if part:
    yield part


def _checkpointer() -> ocp.Checkpointer:
  # The saves are synchronous, so Orbax need not copy each host array before writing it; weights
  # barely compress, and zstd would halve the write speed.
  registry = ocp.type_handlers.create_type_handler_registry(
      (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
      (jax.Array, ocp.type_handlers.ArrayHandler()))  # never used: np.asarray'd leaves; Orbax warns without it
  return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_compression=False, type_handler_registry=registry))


def check_destination(dst: str, force: bool) -> None:
  """Raises FileExistsError if `dst` exists and may not be replaced (call it before any expensive work)."""
  if os.path.exists(dst) and not force:
    raise FileExistsError(f"{dst} exists; pass force=True (--force) to overwrite")


def write_params(dst: str, leaves: Iterable[tuple[Path, Any]], meta: dict | None = None, *,
                 force: bool = False, part_bytes: int | None = None) -> None:
  """Writes the leaves of a parameter tree, as they come, to a converted-model directory `dst`.

  leaves: (path, array) pairs, each array numpy-convertible; consumed one at a time, so a
    generator that reads and converts on demand keeps at most one part in memory.
  part_bytes: bytes after which a part is saved (default PART_BYTES).
  force: replace an existing `dst` (only once the new tree is complete).
  """
  dst = os.path.abspath(dst)
  check_destination(dst, force)
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  _remove_stale_temps(dst)
  tmp = f"{_temp_prefix(dst)}{os.getpid()}"
  try:
    os.makedirs(os.path.join(tmp, "params"))
    parts: dict[str, list[Path]] = {}
    with _checkpointer() as ckptr:
      for part in _parts(leaves, part_bytes or PART_BYTES):
        name = f"part-{len(parts):03d}"
        # One chunk per array: Orbax would otherwise split an array above 2 GiB into chunks and copy it
        # whole to do so (the text encoder's 3.8 GB stacked MLP kernels).
        ckptr.save(os.path.join(tmp, "params", name),
                   args=ocp.args.PyTreeSave(unflatten_tree(part), ocdbt_target_data_file_size=0))
        log.info("%s: wrote %s (%d arrays, %.2f GB)", dst, name, len(part), sum(a.nbytes for a in part.values()) / 1e9)
        parts[name] = list(part)
        del part  # else this name would hold it while the next part is gathered
    with open(os.path.join(tmp, "params", PARTS_FILE), "w") as f:
      json.dump(parts, f, indent=1)
    with open(os.path.join(tmp, META_FILE), "w") as f:
      json.dump(meta or {}, f, indent=1, sort_keys=True)
    if os.path.exists(dst):
      old = f"{tmp}.replaced"
      os.rename(dst, old)
      os.rename(tmp, dst)
      shutil.rmtree(old)
    else:
      os.rename(tmp, dst)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def save_params(dst: str, params: Mapping[str, Any], meta: dict | None = None, *, force: bool = False) -> None:
  """Writes a nested dict of arrays (numpy or jax) to a converted-model directory `dst`."""
  write_params(dst, flatten_tree(params).items(), meta, force=force)


def read_meta(path: str) -> dict:
  p = os.path.join(path, META_FILE)
  if not os.path.exists(p):
    raise FileNotFoundError(f"{path} is not a converted checkpoint (no {META_FILE})")
  with open(p) as f:
    return json.load(f)


def restore_params(path: str, abstract: Any | None = None) -> Any:
  """Restore a tree saved by `save_params` / `write_params`.

  abstract: optional tree of `jax.ShapeDtypeStruct` (with `.sharding` for sharded restore);
  shapes must match, dtypes are cast to the abstract's.
  """
  path = os.path.abspath(path)
  read_meta(path)
  params_dir = os.path.join(path, "params")
  parts_file = os.path.join(params_dir, PARTS_FILE)
  with ocp.StandardCheckpointer() as ckptr:
    if not os.path.exists(parts_file):  # one Orbax checkpoint, as written before parts
      return ckptr.restore(params_dir, abstract)
    with open(parts_file) as f:
      parts = {name: [tuple(p) for p in paths] for name, paths in json.load(f).items()}
    flat_abstract = None if abstract is None else flatten_tree(abstract)
    if flat_abstract is not None:
      stored = {p for paths in parts.values() for p in paths}
      if stored != set(flat_abstract):
        missing = sorted("/".join(p) for p in set(flat_abstract) - stored)
        extra = sorted("/".join(p) for p in stored - set(flat_abstract))
        raise ValueError(f"{path}: parameter tree differs from the model's (missing {missing}, unexpected {extra})")
    flat = {}
    for name, paths in parts.items():
      part_abstract = None if flat_abstract is None else unflatten_tree({p: flat_abstract[p] for p in paths})
      flat.update(flatten_tree(ckptr.restore(os.path.join(params_dir, name), part_abstract)))
  return unflatten_tree(flat)


def to_numpy_tree(tree: Any) -> Any:
  return jax.tree.map(np.asarray, tree)
