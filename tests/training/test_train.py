"""The training job end to end on CPU (agibot_jax/train.py), with a reduced tiny config.

What is proved here:
  - a run stopped at step 2 and resumed reproduces the uninterrupted run bit for bit: the losses of
    steps 3 and 4, the final TrainState (trainable, frozen, Adam moments, EMA, key, step) and the data
    iterator position; the restored step-2 state equals the checkpoint leaf by leaf;
  - checkpoints hold the grain iterator state and the config JSON; TensorBoard and metrics.jsonl get
    loss, lr, grad norm, s/step and TFLOP/s/device;
  - a CLI run killed with SIGKILL (possibly mid-save) resumes from the last complete checkpoint,
    ignoring Orbax's unfinished tmp directories, and finishes (slow: two CLI start-ups);
  - issue 17, end to end (slow): a run whose loss turns NaN stops after trainer.max_nonfinite_steps with the real
    gradient norms logged and only finite checkpoints kept; a CLI run sent SIGTERM writes the checkpoint of the
    step it was in and exits 143. The fast unit versions are in test_reliability.py;
  - issue 33, fault injection (slow): a CLI run killed with SIGKILL, or stopped with SIGTERM, at random moments
    (3 times each, the first during a checkpoint save) and rerun each time ends with a train state bit-identical to
    an uninterrupted run's, one metrics.jsonl row per step, and its data-loader worker gone with it after each
    SIGKILL. The fast unit versions: test_reliability.py (resume, signals), test_loop.py (metrics rows),
    tests/test_utils.py (workers).
"""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from agibot_jax import assemble, preflight, sharding
from agibot_jax import train as train_lib
from agibot_jax.data import synthetic
from agibot_jax.models import dit, dit_config
from agibot_jax.training import checkpointing, loop
from agibot_jax.training import ema as ema_lib
from agibot_jax.training import optimizer as optim
from configs import edge

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The tiny config made cheaper still: 2 blocks (1 control block), 32 text tokens, 32x48 pixels.
SMALL = {
    "model.net.num_blocks": 2,
    "model.net.vace_block_every_n": 2,
    "model.net.text_tokens_per_view": 32,
    "model.text_encoder.num_tokens": 32,
    "dataloader_train.dataset.resolution_hw": (32, 48),
    "trainer.callbacks.every_n_sample.every_n": 0,
    "trainer.logging_iter": 1,
}


def _set(config, dotted: str, value) -> None:
  *parents, leaf = dotted.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value


def small_config(dataset_dir: str, **overrides):
  config = edge.get_config("tiny")
  for k, v in {**SMALL, "dataloader_train.dataset.dataset_dir": dataset_dir, **overrides}.items():
    _set(config, k, v)
  return config


def cli_flags(settings: dict) -> list[str]:
  out = []
  for k, v in settings.items():
    v = ",".join(map(str, v)) if isinstance(v, tuple) else v
    out.append(f"--config.{k}={v}")
  return out


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("example_data"))
  config = small_config("")
  h, w = config.dataloader_train.dataset.resolution_hw
  synthetic.write_example(out, num_samples=2, frames=config.dataloader_train.dataset.num_video_frames + 3,
                             height=h + 16, width=w + 32, seed=0)
  return out


def read_checkpoint(path: str) -> tuple[dict, dict, dict]:
  """(state as nested numpy dict, data iterator state, config JSON) of one finalised checkpoint dir."""
  state = ocp.StandardCheckpointer().restore(os.path.join(path, "state"))
  data = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(os.path.join(path, "data"))
  config = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(os.path.join(path, "config"))
  return state, data, config


