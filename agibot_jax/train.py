"""Post-training of the Agibot 3-view control DiT.

  python -m agibot_jax.train --config configs/seg.py --workdir runs/seg \
      --config.dataloader_train.dataset.dataset_dir=DIR --config.checkpoint.load_path=BASE \
      [--config.trainer.max_iter=10000 --config.optimizer.lr=1e-4 ...]
  python -m agibot_jax.train --config configs/edge.py:tiny --workdir runs/demo   # CPU demo, nothing else needed

Reads top to bottom: mesh, models, data, state (fresh or resumed from the workdir), loop. The loop
encodes each batch (VAE latents of video and control, text embeddings), runs the jitted sharded
train step, logs every `trainer.logging_iter` steps (console, TensorBoard under `<workdir>/tensorboard`,
`<workdir>/metrics.jsonl`) and saves every `checkpoint.save_iter` steps (`<workdir>/checkpoints/<step>`:
train state, data iterator position, config JSON). Rerunning the same command resumes from the newest
complete checkpoint. Multi-process launches: see `distributed_init_args`.

`checkpoint.load_path` is a directory written by `python -m convert.dit` (the DiT alone) or a bundle
directory with `dit/`, `vae/` and `text_encoder/` sub-directories written by the three converters.
The VAE and text encoder may also be given as `model.tokenizer.path` / `model.text_encoder.path`,
and the text embeddings as a cache (`dataloader_train.dataset.text_cache_dir`).
"""

from __future__ import annotations

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from agibot_jax import flops, params_io, sharding
from agibot_jax.data import pipeline
from agibot_jax.data.text_provider import embed_batch
from agibot_jax.models import dit
from agibot_jax.models import vae as vae_lib
from agibot_jax.training import checkpointing, optimizer as optim
from agibot_jax.training import ema as ema_lib
from agibot_jax.training.state import new_state, precision_dtype, state_shardings
from agibot_jax.training.step import make_train_step

METRICS_FILE = "metrics.jsonl"

# ----------------------------------------------------------------------------------------------
# Models


def _bundle_part(config, name: str) -> str:
  load_path = config.checkpoint.load_path
  if load_path and os.path.isdir(os.path.join(load_path, name)):
    return os.path.join(load_path, name)
  return ""


def _random_ok(config, what: str, key: str) -> None:
  if not config.model.allow_random_init:
    raise ValueError(f"no {what} given: set {key} (or a checkpoint.load_path bundle with it); random weights are "
                     "only allowed with model.allow_random_init=True (the tiny demo config)")
  logging.warning("%s: randomly initialised (no %s given)", what, key)
  print(f"[agibot-jax] {what}: randomly initialised (demo; set {key} for real weights)")


def dit_params_path(config) -> str:
  return _bundle_part(config, "dit") or config.checkpoint.load_path


def build_vae(config):
  cfg = vae_lib.VAEConfig.from_tokenizer_config(config.model.tokenizer)
  model = vae_lib.WanVAE(cfg)
  path = config.model.tokenizer.path or _bundle_part(config, "vae")
  if path:
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.dtype(cfg.param_dtype)),
                            vae_lib.abstract_params(model))
    return model, params_io.restore_params(path, abstract)
  _random_ok(config, "VAE", "model.tokenizer.path")
  # One jitted init at XLA -O0: eager init compiles every initializer op separately and an optimised
  # compile of ~200 truncated-normal draws alone takes ~15 s on CPU (values are the same draws).
  key = jax.random.key(config.seed + 1)
  init = jax.jit(functools.partial(vae_lib.init_params, model)).lower(key).compile(
      compiler_options={"xla_backend_optimization_level": 0})
  return model, init(key)


def build_text_provider(config):
  from agibot_jax.text import provider

  if config.dataloader_train.dataset.text_cache_dir or config.model.text_encoder.path:
    return provider.text_provider(config)
  bundled = _bundle_part(config, "text_encoder")
  if bundled:
    config.model.text_encoder.path = bundled
    return provider.text_provider(config)
  _random_ok(config, "text encoder", "model.text_encoder.path")
  from agibot_jax.text.demo import demo_text_embedder

  embedder = demo_text_embedder(config.model.net.crossattn_proj_in_channels, seed=config.seed + 2)
  embedder.num_tokens = int(config.model.net.text_tokens_per_view)
  return embedder


