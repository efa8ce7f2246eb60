"""The training loop and its metrics log, independent of where batches and steps come from.

`train_loop` runs `step_fn` over the batches from `next_batch` until `max_iter`, one step in flight: the next batch is
loaded and prepared (its encoding queued) while the devices run the previous step. Every `logging_iter` steps it
logs the step's metrics and where the time went:

  s_per_step     wall time per step, callbacks (sample videos) excluded
  data_s         waiting for the loader (decoding, resizing, controls)
  prepare_s      turning the loader batch into the model batch (VAE encode, text embedding, placement on the mesh;
                 work the devices run asynchronously is not in it)
  device_wait_s  waiting for the devices to finish the previous step (the part the host could not overlap)
  dispatch_s     launching the step (on a CPU backend this includes running it)

(seconds per step, averaged since the last log). Throughput comes from the analytic FLOP count.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax

from agibot_jax import flops, logs

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
  """TensorBoard scalars under `<workdir>/tensorboard` and `<workdir>/metrics.jsonl`, written by process 0.

  metrics.jsonl holds one JSON object per logged step ({"step": n, "loss": ..., ...}), appended across
  restarts: a run resumed from an earlier checkpoint logs some steps again, and the last line of a step wins.
  """

  def __init__(self, workdir: str):
    from tensorboardX import SummaryWriter

    main = jax.process_index() == 0
    self.writer = SummaryWriter(os.path.join(workdir, "tensorboard")) if main else None
    self.jsonl = open(os.path.join(workdir, METRICS_FILE), "a") if main else None

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if self.writer is None:
      return
    for k, v in metrics.items():
      self.writer.add_scalar(f"train/{k}", v, step)
    self.writer.flush()
    self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
    self.jsonl.flush()

  def close(self) -> None:
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


class StepTimer:
  """Host seconds per phase since the last `report`, and the wall time per step with callbacks excluded."""

  def __init__(self, step_flops: float, num_devices: int):
    self.step_flops, self.num_devices = step_flops, num_devices
    self.peak = flops.peak_tflops(jax.devices()[0])
    self.phases: dict[str, float] = collections.defaultdict(float)
    self.t0, self.steps, self.excluded = time.perf_counter(), 0, 0.0
    self.first = True  # the first report of a (re)start includes compilation: no throughput

  def add(self, phase: str, seconds: float) -> None:
    self.phases[phase] += seconds

  def report(self) -> dict[str, float]:
    now = time.perf_counter()
    out = {}
    if not self.first and self.steps:
      sec = (now - self.t0 - self.excluded) / self.steps
      tflops = self.step_flops / sec / self.num_devices / 1e12
      out = {"s_per_step": sec, "tflops_per_device": tflops, **{k: v / self.steps for k, v in self.phases.items()}}
      if self.peak:
        out["mfu"] = tflops / self.peak
    self.first = False
    self.phases.clear()
    self.t0, self.steps, self.excluded = now, 0, 0.0
    return out


def train_loop(state, *, step_fn: Callable, loader: Iterator[dict], prepare: Callable[[dict], dict], start: int,
               max_iter: int, logging_iter: int, save: Callable[[Any], None], save_iter: int, metrics_log: MetricsLog,
               timer: StepTimer, callbacks: Sequence[Callable] = ()) -> tuple[Any, dict[str, float]]:
  """Runs steps start+1..max_iter; returns (final state, last logged metrics).

  loader yields loader batches; prepare(loader batch) -> model batch; save(state) writes a checkpoint; callbacks are
  called as `callback(step, state, batch, loader_batch)` after every step, their time excluded from the step
  times and from the progress bar's rate.
  """
  last_metrics: dict[str, float] = {}
  metrics = None
  with logs.progress(total=max_iter, initial=start, desc="train", unit="step") as bar:
    for step in range(start, max_iter):
      t0 = time.perf_counter()
      loader_batch = next(loader)
      t1 = time.perf_counter()
      batch = prepare(loader_batch)
      t2 = time.perf_counter()
      # Waiting for the previous step here keeps one step in flight: the host never queues batches faster than
      # the devices consume them.
      jax.block_until_ready(metrics)
      t3 = time.perf_counter()
      state, metrics = step_fn(state, batch)
      t4 = time.perf_counter()
      done = step + 1
      for phase, seconds in (("data_s", t1 - t0), ("prepare_s", t2 - t1), ("device_wait_s", t3 - t2),
                             ("dispatch_s", t4 - t3)):
        timer.add(phase, seconds)
      timer.steps += 1
      if callbacks:
        jax.block_until_ready(metrics)  # the step's own time is training time, not callback time
        t_callbacks = time.perf_counter()
        for callback in callbacks:
          callback(done, state, batch, loader_batch)
        spent = time.perf_counter() - t_callbacks
        timer.excluded += spent
        if not bar.disable:  # a disabled bar (processes other than 0) keeps no times
          bar.start_t += spent  # the bar's rate and ETA count training only
      bar.update(1)
      if done % logging_iter == 0 or done == max_iter:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        last_metrics = {**values, **timer.report()}
        metrics_log.write(done, last_metrics)
        log.info("step %d: %s", done, " ".join(f"{k}={v:.4g}" for k, v in last_metrics.items()))
      if done % save_iter == 0 or done == max_iter:
        save(state)
  return state, last_metrics
