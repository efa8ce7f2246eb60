"""Training checkpoints with Orbax `CheckpointManager`.

One checkpoint per saved step under `<workdir>/checkpoints/<step>/`, holding
  state   the TrainState (step, trainable masters, frozen base, optimizer state, EMA, PRNG key)
  data    the grain iterator state (JSON)
  config  the run's config (JSON)
Saves are asynchronous (training continues while the previous one is written) and finalised
atomically by Orbax: a checkpoint directory appears under its final name only once complete, so a
run killed mid-save resumes from the last complete one. Old checkpoints beyond `checkpoint.keep`
are removed. `checkpoints/` itself appears with the first save.

What goes wrong is said in one line and never silently:
  - a save that fails (disk full) raises SaveError naming the step as soon as it is known (`Saver`), after its
    unfinished `<step>.orbax-checkpoint-tmp*` directory is removed; Orbax's own reports of the failure (its
    threads', asyncio's, TensorStore's) are dropped (`quiet_async_failures`);
  - a checkpoint that does not restore is named (step, item directory, reason) and moved aside to
    `<step>.corrupt` (Orbax ignores it, and would not save a step older than the newest one it sees), and the
    next older one is tried; `checkpoint.strict_resume` stops instead (ResumeError);
  - a checkpoint written with another model, control type, rig, views or clip shape is refused, naming the keys;
    other changed settings (optimizer, schedule, ...) are warned about; paths and loop lengths are not compared;
  - read-only commands (sample, eval, convert.dit --export) read the newest checkpoint that restores in the same
    way, but move nothing (`checkpoint_to_read`, `restore_weights`).
"""

from __future__ import annotations

import asyncio
import glob
import json
import logging
import os
import pathlib
import shutil
import sys
import traceback
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp

from agibot_jax import params_io
from agibot_jax.models import lora

from agibot_jax.training.state import TrainState

log = logging.getLogger(__name__)

CORRUPT_SUFFIX = ".corrupt"
_TMP_MARK = ".orbax-checkpoint-tmp"

# Config keys (dotted prefixes) a checkpoint cannot be resumed across: they change the train state's shapes or
# what the network learns to map from (control type, rig and views, clip shape, VAE).
STRUCTURAL_KEYS = (
    "control_type", "rig", "model.net.", "model.train_base", "model.lora.", "model.precision", "model.hint_keys",
    "model.tokenizer.", "model.text_encoder.num_tokens", "dataloader_train.dataset.control_input_type",
    "dataloader_train.dataset.views", "dataloader_train.dataset.resolution_hw",
    "dataloader_train.dataset.num_video_frames", "ema.enabled",
)
# Keys free to change on resume: paths, loop lengths, checkpointing, logging and samples, parallelism, input
# workers, and the network's memory/kernel settings (same weights, same results). Anything else that changed is
# reported as a warning.
IGNORED_KEYS = (
    "job.", "mesh.", "checkpoint.", "trainer.max_iter", "trainer.logging_iter", "trainer.max_nonfinite_steps",
    "trainer.callbacks.", "dataloader_val.", "dataloader_train.num_workers", "dataloader_train.prefetch_buffer_size",
    "dataloader_train.dataset.dataset_dir", "dataloader_train.dataset.text_cache_dir",
    "dataloader_train.dataset.latent_cache_dir", "dataloader_train.dataset.video_backend",
    "dataloader_train.dataset.skip_invalid", "dataloader_train.dataset.validate",
    "dataloader_train.dataset.max_bad_samples", "dataloader_train.dataset.allow_control_stretch",
    "model.allow_random_init", "model.tokenizer.path",
    "model.text_encoder.path", "model.text_encoder.tokenizer", "model.text_encoder.compute_online",
    "model.net.attention", "model.net.remat_policy", "model.net.offload_block_inputs",
    "model.net.remat_sublayers", "model.net.mlp_chunks", "model.net.cross_view_chunks",
    "model.net.remat_segment_blocks",
    "model.net.context_local_attention", "model.offload_optimizer_state", "model.memory_budget_gib",
)
# Under STRUCTURAL_KEYS but only numerics (compute precision): a change is warned about.
PRECISION_KEYS = ("model.net.dtype", "model.tokenizer.dtype")
# Keys newer than some checkpoints, and the value their absence means (what the older code did).
ABSENT_MEANS = {"model.lora.rank": 0}