def _by_path(tree) -> dict[str, np.ndarray]:
  """Leaves by '/'-joined key names, so a TrainState and its raw (dict) checkpoint compare."""
  def name(k):
    return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
  return {"/".join(map(name, path)): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_trees_equal(a, b, what: str) -> None:
  flat_a, flat_b = _by_path(a), _by_path(b)
  assert sorted(flat_a) == sorted(flat_b), what
  for path, leaf in flat_a.items():
    assert leaf.dtype == flat_b[path].dtype, f"{what}: {path}"
    np.testing.assert_array_equal(leaf, flat_b[path], err_msg=f"{what}: {path}")


def tensorboard_tags(workdir: str) -> set[str]:
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  acc = EventAccumulator(os.path.join(workdir, "tensorboard"))
  acc.Reload()
  return set(acc.Tags()["scalars"])


def test_resume_is_exact(dataset_dir, tmp_path):
  # Uninterrupted: 4 steps, checkpoints at 2 and 4.
  straight = str(tmp_path / "straight")
  config = small_config(dataset_dir, **{"trainer.max_iter": 4, "checkpoint.save_iter": 2})
  result = train_lib.train(config, straight)
  assert result["step"] == 4
  ckpts = checkpointing.checkpoint_dir(straight)
  assert sorted(os.listdir(ckpts)) == ["2", "4"]
  losses = loop.read_metrics(straight)
  assert sorted(losses) == [1, 2, 3, 4] and all(np.isfinite(m["loss"]) for m in losses.values())

  # Logging: TensorBoard scalars (and throughput from the second logged step on).
  tags = tensorboard_tags(straight)
  assert {"train/loss", "train/lr", "train/grad_norm", "train/s_per_step", "train/tflops_per_device"} <= tags
  assert {"s_per_step", "tflops_per_device"} <= set(losses[2])

  # The checkpoint holds the data iterator state and the run's config.
  state2, data2, config2 = read_checkpoint(os.path.join(ckpts, "2"))
  state4, data4, _ = read_checkpoint(os.path.join(ckpts, "4"))
  assert config2["trainer"]["max_iter"] == 4 and config2["model"]["net"]["num_blocks"] == 2
  assert data2 != data4, "the iterator position must advance between checkpoints"
  assert int(state2["step"]) == 2 and int(state4["step"]) == 4

  # "Stopped at step 2": a fresh workdir holding only the step-2 checkpoint.
  resumed = str(tmp_path / "resumed")
  shutil.copytree(os.path.join(ckpts, "2"), os.path.join(checkpointing.checkpoint_dir(resumed), "2"))

  # The restored state equals what was saved, leaf by leaf, with the target shardings.
  cfg = dit_config.DiTConfig.from_config(config.model.net)
  mesh = sharding.make_mesh(**config.mesh)
  manager = checkpointing.make_manager(resumed, config)
  restored, data_state, shardings = assemble.init_or_restore(
      preflight.resolve(config), resumed, cfg, mesh, optim.make_optimizer(config), ema_lib.PowerEMA.from_config(config),
      manager)
  manager.close()
  assert data_state == data2
  assert_trees_equal(jax.tree.map(np.asarray, restored), state2, "restored step-2 state")
  assert jax.tree.leaves(jax.tree.map(lambda a, s: a.sharding == s, restored, shardings)) == [True] * len(
      jax.tree.leaves(restored))

  # Resume to 4: same losses at steps 3 and 4, same final state and iterator position.
  result = train_lib.train(config, resumed)
  assert result["step"] == 4
  resumed_losses = loop.read_metrics(resumed)
  assert sorted(resumed_losses) == [3, 4], "the resumed run must start at step 3"
  for step in (3, 4):
    assert resumed_losses[step]["loss"] == losses[step]["loss"], step
    assert resumed_losses[step]["grad_norm"] == losses[step]["grad_norm"], step
  state4_resumed, data4_resumed, _ = read_checkpoint(os.path.join(checkpointing.checkpoint_dir(resumed), "4"))
  assert data4_resumed == data4
  assert_trees_equal(state4_resumed, state4, "step-4 state")


@pytest.mark.slow  # ~40 s; the default run compares batches and the built network (test_pipeline, test_assemble)
def test_agibot_rig_trains_as_main_did(dataset_dir, tmp_path):
  """Steps 1-2 of the default (agibot) rig: the loss and gradient norm main (be348e4) logged for this run, to the bit
  (recorded on the 2-core CPU test machine under the test session's XLA flags, tests/conftest.py; the synthetic clips
  are encoded at test time, so another x264 or XLA CPU build may differ in the last digits)."""
  config = small_config(dataset_dir, **{"trainer.max_iter": 2, "checkpoint.save_iter": 2})
  train_lib.train(config, str(tmp_path / "run"))
  metrics = loop.read_metrics(str(tmp_path / "run"))
  assert {s: (m["loss"], m["grad_norm"]) for s, m in metrics.items()} == {
      1: (1.6132546663284302, 1.1042498350143433), 2: (1.6038382053375244, 1.3541957139968872)}


# ~40 s; the default run has the 1-camera forward (tests/models/test_dit.py::test_one_camera_rig_forward)
@pytest.mark.slow
def test_one_camera_rig_trains(tmp_path):
  data = str(tmp_path / "data")
  config = small_config(data, **{"trainer.max_iter": 2, "checkpoint.save_iter": 2})
  config.rig = [{"name": "wrist", "view": 1, "caption_prefix": "The video is captured from the wrist camera."}]
  h, w = config.dataloader_train.dataset.resolution_hw
  synthetic.write_example(data, num_samples=2, frames=config.dataloader_train.dataset.num_video_frames, height=h,
                          width=w, views=("wrist",))
  result = train_lib.train(config, str(tmp_path / "run"))
  assert result["step"] == 2 and np.isfinite(result["loss"])
  _, _, saved = read_checkpoint(os.path.join(checkpointing.checkpoint_dir(str(tmp_path / "run")), "2"))
  assert saved["dataloader_train"]["dataset"]["views"] == ["wrist"] and '"view":1' in saved["rig"]


LOW_MEMORY = {"model.net.remat_policy": "full", "model.net.offload_block_inputs": True, "model.net.remat_sublayers": True,
              "model.net.mlp_chunks": 3, "model.offload_optimizer_state": True, "model.net.remat_segment_blocks": 2}


@pytest.mark.slow
def test_low_memory_plan_trains_the_same_and_resumes_across_plans(dataset_dir, tmp_path):
  # The smallest memory plan (issue 23) changes where values live and what is recomputed, not the numbers: same losses
  # and gradient norms as the default plan (MLP slices change float32 summation order only), the Adam moments and
  # the EMA in host memory between steps, and its checkpoints resume under the default plan.
  default, low = str(tmp_path / "default"), str(tmp_path / "low")
  settings = {"trainer.max_iter": 2, "checkpoint.save_iter": 2}
  train_lib.train(small_config(dataset_dir, **settings), default)
  config = small_config(dataset_dir, **settings, **LOW_MEMORY)
  train_lib.train(config, low)
  want, got = loop.read_metrics(default), loop.read_metrics(low)
  for step in (1, 2):
    np.testing.assert_allclose(got[step]["loss"], want[step]["loss"], rtol=1e-5, err_msg=str(step))
    np.testing.assert_allclose(got[step]["grad_norm"], want[step]["grad_norm"], rtol=1e-5, err_msg=str(step))

  resolved = preflight.resolve(config, low)
  cfg, mesh = dit_config.DiTConfig.from_config(resolved.model.net), sharding.make_mesh(**config.mesh)
  manager = checkpointing.make_manager(low, resolved)
  state, _, _ = assemble.init_or_restore(resolved, low, cfg, mesh, optim.make_optimizer(config),
                                         ema_lib.PowerEMA.from_config(config), manager)
  manager.close()
  kinds = lambda tree: {leaf.sharding.memory_kind for leaf in jax.tree.leaves(tree) if leaf.ndim}
  assert kinds(state.opt_state) == kinds(state.ema) == {"pinned_host"}
  assert kinds(state.trainable) == kinds(state.frozen) == {"device"}
  assert {leaf.sharding.memory_kind for leaf in jax.tree.leaves(state.ema_params())} == {"device"}

  result = train_lib.train(small_config(dataset_dir, **{**settings, "trainer.max_iter": 3}), low)
  assert result["step"] == 3 and np.isfinite(result["loss"])


def finalised_steps(ckpt_dir: str) -> list[int]:
  return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit()) if os.path.isdir(ckpt_dir) else []


