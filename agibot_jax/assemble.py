"""Builds a run from its config: the one place where config keys become models, weights, data and placements.

The commands (`train`, `sample`, `bench`, `cache_latents`, `eval`) are thin scripts over these functions, called
after the up-front checks of agibot_jax/preflight.py (which resolve the config: nothing later writes into it):

  make_mesh          the device mesh (`config.mesh`), set as the current mesh
  build_vae, build_text_provider, dit_config, initial_params
                     the networks and their weights (converted checkpoints, or random for the CPU demo)
  make_encoder, model_batch
                     loader batch -> the train step's model batch, on the mesh
  state_target, initial_state, init_or_restore, sampling_params
                     train states and their shardings; what sampling restores of a training checkpoint
  initialize_distributed
                     `jax.distributed.initialize` for multi-process launches
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from agibot_jax import params_io, registry, sharding
from agibot_jax import rig as rig_lib
from agibot_jax.data import layout, pipeline
from agibot_jax.models import dit
from agibot_jax.models import dit_config as dit_config_lib
from agibot_jax.models import vae as vae_lib
from agibot_jax.text import provider as text_provider_lib
from agibot_jax.training import checkpointing
from agibot_jax.training.state import new_state, precision_dtype, state_shardings

log = logging.getLogger(__name__)

HEARTBEAT_TIMEOUT_ENV = "AGIBOT_HEARTBEAT_TIMEOUT_S"
DEFAULT_HEARTBEAT_TIMEOUT_S = 100  # jax.distributed.initialize's

# ----------------------------------------------------------------------------------------------
# Launch and config


def distributed_init_args(environ=os.environ) -> dict | None:
  """`jax.distributed.initialize` arguments for a multi-process launch, None for a single process.

  Multi-process runs are recognised from
    JAX_COORDINATOR_ADDRESS=host:port with JAX_NUM_PROCESSES and JAX_PROCESS_ID  (any launcher, one
        process per host; JAX reads the address itself, the other two are passed explicitly)
    SLURM_NTASKS > 1 (srun) or OMPI_COMM_WORLD_SIZE > 1 (mpirun)  (JAX detects the rest)
  A single-task SLURM or MPI job stays single-process, so `sbatch` without `srun` still runs.
  """
  if environ.get("JAX_COORDINATOR_ADDRESS"):
    missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if not environ.get(k)]
    if missing:
      raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not: set JAX_NUM_PROCESSES "
                       "(total processes) and JAX_PROCESS_ID (this process, 0-based) too")
    return {"num_processes": int(environ["JAX_NUM_PROCESSES"]), "process_id": int(environ["JAX_PROCESS_ID"])}
  for key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    if int(environ.get(key) or 1) > 1:
      return {}
  return None


def initialize_distributed(environ=os.environ) -> None:
  """`jax.distributed.initialize` for a multi-process launch (`distributed_init_args`); nothing for one process.

  A process that dies, or fails with an error (`_exit_on_error`), stops the others within the heartbeat timeout,
  HEARTBEAT_TIMEOUT_ENV seconds (default JAX's 100), with JAX's message naming the lost task (= process id). CPU
  processes exchange arrays through JAX's default CPU collectives (gloo); XLA_FLAGS=
  --xla_force_host_platform_device_count=N gives each of them N CPU devices.
  """
  init_args = distributed_init_args(environ)
  if init_args is None:
    return
  heartbeat_s = int(environ.get(HEARTBEAT_TIMEOUT_ENV) or DEFAULT_HEARTBEAT_TIMEOUT_S)
  jax.distributed.initialize(**init_args, heartbeat_timeout_seconds=heartbeat_s)
  sys.excepthook = functools.partial(_exit_on_error, heartbeat_s=heartbeat_s)
  log.info("process %d of %d", jax.process_index(), jax.process_count())


def _exit_on_error(exc_type, exc, traceback, *, heartbeat_s: int) -> None:
  """`sys.excepthook` of a multi-process run: prints the error and ends the process (`end_process`).

  A JAX runtime error (a collective that lost its peer) most likely means another process is gone: JAX's
  coordination service then ends this process within the heartbeat timeout, naming the lost one; that is waited for.
  """
  sys.__excepthook__(exc_type, exc, traceback)
  if issubclass(exc_type, jax.errors.JaxRuntimeError):
    log.error("waiting up to %d s (the heartbeat timeout) for JAX to name a lost process", heartbeat_s)
    time.sleep(heartbeat_s + 10)
  end_process(1)


def end_process(exit_code: int) -> None:
  """In a multi-process run, ends this process now, bypassing JAX's exit handler: it would wait 5 minutes at a
  shutdown barrier for processes that may be waiting for this one in a collective. Returns in a single process."""
  if jax.distributed.is_initialized():
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)  # pylint: disable=protected-access


def process_batch_rows(mesh, global_batch: int) -> slice:
  """The rows of every global batch of `global_batch` samples that this process loads: those its devices hold under
  the batch sharding (`sharding.batch_sharding`). Processes that share rows (a batch axis smaller than the process
  count, e.g. context parallelism across hosts) load the same samples."""
  index_map = sharding.batch_sharding(mesh, (global_batch,)).addressable_devices_indices_map((global_batch,))
  held = sorted({range(*idx[0].indices(global_batch)) for idx in index_map.values()}, key=lambda r: r.start)
  rows = slice(held[0].start, held[-1].stop)
  if sum(len(r) for r in held) != rows.stop - rows.start:
    raise ValueError(f"mesh {dict(mesh.shape)}: this process's devices hold rows {[(r.start, r.stop) for r in held]} "
                     f"of the batch of {global_batch}, not one contiguous block")
  return rows


def make_mesh(config) -> jax.sharding.Mesh:
  """The (data, fsdp, context) mesh of `config.mesh` over every device, set as the current mesh."""
  mesh = sharding.make_mesh(**config.mesh)
  jax.set_mesh(mesh)
  devices = jax.devices()
  log.info("devices: %d x %s (%d process(es)); mesh %s", len(devices), devices[0].device_kind, jax.process_count(),
           dict(mesh.shape))
  return mesh


# ----------------------------------------------------------------------------------------------
# Models and weights


def _random_ok(config, what: str, key: str, use: str = "") -> None:
  """Random weights for `what` (the commands refuse them up front unless allowed: preflight.check_weights_given)."""
  if not config.model.allow_random_init:
    raise ValueError(f"no {what} given: set {key} (or a checkpoint.load_path bundle with it); random weights are "
                     "only allowed with model.allow_random_init=True (the tiny demo config)")
  log.warning("%s: randomly initialised (demo%s; set %s for real weights)", what, use, key)


def dit_config(config) -> dit_config_lib.DiTConfig:
  """The DiT of `model.net`, its cross-view neighbours those of the rig's cameras (`config.rig`)."""
  net = dict(config.model.net)
  return dit_config_lib.DiTConfig.from_config(
      {**net, "cross_view_attn_map": rig_lib.parse(config.rig).cross_view_attn_map(int(net["n_cameras_emb"]))})


def build_vae(config, mesh=None):
  """(WanVAE, params): the converted VAE at `model.tokenizer.path`, or random weights for the demo; with a `mesh`,
  the params are replicated on it (the encoder then runs on the mesh, also across processes)."""
  cfg = vae_lib.VAEConfig.from_tokenizer_config(config.model.tokenizer)
  model = vae_lib.WanVAE(cfg)
  replicated = None if mesh is None else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  path = config.model.tokenizer.path
  if path:
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.dtype(cfg.param_dtype), sharding=replicated),
                            vae_lib.abstract_params(model))
    return model, params_io.restore_params(path, abstract)
  latent_cache_dir = config.dataloader_train.dataset.latent_cache_dir
  _random_ok(config, "VAE", "model.tokenizer.path",
             f"; it decodes sample videos only: training reads the latent cache {latent_cache_dir}" if latent_cache_dir
             else "")
  # One jitted init at XLA -O0: eager init compiles every initializer op separately and an optimised
  # compile of ~200 truncated-normal draws alone takes ~15 s on CPU (values are the same draws).
  key = jax.random.key(config.seed + 1)
  init = jax.jit(functools.partial(vae_lib.init_params, model), out_shardings=replicated).lower(key).compile(
      compiler_options={"xla_backend_optimization_level": 0})
  return model, init(key)