class SaveError(RuntimeError):
  """A checkpoint could not be written; the message names the step and the reason."""


class ResumeError(RuntimeError):
  """The run cannot resume from its checkpoints; the message names the step, the file or the keys."""


class _Unrestorable(Exception):
  """One checkpoint does not restore (internal: the caller falls back or stops)."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=int(config.checkpoint.keep),
      enable_async_checkpointing=bool(config.checkpoint.async_save),
      create=False,  # the first save creates the directory: nothing is written before it can be
      # A save killed midway leaves `<step>.orbax-checkpoint-tmp*`; restore never sees it (only finalised
      # steps are listed) and removing it at start lets the resumed run save that step again.
      cleanup_tmp_directories=True,
  )
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=("state", "data", "config"))


def config_json(config) -> dict:
  """The config as a checkpoint stores it (JSON: tuples become lists)."""
  return json.loads(config.to_json_best_effort())


def save(manager: ocp.CheckpointManager, state: TrainState, data_state: Any, config) -> None:
  step = int(jax.device_get(state.step))
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(data_state),
      config=ocp.args.JsonSave(config_json(config)),
  ), force=True)


class Saver:
  """Writes the run's checkpoints through `manager`, one asynchronous save in flight (the loop's `Checkpoints`).

  A save that failed raises SaveError at the first `check` (called after every step), `wait` or `save` after the
  failure is known, with its unfinished directory removed, instead of one save interval later inside Orbax.
  data_state() -> the data iterator state to store with the train state.
  """

  def __init__(self, manager: ocp.CheckpointManager, config, data_state: Callable[[], Any]):
    self.manager, self.config, self.data_state = manager, config, data_state
    quiet_async_failures()
    self.pending: int | None = None  # the step whose save is in flight or not yet checked
    self.failed = False

  def save(self, state: TrainState) -> None:
    self.wait()
    save(self.manager, state, self.data_state(), self.config)
    self.pending = int(jax.device_get(state.step))

  def check(self) -> None:
    if self.pending is not None and not self.manager.is_saving_in_progress():
      self.wait()

  def wait(self) -> None:
    if self.pending is None:
      return
    step, self.pending = self.pending, None
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self.failed = True
      removed = _remove_unfinished(str(self.manager.directory), step)
      raise SaveError(f"checkpoint {step}: the save failed ({_reason(e)}); removed its unfinished files "
                      f"{removed or '(none found)'}; the newest complete checkpoint is step "
                      f"{self.manager.latest_step()}") from e

  def close(self) -> None:
    """Waits for the last save (SaveError if it failed), then closes the manager."""
    try:
      self.wait()
    finally:
      try:
        self.manager.close()
      except Exception:  # pylint: disable=broad-except
        if not self.failed:  # else Orbax raises the failure already reported once more
          raise


def _remove_unfinished(directory: str, step: int) -> list[str]:
  paths = sorted(glob.glob(os.path.join(directory, f"{step}{_TMP_MARK}*")))
  if jax.process_index() == 0:
    for path in paths:
      shutil.rmtree(path, ignore_errors=True)
  return paths


def _reason(error: BaseException) -> str:
  """The innermost cause of `error` in one line (TensorStore's spec dump cut off)."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = str(error).split(" [tensorstore_spec")[0].strip().splitlines()
  return f"{type(error).__name__}: {text[0][:300] if text else ''}"


def restore_latest(manager: ocp.CheckpointManager, abstract_state: TrainState, config=None, *,
                   strict: bool = False) -> tuple[TrainState, Any] | None:
  """(state, data iterator state) of the newest checkpoint that restores, or None if there is none.

  abstract_state: TrainState of `jax.ShapeDtypeStruct`s carrying the target shardings.
  config: the run's config, compared with each checkpoint's (`config_changes`) before its state is read.
  A checkpoint that does not restore is named in one line and moved aside, and the next older one is tried;
  `strict` raises ResumeError instead. Raises ResumeError as well when checkpoints exist but none restores.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if steps:
    quiet_async_failures()
  for step in steps:
    try:
      return _restore(manager, step, abstract_state, config)
    except _Unrestorable as e:
      if strict:
        raise ResumeError(f"{e} (checkpoint.strict_resume=True: not trying older checkpoints)") from e.__cause__
      log.warning("%s; moved it aside to %s, trying the next older checkpoint", e, _move_aside(manager, step))
  if steps:
    raise ResumeError(f"{manager.directory}: none of the checkpoints {steps} restores (each moved aside to "
                      f"<step>{CORRUPT_SUFFIX}); rerun to start from the base weights")
  return None


_ORBAX_DIR = os.path.dirname(os.path.abspath(ocp.__file__))
_ASYNCIO_DIR = os.path.dirname(os.path.abspath(asyncio.__file__))


def quiet_async_failures() -> None:
  """Keeps a failed asynchronous save or restore (a full disk, a damaged file) to the one line that names it.

  Orbax raises the failure to its caller (Saver.wait, `_restore`, which name it in one line), but on the way its
  machinery reports it dozens of times, each with a traceback: its threads log it (absl), the asyncio futures of the
  other writes log "exception was never retrieved", and TensorStore, completing the other reads or writes after
  Orbax closed its asyncio loop, calls into the closed loop, which Python reports as unraisable ("Event loop is
  closed"). Those reports, and only those (log records whose exception was raised in Orbax or, for asyncio's, in a
  native future: TensorStore's; the closed-loop calls), are dropped from then on (they arrive any time later, so the
  filters stay).
  """
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_loop_callbacks", False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
      previous(unraisable)

  hook.drops_closed_loop_callbacks = True
  sys.unraisablehook = hook
  for name in ("absl", "asyncio"):
    logging.getLogger(name).addFilter(_not_raised_in_orbax)


def _not_raised_in_orbax(record: logging.LogRecord) -> bool:
  error = record.exc_info[1] if record.exc_info else None
  if error is None:
    return True
  frames = [frame.f_code.co_filename for frame, _ in traceback.walk_tb(error.__traceback__)]
  if record.name == "asyncio" and all(path.startswith(_ASYNCIO_DIR) for path in frames):
    return False  # a failed native future's task (TensorStore's: this package awaits nothing itself)
  return not any(path.startswith(_ORBAX_DIR) for path in [record.pathname, *frames])


def _restore(manager, step: int, abstract_state, config) -> tuple[TrainState, Any]:
  """The config is read first: it is small, and a changed model must be named before Orbax fails on a shape."""
  items = {"config": ocp.args.JsonRestore(), "data": ocp.args.JsonRestore(),
           "state": ocp.args.StandardRestore(abstract_state)}
  restored = {}
  for name, args in items.items():
    try:
      restored[name] = manager.restore(step, args=ocp.args.Composite(**{name: args}))[name]
    except Exception as e:  # pylint: disable=broad-except
      raise _Unrestorable(f"checkpoint {step}: {os.path.join(str(manager.directory), str(step), name)} does not "
                          f"restore ({_reason(e)})") from e
    if name == "config" and config is not None:
      check_resume_config(restored["config"], config, step)
  return restored["state"], restored["data"]


def _move_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Renames checkpoint `step` to `<step>.corrupt` (or `.corrupt.<n>`), so Orbax no longer lists it."""
  src = os.path.join(str(manager.directory), str(step))
  dst, n = src + CORRUPT_SUFFIX, 1
  while os.path.exists(dst):
    dst, n = f"{src}{CORRUPT_SUFFIX}.{n}", n + 1
  if jax.process_index() == 0:
    os.rename(src, dst)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f"agibot_jax: checkpoint {step} moved aside")
  manager.reload()
  return dst


