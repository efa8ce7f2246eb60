"""Up-front checks: everything a command can find wrong before it builds a model, in one place.

Every command calls one `for_*` function of this module first; it runs, in order, the checks its command needs and
returns what the command runs on. A problem raises a `cli.UserError` (one line naming the key, flag or file; the
command exits with status 2), or a `layout.DatasetError` listing every problem of a dataset:

  resolve                the run's frozen config: paths absolute, a `checkpoint.load_path` bundle's parts filled in,
                         the embedded example dataset for a workdir without dataset_dir and, for a training run
                         read by sample/eval, the input paths that run was trained with where none is given
  check_config           config values (periods, sizes, batch, mesh against the devices, clip shape, names)
  check_accelerator      a full-size model on a machine without a GPU
  check_paths            every input path the config names exists and holds what its key says
  check_weights_given    weights for every model a full-size run builds (random ones: tiny configs only)
  check_workdir, check_output
                         output locations: created, writable, not a file where a folder is needed (or the reverse)
  find_checkpoint, check_checkpoint_config, check_resume
                         `--checkpoint` (or a resumed workdir): exists, what it is, and whether its model is the
                         config's (training's key lists, `checkpointing.config_changes`)
  prepare_dataset        the dataset (the embedded example written first if needed), validated

  for_training      train                 for_sampling    sample, eval          for_latent_cache  cache_latents
  for_text_cache    text.precompute       for_dataset     inspect               for_bench         bench
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import tempfile

import jax
import ml_collections
import numpy as np

from agibot_jax import params_io, registry, sharding, video_io
from agibot_jax import rig as rig_lib
from agibot_jax.array_cache import INDEX_FILE, CacheMismatchError
from agibot_jax.cli import ConfigError, UserError
from agibot_jax.data import latent_cache, layout, pipeline, synthetic
from agibot_jax.models import dit, dit_config, lora
from agibot_jax.models import vae as vae_lib
from agibot_jax.training import checkpointing
from configs import base as base_config

log = logging.getLogger(__name__)

EXAMPLE_DATA = "example_data"
DATASET_DIR = "dataloader_train.dataset.dataset_dir"
BUNDLE_PARTS = {"vae": ("model", "tokenizer", "path"), "text_encoder": ("model", "text_encoder", "path")}
# The input paths a config can name (absolute after `resolve`) and what each must hold: a folder, a cache folder (its
# index) and the command that writes one, or a converted model (its agibot_meta.json `model`). A sampling command
# takes those it leaves empty from the config of the training run it reads.
_FOLDER, _CACHE, _CONVERTED = "folder", "cache", "converted"
PATH_KINDS = {
    DATASET_DIR: (_FOLDER, None),
    "dataloader_train.dataset.text_cache_dir": (_CACHE, "python -m agibot_jax.text.precompute"),
    "dataloader_train.dataset.latent_cache_dir": (_CACHE, "python -m agibot_jax.cache_latents"),
    "dataloader_val.dataset_dir": (_FOLDER, None),
    "checkpoint.load_path": (_CONVERTED, params_io.MODEL_DIT),
    "model.tokenizer.path": (_CONVERTED, params_io.MODEL_VAE),
    "model.text_encoder.path": (_CONVERTED, params_io.MODEL_TEXT_ENCODER),
    "model.text_encoder.tokenizer": (_FOLDER, None),
}
INPUT_PATHS = tuple(PATH_KINDS)
# Parameters above which a DiT is refused on a machine without a GPU (the tiny configs have 2 M, the 2B 2.4 G).
CPU_MAX_PARAMS = 2e8
# The user errors of the commands: reported in one line (a dataset: every problem listed), exit status 2.
USER_ERRORS = (UserError, layout.DatasetError, CacheMismatchError)


def _get(config, key: str):
  return functools.reduce(lambda node, k: node[k], key.split("."), config)


def _saved(tree: dict, key: str):
  """Dotted `key` of a config saved as JSON (None where absent)."""
  return functools.reduce(lambda node, k: node.get(k) if isinstance(node, dict) else None, key.split("."), tree)


def _set(config, key: str, value) -> None:
  *parents, leaf = key.split(".")
  setattr(functools.reduce(getattr, parents, config), leaf, value)


# ----------------------------------------------------------------------------------------------
# The config


def resolve(config: ml_collections.ConfigDict, workdir: str | None = None, *, load_path: str | None = None,
            trained: dict | None = None) -> ml_collections.FrozenConfigDict:
  """The run's frozen config, its paths resolved; `config` itself is not changed.

  - `trained`, the config a training checkpoint was saved with (sample, eval): each INPUT_PATHS key left empty
    takes the trained value, and so do `dataloader_val.held_out_fraction` and `held_out_seed` when no held-out set
    is given, so a checkpoint is sampled and evaluated on the data it was trained with unless told otherwise;
  - no `dataloader_train.dataset.dataset_dir` and a workdir: the embedded example dataset `<workdir>/example_data`;
  - `load_path` (default `checkpoint.load_path`) a bundle (a folder with dit/, and maybe vae/ and text_encoder/):
    `checkpoint.load_path` becomes its dit/, and its vae/ and text_encoder/ fill `model.tokenizer.path` and
    `model.text_encoder.path` where those are empty;
  - `rig` a preset name, or else the rig's cameras as JSON text (`rig.canonical`), and an empty
    `dataloader_train.dataset.views` the rig's cameras.
  Paths become absolute, so the config saved with a checkpoint says what the run read.
  Raises ConfigError when the rig or its views cannot run.
  """
  c = config.copy_and_resolve_references()
  c.unlock()
  if trained is not None:
    taken = trained_paths(c, trained)
    for key in taken:
      _set(c, key, _saved(trained, key))
    if not c.dataloader_val.dataset_dir and not c.dataloader_val.held_out_fraction and \
        _saved(trained, "dataloader_val.held_out_fraction"):
      for key in ("dataloader_val.held_out_fraction", "dataloader_val.held_out_seed"):
        _set(c, key, _saved(trained, key))
        taken.append(key)
    if taken:
      log.info("from the training run's config (pass --config.KEY=VALUE for others): %s",
               " ".join(f"{key}={_get(c, key)}" for key in taken))
  ds = c.dataloader_train.dataset
  try:
    rig = rig_lib.canonical(c.rig)
    del c["rig"]  # it may have held a list: the field's type changes
    c.rig = rig
    ds.views = rig_lib.of_config(c).names
  except rig_lib.RigError as e:
    raise ConfigError(str(e)) from None
  if not ds.dataset_dir and workdir:
    ds.dataset_dir = os.path.join(workdir, EXAMPLE_DATA)
  load = c.checkpoint.load_path if load_path is None else load_path
  if load and os.path.isdir(os.path.join(load, "dit")):
    for part, keys in BUNDLE_PARTS.items():
      section = functools.reduce(getattr, keys[:-1], c)
      if not section[keys[-1]] and os.path.isdir(os.path.join(load, part)):
        section[keys[-1]] = os.path.join(load, part)
    load = os.path.join(load, "dit")
  c.checkpoint.load_path = load or ""
  for key in INPUT_PATHS:
    if _get(c, key):
      _set(c, key, os.path.abspath(_get(c, key)))
  return ml_collections.FrozenConfigDict(c)


def trained_paths(config, trained: dict) -> list[str]:
  """The INPUT_PATHS keys `config` leaves empty and the training run's saved config `trained` sets (not its latent
  cache: sampling reads pixels)."""
  return [key for key in INPUT_PATHS if key != "dataloader_train.dataset.latent_cache_dir" and not _get(config, key)
          and _saved(trained, key)]


def check_config(config) -> None:
  """Refuses config values a run cannot use (ConfigError naming each key), before anything is built.

  Checks the loop and checkpoint periods, the batch and its accumulation, the mesh against the devices, the clip
  shape against the VAE and the DiT (resolution a multiple of 8 x patch size, 4k+1 frames for `state_t` latent
  frames), the rig and its views, the names of control type, backends and modes, and `model.lora`.
  """
  problems = []

  def need(ok: bool, key: str, what: str) -> None:
    if not ok:
      problems.append(f"{key}={_get(config, key)!r}: {what}")

  def at_least(key: str, low: int) -> None:
    need(isinstance(_get(config, key), int) and _get(config, key) >= low, key, f"must be an integer >= {low}")

  for key in ("trainer.max_iter", "trainer.logging_iter", "checkpoint.save_iter", "checkpoint.keep",
              "trainer.max_nonfinite_steps", "trainer.grad_accum_iter", "dataloader_train.batch_size"):
    at_least(key, 1)
  for key in ("dataloader_train.num_workers", "dataloader_train.prefetch_buffer_size",
              "dataloader_train.dataset.max_bad_samples", "trainer.callbacks.every_n_sample.every_n"):
    at_least(key, 0)
  batch, accum = config.dataloader_train.batch_size, config.trainer.grad_accum_iter
  if isinstance(batch, int) and isinstance(accum, int) and accum >= 1:
    need(batch % accum == 0, "dataloader_train.batch_size", f"must be a multiple of trainer.grad_accum_iter={accum}")
  lr = config.optimizer.lr
  need(isinstance(lr, (int, float)) and np.isfinite(lr) and lr >= 0, "optimizer.lr", "must be a finite number >= 0")
  need(config.model.precision in ("bfloat16", "float32"), "model.precision", "must be bfloat16 or float32")

  ds = config.dataloader_train.dataset
  need(ds.validate in ("probe", "full"), "dataloader_train.dataset.validate", "must be probe or full")
  need(ds.video_backend in video_io.BACKENDS, "dataloader_train.dataset.video_backend",
       f"must be one of {video_io.BACKENDS}")
  try:
    registry.control(ds.control_input_type)
  except ValueError as e:
    problems.append(f"dataloader_train.dataset.control_input_type: {e}")
  try:
    rig = rig_lib.of_config(config)
  except rig_lib.RigError as e:
    problems.append(str(e))
  else:
    rows = config.model.net.n_cameras_emb
    need(max(rig.view_ids) < rows, "model.net.n_cameras_emb", f"rig {rig.describe()} uses view rows up to "
         f"{max(rig.view_ids)}: the network needs one embedding row per view row")
  if "cross_view_attn_map" in config.model.net:
    problems.append("model.net.cross_view_attn_map: the cross-view neighbours are the rig's (config.rig, each "
                    "camera's neighbours); remove the key")
  vae = vae_lib.VAEConfig.from_tokenizer_config(config.model.tokenizer)
  multiple = vae.spatial_factor * int(config.model.net.patch_spatial)
  hw = tuple(ds.resolution_hw)
  need(len(hw) == 2 and all(isinstance(x, int) and x > 0 and x % multiple == 0 for x in hw),
       "dataloader_train.dataset.resolution_hw", f"must be (height, width), each a positive multiple of {multiple} "
       f"(VAE x{vae.spatial_factor}, patch x{config.model.net.patch_spatial})")
  frames = vae.temporal_factor * (int(config.model.net.state_t) - 1) + 1
  need(ds.num_video_frames == frames, "dataloader_train.dataset.num_video_frames",
       f"must be {frames} = {vae.temporal_factor} x (model.net.state_t={config.model.net.state_t} - 1) + 1")
  for key in ("mesh.data", "mesh.fsdp", "mesh.context"):
    need(isinstance(_get(config, key), int) and (_get(config, key) >= 1 or _get(config, key) == -1), key,
         "must be a device count >= 1, or -1 for all remaining devices")
  if not any(p.startswith("mesh.") for p in problems):
    try:
      sharding.make_mesh(**config.mesh)
    except ValueError as e:
      problems.append(str(e))
  try:  # the network's own checks (remat settings, head count, ...)
    dit_config.DiTConfig.from_config(config.model.net)
  except (KeyError, TypeError, ValueError) as e:
    problems.append(f"model.net: {e.args[0] if e.args else e}")
  try:
    lora_cfg = lora.LoraConfig.from_config(config.model)
    if lora_cfg.rank and not problems:  # its targets against the control blocks' kernels (an abstract init, ~1 s)
      # model.net's shapes: the rig's cross-view neighbours (assemble.dit_config) change no parameter
      lora.adapted_kernels(dit.abstract_params(dit_config.DiTConfig.from_config(config.model.net)), lora_cfg)
  except ValueError as e:
    problems.append(str(e))
  if problems:
    raise ConfigError("config: " + "; ".join(problems))


def dit_parameters(net) -> float:
  """About how many parameters the DiT of `model.net` has: per block (main and control) 4·C² in each of self- and
  cross-view attention, 2·C² + 2·C·(text width) in text attention, 2·mlp_ratio·C² in the MLP."""
  c, blocks = int(net.model_channels), int(net.num_blocks)
  per_block = (10 + 2 * float(net.mlp_ratio)) * c * c + 2 * c * int(net.crossattn_emb_channels)
  return per_block * (blocks + len(range(0, blocks, int(net.vace_block_every_n))))


def check_accelerator(config) -> None:
  """A full-size model (more than CPU_MAX_PARAMS) on a machine without a GPU is refused unless `job.allow_cpu`."""
  params = dit_parameters(config.model.net)
  if params > CPU_MAX_PARAMS and jax.default_backend() == "cpu" and not config.job.allow_cpu:
    raise ConfigError(f"this config's DiT has ~{params / 1e9:.1f} B parameters and this machine has no GPU (JAX "
                      f"backend: cpu): try the pipeline on CPU with configs/{config.control_type}.py:tiny, or set "
                      "job.allow_cpu=True to run the full size on the CPU anyway (hours per step)")


# ----------------------------------------------------------------------------------------------
# Paths


def check_paths(config, *, skip: tuple[str, ...] = (), origin: dict[str, str] | None = None) -> None:
  """Every input path the config names (INPUT_PATHS but `skip`: what the command writes, or checks itself) exists and
  holds what its key says (PATH_KINDS); ConfigError listing each that does not. `origin`: key -> where its value
  came from, named in the message."""
  problems = []
  for key, (kind, what) in PATH_KINDS.items():
    path = _get(config, key)
    if path and key not in skip:
      name = f"{key}={path}" + (f" (from {origin[key]})" if origin and key in origin else "")
      problems.append(path_problem(name, path, kind, what))
  problems = [p for p in problems if p]
  if problems:
    raise ConfigError("; ".join(problems))


def path_problem(name: str, path: str, kind: str, what: str | None) -> str | None:
  """Why `path` (called `name` in the message) is not a folder, a cache written by command `what`, or a converted
  model of kind `what` (`kind`: _FOLDER, _CACHE, _CONVERTED), else None."""
  if not os.path.exists(path):
    return f"{name}: not found"
  if not os.path.isdir(path):
    return f"{name}: not a folder"
  if kind == _CACHE and not os.path.isfile(os.path.join(path, INDEX_FILE)):
    return f"{name}: not a cache (no {INDEX_FILE}); write one with {what}"
  if kind == _CONVERTED:
    meta = os.path.join(path, params_io.META_FILE)
    model = _read_json(meta).get("model") if os.path.isfile(meta) else None
    if model != what:
      return f"{name}: " + (f"holds a {model!r} model, not {what!r}" if model else
                            f"not a converted {what} model (no {params_io.META_FILE}); see README, Getting the weights")
  return None


def check_weights_given(config, needed: tuple[str, ...]) -> None:
  """Each model of `needed` ("dit", "vae", "text") has weights, or the config allows random ones (the tiny demo);
  ConfigError naming the keys to set."""
  if config.model.allow_random_init:
    return
  keys = {"dit": "checkpoint.load_path", "vae": "model.tokenizer.path", "text": "model.text_encoder.path"}
  given = {"dit": config.checkpoint.load_path, "vae": config.model.tokenizer.path,
           "text": config.model.text_encoder.path or config.dataloader_train.dataset.text_cache_dir}
  missing = [keys[name] for name in needed if not given[name]]
  if missing:
    raise ConfigError(f"no weights given for {', '.join(missing)}: set them, or checkpoint.load_path to a bundle "
                      "with dit/, vae/ and text_encoder/ (README, Getting the weights); random weights are for the "
                      "tiny configs only (model.allow_random_init=True)")


def _read_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: not readable JSON ({e})") from e
  return data if isinstance(data, dict) else {}


def _unwritable(folder: str) -> str | None:
  """Why files cannot be written in `folder` (created if needed), else None."""
  existing = folder
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    return f"{existing} is a file, not a folder"
  try:
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_probe_"):
      pass
  except OSError as e:
    return f"not a writable folder ({e.strerror or e})"
  return None


def check_workdir(workdir: str) -> None:
  """Creates `workdir` if needed and proves it writable (a probe file, written and removed), else ConfigError."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir {workdir}: exists and is not a directory")
  why = _unwritable(os.path.abspath(workdir))
  if why:
    raise ConfigError(f"--workdir {workdir}: {why}")


