"""agibot_jax/memory_plans.py: the plan ladder, the chooser's arithmetic, its step-down on an out-of-memory error."""

import dataclasses
import logging

import jax
import numpy as np
import pytest

from agibot_jax import cli, memory_plans, preflight
from configs import base


@dataclasses.dataclass
class FakeStep:
  memory: memory_plans.StepMemory


def scripted_by_plan(needs_gib):
  """A compile_fn whose plan i needs `needs_gib[i]`, recording the plan indices it compiled."""
  names = [name for name, _ in memory_plans.PLANS]
  seen = []

  def compile_fn(candidate, mesh, text_channels):
    i = next(i for i, (_, c, _) in enumerate(memory_plans.ladder(tiny_config(0.0))) if _same_plan(c, candidate))
    seen.append(i)
    return FakeStep(memory_plans.StepMemory(argument=needs_gib[i], output=1.0, alias=1.0, temp=0.0))
  assert len(names) == len(needs_gib)
  return compile_fn, seen


def _same_plan(a, b) -> bool:
  keys = ("remat_policy", "offload_block_inputs", "remat_sublayers", "mlp_chunks", "cross_view_chunks",
          "remat_segment_blocks")
  return (all(a.model.net[k] == b.model.net[k] for k in keys)
          and a.model.offload_optimizer_state == b.model.offload_optimizer_state)


def tiny_config(budget):
  config = base.get_config("edge", "tiny")
  config.model.memory_budget_gib = budget
  return preflight.resolve(config)


def overhead_gib(config, in_use):
  return in_use + 2 * memory_plans.batch_gib(config, 96) + memory_plans.RESERVE_GIB


def test_budget_zero_runs_the_settings_as_written():
  config = tiny_config(0.0)
  compile_fn, seen = scripted_by_plan([1.0] * 7)
  assert memory_plans.choose(config, None, 96, compile_fn=compile_fn) is config and not seen


def test_the_fastest_plan_whose_need_fits_is_taken():
  # Needs: the compiled step + what the devices hold + two batches + the reserve (module docstring). The plans as
  # configured first, then a bisection of the rest (plans 1-6): 3, then 2.
  in_use = 0.75
  needs = [6.0, 5.0, 3.0, 2.5, 1.5, 1.0, 0.8]
  overhead = overhead_gib(tiny_config(1.0), in_use)
  config = tiny_config(2.5 + overhead)
  compile_fn, seen = scripted_by_plan(needs)
  trials = []
  chosen = memory_plans.choose(config, None, 96, compile_fn=compile_fn, trial=trials.append, in_use_gib=lambda: in_use)
  assert seen == [0, 3, 2] and len(trials) == 1 and trials[0].memory.argument == 2.5  # only the chosen is tried
  assert chosen.model.net.remat_policy == "full" and chosen.model.net.offload_block_inputs
  assert chosen.model.net.remat_sublayers and not chosen.model.offload_optimizer_state
  assert config.model.net.remat_policy == "none"  # the input config is unchanged

  config = tiny_config(2.5 + overhead - 1e-3)  # the overhead counts: plan 3 no longer fits
  compile_fn, seen = scripted_by_plan(needs)
  chosen = memory_plans.choose(config, None, 96, compile_fn=compile_fn, trial=lambda step: None,
                               in_use_gib=lambda: in_use)
  assert seen == [0, 3, 5, 4] and chosen.model.offload_optimizer_state and chosen.model.net.mlp_chunks == 1

  compile_fn, seen = scripted_by_plan(needs)  # a large card: the settings as written, one compilation
  assert memory_plans.choose(tiny_config(100.0), None, 96, compile_fn=compile_fn, trial=lambda step: None,
                             in_use_gib=lambda: in_use).model.net.remat_policy == "none" and seen == [0]


def test_an_out_of_memory_trial_steps_down_to_the_next_plan(caplog):
  # The estimate of plan 3 fits but its trial step runs out of memory (a fragmented pool): plan 4 is taken, with
  # one warning line naming the plan.
  config = tiny_config(2.6 + overhead_gib(tiny_config(1.0), 0.0))
  compile_fn, seen = scripted_by_plan([6.0, 5.0, 3.0, 2.5, 1.5, 1.0, 0.8])
  tried = []

  def trial(step):
    tried.append(step.memory.argument)
    if len(tried) == 1:
      raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 20.44GiB.")

  with caplog.at_level(logging.INFO, logger="agibot_jax.memory_plans"):
    chosen = memory_plans.choose(config, None, 96, compile_fn=compile_fn, trial=trial, in_use_gib=lambda: 0.0)
  assert tried == [2.5, 1.5] and seen == [0, 3, 2, 4] and chosen.model.offload_optimizer_state
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and warnings[0].startswith(
      "memory plan '+ a checkpoint per sub-layer': out of memory in its trial step")