def _flatten(tree: dict) -> dict[str, Any]:
  """Nested config dicts -> {"dotted.key": value}."""
  return {".".join(path): v for path, v in params_io.flatten_tree(tree).items()}


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
  return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


def config_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
  """(structural, other) changes from a checkpoint's config JSON to the current one, each "key: old -> new".

  A key present on one side only (another version of the code) is never structural, unless ABSENT_MEANS says what
  its absence means.
  """
  old, new = {**ABSENT_MEANS, **_flatten(saved)}, {**ABSENT_MEANS, **_flatten(current)}
  structural, other = [], []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, "(absent)"), new.get(key, "(absent)")
    if a == b or _matches(key, IGNORED_KEYS):
      continue
    is_structural = (key in old and key in new and _matches(key, STRUCTURAL_KEYS)
                     and not _matches(key, PRECISION_KEYS))
    (structural if is_structural else other).append(f"{key}: {a} -> {b}")
  return structural, other


def check_resume_config(saved: dict, config, step: int) -> None:
  """Refuses (ResumeError) a checkpoint written with another model or data layout, naming the keys; warns about any
  other changed setting (the current value is used)."""
  structural, other = config_changes(saved, config_json(config))
  if structural:
    raise ResumeError(f"checkpoint {step} was written for another model or data layout ({'; '.join(structural)}): "
                      "set these back, or train in a new --workdir")
  if other:
    log.warning("resuming checkpoint %d with changed settings (the new values apply): %s", step, "; ".join(other))


