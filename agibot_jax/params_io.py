"""Saving and restoring parameter trees with Orbax (no torch on this path).

A converted model is an Orbax checkpoint directory holding the parameter tree, plus a
`agibot_meta.json` beside it (model kind, source, dtypes). Orbax finalises the directory
atomically (it writes to a temporary name and renames), so a crash leaves no half-written
checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from agibot_jax.utils import atomic_write

META_FILE = "agibot_meta.json"


def save_params(dst: str, params: Any, meta: dict | None = None, *, force: bool = False) -> None:
  """Write `params` (numpy or jax arrays) as an Orbax checkpoint at `dst`."""
  dst = os.path.abspath(dst)
  if os.path.exists(dst):
    if not force:
      raise FileExistsError(f"{dst} exists; pass force=True (--force) to overwrite")
    import shutil

    shutil.rmtree(dst)
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(dst, "params"), params)
    ckptr.wait_until_finished()
  atomic_write(os.path.join(dst, META_FILE), lambda f: json.dump(meta or {}, f, indent=1, sort_keys=True), mode="w")


def read_meta(path: str) -> dict:
  p = os.path.join(path, META_FILE)
  if not os.path.exists(p):
    raise FileNotFoundError(f"{path} is not a converted checkpoint (no {META_FILE})")
  with open(p) as f:
    return json.load(f)


def restore_params(path: str, abstract: Any | None = None) -> Any:
  """Restore a tree saved by `save_params`.

  abstract: optional tree of `jax.ShapeDtypeStruct` (with `.sharding` for sharded restore);
  shapes must match, dtypes are cast to the abstract's.
  """
  path = os.path.abspath(path)
  read_meta(path)
  with ocp.StandardCheckpointer() as ckptr:
    if abstract is None:
      return ckptr.restore(os.path.join(path, "params"))
    return ckptr.restore(os.path.join(path, "params"), abstract)


def to_numpy_tree(tree: Any) -> Any:
  return jax.tree.map(np.asarray, tree)
