"""Generate a 3-view video with the control DiT from a training run or a converted checkpoint.

  python -m agibot_jax.sample --config configs/edge.py --checkpoint runs/edge \
      --config.dataloader_train.dataset.dataset_dir=DIR --sample_id ID --guidance 3 --num_cond_frames 1 \
      --out out.mp4
  python -m agibot_jax.sample --config configs/edge.py --checkpoint CONVERTED_DIT_DIR \
      --control_videos head.mp4,left.mp4,right.mp4 --prompt "The robot picks up the red cup." --out out.mp4

`--checkpoint` is a training workdir (or its `checkpoints/` folder: the latest complete TrainState is restored,
EMA weights unless `--no_ema`; pass the run's own `--config` and overrides, the state's layout depends on
them), a DiT directory written by `python -m convert.dit`, or a bundle directory with `dit/` (and
`vae/`, `text_encoder/`) sub-directories. The VAE and the text encoder come from the config exactly as in
training (`model.tokenizer.path`, `model.text_encoder.path`, a bundle, or random weights for the tiny config).

Inputs: `--sample_id` picks a sample of the dataset (default: the first); its control map is computed with
`--control_preset` (edge/vis) or read from the dataset (depth/seg). With `--control_videos` (one control video
per view, in the config's view order) and `--prompt` no dataset is needed; there is then no input video, so no
clean first frame: `--num_cond_frames` must be 0.

Writes `--out` (mp4: rows = the sample, then the input video when there is one, then the control pixels; views
side by side) and the 12-frame strip `<out stem>_12frames.jpg` beside it. A progress bar follows the denoising
steps, which run as one compiled loop (cond/uncond batched, guidance a traced value).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from agibot_jax import params_io, sharding
from agibot_jax import train as train_lib
from agibot_jax.data import controls, layout, pipeline, resize, video
from agibot_jax.models import dit
from agibot_jax.models import vae as vae_lib
from agibot_jax.sampling import generate, video_out
from agibot_jax.training import checkpointing
from agibot_jax.training import ema as ema_lib
from agibot_jax.training import optimizer as optim



# ----------------------------------------------------------------------------------------------
# Weights


def _training_workdir(path: str) -> str | None:
  """The workdir of a training run given as the workdir or as its checkpoints/ folder."""
  path = os.path.abspath(path)
  if os.path.basename(path) == "checkpoints" and os.path.isdir(path):
    return os.path.dirname(path)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return path
  return None


def _restore_train_params(config, workdir: str, cfg: dit.DiTConfig, mesh, use_ema: bool):
  """DiT weights of the newest complete TrainState under `<workdir>/checkpoints`."""
  target, _, _ = train_lib.state_target(config, cfg, mesh, optim.make_optimizer(config),
                                        ema_lib.PowerEMA.from_config(config))
  manager = checkpointing.make_manager(workdir, config)
  restored = checkpointing.restore_latest(manager, target)
  manager.close()
  if restored is None:
    raise FileNotFoundError(f"{checkpointing.checkpoint_dir(workdir)}: no complete checkpoint to sample from")
  state, _ = restored
  step = int(jax.device_get(state.step))
  if use_ema and state.ema is None:
    raise ValueError(f"{workdir}: the run kept no EMA (ema.enabled=False); pass --no_ema")
  print(f"[agibot-jax] restored step {step} from {checkpointing.checkpoint_dir(workdir)} "
        f"({'EMA' if use_ema else 'regular'} weights)")
  return state.ema_params() if use_ema else state.params()


def load_dit_params(config, checkpoint: str, cfg: dit.DiTConfig, mesh, *, use_ema: bool = True):
  """(params, training workdir or None). A converted/bundle checkpoint also becomes `checkpoint.load_path`,
  so the VAE and text encoder of a bundle are found as in training."""
  if not os.path.isdir(checkpoint):
    raise FileNotFoundError(f"--checkpoint {checkpoint}: no such directory")
  if os.path.exists(os.path.join(checkpoint, params_io.META_FILE)) or os.path.isdir(os.path.join(checkpoint, "dit")):
    config.checkpoint.load_path = checkpoint
    path = train_lib.dit_params_path(config)
    print(f"[agibot-jax] DiT weights from {path}")
    return train_lib.restore_dit_params(path, cfg, mesh), None
  workdir = _training_workdir(checkpoint)
  if workdir is None:
    raise ValueError(f"--checkpoint {checkpoint} is neither a training workdir (no checkpoints/ folder), nor a "
                     f"converted DiT ({params_io.META_FILE}), nor a bundle with dit/")
  return _restore_train_params(config, workdir, cfg, mesh, use_ema), workdir


# ----------------------------------------------------------------------------------------------
# Inputs


def dataset_loader_batch(config, sample_id: str | None, control_preset: str) -> dict:
  """One collated loader batch (batch 1) of `sample_id` with inference-preset controls."""
  # Pixels, not a training latent cache: the input row needs them and the control uses the inference preset.
  settings = dataclasses.replace(pipeline.DataSettings.from_config(config, control_preset=control_preset),
                                 latent_cache_dir="")
  source = pipeline.AgibotMultiviewSource(settings)
  ids = [s.sample_id for s in source.samples]
  if sample_id is None:
    index = 0
  elif sample_id in ids:
    index = ids.index(sample_id)
  else:
    raise ValueError(f"--sample_id {sample_id!r} is not in {source.settings.dataset_dir} "
                     f"({len(ids)} samples, e.g. {ids[:5]})")
  print(f"[agibot-jax] sample {ids[index]!r} from {source.settings.dataset_dir}")
  return pipeline.collate([source.load(index, rng=None)])


def control_video_loader_batch(config, control_videos: list[str], prompt: str) -> dict:
  """A loader-like batch (batch 1) from one control video per view: control pixels, captions, view ids."""
  ds = config.dataloader_train.dataset
  views = tuple(ds.views)
  if len(control_videos) != len(views):
    raise ValueError(f"--control_videos has {len(control_videos)} files; need one per view {views}")
  t = int(ds.num_video_frames)
  per_view = []
  for view, path in zip(views, control_videos):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"--control_videos: {path} (view {view}) does not exist")
    try:
      frames = video.read_frames(path, 0, t, ds.video_backend)
    except video.VideoError as e:
      raise ValueError(f"--control_videos: view {view}: {e}") from e
    per_view.append(resize.resize_uint8(frames, tuple(ds.resolution_hw), "bilinear"))
  h, w = ds.resolution_hw
  view_ids = np.array([layout.VIEW_IDS[v] for v in views], np.int64)
  return {
      # (3, V·T, H, W), views major along time, as the loader lays out pixels.
      f"control_input_{ds.control_input_type}": np.concatenate(per_view).transpose(3, 0, 1, 2)[None],
      "ai_caption": [layout.view_captions(prompt, views)],
      "view_indices": np.repeat(view_ids, t)[None],
      "padding_mask": np.zeros((1, 1, h, w), np.float32),
  }


def control_only_model_batch(loader_batch, vae_model, vae_params, text_provider, config, mesh) -> dict:
  """Model batch without an input video: the control latent is encoded, the video latent is zeros (unused
  with 0 conditional frames); goes through `train.model_batch`'s latent-cache path."""
  ds = config.dataloader_train.dataset
  control = vae_lib.loader_to_channels_last(jnp.asarray(loader_batch[f"control_input_{ds.control_input_type}"]))
  encode = jax.jit(functools.partial(vae_lib.encode_multiview, vae_model, num_views=len(ds.views)))
  latent_control = encode(vae_params, control)
  latents = {"latent_video": jnp.zeros_like(latent_control), "latent_control": latent_control}
  return train_lib.model_batch({**loader_batch, **latents}, None, vae_params, text_provider, config, mesh)