def _steps(directory: str) -> list[int]:
  """The complete checkpoints under `directory`, newest first, listed without creating or changing anything."""
  if not os.path.isdir(directory):
    return []
  return sorted(ocp.utils.checkpoint_steps(directory), reverse=True)


def _read_item(directory: str, step: int, name: str, read: Callable[[str], Any]) -> Any:
  """`read(<directory>/<step>/<name>)`, a failure raised as _Unrestorable naming the item and the reason."""
  path = os.path.join(directory, str(step), name)
  quiet_async_failures()
  try:
    return read(path)
  except Exception as e:  # pylint: disable=broad-except
    raise _Unrestorable(f"checkpoint {step}: {path} does not restore ({_reason(e)})") from e


def _read_config(directory: str, step: int) -> dict:
  return _read_item(directory, step, "config", ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore)


def _read_config_and_layout(directory: str, step: int) -> tuple[dict, Any]:
  """(saved config JSON, the state's tree metadata) of checkpoint `step`: small reads that find most damage."""
  config = _read_config(directory, step)
  # The handler's metadata read raises the reason; the Checkpointer's logs it in a warning and returns None.
  layout = _read_item(directory, step, "state",
                      lambda path: ocp.PyTreeCheckpointHandler().metadata(pathlib.Path(path)).tree)
  return config, layout


_skipped_reported: set[str] = set()


def _skip(error: _Unrestorable, older: list[int]) -> None:
  """Names a checkpoint a read-only command skips (once per process), which it leaves where it is."""
  message = f"{error}; {f'reading checkpoint {older[0]} instead' if older else 'no older checkpoint'} (it stays " \
            "in place: this command only reads)"
  # Keyed by checkpoint and item, not the reason: two reads of one damaged item can name different missing arrays.
  item = str(error).split(" does not restore", 1)[0]
  if item not in _skipped_reported:
    _skipped_reported.add(item)
    log.warning("%s", message)


def checkpoint_to_read(workdir: str) -> tuple[int, dict]:
  """(step, the config saved with it) of the checkpoint a read-only command (sample, eval, convert.dit --export) of
  a training run reads: the newest whose config and state layout read. Each newer one is named in one warning line
  and left in place (training moves such a checkpoint aside; these commands only read). `restore_weights` then reads
  its weights, going on to older checkpoints when its arrays do not read.

  Raises FileNotFoundError when the run has no complete checkpoint, ResumeError when none reads.
  """
  directory = checkpoint_dir(workdir)
  steps = _steps(directory)
  for i, step in enumerate(steps):
    try:
      return step, _read_config_and_layout(directory, step)[0]
    except _Unrestorable as e:
      _skip(e, steps[i + 1:])
  raise _none_reads(directory, steps)