def test_other_errors_in_the_trial_are_not_taken_for_memory():
  compile_fn, _ = scripted_by_plan([1.0] * 7)

  def trial(step):
    raise jax.errors.JaxRuntimeError("INTERNAL: cuDNN failed")

  with pytest.raises(jax.errors.JaxRuntimeError, match="cuDNN"):
    memory_plans.choose(tiny_config(100.0), None, 96, compile_fn=compile_fn, trial=trial, in_use_gib=lambda: 0.0)


def test_no_plan_fits_lists_what_each_needs():
  compile_fn, seen = scripted_by_plan([6.0, 5.0, 3.0, 2.5, 1.5, 1.0, 0.8])
  with pytest.raises(memory_plans.NoPlanFits,
                     match=r"memory_budget_gib=0.5: no memory plan fits \(as configured: 6\.\d+ GiB; .*cross-view attention in "):
    memory_plans.choose(tiny_config(0.5), None, 96, compile_fn=compile_fn, in_use_gib=lambda: 0.0)
  assert seen == [0, 3, 5, 6]
  assert issubclass(memory_plans.NoPlanFits, cli.ConfigError)  # train and bench end with its one line


def test_the_smallest_plan_has_every_setting():
  # The tiny clip has 3 x 4 x 6 = 72 tokens per view: 8 MLP slices; 3 latent frames: 3 cross-view slices.
  *_, (name, smallest, _) = memory_plans.ladder(tiny_config(0.0))
  assert name == "+ cross-view attention in frame slices"
  assert smallest.model.net.remat_policy == "full" and smallest.model.net.offload_block_inputs
  assert smallest.model.net.remat_sublayers and smallest.model.offload_optimizer_state
  assert smallest.model.net.mlp_chunks == 8 and smallest.model.net.cross_view_chunks == 3


def test_mlp_slices_divide_the_tokens_per_view():
  config = base.get_config("edge", "tiny")
  config.dataloader_train.dataset.resolution_hw = (80, 96)  # 3 x 5 x 6 = 90 tokens per view: 6 slices, not 8
  *_, (_, smallest, overrides) = memory_plans.ladder(preflight.resolve(config))
  assert smallest.model.net.mlp_chunks == 6 == overrides["model.net.mlp_chunks"]


def test_step_memory_device_need():
  m = memory_plans.StepMemory(argument=10.0, output=9.0, alias=8.5, temp=20.0, host_argument=4.0)
  assert m.device == pytest.approx(30.5)
  assert "host_argument 4.00" in m.describe()


def test_a_trial_step_runs_the_compiled_step_and_frees_what_it_made():
  # A stand-in "step" with the train step's calling convention: (state, batch) -> (state, metrics).
  spec = jax.ShapeDtypeStruct((4, 4), np.float32, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  ran = []

  def step(state, batch):
    jax.debug.callback(lambda total: ran.append(float(total)), (state + batch["x"]).sum())
    return state + batch["x"], {"loss": state.sum()}

  compiled = jax.jit(step, donate_argnums=0).lower(spec, {"x": spec}).compile()
  memory_plans.trial_step(memory_plans.CompiledStep(compiled, spec, {"x": spec}))
  assert ran == [0.0]  # it ran, on zeros


@pytest.mark.slow  # ~12 s (a step compile)
def test_compiled_step_memory_in_gib():
  from agibot_jax import sharding

  config = base.get_config("edge", "tiny")
  config.model.net.num_blocks, config.model.net.vace_block_every_n = 2, 2
  mesh = sharding.make_mesh(**config.mesh)
  memory = memory_plans.compile_step(preflight.resolve(config), mesh, 96).memory
  # The state is donated: its outputs reuse its arguments. The arguments are the state (2.5 M parameters in the
  # float32 masters and bf16/f32 base, Adam moments, EMA) and the batch: well under 1 GiB, well over 10 MiB.
  assert memory.alias > 0 and memory.output - memory.alias < 1e-3
  assert 0.01 < memory.argument < 1 and memory.temp > 0
  assert memory.device == pytest.approx(memory.argument + memory.temp, abs=1e-3)
