"""Several processes for real: `jax.distributed` on CPU (JAX's default gloo collectives), 2 processes x 2 CPU devices
on a data=2 x context=2 mesh that spans both, against 1 process with 4 CPU devices on the same mesh.

Default run (~30 s):
  test_two_processes_place_their_rows      each process's rows of a global batch (latents from the host, text
                                           embeddings made on its own devices) land in the global arrays in row
                                           order: the 2-process model batch equals the 1-process one.
  test_a_failing_process_stops_the_other   an exception in one process ends both within the heartbeat timeout, the
                                           other with JAX's message naming the failed process.
Slow (`-m slow`; each command starts 1 or 2 JAX processes, ~1-3 min apiece on a 2-core machine):
  test_two_processes_train_like_one        the 2-process losses equal the 1-process ones; the processes load disjoint
                                           rows of every global batch that together are the 1-process batch; only
                                           process 0 writes TensorBoard, metrics.jsonl, sample videos and the
                                           checkpoint's JSON items (config copy, data iterator state).
  test_checkpoint_resumes_in_one_and_two_processes
                                           the step-2 checkpoint written by both processes restores in a 1-process
                                           and a 2-process run, and both continue with the uninterrupted losses.
  test_lost_process_stops_the_other        SIGKILL of process 1: process 0 exits within the heartbeat timeout with a
                                           message naming process 1; a relaunch resumes from the last checkpoint.
  test_sigterm_to_one_process_stops_both_at_one_step
                                           SIGTERM to process 1 only: both stop after the same step, with its
                                           checkpoint, exit status 143.
  test_sample_in_two_processes             `agibot_jax.sample` writes (process 0 only) the video of a 1-process run.
  test_cache_latents_in_two_processes      `agibot_jax.cache_latents` splits the samples; the cache equals a
                                           1-process one.

Every process runs with tests/write_audit on PYTHONPATH, which records the paths it writes from Python.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == "__main__":  # a worker process of a default-run test (_probe, _fail)
  sys.path.insert(0, REPO)

# pylint: disable=wrong-import-position
from agibot_jax import assemble, cache_latents, preflight, rig, sharding, video_io
from agibot_jax.data import latent_cache, synthetic
from agibot_jax.text import provider as text_provider_lib
from agibot_jax.training import checkpointing, loop
from configs import edge
from tests.conftest import xla_flags_with_devices
from tests.training.test_train import SMALL, cli_flags, finalised_steps, small_config

AUDIT_DIR = os.path.join(REPO, "tests", "write_audit")
DEVICES = 4  # per run: 1 process x 4 CPU devices, or 2 x 2
MESH = {"mesh.data": 2, "mesh.fsdp": 1, "mesh.context": 2}
HEARTBEAT_TIMEOUT_S = 10
LAUNCH_TIMEOUT_S = 900
POSITION = re.compile(r"stream position (\d+): sample (\S+) ")
# JAX's coordination service names the process (task) that stopped sending heartbeats.
LOST_PROCESS_1 = re.compile(r"stopped sending heartbeats\):\s*1\b|Task 1 heartbeat timeout")


# ----------------------------------------------------------------------------------------------
# Launching processes


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@dataclasses.dataclass
class Launch:
  """The processes of one command (1, or several joined by jax.distributed), with their logs and write audits."""
  procs: list[subprocess.Popen]
  logs: list[pathlib.Path]
  audits: list[pathlib.Path]

  def wait(self, timeout: float = LAUNCH_TIMEOUT_S) -> list[str]:
    """Each process's log once all exited with status 0; kills them all on a timeout."""
    deadline = time.time() + timeout
    try:
      for proc in self.procs:
        proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      self.kill()
      pytest.fail(f"no exit within {timeout} s:\n" + self.tails())
    assert all(p.returncode == 0 for p in self.procs), f"exit {[p.returncode for p in self.procs]}\n" + self.tails()
    return [self.log(i) for i in range(len(self.procs))]

  def kill(self) -> None:
    for proc in self.procs:
      if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

  def log(self, i: int) -> str:
    return self.logs[i].read_text(errors="replace")

  def tails(self, chars: int = 3000) -> str:
    return "\n".join(f"--- process {i}:\n{self.log(i)[-chars:]}" for i in range(len(self.procs)))

  def writes(self, i: int, pattern: str) -> list[str]:
    """The writes of process i (tests/write_audit: `<event> <path>` lines) whose path matches regex `pattern`."""
    lines = self.audits[i].read_text().splitlines() if self.audits[i].exists() else []
    return [line for line in lines if re.search(pattern, line)]


