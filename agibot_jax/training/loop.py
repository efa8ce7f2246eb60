"""The training loop and its metrics log, independent of where batches and steps come from.

`train_loop` runs `step_fn` over the batches from `next_batch` until `max_iter`, one step in flight: the next batch is
loaded and prepared (its encoding queued) while the devices run the previous step. Every `logging_iter` steps it
logs the step's metrics and where the time went:

  s_per_step     wall time per step, callbacks (sample videos) excluded
  data_s         waiting for the loader (decoding, resizing, controls)
  prepare_s      turning the loader batch into the model batch (VAE encode, text embedding, placement on the mesh;
                 work the devices run asynchronously is not in it)
  device_wait_s  waiting for the devices to finish a step (the part of it the host could not overlap)
  dispatch_s     launching the step (on a CPU backend this includes running it)
  save_s         writing checkpoints (asynchronous saves: their synchronous part)

(seconds per step, averaged since the last log). Throughput comes from the analytic FLOP count.

The loop stops early by raising `Stopped` (one-line message, exit status):
  - after `max_nonfinite` steps in a row whose loss or gradient norm was not finite (the step skipped their
    updates; agibot_jax/training/step.py); no checkpoint is ever written right after such a step, so keep-N
    rotation cannot remove the last checkpoint of a finite run;
  - on SIGTERM or SIGINT (`StopSignals`): the step in flight finishes, a checkpoint of it is written and waited
    for, and the run exits with 128 + the signal number; a second signal exits at once.
A failed asynchronous checkpoint save stops it at the first step after the failure (`Checkpoints.check`).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import jax
import numpy as np
from tqdm import tqdm as tqdm_bar

from agibot_jax import flops, logs, utils

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
  """TensorBoard scalars under `<workdir>/tensorboard` and `<workdir>/metrics.jsonl`, written by process 0.

  metrics.jsonl holds one JSON object per logged step ({"step": n, "loss": ..., ...}; validation steps add one with
  the validation metrics), appended across restarts. A run that starts at step `start` (resumed from that
  checkpoint, or 0) first drops what an abandoned run logged after it: the rows of metrics.jsonl (the file
  rewritten atomically) and, through TensorBoard's purge step, its events. So every step is logged by one run.
  """

  def __init__(self, workdir: str, start: int = 0):
    from tensorboardX import SummaryWriter

    main = jax.process_index() == 0
    path = os.path.join(workdir, METRICS_FILE)
    if main:
      drop_rows_after(path, start)
    self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start + 1) if main else None
    self.jsonl = open(path, "a") if main else None

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


def drop_rows_after(path: str, step: int) -> None:
  """Rewrites the metrics file `path` (atomically) without its rows of steps after `step`, if it has any."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  # A line cut short by a kill ends without a newline: dropped with the rest of the abandoned run.
  kept = [ln for ln in lines if ln.endswith("\n") and json.loads(ln)["step"] <= step]
  if len(kept) < len(lines):
    utils.atomic_write(path, lambda f: f.writelines(kept), mode="w")


def read_metrics(workdir: str) -> dict[int, dict]:
  """step -> the metrics logged at that step (training and validation lines merged; a later line of a step wins)."""
  out: dict[int, dict] = {}
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    for line in f:
      row = json.loads(line)
      out.setdefault(row.pop("step"), {}).update(row)
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


class Stopped(Exception):
  """The run stopped before `max_iter`; the message says why in one line, `exit_code` is the process's exit status."""

  def __init__(self, message: str, exit_code: int = 1):
    super().__init__(message)
    self.exit_code = exit_code


class Checkpoints(Protocol):
  """Where the loop writes its checkpoints (agibot_jax.training.checkpointing.Saver)."""

  def save(self, state) -> None:
    """Starts writing a checkpoint of `state`, after the previous one is written."""

  def wait(self) -> None:
    """Blocks until the last checkpoint is written; raises if it failed."""

  def check(self) -> None:
    """Raises if an earlier asynchronous save failed; never blocks."""


