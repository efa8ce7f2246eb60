"""LambdaLinear LR multiplier vs golden/schedule.json, and its behaviour past the last cycle."""

import json

import jax
import numpy as np
import pytest

from agibot_jax.training import schedule
from configs import base


def _golden_cases(golden_dir):
  with open(golden_dir / "schedule.json") as f:
    return json.load(f)["cases"]


def _multiplier(case):
  return schedule.LambdaLinear(**{k: tuple(v) for k, v in case["kwargs"].items()})


def _spec_formula(n, f_start, f_max, f_min, warm, length):
  """Single-cycle formula of spec §6.3, written independently of the module."""
  if n < warm:
    return f_start + (f_max - f_start) * n / warm
  return f_min + (f_max - f_min) * (length - n) / (length - warm)


def test_every_golden_step_float64(golden_dir):
  checked = 0
  with jax.enable_x64(True):
    for case in _golden_cases(golden_dir):
      f = _multiplier(case)
      for v in case["values"]:
        if v["multiplier"] is None:
          continue
        got = float(f(v["step"]))
        assert got == pytest.approx(v["multiplier"], rel=1e-12, abs=0), (case["name"], v["step"])
        checked += 1
  assert checked == 23  # 11 + 12 stored finite multipliers


def test_golden_steps_float32_and_batched(golden_dir):
  for case in _golden_cases(golden_dir):
    values = [v for v in case["values"] if v["multiplier"] is not None]
    steps = np.array([v["step"] for v in values], np.int32)
    got = np.asarray(jax.jit(_multiplier(case))(steps))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [v["multiplier"] for v in values], rtol=2e-6)


def test_past_the_end_holds_f_min(golden_dir):
  """The reference raises past the last cycle (golden 'error'); we hold the final value f_min."""
  with jax.enable_x64(True):
    for case in _golden_cases(golden_dir):
      f = _multiplier(case)
      length = case["kwargs"]["cycle_lengths"][-1]
      errors = [v for v in case["values"] if v["multiplier"] is None]
      assert errors and all("TypeError" in v["error"] for v in errors)
      for step in [v["step"] for v in errors] + [length + 1, 10 * length, 2**31 - 1]:
        assert float(f(step)) == case["kwargs"]["f_min"][-1]


def test_two_cycles_follow_the_reference_cycle_lookup():
  kw = dict(f_start=(1e-3, 0.5), f_max=(1.0, 0.9), f_min=(0.2, 0.1), warm_up_steps=(10, 5), cycle_lengths=(100, 50))
  with jax.enable_x64(True):
    f = schedule.LambdaLinear(**kw)
    for n in [0, 5, 10, 99, 100, 101, 104, 105, 120, 150]:
      # Step n is in cycle 0 while n <= 100 (the end is inclusive), then counted from 100.
      c, local = (0, n) if n <= 100 else (1, n - 100)
      want = _spec_formula(local, kw["f_start"][c], kw["f_max"][c], kw["f_min"][c], kw["warm_up_steps"][c],
                           kw["cycle_lengths"][c])
      assert float(f(n)) == pytest.approx(want, rel=1e-12), n
    assert float(f(151)) == 0.1 and float(f(10**6)) == 0.1


def test_zero_warm_up_starts_at_f_max():
  with jax.enable_x64(True):
    f = schedule.LambdaLinear(f_start=(1e-6,), f_max=(1.0,), f_min=(0.5,), warm_up_steps=(0,), cycle_lengths=(10,))
    assert float(f(0)) == 1.0 and float(f(5)) == 0.75 and float(f(10)) == 0.5


def test_learning_rate_from_config_matches_spec_table():
  config = base.get_config("edge")
  lr = jax.jit(schedule.learning_rate_schedule(config))
  # spec §6.3 table (lr = 1e-4 · f).
  for n, want in [(0, 1e-10), (1, 1.980998e-7), (500, 9.9e-5), (1000, 9.8e-5), (10000, 8.0e-5), (30000, 4.0e-5)]:
    assert float(lr(n)) == pytest.approx(want, rel=1e-5), n


def test_bad_config_is_rejected():
  with pytest.raises(ValueError, match="same non-zero length"):
    schedule.LambdaLinear(f_start=(1e-6,), f_max=(1.0, 1.0), f_min=(0.4,), warm_up_steps=(1,), cycle_lengths=(10,))
  with pytest.raises(ValueError, match="warm_up_steps < cycle_lengths"):
    schedule.LambdaLinear(f_start=(1e-6,), f_max=(1.0,), f_min=(0.4,), warm_up_steps=(10,), cycle_lengths=(10,))