def launch(out_dir: pathlib.Path, name: str, argv: list[str], num_processes: int) -> Launch:
  """Starts `python argv...` in `num_processes` processes (DEVICES CPU devices in all), logs under out_dir/name.*."""
  out_dir.mkdir(parents=True, exist_ok=True)
  port = _free_port()
  launched = Launch([], [], [])
  for i in range(num_processes):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([AUDIT_DIR, REPO]), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": xla_flags_with_devices(DEVICES // num_processes),
           "WRITE_AUDIT_LOG": str(out_dir / f"{name}.p{i}.writes"),
           assemble.HEARTBEAT_TIMEOUT_ENV: str(HEARTBEAT_TIMEOUT_S)}
    if num_processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(num_processes),
                 JAX_PROCESS_ID=str(i))
    log = out_dir / f"{name}.p{i}.log"
    with open(log, "w") as f:
      launched.procs.append(subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, stdout=f,
                                             stderr=subprocess.STDOUT))
    launched.logs.append(log)
    launched.audits.append(out_dir / f"{name}.p{i}.writes")
  return launched


# ----------------------------------------------------------------------------------------------
# Default run: the batch placement


class CaptionText:
  """Text provider stub: each caption's embedding is made on the devices (in `assemble.text_devices`) from its
  characters, so a row's embedding says which caption it came from."""
  num_tokens, dim, projected = 2, 3, False

  def embed_on_device(self, captions):
    codes = np.array([sum(map(ord, c)) % 997 for c in captions], np.float32)
    return jnp.asarray(np.broadcast_to(codes[:, None, None], (len(codes), self.num_tokens, self.dim)))


def probe_rows(rows: slice, cameras: rig.Rig = rig.AGIBOT) -> dict:
  """A loader batch from a latent cache holding rows `rows` of a global batch; row r's values are made from r."""
  r = np.arange(rows.start, rows.stop, dtype=np.float32)
  frames = 2
  return {
      "latent_video": np.broadcast_to(r[:, None, None, None, None], (len(r), len(cameras.names), 2, 2, 16)).copy(),
      "latent_control": np.broadcast_to(-r[:, None, None, None, None], (len(r), len(cameras.names), 2, 2, 16)).copy(),
      "ai_caption": [cameras.captions(f"sample {int(i)}") for i in r],
      "view_indices": np.repeat(np.array(cameras.view_ids), frames)[None].repeat(len(r), 0),
      "padding_mask": np.broadcast_to(r[:, None, None, None], (len(r), 1, 16, 16)).copy(),
  }


def probe_config():
  config = edge.get_config("tiny")
  config.mesh.data, config.mesh.fsdp, config.mesh.context = MESH.values()
  return preflight.resolve(config)


def _probe() -> None:
  """Worker of test_two_processes_place_their_rows: prints this process's rows and the gathered model batch."""
  from jax.experimental import multihost_utils

  assemble.initialize_distributed()
  config = probe_config()
  mesh = assemble.make_mesh(config)
  rows = assemble.process_batch_rows(mesh, 2)
  batch = assemble.model_batch(probe_rows(rows), None, None, CaptionText(), config, mesh, global_batch=2)
  shared = assemble.process_batch_rows(mesh, 1)
  print("RESULT " + json.dumps({
      "process": jax.process_index(), "rows": [rows.start, rows.stop], "rows_of_batch_1": [shared.start, shared.stop],
      "global": {k: [list(v.shape), v.is_fully_addressable, multihost_utils.process_allgather(v, tiled=True).tolist()]
                 for k, v in batch.items()}}))