def check_output(path: str, flag: str, suffix: str | None = None) -> None:
  """An output file `path`: the right extension, not a folder, and its folder created and writable (UserError)."""
  if suffix and not path.endswith(suffix):
    raise UserError(f"{flag} {path}: must end in {suffix}")
  if os.path.isdir(path):
    raise UserError(f"{flag} {path}: is a folder; give a file name")
  why = _unwritable(os.path.dirname(os.path.abspath(path)))
  if why:
    raise UserError(f"{flag} {path}: {why}")


def check_output_folder(path: str, flag: str) -> None:
  """An output folder `path`: created if needed and writable (UserError)."""
  why = _unwritable(os.path.abspath(path))
  if why:
    raise UserError(f"{flag} {path}: {why}")


def check_inputs(paths, flag: str) -> None:
  """Input files named by a flag exist (UserError naming the first that does not)."""
  for path in paths:
    if not os.path.isfile(path):
      raise UserError(f"{flag}: {path} does not exist")


# ----------------------------------------------------------------------------------------------
# Checkpoints


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """What `--checkpoint` names: a training run (its workdir, newest step and the config saved with it) or a converted
  DiT / bundle folder (`load_path`)."""
  path: str
  workdir: str | None = None
  step: int | None = None
  trained: dict | None = None
  load_path: str | None = None


