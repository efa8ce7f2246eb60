"""Power EMA: gamma, the beta table of spec §6.5, bf16-rounded averaging and resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agibot_jax.training import ema
from configs import base

GAMMA = 6.937203937601809  # spec §6.5 for rate 0.1


def test_gamma_is_the_largest_root():
  g = ema.power_ema_gamma(0.1)
  assert g == pytest.approx(GAMMA, rel=1e-13)
  assert abs(g**3 + 7 * g**2 - 84 * g - 88) < 1e-9  # x³+7x²−84x−88 for rate 0.1
  with pytest.raises(ValueError, match="ema.rate"):
    ema.power_ema_gamma(0.0)


@pytest.mark.parametrize(
    "k,want", [(1, 0.004080), (10, 0.469308), (100, 0.924060), (1000, 0.992098), (5000, 0.998414), (10000, 0.999207)]
)
def test_spec_beta_table(k, want):
  beta, one_minus = ema.ema_decay(k, GAMMA)
  assert float(beta) == pytest.approx(want, abs=5e-7)  # the spec prints 6 decimals
  exact = (1 - 1 / (k + 1)) ** (GAMMA + 1)
  assert float(beta) == pytest.approx(exact, rel=1e-6)
  assert float(one_minus) == pytest.approx(1 - exact, rel=1e-5)


def test_first_step_and_iteration_shift():
  assert [float(x) for x in ema.ema_decay(0, GAMMA)] == [0.0, 1.0]
  # The reference adds the shift to the iteration before both the test and the formula.
  beta, _ = ema.ema_decay(0, GAMMA, iteration_shift=10)
  assert float(beta) == pytest.approx((1 - 1 / 11) ** (GAMMA + 1), rel=1e-6)
  assert float(ema.ema_decay(5, GAMMA, iteration_shift=-5)[0]) == 0.0


def _live_sequence(n):
  rng = np.random.default_rng(0)
  return [{"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=(3,)).astype(np.float32)}
          for _ in range(n)]


def test_update_formula_and_first_step_copies_live():
  live = _live_sequence(3)
  e = ema.init_ema({"w": np.zeros((4, 3), np.float32), "b": np.ones(3, np.float32)})
  e = ema.update_ema(e, live[0], 0, gamma=GAMMA)
  np.testing.assert_array_equal(e["w"], live[0]["w"])
  prev = jax.tree.map(np.asarray, e)
  e = ema.update_ema(e, live[1], 1, gamma=GAMMA)
  beta = (1 - 1 / 2) ** (GAMMA + 1)
  np.testing.assert_allclose(e["w"], beta * prev["w"] + (1 - beta) * live[1]["w"], rtol=1e-6, atol=1e-7)
  assert e["w"].dtype == jnp.float32


def test_averages_bf16_rounded_live_weights():
  live = {"w": np.array([1.0 + 2.0**-10, 3.14159265], np.float32)}  # not representable in bf16
  rounded = np.asarray(jnp.asarray(live["w"]).astype(jnp.bfloat16).astype(jnp.float32))
  assert not np.array_equal(rounded, live["w"])
  tracker = ema.PowerEMA(GAMMA, live_dtype=jnp.bfloat16)
  e = tracker.update(tracker.init({"w": np.zeros(2, np.float32)}), live, 0)
  np.testing.assert_array_equal(e["w"], rounded)
  assert e["w"].dtype == jnp.float32


def test_resume_gives_the_uninterrupted_ema():
  live = _live_sequence(20)
  update = jax.jit(lambda e, p, k: ema.update_ema(e, p, k, gamma=GAMMA))

  def run(e, start, stop, counter_offset=0):
    for k in range(start, stop):
      e = update(e, live[k], k - counter_offset)
    return e

  uninterrupted = run(ema.init_ema(live[0]), 0, 20)
  # Checkpoint after 12 steps: the EMA tree and the iteration go through host memory.
  saved_ema, saved_iteration = jax.tree.map(np.array, run(ema.init_ema(live[0]), 0, 12)), 12
  resumed = run(saved_ema, saved_iteration, 20)
  jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)
  # Restarting the count at 0 (the reference's behaviour on a fresh start) would discard the history.
  restarted = run(saved_ema, saved_iteration, 20, counter_offset=saved_iteration)
  assert not np.allclose(restarted["w"], uninterrupted["w"], atol=1e-3)


def test_from_config():
  tracker = ema.PowerEMA.from_config(base.get_config("edge"))
  assert tracker.gamma == pytest.approx(GAMMA, rel=1e-13)
  assert tracker.iteration_shift == 0 and tracker.live_dtype == jnp.bfloat16
  assert ema.PowerEMA.from_config(base.get_config("edge", "tiny")).live_dtype is None
  config = base.get_config("edge")
  config.ema.enabled = False
  assert ema.PowerEMA.from_config(config) is None