def test_two_processes_place_their_rows(tmp_path):
  run = launch(tmp_path, "probe", [os.path.abspath(__file__), "probe"], 2)
  results = []
  for log in run.wait(timeout=300):
    lines = [line for line in log.splitlines() if line.startswith("RESULT ")]
    assert lines, log[-3000:]
    results.append(json.loads(lines[-1][len("RESULT "):]))
  assert [r["process"] for r in results] == [0, 1]
  # data=2 splits a batch of 2 between the processes; a batch of 1 stays whole on both (the data axis drops out).
  assert [r["rows"] for r in results] == [[0, 1], [1, 2]]
  assert [r["rows_of_batch_1"] for r in results] == [[0, 1], [0, 1]]

  # The global arrays hold both processes' rows in order: what one process holding both rows builds.
  expected = assemble.model_batch(probe_rows(slice(0, 2)), None, None, CaptionText(), probe_config(),
                                  sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  captions = probe_rows(slice(0, 2))["ai_caption"]
  np.testing.assert_array_equal(np.asarray(expected["crossattn_emb_BMC"]),
                                np.asarray(text_provider_lib.embed_batch(CaptionText(), captions)))
  for r in results:
    assert sorted(r["global"]) == sorted(expected)
    for key, (shape, fully_addressable, value) in r["global"].items():
      assert shape == list(expected[key].shape) and not fully_addressable, key
      np.testing.assert_array_equal(np.asarray(value, expected[key].dtype), np.asarray(expected[key]), err_msg=key)


def _fail() -> None:
  """Worker of test_a_failing_process_stops_the_other: after a first collective (which connects the processes),
  process 1 raises while process 0 waits for it in the next."""
  from jax.experimental import multihost_utils

  assemble.initialize_distributed()
  multihost_utils.sync_global_devices("both processes")
  if jax.process_index() == 1:
    raise RuntimeError("process 1 fails on purpose")
  multihost_utils.sync_global_devices("process 1 never comes")


def test_a_failing_process_stops_the_other(tmp_path):
  """An exception in one process ends it at once and the other within the heartbeat timeout, naming it: neither
  waits at JAX's shutdown barrier (5 min)."""
  run = launch(tmp_path, "fail", [os.path.abspath(__file__), "fail"], 2)
  try:
    for proc in run.procs:
      proc.wait(timeout=HEARTBEAT_TIMEOUT_S + 60)
  except subprocess.TimeoutExpired:
    pytest.fail(f"still running {HEARTBEAT_TIMEOUT_S + 60} s after process 1 failed:\n{run.tails()}")
  finally:
    run.kill()
  assert [p.returncode != 0 for p in run.procs] == [True, True], run.tails()
  assert "RuntimeError: process 1 fails on purpose" in run.log(1)
  assert LOST_PROCESS_1.search(run.log(0)), run.tails()


# ----------------------------------------------------------------------------------------------
# Slow: the commands in two processes


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> str:
  """4 samples, so that a global batch of 2 takes one sample per process and epochs run across batches."""
  out = str(tmp_path_factory.mktemp("mp_data"))
  ds = small_config("").dataloader_train.dataset
  h, w = ds.resolution_hw
  synthetic.write_example(out, num_samples=4, frames=ds.num_video_frames + 3, height=h + 16, width=w + 32, seed=0)
  return out


def train_argv(workdir, dataset_dir: str, **overrides) -> list[str]:
  settings = {**SMALL, **MESH, "dataloader_train.batch_size": 2, "dataloader_train.dataset.dataset_dir": dataset_dir,
              "trainer.max_iter": 4, "checkpoint.save_iter": 2, **overrides}
  return ["-m", "agibot_jax.train", "--config", "configs/edge.py:tiny", "--workdir", str(workdir),
          "--logger_levels=agibot_jax.data.pipeline:DEBUG", *cli_flags(settings)]


def losses(workdir) -> dict[int, tuple[float, float]]:
  return {step: (m["loss"], m["grad_norm"]) for step, m in loop.read_metrics(str(workdir)).items()}


def loaded_positions(log: str) -> dict[int, str]:
  """Global stream position -> sample id, of the samples a process's loader read (pipeline's debug lines)."""
  return {int(p): sample for p, sample in POSITION.findall(log)}


# Sample videos in the 2-process run: one firing (step 4), one guidance, one conditional-frame count, one UniPC step.
SAMPLES = {"trainer.callbacks.every_n_sample.every_n": 4, "trainer.callbacks.every_n_sample.guidance": (3.0,),
           "trainer.callbacks.every_n_sample.num_cond_frames": (1,),
           "trainer.callbacks.every_n_sample.num_sampling_step": 1}


@pytest.fixture(scope="module")
def two_process_run(dataset_dir, tmp_path_factory):
  """(workdir, launch) of 4 steps in 2 processes, checkpoints at steps 2 and 4, sample videos at step 4."""
  out = tmp_path_factory.mktemp("mp_train")
  run = launch(out, "train2", train_argv(out / "run", dataset_dir, **SAMPLES), 2)
  run.wait()
  return out / "run", run


@pytest.mark.slow
def test_two_processes_train_like_one(two_process_run, dataset_dir, tmp_path):
  workdir, run2 = two_process_run
  run1 = launch(tmp_path, "train1", train_argv(tmp_path / "run", dataset_dir), 1)
  run1.wait()
  one, two = losses(tmp_path / "run"), losses(workdir)
  assert sorted(one) == sorted(two) == [1, 2, 3, 4], "process 0 logs each step once"
  np.testing.assert_allclose([two[s] for s in range(1, 5)], [one[s] for s in range(1, 5)], rtol=1e-5)

  # Rows: process p loads row p of global batch k (stream position 2k + p), the same sample one process loads there.
  reference = loaded_positions(run1.log(0))
  per_process = [loaded_positions(run2.log(i)) for i in range(2)]
  used = range(4 * 2)  # 4 steps x global batch 2 (the loaders also prefetch a little beyond)
  assert set(used) <= set(reference)
  for p, loaded in enumerate(per_process):
    assert all(pos % 2 == p for pos in loaded), (p, sorted(loaded))
    assert {pos: s for pos, s in loaded.items() if pos in used} == {pos: reference[pos] for pos in used if pos % 2 == p}
  assert set(per_process[0]) & set(per_process[1]) == set()

  # Only process 0 writes the run's files; the audit sees them in process 0 (so it would see them in process 1).
  # Orbax writes the checkpoint's JSON items outside Python; process 0 moves them into place.
  run_dir = re.escape(str(workdir))
  owned = {"TensorBoard": f"{run_dir}/tensorboard/", "metrics": f"{run_dir}/metrics.jsonl",
           "sample videos": f"{run_dir}/samples/.*mp4", "config copy": rf"{run_dir}/checkpoints/\d+[^/]*/config",
           "data iterator state": rf"{run_dir}/checkpoints/\d+[^/]*/data"}
  for what, pattern in owned.items():
    assert run2.writes(0, pattern), f"process 0 wrote no {what} ({pattern})"
    assert not run2.writes(1, pattern), f"process 1 wrote {what}: {run2.writes(1, pattern)[:5]}"
  assert sorted(os.listdir(workdir / "samples")) == sorted(
      f"{tag}_ReplicateID0000_Sample_Iter000000004_3views{ext}" for tag in ("reg", "ema")
      for ext in (".mp4", "_9frames.jpg"))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]


