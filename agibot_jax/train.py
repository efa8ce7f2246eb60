r"""Post-training of the multiview control DiT (the Agibot 3-view models; other robots: `config.rig`).

  python -m agibot_jax.train --config configs/seg.py --workdir runs/seg \
      --config.dataloader_train.dataset.dataset_dir=DIR --config.checkpoint.load_path=BASE \
      [--config.trainer.max_iter=10000 --config.optimizer.lr=1e-4 ...]
  python -m agibot_jax.train --workdir runs/seg -- experiment=transfer2_agibot_posttrain_seg_example \
      dataloader_train.dataset.dataset_dir=DIR trainer.max_iter=10000      # the reference's override form
  python -m agibot_jax.train --config configs/edge.py:tiny --workdir runs/demo   # CPU demo, nothing else needed

Reads top to bottom: config values, workdir and dataset (validated before any model is built), mesh, models, state
(fresh or resumed from the workdir), data, loop (agibot_jax/training/loop.py). Each run writes
`<workdir>/checkpoints/<step>` (train state, data iterator position, config JSON), `<workdir>/tensorboard` and
`<workdir>/metrics.jsonl`, created once everything is built. Rerunning the same command resumes from the newest
checkpoint that restores. A run that cannot go on (bad config or data, failed save, non-finite steps, SIGTERM or
SIGINT) ends with one line saying why and a non-zero exit status (README, Reliability).

`checkpoint.load_path` is a directory written by `python -m convert.dit` (the DiT alone) or a bundle directory with
`dit/`, `vae/` and `text_encoder/` sub-directories written by the three converters. The VAE and text encoder may also
be given as `model.tokenizer.path` / `model.text_encoder.path`, and the text embeddings as a cache
(`dataloader_train.dataset.text_cache_dir`). Multi-process launches: `assemble.distributed_init_args`.
"""

from __future__ import annotations

import functools
import json
import logging
import os

import jax
from absl import flags

from agibot_jax import assemble, cli, flops, memory_plans
from agibot_jax import rig as rig_lib
from agibot_jax.data import layout, pipeline
from agibot_jax.evaluation import scoring, validation
from agibot_jax.models import dit
from agibot_jax.training import checkpointing, loop
from agibot_jax.training import ema as ema_lib
from agibot_jax.training import optimizer as optim
from agibot_jax.training.step import make_train_step

log = logging.getLogger(__name__)

# What stops a run with a one-line reason instead of a traceback; `exit_code` where the error has one, else 1.
EXPECTED_ERRORS = (assemble.ConfigError, layout.DatasetError, pipeline.BadSamplesError, checkpointing.SaveError,
                   checkpointing.ResumeError, loop.Stopped)