def saved_config(workdir: str) -> tuple[int, dict] | None:
  """(step, config JSON) of a run's newest complete checkpoint, the one training resumes from; None without one, or
  when its config does not read (training then names it and moves it aside: `restore_latest`)."""
  directory = checkpoint_dir(workdir)
  steps = _steps(directory)
  if not steps:
    return None
  try:
    return steps[0], _read_config(directory, steps[0])
  except _Unrestorable:
    return None


def _none_reads(directory: str, steps: list[int]) -> Exception:
  if not steps:
    return FileNotFoundError(f"{directory}: no complete checkpoint")
  return ResumeError(f"{directory}: none of the checkpoints {steps} restores")


def restore_weights(workdir: str, param_shardings: Any, *, use_ema: bool = True) -> tuple[int, Any]:
  """(step, full DiT params) of the newest checkpoint of a run whose weights restore, reading only the weights.

  The frozen base and either the EMA (`use_ema`) or the regular trainable branch are restored, in their stored
  dtypes, into `param_shardings` (a sharding per parameter path; LoRA adapters are placed like their kernel and
  merged into it with the checkpoint's own `model.lora`); the optimizer state is not read. A checkpoint that does
  not restore is named in one warning line and the next older one is read; nothing is moved (`checkpoint_to_read`).
  Raises FileNotFoundError / ResumeError when there is none / none restores.
  """
  directory = checkpoint_dir(workdir)
  steps = _steps(directory)
  for i, step in enumerate(steps):
    try:
      return step, _read_weights(directory, step, param_shardings, use_ema)
    except _Unrestorable as e:
      _skip(e, steps[i + 1:])
  raise _none_reads(directory, steps)


def _read_weights(directory: str, step: int, param_shardings: Any, use_ema: bool) -> Any:
  from flax import traverse_util

  saved, stored = _read_config_and_layout(directory, step)
  branch = "ema" if use_ema else "trainable"
  if not stored.get(branch):
    raise ValueError(f"{directory}: the run kept no EMA (ema.enabled=False); use the regular weights (--no_ema)")
  by_path = traverse_util.flatten_dict(param_shardings)
  for key, m in traverse_util.flatten_dict(stored[branch]).items():
    if key[-1] in (lora.A, lora.B):
      by_path[key] = _adapter_sharding(by_path[key[:-1] + (lora.KERNEL,)], key[-1], len(m.shape))
  target, restore_args = {}, {}
  for part in ("frozen", branch):
    flat = traverse_util.flatten_dict(stored[part])
    target[part] = traverse_util.unflatten_dict(
        {k: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=by_path[k]) for k, m in flat.items()})
    restore_args[part] = traverse_util.unflatten_dict(
        {k: ocp.ArrayRestoreArgs(sharding=by_path[k], dtype=m.dtype) for k, m in flat.items()})
  args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
  out = _read_item(directory, step, "state", lambda path: ocp.PyTreeCheckpointer().restore(path, args=args))
  flat = traverse_util.flatten_dict(out["frozen"])
  flat.update(traverse_util.flatten_dict(out[branch]))
  params = lora.merged(traverse_util.unflatten_dict(flat), lora.LoraConfig.from_config(saved["model"]).scale)
  return jax.device_put(params, param_shardings)  # merged kernels placed as the network's


def _adapter_sharding(kernel: jax.sharding.NamedSharding, name: str, ndim: int) -> jax.sharding.NamedSharding:
  """A LoRA adapter's sharding from its kernel's (`lora.adapter_axes`)."""
  spec = tuple(kernel.spec) + (None,) * (ndim - len(kernel.spec))
  return jax.sharding.NamedSharding(kernel.mesh, jax.sharding.PartitionSpec(*lora.adapter_axes(spec, name)))