@pytest.mark.slow
def test_checkpoint_resumes_in_one_and_two_processes(two_process_run, dataset_dir, tmp_path):
  workdir, _ = two_process_run
  straight = losses(workdir)
  for num_processes in (2, 1):
    resumed = tmp_path / f"resumed{num_processes}"
    shutil.copytree(workdir / "checkpoints" / "2", pathlib.Path(checkpointing.checkpoint_dir(str(resumed))) / "2")
    run = launch(tmp_path, f"resume{num_processes}", train_argv(resumed, dataset_dir), num_processes)
    assert "at step 2" in run.wait()[0]
    got = losses(resumed)
    assert sorted(got) == [3, 4], num_processes
    np.testing.assert_allclose([got[3], got[4]], [straight[3], straight[4]], rtol=1e-5, err_msg=str(num_processes))


@pytest.mark.slow
def test_lost_process_stops_the_other(dataset_dir, tmp_path):
  workdir = tmp_path / "run"
  ckpt_dir = str(workdir / "checkpoints")
  run = launch(tmp_path, "doomed", train_argv(workdir, dataset_dir, **{"trainer.max_iter": 1000,
                                                                      "checkpoint.save_iter": 1}), 2)
  deadline = time.time() + LAUNCH_TIMEOUT_S
  try:
    while len(finalised_steps(ckpt_dir)) < 2:
      assert all(p.poll() is None for p in run.procs), run.tails()
      assert time.time() < deadline, "no two checkpoints in time"
      time.sleep(0.2)
    run.procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    try:
      run.procs[0].wait(timeout=HEARTBEAT_TIMEOUT_S + 60)
    except subprocess.TimeoutExpired:
      pytest.fail(f"process 0 still runs {HEARTBEAT_TIMEOUT_S + 60} s after process 1 was killed:\n{run.tails()}")
    waited = time.time() - killed
  finally:
    run.kill()
  assert run.procs[0].returncode != 0
  assert LOST_PROCESS_1.search(run.log(0)), run.tails()
  print(f"process 0 exited {waited:.1f} s after process 1 was killed")

  last = finalised_steps(ckpt_dir)[-1]
  relaunch = launch(tmp_path, "relaunch", train_argv(workdir, dataset_dir, **{"trainer.max_iter": last + 1,
                                                                             "checkpoint.save_iter": 1}), 2)
  assert f"at step {last}" in relaunch.wait()[0]
  assert max(losses(workdir)) == last + 1 and finalised_steps(ckpt_dir)[-1] == last + 1


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step(dataset_dir, tmp_path):
  """SIGTERM to process 1 only: the processes agree, finish the same step, write its checkpoint and exit with 143."""
  workdir = tmp_path / "run"
  run = launch(tmp_path, "term", train_argv(workdir, dataset_dir, **{"trainer.max_iter": 1000,
                                                                    "checkpoint.save_iter": 1000}), 2)
  deadline = time.time() + LAUNCH_TIMEOUT_S
  try:
    while not (workdir / loop.METRICS_FILE).exists() or not (workdir / loop.METRICS_FILE).read_text():
      assert all(p.poll() is None for p in run.procs), run.tails()
      assert time.time() < deadline, "no step in time"
      time.sleep(0.2)
    run.procs[1].send_signal(signal.SIGTERM)
    for proc in run.procs:
      proc.wait(timeout=300)
  finally:
    run.kill()
  assert [p.returncode for p in run.procs] == [128 + signal.SIGTERM] * 2, run.tails()
  steps = finalised_steps(str(workdir / "checkpoints"))
  assert len(steps) == 1, steps
  for i in range(2):
    assert f"SIGTERM: stopped after step {steps[0]}; checkpoint {steps[0]} written" in run.log(i), run.tails()