def run_cli(workdir: str, settings: dict, **popen) -> subprocess.Popen:
  cmd = [sys.executable, "-m", "agibot_jax.train", "--config", "configs/edge.py:tiny", "--workdir", workdir,
         *cli_flags(settings)]
  env = {**os.environ, "PYTHONPATH": REPO}
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          **popen)


@pytest.mark.slow
def test_sigkill_resumes_from_last_complete_checkpoint(dataset_dir, tmp_path):
  workdir = str(tmp_path / "run")
  ckpt_dir = checkpointing.checkpoint_dir(workdir)
  settings = {**SMALL, "dataloader_train.dataset.dataset_dir": dataset_dir, "checkpoint.save_iter": 1}
  proc = run_cli(workdir, {**settings, "trainer.max_iter": 50})
  deadline = time.time() + 300
  try:
    while len(finalised_steps(ckpt_dir)) < 2:
      assert proc.poll() is None, proc.stdout.read()[-3000:]
      assert time.time() < deadline, "no two checkpoints within 300 s"
      time.sleep(0.05)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  last = finalised_steps(ckpt_dir)[-1]
  # Make sure an unfinished save is there to ignore (the kill may or may not have landed mid-save).
  tmp = os.path.join(ckpt_dir, f"{last + 1}.orbax-checkpoint-tmp")
  if not glob.glob(os.path.join(ckpt_dir, f"{last + 1}.orbax-checkpoint-tmp*")):
    os.makedirs(os.path.join(tmp, "state.orbax-checkpoint-tmp"))
  proc = run_cli(workdir, {**settings, "trainer.max_iter": last + 2})
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  assert f"at step {last}" in out, out[-3000:]
  assert finalised_steps(ckpt_dir)[-1] == last + 2
  assert not glob.glob(os.path.join(ckpt_dir, "*orbax-checkpoint-tmp*"))
  metrics = loop.read_metrics(workdir)
  assert {last + 1, last + 2} <= set(metrics)