# ----------------------------------------------------------------------------------------------


def run(config, *, checkpoint: str, out: str, use_ema: bool = True, sample_id: str | None = None,
        control_videos: list[str] | None = None, prompt: str | None = None, guidance: float = 3.0,
        num_cond_frames: int | None = None, num_steps: int = 35, shift: float = generate.SHIFT,
        seed: int = generate.NOISE_SEED, control_preset: str = "medium") -> dict:
  """Samples one video; returns a summary (paths, shapes, timings)."""
  if not out.endswith(".mp4"):
    raise ValueError(f"--out {out}: must end in .mp4")
  if control_videos:
    if sample_id is not None:
      raise ValueError("give either --sample_id (a dataset sample) or --control_videos, not both")
    if prompt is None:
      raise ValueError("--control_videos needs --prompt")
    num_cond_frames = 0 if num_cond_frames is None else num_cond_frames
    if num_cond_frames != 0:
      raise ValueError(f"--num_cond_frames={num_cond_frames} needs clean frames from an input video; with "
                       "--control_videos there is none: use --num_cond_frames=0 (or --sample_id with a dataset)")
  elif prompt is not None:
    raise ValueError("--prompt applies to --control_videos; a dataset sample uses its own caption")
  num_cond_frames = 1 if num_cond_frames is None else num_cond_frames

  mesh = sharding.make_mesh(**config.mesh)
  jax.set_mesh(mesh)
  ds = config.dataloader_train.dataset
  num_views = len(ds.views)
  cfg = dit.DiTConfig.from_config(config.model.net)
  dit_model = dit.MultiViewControlDiT(cfg)
  params, workdir = load_dit_params(config, checkpoint, cfg, mesh, use_ema=use_ema)
  vae_model, vae_params = train_lib.build_vae(config)
  text_provider = train_lib.build_text_provider(config)
  train_lib.check_text_provider(text_provider, cfg)

  if control_videos:
    loader_batch = control_video_loader_batch(config, control_videos, prompt)
    batch = control_only_model_batch(loader_batch, vae_model, vae_params, text_provider, config, mesh)
  else:
    if not ds.dataset_dir and workdir and os.path.isdir(os.path.join(workdir, "example_data")):
      ds.dataset_dir = os.path.join(workdir, "example_data")  # the run's embedded synthetic dataset
    if not ds.dataset_dir:
      raise ValueError("no input: set --config.dataloader_train.dataset.dataset_dir (with --sample_id) or give "
                       "--control_videos and --prompt")
    loader_batch = dataset_loader_batch(config, sample_id, control_preset)
    encode = train_lib.make_encoder(vae_model, num_views)
    batch = train_lib.model_batch(loader_batch, encode, vae_params, text_provider, config, mesh)

  gen = generate.Generator(dit_model, vae_model, num_views=num_views, num_steps=num_steps, shift=shift, seed=seed,
                           progress=True)
  t0 = time.perf_counter()
  latents = jax.block_until_ready(gen.denoise(params, batch, guidance=guidance, num_cond_frames=num_cond_frames))
  t1 = time.perf_counter()
  rows = [gen.decode(vae_params, latents)]
  t2 = time.perf_counter()
  if "video" in loader_batch:
    rows.append(generate.pixels_to_rows(loader_batch["video"], num_views))
  rows.append(generate.pixels_to_rows(loader_batch[f"control_input_{ds.control_input_type}"], num_views))

  summary = {"guidance": guidance, "num_cond_frames": num_cond_frames, "num_steps": num_steps,
             "denoise_s_incl_compile": t1 - t0, "decode_s_incl_compile": t2 - t1,
             "video_shape_BVTHWC": list(rows[0].shape), "rows": len(rows)}
  if jax.process_index() == 0:
    stem = os.path.splitext(os.path.basename(out))[0]
    mp4, jpg = video_out.save_sample_outputs(os.path.dirname(os.path.abspath(out)), stem, rows,
                                             fps=int(config.trainer.callbacks.every_n_sample.fps))
    summary.update(mp4=str(mp4), jpg=str(jpg))
  return summary