@pytest.mark.slow
def test_sample_in_two_processes(two_process_run, dataset_dir, tmp_path):
  workdir, _ = two_process_run
  keys = ("model.net.num_blocks", "model.net.vace_block_every_n", "model.net.text_tokens_per_view",
          "model.text_encoder.num_tokens", "dataloader_train.dataset.resolution_hw")
  settings = {**{k: SMALL[k] for k in keys}, **MESH, "dataloader_train.dataset.dataset_dir": dataset_dir}
  videos = []
  for num_processes in (2, 1):
    out = tmp_path / f"sample{num_processes}" / "out.mp4"
    run = launch(tmp_path, f"sample{num_processes}", [
        "-m", "agibot_jax.sample", "--config", "configs/edge.py:tiny", "--checkpoint", str(workdir), "--out", str(out),
        "--num_steps", "2", *cli_flags(settings)], num_processes)
    summary = [line for line in run.wait()[0].splitlines() if line.startswith('{"guidance"')]
    assert summary and json.loads(summary[-1])["mp4"] == str(out), run.tails()
    if num_processes == 2:
      written = re.escape(str(out.parent))
      assert run.writes(0, written) and not run.writes(1, written), run.writes(1, written)
    videos.append(video_io.read_frames(str(out), 0, 9))
  np.testing.assert_array_equal(videos[0], videos[1])


@pytest.mark.slow
def test_cache_latents_in_two_processes(dataset_dir, tmp_path):
  cache_dir = tmp_path / "cache"
  settings = {"dataloader_train.dataset.resolution_hw": SMALL["dataloader_train.dataset.resolution_hw"],
              "dataloader_train.dataset.dataset_dir": dataset_dir,
              "dataloader_train.dataset.latent_cache_dir": str(cache_dir)}
  run = launch(tmp_path, "cache2", ["-m", "agibot_jax.cache_latents", "--config", "configs/edge.py:tiny",
                                    "--workdir", str(tmp_path / "run"), *cli_flags(settings)], 2)
  logs = run.wait()
  for p in range(2):
    assert f"2 encoded by process {p} of 2" in logs[p], logs[p][-2000:]
    written = {os.path.basename(line.split()[-1]) for line in run.writes(p, re.escape(str(cache_dir)))}
    assert {n for n in written if n.endswith(".npz")} == {f"synthetic_{i:03d}.npz" for i in (p, p + 2)}, p

  config = preflight.resolve(small_config(dataset_dir))
  reference = tmp_path / "reference"
  assert cache_latents.write_cache(config, str(reference), *assemble.build_vae(config)) == (4, 4)
  cached, expected = latent_cache.LatentCache(str(cache_dir)), latent_cache.LatentCache(str(reference))
  assert cached.meta == expected.meta
  for i in range(4):
    for a, b in zip(cached.read(f"synthetic_{i:03d}"), expected.read(f"synthetic_{i:03d}")):
      np.testing.assert_array_equal(a, b)


if __name__ == "__main__":
  {"probe": _probe, "fail": _fail}[sys.argv[1]]()