class StopSignals:
  """While entered, SIGTERM and SIGINT ask the loop to stop (`signum` is set) instead of killing the process.

  The loop finishes the step in flight, writes its checkpoint and raises `Stopped` with `exit_code` 128 + signum
  (143 for SIGTERM, 130 for SIGINT). A second signal exits the process at once, without saving.

  Python runs a signal's handler in the main thread between two bytecodes, so while a step runs in native code
  (XLA) two signals become one call of the handler. The second is counted instead where each delivery is seen:
  Python writes every signal's number to the wakeup file descriptor (`signal.set_wakeup_fd`), which a thread
  reads, exiting the process at the second SIGTERM or SIGINT.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, Any] = {}
    self._previous_wakeup_fd = -1
    self._wakeup_fd = -1

  def __enter__(self) -> "StopSignals":
    for signum in self.SIGNALS:
      self._previous[signum] = signal.signal(signum, self._handle)
    read_fd, self._wakeup_fd = os.pipe()
    os.set_blocking(self._wakeup_fd, False)
    self._previous_wakeup_fd = signal.set_wakeup_fd(self._wakeup_fd, warn_on_full_buffer=False)
    threading.Thread(target=self._count_deliveries, args=(read_fd,), name="stop-signals", daemon=True).start()
    return self

  def __exit__(self, *exc) -> None:
    signal.set_wakeup_fd(self._previous_wakeup_fd)
    os.close(self._wakeup_fd)  # the counting thread reads the end of the pipe and stops
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def _count_deliveries(self, read_fd: int) -> None:
    seen = 0
    with os.fdopen(read_fd, "rb", buffering=0) as deliveries:
      while data := deliveries.read(64):
        for signum in data:
          seen += signum in self.SIGNALS
          if seen == 2:
            _exit_at_once(signum)

  def requested(self) -> bool:
    """Whether to stop now. Processes of a multi-process run first agree (one small collective, which waits for
    the step in flight): a signal to any stops all at the same step, as their checkpoint saves wait for each other."""
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      signums = multihost_utils.process_allgather(np.int32(self.signum or 0))
      if self.signum is None and signums.max():
        self.signum = int(signums.max())
        log.warning("%s in another process: finishing the current step and writing a checkpoint, then stopping",
                    self.name)
    return self.signum is not None

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name

  @property
  def exit_code(self) -> int:
    return 128 + self.signum

  def _handle(self, signum, frame) -> None:
    del frame
    if self.signum is not None:
      _exit_at_once(signum)
    self.signum = signum
    log.warning("%s: finishing the current step and writing a checkpoint, then stopping (send it again to exit at "
                "once)", self.name)


def _exit_at_once(signum: int) -> None:
  sys.stderr.write(f"{signal.Signals(signum).name} again: exiting now, without a checkpoint\n")
  sys.stderr.flush()
  os._exit(128 + signum)  # pylint: disable=protected-access


class NonfiniteWatch:
  """Counts the steps in a row whose `nonfinite` metric is set, reading each step's metrics once."""

  def __init__(self, limit: int):
    self.limit, self.in_a_row, self._seen = limit, 0, None

  def finite(self, step: int, metrics: dict) -> bool:
    """Whether `step` (whose metrics these are) was finite; raises Stopped at the `limit`-th non-finite in a row."""
    if step != self._seen:
      self._seen = step
      values = jax.device_get({k: metrics[k] for k in ("loss", "grad_norm", "nonfinite") if k in metrics})
      if not int(values.get("nonfinite", 0)):
        self.in_a_row = 0
        return True
      self.in_a_row += 1
      log.warning("step %d: loss %s, gradient norm %s: update skipped (%d non-finite step(s) in a row)", step,
                  values.get("loss"), values.get("grad_norm"), self.in_a_row)
      if self.in_a_row >= self.limit:
        raise Stopped(f"step {step}: {self.in_a_row} non-finite steps in a row (trainer.max_nonfinite_steps="
                      f"{self.limit}): stopping; no checkpoint was written after a non-finite step (lower "
                      "optimizer.lr or check the data)")
    return self.in_a_row == 0


def progress_note(train_s: float, timed_steps: int, steps_left: int, with_callbacks: bool) -> str:
  """The progress bar's note: the training time per step (without the first step of a (re)start, which compiles,
  and without callbacks) and the time the remaining steps will take at that rate."""
  if not timed_steps:
    return "compiling the train step"
  per_step = train_s / timed_steps
  left = tqdm_bar.format_interval(per_step * steps_left)
  return f"{per_step:.3g} s/step, {left} left" + (" + sample/validation passes" if with_callbacks else "")


# tqdm's bar without its own rate and ETA: its rate would count compilation and callbacks (the note has the real one).
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