def main(argv):
  del argv
  init_args = train_lib.distributed_init_args()
  if init_args is not None:
    jax.distributed.initialize(**init_args)
  summary = run(flags.FLAGS.config, checkpoint=flags.FLAGS.checkpoint, out=flags.FLAGS.out,
                use_ema=flags.FLAGS.ema and not flags.FLAGS.no_ema, sample_id=flags.FLAGS.sample_id,
                control_videos=flags.FLAGS.control_videos, prompt=flags.FLAGS.prompt, guidance=flags.FLAGS.guidance,
                num_cond_frames=flags.FLAGS.num_cond_frames, num_steps=flags.FLAGS.num_steps, shift=flags.FLAGS.shift,
                seed=flags.FLAGS.seed, control_preset=flags.FLAGS.control_preset)
  if jax.process_index() == 0:
    print(json.dumps(summary))


def _define_flags():
  """Command-line flags, defined only when run as a program (modules stay importable together)."""
  config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/edge.py or configs/edge.py:tiny")
  flags.DEFINE_string("checkpoint", None, "training workdir (or its checkpoints/ dir), converted DiT "
      "dir (python -m convert.dit) or bundle dir with dit/")
  flags.DEFINE_bool("ema", True, "training checkpoints: sample with the EMA weights (default); --noema or "
      "--no_ema: the regular weights")
  flags.DEFINE_bool("no_ema", False, "the regular weights of a training checkpoint (absl's --noema)")
  flags.DEFINE_string("sample_id", None, "dataset sample id (file stem); default: the first sample")
  flags.DEFINE_list("control_videos", None, "one control video per view (config view order), "
      "instead of a dataset sample")
  flags.DEFINE_string("prompt", None, "the prompt, with --control_videos")
  flags.DEFINE_float("guidance", 3.0, "classifier-free guidance g: v = v_cond + g·(v_cond − v_uncond)")
  flags.DEFINE_integer("num_cond_frames", None, "clean latent frames per view taken from the "
      "input video (0 or 1); default 1 with a dataset sample, 0 otherwise")
  flags.DEFINE_integer("num_steps", 35, "UniPC denoising steps")
  flags.DEFINE_float("shift", generate.SHIFT, "time shift of the sampling schedule")
  flags.DEFINE_integer("seed", generate.NOISE_SEED, "NumPy RandomState seed of the starting noise")
  flags.DEFINE_enum("control_preset", "medium", list(controls.PRESETS),
      "edge/vis control strength at inference")
  flags.DEFINE_string("out", None, "output .mp4 (the 12-frame .jpg strip is written beside it)")
  flags.mark_flags_as_required(["config", "checkpoint", "out"])


if __name__ == "__main__":
  _define_flags()
  app.run(main)