def training_workdir(path: str) -> str | None:
  """The workdir of a training run given as the workdir or as its checkpoints/ folder, else None."""
  path = os.path.abspath(path)
  if os.path.basename(path) == "checkpoints" and os.path.isdir(path):
    return os.path.dirname(path)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return path
  return None


def find_checkpoint(path: str, flag: str = "--checkpoint") -> Checkpoint:
  """What `path` is (Checkpoint), or a UserError saying why it is none of what a command reads."""
  if not os.path.exists(path):
    raise UserError(f"{flag} {path}: no such file or folder")
  if not os.path.isdir(path):
    raise UserError(f"{flag} {path}: not a folder (a training workdir, a convert.dit folder or a bundle with dit/)")
  workdir = training_workdir(path)
  if workdir is None:
    dit_dir = os.path.join(path, "dit") if os.path.isdir(os.path.join(path, "dit")) else path
    if not os.path.isfile(os.path.join(dit_dir, params_io.META_FILE)):
      raise UserError(f"{flag} {path} is neither a training workdir (no checkpoints/ folder), nor a converted DiT "
                      f"({params_io.META_FILE}), nor a bundle with dit/")
    return Checkpoint(path, load_path=path)
  try:  # the checkpoint the command reads: the newest that restores (checkpointing.restore_weights)
    step, trained = checkpointing.checkpoint_to_read(workdir)
  except FileNotFoundError:
    raise UserError(f"{flag} {path}: {checkpointing.checkpoint_dir(workdir)} holds no complete checkpoint") from None
  except checkpointing.ResumeError as e:
    raise UserError(f"{flag} {path}: {e}") from None
  return Checkpoint(path, workdir=workdir, step=step, trained=trained)