@pytest.mark.slow
def test_nan_run_stops_and_keeps_finite_checkpoints(dataset_dir, tmp_path):
  workdir = str(tmp_path / "run")
  config = small_config(dataset_dir, **{"optimizer.lr": 1e30, "trainer.max_iter": 12, "checkpoint.save_iter": 1,
                                        "checkpoint.keep": 2, "trainer.max_nonfinite_steps": 3})
  with pytest.raises(loop.Stopped, match=r"3 non-finite steps in a row \(trainer.max_nonfinite_steps=3\)") as err:
    train_lib.train(config, workdir)
  assert err.value.exit_code == 1
  metrics = loop.read_metrics(workdir)
  bad = sorted(step for step, m in metrics.items() if m["nonfinite"])
  assert len(bad) == 3 and bad == list(range(bad[0], bad[0] + 3)) and max(metrics) == bad[-1], metrics
  assert all(not np.isfinite(metrics[step]["grad_norm"]) for step in bad), "the real norm is logged, not 0.0"
  kept = finalised_steps(checkpointing.checkpoint_dir(workdir))
  assert kept and all(not metrics[step]["nonfinite"] for step in kept), (kept, bad)
  for step in kept:
    state, _, _ = read_checkpoint(os.path.join(checkpointing.checkpoint_dir(workdir), str(step)))
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state) if np.issubdtype(leaf.dtype, np.floating))