def train(config, workdir: str) -> dict:
  """Runs the job; returns the last logged metrics. Raises one of EXPECTED_ERRORS when the run cannot go on."""
  config = assemble.resolve(config, workdir)
  assemble.check_config(config)
  assemble.check_workdir(workdir)
  samples = assemble.prepare_dataset(config, workdir)
  # A held-out fraction leaves the training samples here, before the loader is built.
  samples, val_samples = validation.split_samples(config, samples, required=config.trainer.validation_iter > 0)
  mesh = assemble.make_mesh(config)
  vae_model, vae_params = assemble.build_vae(config, mesh)
  text_provider = assemble.build_text_provider(config, assemble.dit_config(config))
  config = memory_plans.choose(config, mesh, text_provider.dim)
  cfg = assemble.dit_config(config)
  model = dit.MultiViewControlDiT(cfg)

  tx = optim.make_optimizer(config)
  ema = ema_lib.PowerEMA.from_config(config)
  manager = checkpointing.make_manager(workdir, config)
  state, data_state, state_sh = assemble.init_or_restore(config, workdir, cfg, mesh, tx, ema, manager)
  assemble.check_text_projection(text_provider, state.frozen)

  global_batch = int(config.dataloader_train.batch_size)
  rows = assemble.process_batch_rows(mesh, global_batch)
  data_iter = pipeline.from_config(config, rows=rows, vae_params=vae_params, samples=samples)
  if data_state is not None:
    data_iter.set_state(data_state)
  views = rig_lib.of_config(config).names
  encode = assemble.make_encoder(vae_model, len(views), mesh)
  prepare = functools.partial(assemble.model_batch, encode=encode, vae_params=vae_params,
                              text_provider=text_provider, config=config, mesh=mesh, global_batch=global_batch)
  step_fn = jax.jit(make_train_step(model, tx, config, ema), donate_argnums=(0,), out_shardings=(state_sh, None))

  callbacks = []
  if config.trainer.validation_iter > 0:
    validator = validation.Validator(model, config, val_samples, prepare)
    callbacks.append(validation.ValidationCallback(config, workdir, validator))
  sample_cfg = config.trainer.callbacks.every_n_sample
  if sample_cfg.every_n > 0:
    from agibot_jax.sampling.callback import EveryNSample

    score_fn = scoring.row_scorer(config.dataloader_train.dataset.control_input_type,
                                  views=views) if sample_cfg.metrics else None
    callbacks.append(EveryNSample(config, workdir, dit_model=model, vae_model=vae_model, vae_params=vae_params,
                                  score_fn=score_fn))

  ds = config.dataloader_train.dataset
  latent_hw = tuple(x // vae_model.cfg.spatial_factor for x in ds.resolution_hw)
  count = flops.dit_flops(cfg, num_views=len(views), latent_hw=latent_hw, batch=config.dataloader_train.batch_size,
                          train_base=bool(config.model.train_base))
  start, max_iter = int(jax.device_get(state.step)), int(config.trainer.max_iter)
  announce(config, start, max_iter)
  saver = checkpointing.Saver(manager, config, data_iter.get_state)
  metrics_log = loop.MetricsLog(workdir, start)
  try:
    with loop.StopSignals() as stop:
      state, last_metrics = loop.train_loop(
          state, step_fn=step_fn, loader=data_iter, prepare=prepare, start=start, max_iter=max_iter,
          logging_iter=int(config.trainer.logging_iter), save_iter=int(config.checkpoint.save_iter),
          checkpoints=saver, metrics_log=metrics_log, timer=loop.StepTimer(count.train_step, jax.device_count()),
          callbacks=callbacks, max_nonfinite=int(config.trainer.max_nonfinite_steps), stop=stop)
  finally:
    metrics_log.close()
    saver.close()  # waits for the last save; raises SaveError if it failed
  log.info("checkpoints: %s", checkpointing.checkpoint_dir(workdir))
  log.info("TensorBoard events: %s", os.path.join(os.path.abspath(workdir), "tensorboard"))
  return {"step": int(jax.device_get(state.step)), **last_metrics}


def announce(config, start: int, max_iter: int) -> None:
  """Says what the run will do before it starts: the steps, the checkpoints and the passes that are not training."""
  t = config.trainer
  log.info("training steps %d..%d (log every %d, checkpoint every %d)", start + 1, max_iter, t.logging_iter,
           config.checkpoint.save_iter)
  sample = t.callbacks.every_n_sample
  if sample.every_n > 0 and max_iter >= sample.every_n:
    per_pass = (len(sample.num_cond_frames) * len(sample.control_weights) * len(sample.guidance) *
                (2 if config.ema.enabled else 1))
    log.info("sample videos every %d steps: %d videos of %d denoising steps each (not counted in s/step; "
             "trainer.callbacks.every_n_sample.every_n=0 turns them off)", sample.every_n, per_pass,
             sample.num_sampling_step)
  if t.validation_iter > 0:
    log.info("validation loss every %d steps (trainer.validation_iter=0 turns it off)", t.validation_iter)


def main() -> int:
  assemble.initialize_distributed()
  try:
    result = train(flags.FLAGS.config, flags.FLAGS.workdir)
  except EXPECTED_ERRORS as e:
    log.error("%s", e)
    code = getattr(e, "exit_code", 1)
    assemble.end_process(code)  # several processes: now, not after JAX's shutdown barrier
    return code
  if jax.process_index() == 0:
    print(json.dumps(result))
  return 0


if __name__ == "__main__":
  cli.define_config_flag()
  flags.DEFINE_string("workdir", None, "run directory: checkpoints, TensorBoard events, example data")
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