def _online_text_embedder(config):
  from agibot_jax.text.embed import OnlineTextEmbedder

  te = config.model.text_encoder
  tokenizer = te.tokenizer or params_io.read_meta(te.path).get("source")
  if not tokenizer:
    raise ValueError(f"{te.path}: no tokenizer folder recorded; set config.model.text_encoder.tokenizer")
  return OnlineTextEmbedder.from_paths(te.path, tokenizer, dtype=config.model.precision)


def text_devices():
  """Context in which the online text encoder is built and run: the training mesh (`make_mesh`) in one process;
  with several, a mesh of this process's own devices, since each process embeds the captions of its own rows (on the
  training mesh, a jit would take them for one value replicated over all processes)."""
  if jax.process_count() == 1:
    return contextlib.nullcontext()
  return jax.set_mesh(sharding.make_mesh(devices=jax.local_devices()))


def build_text_provider(config, cfg: dit_config_lib.DiTConfig):
  """The run's text embeddings: a cache (`dataset.text_cache_dir`), the online encoder (`model.text_encoder.path`),
  or a random stand-in encoder for the demo; checked against the DiT's text input.

  A full_concat cache embeds the captions it lacks with the online encoder when one is configured; a projected
  cache (1024-d, the DiT's projection already applied) must be complete and made with this run's crossattn_proj
  (`check_text_projection`).
  """
  from agibot_jax.text.cache import TextEmbeddingCache

  te = config.model.text_encoder
  cache_dir = config.dataloader_train.dataset.text_cache_dir
  with text_devices():
    if cache_dir:
      provider = TextEmbeddingCache(cache_dir)
      if provider.projected and config.model.train_base:
        raise ValueError(f"{cache_dir} is a projected text cache, which holds crossattn_proj frozen; with "
                         "model.train_base=True the projection trains: use a full_concat cache")
      if not provider.projected and te.path:
        provider.fallback = _online_text_embedder(config).embed
    elif te.path:
      provider = _online_text_embedder(config)
    else:
      _random_ok(config, "text encoder", "model.text_encoder.path")
      provider = random_text_embedder(config, cfg)
  dim = cfg.crossattn_emb_channels if provider.projected else cfg.crossattn_proj_in_channels
  if provider.num_tokens != cfg.text_tokens_per_view or provider.dim != dim:
    kind = "projected" if provider.projected else "raw"
    raise ValueError(f"{kind} text embeddings are ({provider.num_tokens} tokens, {provider.dim} channels) per view "
                     f"but the DiT expects ({cfg.text_tokens_per_view}, {dim}) (model.net.text_tokens_per_view / "
                     f"model.net.{'crossattn_emb_channels' if provider.projected else 'crossattn_proj_in_channels'})")
  return provider