def check_checkpoint_config(config, checkpoint: Checkpoint) -> None:
  """Refuses (ConfigError naming the keys) a checkpoint whose model or data layout differs from the config's, with
  the key lists training uses to refuse a resume (`checkpointing.config_changes`)."""
  saved = checkpoint.trained
  if saved is None and checkpoint.load_path:
    dit_dir = os.path.join(checkpoint.load_path, "dit") if os.path.isdir(
        os.path.join(checkpoint.load_path, "dit")) else checkpoint.load_path
    net = _read_json(os.path.join(dit_dir, params_io.META_FILE)).get("config")
    saved = {"model": {"net": net}} if net else None
  if saved is None:
    return
  current = checkpointing.config_json(config)
  if checkpoint.trained is None:  # a converted DiT records its network only
    current = {"model": {"net": json.loads(json.dumps(dataclasses.asdict(dit_config.DiTConfig.from_config(
        config.model.net))))}}
  structural, _ = checkpointing.config_changes(saved, current)
  if structural:
    what = f"step {checkpoint.step} was trained" if checkpoint.step is not None else "it was converted"
    raise ConfigError(f"--checkpoint {checkpoint.path}: {what} with another model or data layout "
                      f"({'; '.join(structural)}): pass the --config and overrides it was made with")


def check_resume(config, workdir: str) -> None:
  """A run's newest checkpoint must be of the config's model and data layout (checkpointing.ResumeError)."""
  found = checkpointing.saved_config(workdir)
  if found is None:
    return
  step, saved = found
  structural, _ = checkpointing.config_changes(saved, checkpointing.config_json(config))
  if structural:
    raise checkpointing.ResumeError(f"checkpoint {step} was written for another model or data layout "
                                    f"({'; '.join(structural)}): set these back, or train in a new --workdir")