def check_text_provider(provider, cfg: dit.DiTConfig) -> None:
  """The embeddings must have the shape the DiT's text path was built for (else a shape error deep in the step)."""
  if provider.num_tokens != cfg.text_tokens_per_view or provider.dim != cfg.crossattn_proj_in_channels:
    raise ValueError(f"text embeddings are ({provider.num_tokens} tokens, {provider.dim} channels) per view but the "
                     f"DiT expects ({cfg.text_tokens_per_view}, {cfg.crossattn_proj_in_channels}) "
                     "(model.net.text_tokens_per_view / model.net.crossattn_proj_in_channels)")


# ----------------------------------------------------------------------------------------------
# Data


def ensure_dataset(config, workdir: str) -> None:
  """With no dataset_dir, write the synthetic example dataset into the workdir (the embedded default)."""
  ds = config.dataloader_train.dataset
  if ds.dataset_dir:
    return
  from agibot_jax.data import make_example

  ds.dataset_dir = os.path.join(workdir, "example_data")
  if not os.path.isdir(os.path.join(ds.dataset_dir, "videos")):
    h, w = ds.resolution_hw
    make_example.write_example(ds.dataset_dir, num_samples=2, frames=ds.num_video_frames + 3, height=h + 16,
                               width=w + 32, seed=config.seed)
  print(f"[agibot-jax] no dataset_dir given: using the synthetic example dataset at {ds.dataset_dir}")


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


def model_batch(batch, encode, vae_params, text_provider, config, mesh) -> dict:
  """Loader batch -> the train step's model batch (see agibot_jax/training/step.py), sharded on `mesh`."""
  ct = config.dataloader_train.dataset.control_input_type
  if "latent_video" in batch:  # from the latent cache (agibot_jax.data.cache_latents)
    x0, control = batch["latent_video"], batch["latent_control"]
  else:
    x0, control = encode(vae_params, jnp.asarray(batch["video"]), jnp.asarray(batch[f"control_input_{ct}"]))
  t = x0.shape[1] // len(config.dataloader_train.dataset.views)
  view_indices = np.asarray(batch["view_indices"])
  # Latent view ids: the first t pixel-frame ids of each view (spec §1.10).
  frames_per_view = view_indices.shape[1] // len(config.dataloader_train.dataset.views)
  latent_view_ids = np.concatenate([view_indices[:, v * frames_per_view:v * frames_per_view + t]
                                    for v in range(len(config.dataloader_train.dataset.views))], axis=1)
  emb = embed_batch(text_provider, batch["ai_caption"])
  emb = emb.astype(precision_dtype(config))
  out = {
      "x0_BTHWC": x0,
      "control_BTHWC": control,
      "crossattn_emb_BMC": emb,
      "view_indices_BT": latent_view_ids.astype(np.int32),
      "padding_mask_BHW": np.asarray(batch["padding_mask"], np.float32)[:, 0],
  }
  return {k: _on_mesh(v, sharding.batch_sharding(mesh, np.shape(v))) for k, v in out.items()}


def _on_mesh(value, target: jax.sharding.Sharding) -> jax.Array:
  """A batch array with the step's input sharding.

  Arrays already on the devices (latents from the online VAE, online text embeddings) are resharded there:
  pulling them to the host would block the loop until the previous step and the encoder finish, leaving the GPU
  idle while the host fetches the next batch. Host arrays (loader, caches) are this process's part of the batch.
  """
  if isinstance(value, jax.Array):
    return jax.device_put(value, target)
  return jax.make_array_from_process_local_data(target, np.asarray(value))


# ----------------------------------------------------------------------------------------------
# State