def random_text_embedder(config, cfg: dit_config_lib.DiTConfig):
  """The demo's stand-in text encoder: random weights (from `seed`), the DiT's text input width and token count."""
  from agibot_jax.text.demo import demo_text_embedder

  provider = demo_text_embedder(cfg.crossattn_proj_in_channels, seed=config.seed + 2)
  provider.num_tokens = int(cfg.text_tokens_per_view)
  return provider


def check_text_projection(provider, params) -> None:
  """A projected text cache must have been made with the crossattn_proj of `params` (the run's frozen weights)."""
  if not getattr(provider, "projected", False):
    return
  proj = {k: _host_array(v) for k, v in params["crossattn_proj"].items()}
  provider.check_projection(proj["kernel"], proj["bias"])


def _host_array(x) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def restore_dit_params(path: str, cfg: dit_config_lib.DiTConfig, mesh, dtypes=None):
  """DiT params of a `convert.dit` directory, restored directly into their mesh shardings; `dtypes`: an optional tree
  of dtypes (the params' tree) to cast to as they are read, else the model's parameter dtype."""
  meta = params_io.read_meta(path)
  if meta.get("model") != "dit":
    raise ValueError(f"{path} holds a {meta.get('model')!r} checkpoint, not a DiT")
  shardings = sharding.param_shardings(dit.abstract_params(cfg, boxed=True), mesh)
  abstract = dit.abstract_params(cfg)
  if dtypes is not None:
    abstract = jax.tree.map(lambda a, d: jax.ShapeDtypeStruct(a.shape, d), abstract, dtypes)
  return params_io.restore_params(path, _with_shardings(abstract, shardings))