# ----------------------------------------------------------------------------------------------
# Data


def _is_example_data(config, workdir: str | None) -> bool:
  """Whether the dataset is the embedded example, which `prepare_dataset` writes into the workdir."""
  return bool(workdir) and config.dataloader_train.dataset.dataset_dir == os.path.abspath(
      os.path.join(workdir, EXAMPLE_DATA))


def prepare_dataset(config, workdir: str | None = None) -> list[layout.Sample]:
  """Validates the training dataset (raising layout.DatasetError with every problem) and returns its samples.

  The embedded example dataset (`resolve`) is written first when it does not exist yet (by process 0, into the
  workdir the processes share). Clips too short for the config get a problem saying how to change either.
  """
  ds = config.dataloader_train.dataset
  if _is_example_data(config, workdir):
    if jax.process_index() == 0 and not os.path.isdir(os.path.join(ds.dataset_dir, "videos")):
      # 1.25x the training resolution (even sides): the loader's resize runs, and the aspect ratio is the training one.
      h, w = (2 * round(x * 1.25 / 2) for x in ds.resolution_hw)
      synthetic.write_example(ds.dataset_dir, num_samples=2, frames=ds.num_video_frames + 3, height=h, width=w,
                              seed=config.seed, views=rig_lib.of_config(config).names)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("example dataset written")
    log.info("no dataset_dir given: using the synthetic example dataset at %s", ds.dataset_dir)
  try:
    return pipeline.validated_samples(pipeline.DataSettings.from_config(config))
  except layout.DatasetError as e:
    # layout.scan's problem for a clip shorter than the config reads.
    if any("need at least" in p.message for p in e.problems):
      frames, tiny = int(ds.num_video_frames), base_config.get_config(config.control_type, "tiny")
      tiny_frames = int(tiny.dataloader_train.dataset.num_video_frames)
      smaller = (f"a config that reads fewer frames (configs/{config.control_type}.py:tiny reads {tiny_frames}) or "
                 if frames > tiny_frames else "")
      hint = (f"clips shorter than dataloader_train.dataset.num_video_frames={frames}: use {smaller}longer clips "
              f"(e.g. python -m agibot_jax.data.make_example DIR --frames {frames})")
      raise layout.DatasetError(ds.dataset_dir, [*e.problems, layout.Problem(None, ds.dataset_dir, hint)]) from e
    raise