@pytest.mark.slow
def test_sigterm_writes_the_current_step_and_exits_143(dataset_dir, tmp_path):
  workdir = str(tmp_path / "run")
  settings = {**SMALL, "dataloader_train.dataset.dataset_dir": dataset_dir, "checkpoint.save_iter": 1000}
  proc = run_cli(workdir, {**settings, "trainer.max_iter": 1000})
  deadline = time.time() + 300
  try:
    while not os.path.exists(os.path.join(workdir, loop.METRICS_FILE)) or not loop.read_metrics(workdir):
      assert proc.poll() is None, proc.stdout.read()[-3000:]
      assert time.time() < deadline, "no logged step within 300 s"
      time.sleep(0.05)
  finally:
    proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 143, out[-3000:]
  last = max(loop.read_metrics(workdir))
  assert finalised_steps(checkpointing.checkpoint_dir(workdir)) == [last], out[-3000:]
  assert f"SIGTERM: stopped after step {last}; checkpoint {last} written" in out, out[-3000:]


def test_end_of_run_says_whether_it_learned():
  """Issue 31, item 8: the loss over the first and the last tenth of the logged steps, the validation loss, the
  skipped non-finite steps; too few steps are said to be too few."""
  metrics = {s: {"loss": 2.0 - s / 100, "nonfinite": float(s == 7)} for s in range(1, 41)}
  metrics[20]["val/loss"], metrics[40]["val/loss"] = 0.9, 0.7
  lines, numbers = train_lib.learning_summary(metrics)
  assert numbers == {"nonfinite_steps": 1, "loss_first_tenth": pytest.approx(1.975), "loss_last_tenth":
                     pytest.approx(1.615), "val_loss_first": 0.9, "val_loss_last": 0.7}
  assert lines == ["loss: 1.975 over the first 4 logged step(s), 1.615 over the last 4 (lower: it learns)",
                   "validation loss: 0.9 at the first validation, 0.7 at the last", "non-finite steps skipped: 1"]
  lines, _ = train_lib.learning_summary({1: {"loss": 1.6}, 2: {"loss": 2.5}})
  assert "only 2 logged step(s): too few to tell" in lines[0]


def test_end_of_run_prints_the_outputs_and_the_commands_for_its_checkpoint(tmp_path):
  """Issue 31, item 8: where the samples, metrics.jsonl and TensorBoard events are, and sample and eval commands
  that run as printed (the data paths come from the checkpoint; tests/test_readme.py runs these commands)."""
  workdir = str(tmp_path / "run")
  argv = ["train.py", "--config", "configs/edge.py:tiny", "--workdir", workdir, "--config.model.net.num_blocks=2"]
  lines = train_lib.next_steps(argv, edge.get_config("tiny"), workdir)
  assert f"sample videos (every 4 steps): {workdir}/samples" in lines
  assert any(f"{workdir}/metrics.jsonl" in l and f"tensorboard --logdir {workdir}/tensorboard" in l for l in lines)
  sample = next(l for l in lines if l.startswith("next, sample: "))
  assert sample == ("next, sample: python -m agibot_jax.sample --config configs/edge.py:tiny "
                    f"--config.model.net.num_blocks=2 --checkpoint {workdir} --out {workdir}/sample.mp4")
  assert any(l.startswith("next, evaluate: python -m agibot_jax.eval --config configs/edge.py:tiny") and
             "--config.dataloader_val.dataset_dir=HELD_OUT" in l for l in lines)


# ----------------------------------------------------------------------------------------------
# Fault injection (issue 33)

FAULT_STEPS = 10
FAULT_TRIALS = 3


def fault_settings(dataset_dir: str) -> dict:
  return {**SMALL, "dataloader_train.dataset.dataset_dir": dataset_dir, "trainer.max_iter": FAULT_STEPS,
          "checkpoint.save_iter": 2, "dataloader_train.num_workers": 1}