def initial_params(config, cfg: dit_config_lib.DiTConfig, mesh):
  """The base DiT weights: the converted checkpoint at `checkpoint.load_path`, or random for the demo."""
  path = config.checkpoint.load_path
  if path:
    params = restore_dit_params(path, cfg, mesh)
    log.info("DiT base loaded from %s", path)
    return params
  _random_ok(config, "DiT", "checkpoint.load_path")
  param_shardings = sharding.param_shardings(dit.abstract_params(cfg, boxed=True), mesh)
  return jax.jit(functools.partial(dit.init_params, cfg), out_shardings=param_shardings)(jax.random.key(config.seed))


def initial_state(config, cfg: dit_config_lib.DiTConfig, mesh, make, shardings):
  """A step-0 train state (`make` of `state_target`) from the base weights, built without freeing anything large.

  The converted weights are read in the dtypes the state keeps (trained float32, frozen in `model.precision`) and
  donated to the state; random weights are drawn inside the jit that makes the state. Reading all weights in
  float32 first (11.6 GiB for the 2B model) and freeing them after would leave that much free memory in pieces
  between the state's arrays, while a step allocates its temporaries as one block (memory_plans.py).
  """
  path = config.checkpoint.load_path
  if path:
    params = restore_dit_params(path, cfg, mesh, dtypes=state_dtypes(config, dit.abstract_params(cfg)))
    log.info("DiT base loaded from %s", path)
    return jax.jit(make, donate_argnums=0, out_shardings=shardings)(params)
  _random_ok(config, "DiT", "checkpoint.load_path")
  return jax.jit(lambda key: make(dit.init_params(cfg, key)), out_shardings=shardings)(jax.random.key(config.seed))


def state_dtypes(config, abstract_params):
  """The dtype each parameter has in the train state: float32 masters for the trained ones, `model.precision` for
  the frozen floating ones, except the reference's buffers (kept as stored)."""
  from agibot_jax.training import optimizer as optim

  trained = optim.trainable_predicate(config)
  low = precision_dtype(config)

  def one(path, a):
    keys = tuple(str(getattr(k, "key", k)) for k in path)
    if trained(keys) or keys[0] in dit_config_lib.BUFFER_GROUPS or not jnp.issubdtype(a.dtype, jnp.floating):
      return a.dtype
    return low
  return jax.tree_util.tree_map_with_path(one, abstract_params)


# ----------------------------------------------------------------------------------------------
# Batches


def make_encoder(vae_model, num_views: int, mesh=None):
  """jit: loader batch (uint8 video and control) -> (video latent, control latent), one VAE call.

  With a `mesh`, the clips (views of video and control folded into the batch) are spread over its devices
  where their count divides (sharding.py, "activation_clips").
  """

  @jax.jit
  def encode(vae_params, video_BCTHW, control_BCTHW):
    clips = jnp.concatenate([vae_lib.loader_to_channels_last(video_BCTHW),
                             vae_lib.loader_to_channels_last(control_BCTHW)], axis=0)
    latents = vae_lib.encode_multiview(vae_model, vae_params, clips, num_views=num_views, mesh=mesh)
    b = video_BCTHW.shape[0]
    return latents[:b], latents[b:]

  return encode