def sample_index(samples: list[layout.Sample], sample_id: str | None, dataset_dir: str) -> int:
  """The index of `sample_id` among validated `samples` (None: the first), or a UserError listing some ids."""
  ids = [s.sample_id for s in samples]
  if sample_id is None:
    return 0
  if sample_id not in ids:
    raise UserError(f"--sample_id {sample_id!r} is not in {dataset_dir} ({len(ids)} samples, e.g. {ids[:5]})")
  return ids.index(sample_id)


def check_latent_cache(config, samples: list[layout.Sample]) -> None:
  """A training latent cache matches the data settings and holds every sample (its VAE is checked once built)."""
  settings = pipeline.DataSettings.from_config(config)
  if not settings.latent_cache_dir:
    return
  try:
    cache = latent_cache.LatentCache(settings.latent_cache_dir)
    cache.check(latent_cache.data_meta(settings))
    cache.check_samples(s.sample_id for s in samples)
  except (FileNotFoundError, ValueError) as e:
    raise UserError(str(e)) from e


# ----------------------------------------------------------------------------------------------
# The commands


def for_training(config, workdir: str) -> tuple[ml_collections.FrozenConfigDict, list[layout.Sample]]:
  """train: (resolved config, validated dataset samples)."""
  config = resolve(config, workdir)
  check_config(config)
  check_accelerator(config)
  check_paths(config, skip=(DATASET_DIR,))  # the dataset check below names it
  check_weights_given(config, ("dit", "vae", "text"))
  check_workdir(workdir)
  check_resume(config, workdir)
  samples = prepare_dataset(config, workdir)
  check_latent_cache(config, samples)
  return config, samples


