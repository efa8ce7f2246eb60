r"""Post-training of the multiview control DiT (the Agibot 3-view models; other robots: `config.rig`).

  python -m agibot_jax.train --config configs/seg.py --workdir runs/seg \
      --config.dataloader_train.dataset.dataset_dir=DIR --config.checkpoint.load_path=BASE \
      [--config.trainer.max_iter=10000 --config.optimizer.lr=1e-4 ...]
  python -m agibot_jax.train --workdir runs/seg -- experiment=transfer2_agibot_posttrain_seg_example \
      dataloader_train.dataset.dataset_dir=DIR trainer.max_iter=10000      # the reference's override form
  python -m agibot_jax.train --config configs/edge.py:tiny --workdir runs/demo   # CPU demo, nothing else needed

Reads top to bottom: the up-front checks (config values, every path it names, the workdir, the newest checkpoint's
model and the dataset, before any model is built: agibot_jax/preflight.py; `--dry_run` stops after them), mesh,
models, state (fresh or resumed from the workdir), data, loop (agibot_jax/training/loop.py). At the end it says
whether the loss went down, where the outputs are, and the `sample` and `eval` commands for the checkpoint. Each
run writes `<workdir>/checkpoints/<step>` (train state, data iterator position, config JSON),
`<workdir>/tensorboard` and `<workdir>/metrics.jsonl`, created once everything is built. Rerunning the same command
resumes from the newest checkpoint that restores. A run that cannot go on (bad config or data, failed save,
non-finite steps, SIGTERM or SIGINT) ends with one line saying why and a non-zero exit status (README, Reliability;
a user error: exit status 2).

`checkpoint.load_path` is a directory written by `python -m convert.dit` (the DiT alone) or a bundle directory with
`dit/`, `vae/` and `text_encoder/` sub-directories written by the three converters. The VAE and text encoder may also
be given as `model.tokenizer.path` / `model.text_encoder.path`, and the text embeddings as a cache
(`dataloader_train.dataset.text_cache_dir`). Multi-process launches: `assemble.distributed_init_args`.
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
import sys

import jax
import numpy as np
from absl import flags

from agibot_jax import assemble, cli, flops, memory_plans, preflight
from agibot_jax import rig as rig_lib
from agibot_jax.data import pipeline
from agibot_jax.evaluation import scoring, validation
from agibot_jax.models import dit
from agibot_jax.training import checkpointing, loop
from agibot_jax.training import ema as ema_lib
from agibot_jax.training import optimizer as optim
from agibot_jax.training.step import make_train_step

log = logging.getLogger(__name__)

# Fewer logged steps than this and the end of a run does not judge whether the loss went down.
MIN_STEPS_TO_JUDGE = 20

# What stops a run with a one-line reason instead of a traceback: the user errors of the up-front checks (exit status
# 2), and the others with their `exit_code` where they have one, else 1.
EXPECTED_ERRORS = (*preflight.USER_ERRORS, pipeline.BadSamplesError, checkpointing.SaveError,
                   checkpointing.ResumeError, loop.Stopped)


def train(config, workdir: str, *, dry_run: bool = False) -> dict:
  """Runs the job; returns the last logged metrics. Raises one of EXPECTED_ERRORS when the run cannot go on.
  `dry_run`: the up-front checks only (agibot_jax/preflight.py)."""
  config, samples = preflight.for_training(config, workdir)
  # A held-out fraction leaves the training samples here, before the loader is built.
  samples, val_samples = validation.split_samples(config, samples, required=config.trainer.validation_iter > 0)
  if dry_run:
    return {"dry_run": True, "workdir": os.path.abspath(workdir), "samples": len(samples),
            "held_out_samples": len(val_samples or ())}
  if config.dataloader_train.dataset.latent_cache_dir:
    log.info("training reads VAE latents from the cache %s", config.dataloader_train.dataset.latent_cache_dir)
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


def learning_summary(metrics: dict[int, dict]) -> tuple[list[str], dict]:
  """(lines, numbers) saying whether a run learned, from its metrics.jsonl (`loop.read_metrics`): the mean loss over
  the first and the last tenth of its logged steps, the first and last validation loss, the non-finite steps."""
  losses = [m["loss"] for _, m in sorted(metrics.items()) if "loss" in m]
  lines, numbers = [], {"nonfinite_steps": sum(int(m.get("nonfinite", 0)) for m in metrics.values())}
  tenth = max(1, len(losses) // 10)
  if losses:
    first, last = float(np.mean(losses[:tenth])), float(np.mean(losses[-tenth:]))
    numbers.update(loss_first_tenth=first, loss_last_tenth=last)
    verdict = (f"only {len(losses)} logged step(s): too few to tell, the loss varies from step to step"
               if len(losses) < MIN_STEPS_TO_JUDGE else "lower: it learns" if last < first else
               "not lower: it has not learned yet (lower optimizer.lr, or check the data)")
    lines.append(f"loss: {first:.4g} over the first {tenth} logged step(s), {last:.4g} over the last {tenth} "
                 f"({verdict})")
  val = [m["val/loss"] for _, m in sorted(metrics.items()) if "val/loss" in m]
  if val:
    numbers.update(val_loss_first=val[0], val_loss_last=val[-1])
    lines.append(f"validation loss: {val[0]:.4g} at the first validation, {val[-1]:.4g} at the last")
  lines.append(f"non-finite steps skipped: {numbers['nonfinite_steps']}")
  return lines, numbers


def next_steps(argv: list[str], config, workdir: str) -> list[str]:
  """Where the run's outputs are, and the sample and eval commands for its checkpoint (the config as given; the
  data paths come from the checkpoint)."""
  workdir = os.path.abspath(workdir)
  config_args = [a for a in argv[1:] if a.startswith(("--config=", "--config."))]
  if "--config" in argv[1:]:
    config_args[:0] = ["--config", argv[argv.index("--config", 1) + 1]]
  val = config.dataloader_val
  held_out = [] if val.dataset_dir or val.held_out_fraction else ["--config.dataloader_val.dataset_dir=HELD_OUT"]
  sample = ["python", "-m", "agibot_jax.sample", *config_args, "--checkpoint", workdir,
            "--out", os.path.join(workdir, "sample.mp4")]
  evaluate = ["python", "-m", "agibot_jax.eval", *config_args, "--checkpoint", workdir, *held_out,
              "--out", os.path.join(workdir, "eval", "report.json")]
  every = config.trainer.callbacks.every_n_sample.every_n
  return [f"checkpoints: {checkpointing.checkpoint_dir(workdir)}",
          f"metrics: {os.path.join(workdir, loop.METRICS_FILE)}; TensorBoard: tensorboard --logdir "
          f"{os.path.join(workdir, 'tensorboard')}",
          *([f"sample videos (every {every} steps): {os.path.join(workdir, 'samples')}"] if every > 0 else []),
          f"next, sample: {shlex.join(sample)}",
          f"next, evaluate: {shlex.join(evaluate)}"]


def main() -> int:
  f = flags.FLAGS
  assemble.initialize_distributed()
  try:
    result = train(f.config, f.workdir, dry_run=f.dry_run)
  except EXPECTED_ERRORS as e:
    if isinstance(e, preflight.USER_ERRORS):
      print(f"error: {e}", file=sys.stderr)
      code = cli.EXIT_BAD_INPUT
    else:
      log.error("%s", e)
      code = getattr(e, "exit_code", 1)
    assemble.end_process(code)  # several processes: now, not after JAX's shutdown barrier
    return code
  if not result.get("dry_run") and jax.process_index() == 0:
    lines, numbers = learning_summary(loop.read_metrics(f.workdir))
    result.update(numbers)
    for line in lines + next_steps(sys.argv, f.config, f.workdir):
      log.info("%s", line)
  cli.print_result(result)
  return 0


if __name__ == "__main__":
  cli.define_config_flag()
  cli.define_dry_run_flag()
  flags.DEFINE_string("workdir", None, "run directory: checkpoints, TensorBoard events, example data")
  cli.run(main, required=("config", "workdir"))