def model_batch(batch, encode, vae_params, text_provider, config, mesh, global_batch: int | None = None) -> dict:
  """Loader batch -> the train step's model batch (see agibot_jax/training/step.py), sharded on `mesh`.

  `batch` holds this process's rows (`process_batch_rows`) of a global batch of `global_batch` samples (default:
  `batch` is the whole batch, the same on every process).
  """
  ds = config.dataloader_train.dataset
  num_views = len(rig_lib.of_config(config).cameras)
  global_batch = global_batch or len(batch["ai_caption"])
  place = functools.partial(_on_mesh, mesh=mesh, global_batch=global_batch)
  if "latent_video" in batch:  # from the latent cache (agibot_jax.cache_latents)
    x0, control = batch["latent_video"], batch["latent_control"]
  else:
    control_key = registry.control(ds.control_input_type).key
    x0, control = encode(vae_params, place(batch["video"]), place(batch[control_key]))
  t = x0.shape[1] // num_views
  view_indices = np.asarray(batch["view_indices"])
  # Latent view ids: the first t pixel-frame ids of each view (spec §1.10).
  frames_per_view = view_indices.shape[1] // num_views
  latent_view_ids = np.concatenate([view_indices[:, v * frames_per_view:v * frames_per_view + t]
                                    for v in range(num_views)], axis=1)
  with text_devices():
    emb = text_provider_lib.embed_batch(text_provider, batch["ai_caption"])
  out = {
      "x0_BTHWC": x0,
      "control_BTHWC": control,
      "crossattn_emb_BMC": emb.astype(precision_dtype(config)),
      "view_indices_BT": latent_view_ids.astype(np.int32),
      "padding_mask_BHW": np.asarray(batch["padding_mask"], np.float32)[:, 0],
  }
  return {k: place(v) for k, v in out.items()}


def _on_mesh(value, mesh, global_batch: int) -> jax.Array:
  """A batch array (this process's rows, or the global array) with the step's input sharding.

  Arrays already on the devices (latents from the online VAE, online text embeddings) stay there: pulling them to
  the host would block the loop until the previous step and the encoder finish, leaving the GPU idle while the host
  fetches the next batch.
  """
  global_shape = (global_batch,) + tuple(np.shape(value)[1:])
  target = sharding.batch_sharding(mesh, global_shape)
  if isinstance(value, jax.Array) and not value.is_fully_addressable:  # already global: reshard
    return jax.device_put(value, target)
  return jax.make_array_from_process_local_data(target, value, global_shape)


# ----------------------------------------------------------------------------------------------
# Train states