@dataclasses.dataclass(frozen=True)
class Sampling:
  config: ml_collections.FrozenConfigDict
  checkpoint: Checkpoint


def for_sampling(config_in, *, checkpoint: str, out: str, out_suffix: str) -> Sampling:
  """sample, eval: the checkpoint, the output file and the config (with the paths the checkpoint was trained with,
  where none is given); the dataset is the command's to check (a sample, or the held-out set)."""
  found = find_checkpoint(checkpoint)
  check_output(out, "--out", out_suffix)
  # A training run keeps the config's own load_path (its bundle gives the VAE and text encoder); a converted DiT or
  # bundle given as --checkpoint is the load_path.
  config = resolve(config_in, found.workdir, load_path=found.load_path, trained=found.trained)
  check_config(config)
  check_accelerator(config)
  check_checkpoint_config(config, found)
  origin = {} if found.trained is None else dict.fromkeys(trained_paths(config_in, found.trained),
                                                          f"the config checkpoint {found.step} was trained with")
  check_paths(config, origin=origin)
  check_weights_given(config, ("vae", "text"))
  return Sampling(config, found)


def for_latent_cache(config, workdir: str) -> tuple[ml_collections.FrozenConfigDict, list[layout.Sample]]:
  """cache_latents: (resolved config, validated dataset samples); the cache folder is the output."""
  config = resolve(config, workdir)
  check_config(config)
  check_accelerator(config)
  check_paths(config, skip=(DATASET_DIR, "dataloader_train.dataset.latent_cache_dir"))
  check_weights_given(config, ("vae",))
  check_workdir(workdir)
  cache_dir = config.dataloader_train.dataset.latent_cache_dir
  if cache_dir:
    check_output_folder(cache_dir, "dataloader_train.dataset.latent_cache_dir")
  return config, prepare_dataset(config, workdir)


def for_text_cache(config, *, cache_dir: str, text_encoder: str | None,
                   crossattn_proj: str | None) -> tuple[ml_collections.FrozenConfigDict, list[layout.Sample]]:
  """text.precompute: (resolved config, validated dataset samples: the captions are read from them); the encoder and
  projection files exist, the cache folder is writable."""
  config = resolve(config)
  if not config.dataloader_train.dataset.dataset_dir:
    raise ConfigError("set --config.dataloader_train.dataset.dataset_dir (the captions are read from it)")
  check_config(config)
  check_accelerator(config)
  check_paths(config, skip=(DATASET_DIR, "dataloader_train.dataset.text_cache_dir"))
  problems = [text_encoder and path_problem(f"--text_encoder {text_encoder}", text_encoder, _CONVERTED,
                                            params_io.MODEL_TEXT_ENCODER),
              crossattn_proj and not os.path.exists(crossattn_proj) and f"--crossattn_proj {crossattn_proj}: not found"]
  if any(problems):
    raise UserError("; ".join(p for p in problems if p))
  check_output_folder(cache_dir, "--cache_dir")
  return config, prepare_dataset(config)


def for_bench(config) -> ml_collections.FrozenConfigDict:
  """bench: the resolved config, its values checked (random weights, synthetic inputs: no paths)."""
  config = resolve(config)
  check_config(config)
  check_accelerator(config)
  return config


def for_dataset(config) -> ml_collections.FrozenConfigDict:
  """inspect: the resolved config, its values checked (the dataset is what the command validates)."""
  config = resolve(config)
  if not config.dataloader_train.dataset.dataset_dir:
    raise ConfigError("set --config.dataloader_train.dataset.dataset_dir=DIR (the dataset to check)")
  check_config(config)
  return config
