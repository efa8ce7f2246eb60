"""Training checkpoints with Orbax `CheckpointManager`.

One checkpoint per saved step under `<workdir>/checkpoints/<step>/`, holding
  state   the TrainState (step, trainable masters, frozen base, optimizer state, EMA, PRNG key)
  data    the grain iterator state (JSON)
  config  the run's config (JSON)
Saves are asynchronous (training continues while the previous one is written) and finalised
atomically by Orbax: a checkpoint directory appears under its final name only once complete, so a
run killed mid-save resumes from the last complete one. Old checkpoints beyond `checkpoint.keep`
are removed.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from agibot_jax.training.state import TrainState


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=int(config.checkpoint.keep),
      enable_async_checkpointing=bool(config.checkpoint.async_save),
      create=True,
      # A save killed midway leaves `<step>.orbax-checkpoint-tmp*`; restore never sees it (only finalised
      # steps are listed) and removing it at start lets the resumed run save that step again.
      cleanup_tmp_directories=True,
  )
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=("state", "data", "config"))


def _config_json(config) -> dict:
  return json.loads(config.to_json_best_effort())


def save(manager: ocp.CheckpointManager, state: TrainState, data_state: Any, config) -> None:
  step = int(jax.device_get(state.step))
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(data_state),
      config=ocp.args.JsonSave(_config_json(config)),
  ), force=True)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: TrainState) -> tuple[TrainState, Any] | None:
  """(state, data iterator state) of the newest complete checkpoint, or None if there is none.

  abstract_state: TrainState of `jax.ShapeDtypeStruct`s carrying the target shardings.
  """
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=ocp.args.JsonRestore(),
  ))
  return restored.state, restored.data


def restore_weights(workdir: str, param_shardings: Any, *, use_ema: bool = True) -> tuple[int, Any]:
  """(step, full DiT params) of the newest complete checkpoint of a run, reading only the weights.

  The frozen base and either the EMA (`use_ema`) or the regular trainable branch are restored, in their stored
  dtypes, into `param_shardings` (a sharding per parameter path); the optimizer state is not read.
  """
  from flax import traverse_util

  directory = checkpoint_dir(workdir)
  with ocp.CheckpointManager(directory, item_names=("state", "data", "config")) as manager:
    step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"{directory}: no complete checkpoint")
  path = os.path.join(directory, str(step), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  stored = checkpointer.metadata(path).item_metadata.tree
  branch = "ema" if use_ema else "trainable"
  if not stored.get(branch):
    raise ValueError(f"{directory}: the run kept no EMA (ema.enabled=False); use the regular weights (--no_ema)")
  by_path = traverse_util.flatten_dict(param_shardings)
  target, restore_args = {}, {}
  for part in ("frozen", branch):
    flat = traverse_util.flatten_dict(stored[part])
    target[part] = traverse_util.unflatten_dict(
        {k: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=by_path[k]) for k, m in flat.items()})
    restore_args[part] = traverse_util.unflatten_dict(
        {k: ocp.ArrayRestoreArgs(sharding=by_path[k], dtype=m.dtype) for k, m in flat.items()})
  out = checkpointer.restore(path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                                               partial_restore=True))
  flat = traverse_util.flatten_dict(out["frozen"])
  flat.update(traverse_util.flatten_dict(out[branch]))
  return step, traverse_util.unflatten_dict(flat)