def start_cli(workdir: str, settings: dict, log: str) -> subprocess.Popen:
  """A CLI training run writing its console to `log` (a pipe left unread would block it)."""
  cmd = [sys.executable, "-m", "agibot_jax.train", "--config", "configs/edge.py:tiny", "--workdir", workdir,
         *cli_flags(settings)]
  with open(log, "a") as f:
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, stdout=f, stderr=subprocess.STDOUT)


def logged_steps(workdir: str) -> list[int]:
  """The steps of metrics.jsonl's complete lines, in file order."""
  path = os.path.join(workdir, loop.METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line)["step"] for line in f if line.endswith("\n")]


def logged_since(workdir: str, started_ns: int) -> int:
  """The last step metrics.jsonl holds if a run started at `started_ns` wrote it, else 0: until a resumed run has
  dropped them, the rows an abandoned run logged after its checkpoint are still there."""
  path = os.path.join(workdir, loop.METRICS_FILE)
  try:
    written_ns = os.stat(path).st_mtime_ns
  except FileNotFoundError:
    return 0
  return max(logged_steps(workdir), default=0) if written_ns > started_ns else 0


def children(pid: int) -> list[int]:
  out = []
  for entry in os.listdir("/proc"):
    try:
      with open(f"/proc/{entry}/stat") as f:
        if entry.isdigit() and int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
          out.append(int(entry))
    except (OSError, IndexError, ValueError):
      pass
  return out