def _with_shardings(abstract, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def state_target(config, cfg, mesh, tx, ema):
  """(TrainState of sharded ShapeDtypeStructs to restore into, its shardings, the `new_state` maker)."""
  make = functools.partial(new_state, config=config, tx=tx, ema=ema, seed=config.seed)
  abstract_state = jax.eval_shape(make, dit.abstract_params(cfg))
  shardings = state_shardings(abstract_state, dit.abstract_params(cfg, boxed=True), mesh)
  return _with_shardings(abstract_state, shardings), shardings, make


def restore_dit_params(path: str, cfg, mesh):
  """DiT params of a `convert.dit` directory, restored directly into their mesh shardings."""
  meta = params_io.read_meta(path)
  if meta.get("model") != "dit":
    raise ValueError(f"{path} holds a {meta.get('model')!r} checkpoint, not a DiT")
  shardings = sharding.param_shardings(dit.abstract_params(cfg, boxed=True), mesh)
  return params_io.restore_params(path, _with_shardings(dit.abstract_params(cfg), shardings))


def init_or_restore(config, workdir, cfg, mesh, tx, ema, manager):
  """(state, data iterator state or None, state shardings): resumed from the workdir, else fresh from the base."""
  target, shardings, make = state_target(config, cfg, mesh, tx, ema)
  restored = checkpointing.restore_latest(manager, target)
  if restored is not None:
    state, data_state = restored
    print(f"[agibot-jax] resumed from {checkpointing.checkpoint_dir(workdir)} at step {int(state.step)}")
    return state, data_state, shardings

  path = dit_params_path(config)
  if path:
    params = restore_dit_params(path, cfg, mesh)
    print(f"[agibot-jax] DiT base loaded from {path}")
  else:
    _random_ok(config, "DiT", "checkpoint.load_path")
    param_shardings = sharding.param_shardings(dit.abstract_params(cfg, boxed=True), mesh)
    params = jax.jit(functools.partial(dit.init_params, cfg), out_shardings=param_shardings)(jax.random.key(config.seed))
  state = jax.jit(make, out_shardings=shardings)(params)
  return state, None, shardings


# ----------------------------------------------------------------------------------------------
# Logging


class Logger:
  """TensorBoard scalars and `<workdir>/metrics.jsonl`; throughput from the analytic FLOP count.

  metrics.jsonl holds one JSON object per logged step ({"step": n, "loss": ..., ...}), appended across
  restarts: a run resumed from an earlier checkpoint logs some steps again, and the last line of a step wins.
  The first logged step of a (re)start has no throughput (it includes compilation).
  """

  def __init__(self, workdir: str, step_flops: float, num_devices: int):
    from tensorboardX import SummaryWriter

    main = jax.process_index() == 0
    self.writer = SummaryWriter(os.path.join(workdir, "tensorboard")) if main else None
    self.jsonl = open(os.path.join(workdir, METRICS_FILE), "a") if main else None
    self.step_flops, self.num_devices = step_flops, num_devices
    self.peak = flops.peak_tflops(jax.devices()[0])
    self.t0, self.last_step = time.perf_counter(), None
    self.excluded_s = 0.0  # time spent outside training steps (sample callbacks) since the last log

  def log(self, step: int, metrics: dict) -> dict:
    now = time.perf_counter()
    if self.last_step is not None:
      sec = (now - self.t0 - self.excluded_s) / max(step - self.last_step, 1)
      tflops = self.step_flops / sec / self.num_devices / 1e12
      metrics = {**metrics, "s_per_step": sec, "tflops_per_device": tflops}
      if self.peak:
        metrics["mfu"] = tflops / self.peak
    self.t0, self.last_step, self.excluded_s = now, step, 0.0
    if self.writer is not None:
      for k, v in metrics.items():
        self.writer.add_scalar(f"train/{k}", float(v), step)
      self.writer.flush()
      self.jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")
      self.jsonl.flush()
    return metrics

  def close(self):
    if self.writer is not None:
      self.writer.close()
      self.jsonl.close()


def read_metrics(workdir: str) -> dict[int, dict]:
  """step -> metrics of that step's last logged line in `<workdir>/metrics.jsonl`."""
  out = {}
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    for line in f:
      row = json.loads(line)
      out[row.pop("step")] = row
  return out


# ----------------------------------------------------------------------------------------------


def train(config, workdir: str) -> dict:
  """Runs the job; returns the last logged metrics."""
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh(**config.mesh)
  jax.set_mesh(mesh)

  ensure_dataset(config, workdir)
  cfg = dit.DiTConfig.from_config(config.model.net)
  model = dit.MultiViewControlDiT(cfg)
  vae_model, vae_params = build_vae(config)
  text_provider = build_text_provider(config)
  check_text_provider(text_provider, cfg)

  ds = config.dataloader_train.dataset
  num_views = len(ds.views)
  latent_hw = (ds.resolution_hw[0] // vae_model.cfg.spatial_factor, ds.resolution_hw[1] // vae_model.cfg.spatial_factor)

  tx = optim.make_optimizer(config)
  ema = ema_lib.PowerEMA.from_config(config)
  manager = checkpointing.make_manager(workdir, config)
  state, data_state, state_sh = init_or_restore(config, workdir, cfg, mesh, tx, ema, manager)

  shard = (jax.process_index(), jax.process_count())
  data_iter = pipeline.from_config(config, shard_options=pipeline.grain.sharding.ShardOptions(*shard, drop_remainder=True),
                                   vae_params=vae_params)
  if data_state is not None:
    data_iter.set_state(data_state)
  encode = make_encoder(vae_model, num_views, mesh)
  step_fn = jax.jit(make_train_step(model, tx, config, ema), donate_argnums=(0,),
                    out_shardings=(state_sh, None))

  count = flops.dit_flops(cfg, num_views=num_views, latent_hw=latent_hw, batch=config.dataloader_train.batch_size,
                          train_base=bool(config.model.train_base))
  logger = Logger(workdir, count.train_step, jax.device_count())
  from tqdm import tqdm

  callbacks = []
  if config.trainer.callbacks.every_n_sample.every_n > 0:
    from agibot_jax.sampling.callback import EveryNSample

    callbacks.append(EveryNSample(config, workdir, dit_model=model, vae_model=vae_model, vae_params=vae_params,
                                  text_provider=text_provider))

  start, max_iter = int(jax.device_get(state.step)), int(config.trainer.max_iter)
  last_metrics = {}
  progress = tqdm(total=max_iter, initial=start, desc="train", unit="step", disable=jax.process_index() != 0)
  metrics = None
  for step in range(start, max_iter):
    loader_batch = next(data_iter)
    batch = model_batch(loader_batch, encode, vae_params, text_provider, config, mesh)
    # The next batch is prepared (and its encoding queued) while the previous step runs; waiting for that step
    # here keeps one step in flight, so the host never queues batches faster than the devices consume them.
    jax.block_until_ready(metrics)
    state, metrics = step_fn(state, batch)
    done = step + 1
    progress.update(1)
    t_callbacks = time.perf_counter()
    for callback in callbacks:
      callback(done, state, batch, loader_batch)
    logger.excluded_s += time.perf_counter() - t_callbacks
    if done % config.trainer.logging_iter == 0 or done == max_iter:
      last_metrics = logger.log(done, {k: float(v) for k, v in jax.device_get(metrics).items()})
      progress.write(f"step {done}: " + " ".join(f"{k}={v:.4g}" for k, v in last_metrics.items()))
    if done % config.checkpoint.save_iter == 0 or done == max_iter:
      checkpointing.save(manager, state, data_iter.get_state(), config)
  progress.close()
  manager.wait_until_finished()
  manager.close()
  logger.close()
  print(f"[agibot-jax] checkpoints: {checkpointing.checkpoint_dir(workdir)}")
  print(f"[agibot-jax] TensorBoard events: {os.path.join(os.path.abspath(workdir), 'tensorboard')}")
  return {"step": int(jax.device_get(state.step)), **last_metrics}


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


def main(argv):
  del argv
  init_args = distributed_init_args()
  if init_args is not None:
    jax.distributed.initialize(**init_args)
  result = train(flags.FLAGS.config, flags.FLAGS.workdir)
  if jax.process_index() == 0:
    print(json.dumps(result))


if __name__ == "__main__":
  # Defined here rather than at import, so other entry points (agibot_jax.sample) can import this module.
  config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/edge.py or configs/edge.py:tiny")
  flags.DEFINE_string("workdir", None, "run directory: checkpoints, TensorBoard events, example data")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