def train_loop(state, *, step_fn: Callable, loader: Iterator[dict], prepare: Callable[[dict], dict], start: int,
               max_iter: int, logging_iter: int, save_iter: int, checkpoints: Checkpoints, metrics_log: MetricsLog,
               timer: StepTimer, callbacks: Sequence[Callable] = (), max_nonfinite: int = 20,
               stop: StopSignals | None = None) -> tuple[Any, dict[str, float]]:
  """Runs steps start+1..max_iter; returns (final state, last logged metrics).

  loader yields loader batches; prepare(loader batch) -> model batch; a checkpoint is written every `save_iter` steps
  and after the last (after a non-finite step: at the next finite one). callbacks are called as
  `callback(step, state, batch, loader_batch)` after every step, once the progress bar counts it; their time is
  excluded from the step times. The bar shows the wall time and, as its note (`progress_note`), the training time
  per step and the time left. Raises Stopped (module docstring).
  """
  watch = NonfiniteWatch(max_nonfinite)
  last_metrics: dict[str, float] = {}
  metrics = None
  done = saved = start
  save_due = False
  train_s, timed_steps = 0.0, 0

  def stop_for_signal():
    if done > saved:
      if not watch.finite(done, metrics):
        raise Stopped(f"{stop.name}: stopped after step {done}, which was not finite: no checkpoint written",
                      stop.exit_code)
      checkpoints.save(state)
    checkpoints.wait()
    what = f"checkpoint {done} written" if done > start else "no step since the start, nothing to save"
    raise Stopped(f"{stop.name}: stopped after step {done}; {what}", stop.exit_code)

  with logs.progress(total=max_iter, initial=start, desc="train", unit="step", bar_format=BAR_FORMAT) as bar:
    bar.set_postfix_str(progress_note(0.0, 0, max_iter - start, bool(callbacks)), refresh=False)
    for step in range(start, max_iter):
      if stop is not None and stop.requested():
        stop_for_signal()
      t0 = time.perf_counter()
      try:
        loader_batch = next(loader)
      except Exception:
        if stop is None or stop.signum is None:
          raise
        log.warning("the data loader failed after %s (its worker processes got the signal too)", stop.name)
        stop_for_signal()
      t1 = time.perf_counter()
      batch = prepare(loader_batch)
      t2 = time.perf_counter()
      # Waiting for the previous step here keeps one step in flight: the host never queues batches faster than
      # the devices consume them.
      jax.block_until_ready(metrics)
      if metrics is not None:
        watch.finite(done, metrics)  # counts the previous step
      t3 = time.perf_counter()
      state, metrics = step_fn(state, batch)
      t4 = time.perf_counter()
      done = step + 1
      for phase, seconds in (("data_s", t1 - t0), ("prepare_s", t2 - t1), ("device_wait_s", t3 - t2),
                             ("dispatch_s", t4 - t3)):
        timer.add(phase, seconds)
      timer.steps += 1
      checkpoints.check()
      callbacks_s = 0.0
      if callbacks:
        jax.block_until_ready(metrics)  # the step's own time is training time, not callback time
        timer.add("device_wait_s", time.perf_counter() - t4)
      bar.update(1)
      if callbacks:
        t_callbacks = time.perf_counter()
        for callback in callbacks:
          callback(done, state, batch, loader_batch)
        callbacks_s = time.perf_counter() - t_callbacks
        timer.excluded += callbacks_s
      if done % logging_iter == 0 or done == max_iter:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        last_metrics = {**values, **timer.report()}
        metrics_log.write(done, last_metrics)
        log.info("step %d: %s", done, " ".join(f"{k}={v:.4g}" for k, v in last_metrics.items()))
      save_due = save_due or done % save_iter == 0 or done == max_iter
      if save_due and watch.finite(done, metrics):
        t_save = time.perf_counter()
        checkpoints.save(state)
        timer.add("save_s", time.perf_counter() - t_save)
        saved, save_due = done, False
      step_s = time.perf_counter() - t0 - callbacks_s
      if step == start:
        log.info("step %d took %.1f s, most of it compiling the train step (not counted in s_per_step or in the "
                 "progress bar's s/step)", done, step_s)
      else:
        train_s, timed_steps = train_s + step_s, timed_steps + 1
      bar.set_postfix_str(progress_note(train_s, timed_steps, max_iter - done, bool(callbacks)), refresh=False)
  if save_due:
    log.warning("step %d was not finite: no checkpoint written after it", done)
  return state, last_metrics
