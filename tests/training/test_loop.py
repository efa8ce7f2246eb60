"""agibot_jax/training/loop.py: the time accounting (s_per_step and its phases) with callbacks and saves."""

import time

import jax.numpy as jnp
import pytest

from agibot_jax.training import loop

STEP_S, CALLBACK_S, SAVE_S = 0.2, 1.0, 0.3


class _Checkpoints:
  def save(self, state):
    time.sleep(SAVE_S)

  def wait(self):
    pass

  def check(self):
    pass


class _InstantCheckpoints(_Checkpoints):
  def save(self, state):
    pass


class _Log:
  def __init__(self):
    self.rows = {}

  def write(self, step, metrics):
    self.rows[step] = metrics


def test_s_per_step_counts_training_only(tmp_path):
  """A step of 0.2 s, a 1 s sample callback every 2nd step and a 0.3 s save after step 5: s_per_step at a callback
  step is within 20% of its neighbours', the save is its own phase, and the phases add up to s_per_step."""

  def step_fn(state, batch):
    time.sleep(STEP_S)  # on a device the step would run asynchronously; here it blocks, as on a CPU backend
    return state + 1, {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(1.0), "nonfinite": jnp.int32(0)}

  def callback(step, state, batch, loader_batch):
    if step % 2 == 0:
      time.sleep(CALLBACK_S)

  log = _Log()
  loop.train_loop(0, step_fn=step_fn, loader=iter(range(100)), prepare=lambda b: b, start=0, max_iter=7,
                  logging_iter=1, save_iter=5, checkpoints=_Checkpoints(), metrics_log=log,
                  timer=loop.StepTimer(1e12, 1), callbacks=[callback])
  per_step = {step: row["s_per_step"] for step, row in log.rows.items() if "s_per_step" in row}
  assert sorted(per_step) == [2, 3, 4, 5, 6, 7]  # the first logged step includes start-up
  for step in (2, 4):  # callback steps against the step after them
    assert per_step[step] == pytest.approx(per_step[step + 1], rel=0.2), per_step
  assert per_step[2] == pytest.approx(STEP_S, rel=0.2)
  assert log.rows[6]["save_s"] == pytest.approx(SAVE_S, rel=0.3)  # the save after step 5 lands in step 6's interval
  for row in (log.rows[4], log.rows[6]):
    phases = sum(row[k] for k in ("data_s", "prepare_s", "device_wait_s", "dispatch_s", "save_s") if k in row)
    assert phases == pytest.approx(row["s_per_step"], rel=0.1)


def test_progress_bar_counts_a_step_before_its_callbacks_and_rates_training_only(monkeypatch, caplog):
  """Issue 31, item 7: the bar's s/step leaves out the first step (compilation) and the callbacks, it counts a step
  before the callbacks run (it no longer stands at N-1/N through a sample pass), and its clock is never moved, so
  the elapsed time it prints only grows."""
  first_s, step_s, callback_s = 0.6, 0.05, 0.4
  bars, seen_at_callback = [], {}
  progress = loop.logs.progress

  class _Recorded:
    def __init__(self, **kwargs):
      self.context = progress(**kwargs)

    def __enter__(self):
      self.bar = self.context.__enter__()
      bars.append((self.bar, self.bar.start_t))
      return self.bar

    def __exit__(self, *exc):
      return self.context.__exit__(*exc)

  monkeypatch.setattr(loop.logs, "progress", _Recorded)

  def step_fn(state, batch):
    time.sleep(first_s if state == 0 else step_s)
    return state + 1, {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(1.0), "nonfinite": jnp.int32(0)}

  def callback(step, state, batch, loader_batch):
    seen_at_callback[step] = bars[0][0].n
    time.sleep(callback_s if step == 2 else 0.0)

  caplog.set_level("INFO", logger="agibot_jax")
  loop.train_loop(0, step_fn=step_fn, loader=iter(range(100)), prepare=lambda b: b, start=0, max_iter=5,
                  logging_iter=5, save_iter=5, checkpoints=_InstantCheckpoints(), metrics_log=_Log(),
                  timer=loop.StepTimer(1e12, 1), callbacks=[callback])
  (bar, start_t), = bars
  assert seen_at_callback == {1: 1, 2: 2, 3: 3, 4: 4, 5: 5}
  assert bar.start_t == start_t
  per_step = float(bar.postfix.split(" s/step")[0].lstrip(", "))
  assert per_step == pytest.approx(step_s, rel=0.6), bar.postfix  # not (0.6 + 4·0.05 + 0.4) / 5
  assert any(r.getMessage().startswith("step 1 took") and "compiling" in r.getMessage() for r in caplog.records)


def test_resume_drops_the_abandoned_rows_of_metrics_jsonl(tmp_path):
  """Issue 33 row 12: resumed from step 4 after a kill at step 6, the log held steps 5 and 6 twice."""
  import json

  path = tmp_path / loop.METRICS_FILE
  rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 7)] + [{"step": 4, "val/loss": 0.5}]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 7, "lo')  # the kill cut the last line
  metrics_log = loop.MetricsLog(str(tmp_path), start=4)
  metrics_log.write(5, {"loss": 0.125})
  metrics_log.close()
  steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
  assert steps == [1, 2, 3, 4, 4, 5]
  assert loop.read_metrics(str(tmp_path))[5] == {"loss": 0.125}
  assert sorted(p.name for p in tmp_path.iterdir()) == [loop.METRICS_FILE, "tensorboard"]
