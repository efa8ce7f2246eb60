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