def running(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


def wait_for(condition, proc: subprocess.Popen, log: str, what: str, seconds: float = 600) -> bool:
  """Polls `condition` every 2 ms; False if the run ended first."""
  deadline = time.time() + seconds
  while not condition():
    if proc.poll() is not None:
      return False
    assert time.time() < deadline, f"no {what} within {seconds} s: {open(log).read()[-3000:]}"
    time.sleep(0.002)
  return True


@pytest.fixture(scope="module")
def uninterrupted(dataset_dir, tmp_path_factory):
  """The final checkpoint (state, data iterator position) of a run of FAULT_STEPS steps never interrupted."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted") / "run")
  log = workdir + ".log"
  proc = start_cli(workdir, fault_settings(dataset_dir), log)
  assert proc.wait(timeout=900) == 0, open(log).read()[-3000:]
  return read_checkpoint(os.path.join(checkpointing.checkpoint_dir(workdir), str(FAULT_STEPS)))[:2]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_interrupted_at_random_moments_ends_bit_identical(dataset_dir, tmp_path, uninterrupted, signum):
  """Issue 33: FAULT_TRIALS interruptions (the first while a checkpoint save is in flight, each other one a random
  0-0.5 s after a random step at least 3 past its checkpoint), each followed by the same command, which
  resumes; the run of FAULT_STEPS steps then finishes with a train state and data position bit-identical to the
  uninterrupted run's."""
  rng = random.Random(int(signum))
  workdir = str(tmp_path / "run")
  ckpts, log = checkpointing.checkpoint_dir(workdir), str(tmp_path / "run.log")
  settings = fault_settings(dataset_dir)
  trials = []
  for trial in range(FAULT_TRIALS):
    resumed_from = max(finalised_steps(ckpts), default=0)
    started_ns = time.time_ns()
    proc = start_cli(workdir, settings, log)
    saving = lambda: glob.glob(os.path.join(ckpts, "*.orbax-checkpoint-tmp*"))
    if trial == 0:
      if not wait_for(saving, proc, log, "checkpoint save"):
        break
      moment = f"during a save (steps logged: {logged_steps(workdir)})"
    else:
      target = rng.randint(min(resumed_from + 3, FAULT_STEPS - 2), FAULT_STEPS - 2)  # past a save of its own
      if not wait_for(lambda: logged_since(workdir, started_ns) >= target, proc, log, f"step {target}"):
        break
      delay = rng.uniform(0, 0.5)
      time.sleep(delay)
      moment = f"{delay:.2f} s after step {target}"
    workers = children(proc.pid)
    proc.send_signal(signum)
    code = proc.wait(timeout=600)
    if signum == signal.SIGKILL:
      deadline = time.time() + 15
      while any(map(running, workers)) and time.time() < deadline:
        time.sleep(0.1)
      assert not any(map(running, workers)), f"trial {trial}: helper processes {workers} outlived the killed run"
    trials.append(f"{signal.Signals(signum).name} {moment}: exit {code}, resumed from step {resumed_from}, "
                  f"checkpoints then {finalised_steps(ckpts)}")
    if code == 0:  # the run finished before the signal took effect
      break
  print("\n".join(["fault injection:", *trials]))
  assert len(trials) == FAULT_TRIALS and "during a save" in trials[0], trials
  assert finalised_steps(ckpts), f"no interrupted run left a checkpoint to resume from: {trials}"
  proc = start_cli(workdir, settings, log)
  assert proc.wait(timeout=900) == 0, open(log).read()[-3000:]
  state, data = read_checkpoint(os.path.join(ckpts, str(FAULT_STEPS)))[:2]
  assert_trees_equal(state, uninterrupted[0], "final train state after the interruptions vs uninterrupted")
  assert data == uninterrupted[1], "data iterator position"
  assert logged_steps(workdir) == list(range(1, FAULT_STEPS + 1)), "one metrics.jsonl row per step"


@pytest.mark.slow  # a CLI run and two converter runs; the default run checks the LoRA step (test_step.py) and the merge
# on export and for sampling (tests/convert/test_dit.py)
def test_lora_cli_run_trains_and_its_export_round_trips(dataset_dir, tmp_path):
  """Issue 30: `--config.model.lora.rank=4` trains 2 steps (checkpoints hold the adapters, the control kernels frozen);
  `convert.dit --export` writes merged kernels under the reference's names, which convert back to exactly the weights
  sampling restores from the run (EMA)."""
  from agibot_jax import params_io
  from tests.convert.reference import run_cli as run_module

  workdir, exported, converted = str(tmp_path / "run"), str(tmp_path / "lora.pt"), str(tmp_path / "converted")
  net = {k: v for k, v in SMALL.items() if k.startswith("model.net.")}
  settings = {**SMALL, "dataloader_train.dataset.dataset_dir": dataset_dir, "trainer.max_iter": 2, "model.lora.rank": 4}
  proc = run_cli(workdir, settings)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-3000:]
  assert sorted(loop.read_metrics(workdir)) == [1, 2]
  state, _, saved = read_checkpoint(os.path.join(checkpointing.checkpoint_dir(workdir), "2"))
  assert saved["model"]["lora"]["rank"] == 4
  assert "kernel" in state["frozen"]["control_blocks"]["mlp_layer1"]
  assert np.abs(state["ema"]["control_blocks"]["mlp_layer1"]["lora_b"]).max() > 0, "B trained"

  for args in (("--export", workdir, "--dst", exported),
               ("--src", exported, "--dst", converted, "--config", "configs/edge.py:tiny", *cli_flags(net))):
    done = run_module("convert.dit", *args)
    assert done.returncode == 0, done.stderr[-3000:]
  cfg = dit_config.DiTConfig.from_config(small_config(dataset_dir).model.net)
  shardings = sharding.param_shardings(dit.abstract_params(cfg, boxed=True), sharding.make_mesh(1, 1, 1))
  _, sampled = checkpointing.restore_weights(workdir, shardings)
  assert_trees_equal(params_io.to_numpy_tree(params_io.restore_params(converted)), sampled, "exported and converted")
  merged = np.asarray(sampled["control_blocks"]["mlp_layer1"]["kernel"])
  assert not np.array_equal(merged, state["frozen"]["control_blocks"]["mlp_layer1"]["kernel"])