def _with_shardings(abstract, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def state_target(config, cfg: dit_config_lib.DiTConfig, mesh, tx, ema):
  """(TrainState of sharded ShapeDtypeStructs to restore into, its shardings, the `new_state` maker)."""
  make = functools.partial(new_state, config=config, tx=tx, ema=ema, seed=config.seed)
  abstract_state = jax.eval_shape(make, dit.abstract_params(cfg))
  shardings = state_shardings(abstract_state, dit.abstract_params(cfg, boxed=True), mesh,
                              offload_optimizer_state=bool(config.model.offload_optimizer_state))
  return _with_shardings(abstract_state, shardings), shardings, make


def init_or_restore(config, workdir: str, cfg: dit_config_lib.DiTConfig, mesh, tx, ema, manager):
  """(state, data iterator state or None, state shardings): resumed from the workdir, else fresh from the base."""
  target, shardings, make = state_target(config, cfg, mesh, tx, ema)
  restored = checkpointing.restore_latest(manager, target, config, strict=bool(config.checkpoint.strict_resume))
  if restored is not None:
    state, data_state = restored
    log.info("resumed from %s at step %d", checkpointing.checkpoint_dir(workdir), int(state.step))
    return state, data_state, shardings
  return initial_state(config, cfg, mesh, make, shardings), None, shardings


@dataclasses.dataclass(frozen=True)
class SamplingWeights:
  params: dict  # full DiT parameters
  workdir: str | None  # the training run they came from (None: a converted checkpoint)
  step: int | None


def sampling_params(config, workdir: str | None, cfg: dit_config_lib.DiTConfig, mesh, *,
                    use_ema: bool = True) -> SamplingWeights:
  """The DiT weights to sample with: a training run's newest checkpoint (its EMA unless `use_ema` is False), of which
  only the weights are read (no optimizer state), or, without a run, the converted DiT at `checkpoint.load_path`."""
  if workdir is None:
    path = config.checkpoint.load_path
    log.info("DiT weights from %s", path)
    return SamplingWeights(restore_dit_params(path, cfg, mesh), None, None)
  shardings = sharding.param_shardings(dit.abstract_params(cfg, boxed=True), mesh)
  step, params = checkpointing.restore_weights(workdir, shardings, use_ema=use_ema)
  log.info("restored step %d from %s (%s weights)", step, checkpointing.checkpoint_dir(workdir),
           "EMA" if use_ema else "regular")
  return SamplingWeights(params, workdir, step)


# ----------------------------------------------------------------------------------------------
# Sampling inputs


def dataset_loader_batch(config, samples: list[layout.Sample], index: int, control_preset: str) -> dict:
  """One collated loader batch (batch 1) of validated sample `index` with inference-preset controls.

  Pixels, not a training latent cache: the input row needs them and the control uses the inference preset.
  """
  settings = dataclasses.replace(pipeline.DataSettings.from_config(config, control_preset=control_preset),
                                 latent_cache_dir="")
  log.info("sample %r from %s", samples[index].sample_id, settings.dataset_dir)
  return pipeline.collate([pipeline.AgibotMultiviewSource(settings, samples).load(index, rng=None)])


def control_video_loader_batch(config, control_videos: list[str], prompt: str) -> dict:
  """A loader-like batch (batch 1) from one control video per view (existing files, checked up front):
  control pixels, captions, view ids."""
  from agibot_jax import video_io
  from agibot_jax.data import resize

  ds = config.dataloader_train.dataset
  rig = rig_lib.of_config(config)
  t = int(ds.num_video_frames)
  per_view = []
  for view, path in zip(rig.names, control_videos):
    try:
      frames = video_io.read_frames(path, 0, t, ds.video_backend)
    except video_io.VideoError as e:
      raise ValueError(f"--control_videos: view {view}: {e}") from e
    per_view.append(resize.resize_uint8(frames, tuple(ds.resolution_hw), "bilinear"))
  h, w = ds.resolution_hw
  return {
      # (3, V·T, H, W), views major along time, as the loader lays out pixels.
      registry.control(ds.control_input_type).key: np.concatenate(per_view).transpose(3, 0, 1, 2)[None],
      "ai_caption": [rig.captions(prompt)],
      "view_indices": np.repeat(np.array(rig.view_ids, np.int64), t)[None],
      "padding_mask": np.zeros((1, 1, h, w), np.float32),
  }


def control_only_model_batch(loader_batch, vae_model, vae_params, text_provider, config, mesh) -> dict:
  """Model batch without an input video: the control latent is encoded and the video latent is zeros (unused with 0
  conditional frames); then as `model_batch` from a latent cache."""
  ds = config.dataloader_train.dataset
  control_BCTHW = _on_mesh(loader_batch[registry.control(ds.control_input_type).key], mesh, 1)
  control = vae_lib.loader_to_channels_last(control_BCTHW)
  encode = jax.jit(functools.partial(vae_lib.encode_multiview, vae_model,
                                     num_views=len(rig_lib.of_config(config).cameras)))
  latent_control = encode(vae_params, control)
  latents = {"latent_video": jnp.zeros_like(latent_control), "latent_control": latent_control}
  return model_batch({**loader_batch, **latents}, None, vae_params, text_provider, config, mesh)
