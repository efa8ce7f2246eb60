"""agibot_jax/evaluation/validation.py: the held-out split, the fixed draws, a deterministic validation loss (the same
value twice, and on 1 vs 8 CPU devices), its report, the callback's files, and (slow: a training run) the training
job's wiring."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from agibot_jax import rig, sharding
from agibot_jax.data import layout, synthetic
from agibot_jax.evaluation import validation
from agibot_jax.training import ema as ema_lib
from agibot_jax.training import objective
from agibot_jax.training import optimizer as optim
from agibot_jax.training.state import new_state
from tests.conftest import REPO, xla_flags_with_devices
from tests.evaluation import tiny_validation as tiny

MESH_8 = "2,2,2"  # data 2 (the 4 buckets), fsdp 2 (the weights), context 2 (the 18 tokens of a view)


def _samples(*ids):
  return [layout.Sample(i, (), None, "", 9, 10.0, ()) for i in ids]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("val_data")
  synthetic.write_example(str(out), num_samples=2, frames=11, height=40, width=56)
  return str(out)


@pytest.fixture(scope="module")
def eight_devices(dataset_dir):
  """The metrics on 8 CPU devices (a subprocess: the device count is fixed at JAX start), started at once so it
  runs while this process computes the 1-device ones."""
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags_with_devices(8)}
  proc = subprocess.Popen([sys.executable, "-m", "tests.evaluation.tiny_validation", dataset_dir, "--mesh", MESH_8],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  yield proc
  proc.kill()
  proc.wait()


@pytest.fixture(scope="module")
def one_device(dataset_dir, eight_devices):
  c = tiny.config(dataset_dir)
  _, samples = validation.split_samples(c, [], required=True)
  mesh = sharding.make_mesh(1, 1, 1)
  with jax.set_mesh(mesh):  # the module's tests run under it; later test files see no mesh
    validator, cfg = tiny.validator(dataset_dir, mesh, samples)
    yield c, validator, tiny.params(cfg, mesh), mesh


def test_held_out_split_is_seeded_order_free_and_complete():
  samples = _samples(*(f"s{i:02d}" for i in range(10)))
  kept, held = validation.held_out_split(samples, 0.3, seed=0)
  assert len(held) == 3 and len(kept) == 7
  assert sorted(s.sample_id for s in kept + held) == [s.sample_id for s in samples]
  assert [s.sample_id for s in held] == sorted(s.sample_id for s in held)
  again = validation.held_out_split(samples[::-1], 0.3, seed=0)
  assert [s.sample_id for s in again[1]] == [s.sample_id for s in held]
  others = {tuple(s.sample_id for s in validation.held_out_split(samples, 0.3, seed=k)[1]) for k in range(1, 6)}
  assert len(others | {tuple(s.sample_id for s in held)}) > 1  # the seed chooses
  assert len(validation.held_out_split(samples[:3], 0.01, seed=0)[1]) == 1  # at least one
  with pytest.raises(ValueError, match="leaves none to train on"):
    validation.held_out_split(samples[:2], 0.9, seed=0)
  with pytest.raises(ValueError, match="must be in"):
    validation.held_out_split(samples, 1.0, seed=0)


def test_split_samples_sources(dataset_dir):
  c = tiny.config("")
  train = _samples("a", "b", "c", "d")
  assert validation.split_samples(c, train, required=False) == (train, None)
  with pytest.raises(ValueError, match="set dataloader_val.dataset_dir or dataloader_val.held_out_fraction"):
    validation.split_samples(c, train, required=True)
  c.dataloader_val.held_out_fraction = 0.25
  c.dataloader_val.held_out_seed = 3
  kept, held = validation.split_samples(c, train, required=True)
  assert len(kept) == 3 and len(held) == 1 and held[0] not in kept
  c.dataloader_val.weights = ("ema", "best")
  with pytest.raises(ValueError, match="dataloader_val.weights"):
    validation.split_samples(c, train, required=True)
  # A held-out dataset: training keeps every sample; the held-out list is capped at max_samples.
  c = tiny.config("")
  c.dataloader_val.dataset_dir = dataset_dir
  c.dataloader_val.max_samples = 1
  kept, held = validation.split_samples(c, train, required=True)
  assert kept == train and [s.sample_id for s in held] == ["synthetic_000"]
  c.dataloader_val.dataset_dir = dataset_dir + "_missing"
  with pytest.raises(layout.DatasetError, match="dataset directory not found"):
    validation.split_samples(c, train, required=True)


def test_fixed_draws_one_per_bucket_without_dropout():
  cfg = objective.ObjectiveConfig(conditional_frames_probs=(0.5, 0.5, 0.0), text_dropout=0.9,
                                  use_video_condition_dropout=0.9)
  shape = (1, 9, 4, 6, 16)
  draw = jax.jit(lambda i: validation.fixed_draws(jax.random.fold_in(jax.random.key(0), i), cfg, shape, 3, 4))
  draws = [draw(i) for i in range(8)]
  sigma = np.stack([np.asarray(d.timesteps_B) for d in draws]) / 1000
  assert ((np.arange(4) / 4 <= sigma) & (sigma < np.arange(1, 5) / 4)).all()
  assert len(np.unique(sigma)) == sigma.size  # a fresh position inside the bucket for every sample
  for d in draws:
    assert d.eps_BTHWC.shape == (4,) + shape[1:]
    assert np.asarray(d.text_keep_BV).all() and bool(d.use_video_condition)
  n = np.stack([np.asarray(d.num_cond_frames_B) for d in draws])
  assert set(n.ravel()) == {0, 1}
  assert not np.array_equal(draws[2].eps_BTHWC, draws[3].eps_BTHWC)


def test_summarize_hand_computed():
  loss_SKV = np.arange(2 * 2 * 3, dtype=np.float64).reshape(2, 2, 3)  # samples, buckets, views
  got = validation.summarize(loss_SKV, ("head_color", "hand_left", "hand_right"), "val")
  assert got == {"val/loss": 5.5, "val/loss/head_color": 4.5, "val/loss/hand_left": 5.5, "val/loss/hand_right": 6.5,
                 "val/loss_t/0.00-0.50": 4.0, "val/loss_t/0.50-1.00": 7.0}


def test_same_weights_same_value_other_weights_other_value(one_device):
  _, validator, params, mesh = one_device
  first = validator(params)
  assert set(first) == {"val/loss", "val/loss/head_color", "val/loss/hand_left", "val/loss/hand_right",
                        "val/loss_t/0.00-0.25", "val/loss_t/0.25-0.50", "val/loss_t/0.50-0.75", "val/loss_t/0.75-1.00"}
  assert all(np.isfinite(v) and v > 0 for v in first.values())
  assert validator(params) == first  # bit for bit
  other = jax.tree.map(lambda x: x * 1.01 if x.dtype == np.float32 else x, params)
  assert validator(other)["val/loss"] != first["val/loss"]


def test_one_device_equals_eight(one_device, eight_devices):
  _, validator, params, _ = one_device
  want = validator(params)
  out, err = eight_devices.communicate(timeout=600)
  assert eight_devices.returncode == 0, err[-3000:]
  got = json.loads(out.strip().splitlines()[-1])
  assert got["devices"] == 8
  assert got["metrics"].keys() == want.keys()
  for k, v in want.items():  # the same draws; only the order of float32 sums differs between meshes
    assert got["metrics"][k] == pytest.approx(v, rel=1e-5), k


def test_callback_every_n_writes_tensorboard_and_jsonl(one_device, tmp_path):
  c, validator, params, _ = one_device
  c = c.copy_and_resolve_references()
  c.trainer.validation_iter = 2
  state = new_state(params, c, optim.make_optimizer(c), ema_lib.PowerEMA.from_config(c), seed=0)
  state = state.replace(ema=jax.tree.map(lambda x: x * 1.01, state.ema))  # EMA weights that differ
  callback = validation.ValidationCallback(c, str(tmp_path), validator)
  callback(1, state, None, None)
  assert not (tmp_path / "metrics.jsonl").exists()
  callback(2, state, None, None)
  (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
  row = json.loads(line)
  assert row["step"] == 2 and row["val/loss"] != row["val_ema/loss"]

  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  events = EventAccumulator(str(tmp_path / "tensorboard"))
  events.Reload()
  assert {"val/loss", "val_ema/loss", "val/loss_t/0.75-1.00", "val_ema/loss/hand_left"} <= set(events.Tags()["scalars"])
  assert events.Scalars("val/loss")[0].step == 2


@pytest.mark.slow
def test_training_job_holds_out_a_fraction_and_logs_validation(tmp_path, monkeypatch):
  """agibot_jax/train.py: the held-out sample never reaches the training loader; val/ and val_ema/ reach
  metrics.jsonl and TensorBoard every trainer.validation_iter steps."""
  from agibot_jax import train as train_lib
  from tests.training import test_train

  data = str(tmp_path / "data")
  synthetic.write_example(data, num_samples=3, frames=12, height=48, width=80)
  config = test_train.small_config(data, **{"trainer.max_iter": 2, "trainer.validation_iter": 2,
                                            "checkpoint.save_iter": 100, "dataloader_val.held_out_fraction": 0.3})
  loaded = []
  from_config = train_lib.pipeline.from_config
  monkeypatch.setattr(train_lib.pipeline, "from_config",
                      lambda *a, samples, **k: loaded.append(samples) or from_config(*a, samples=samples, **k))
  workdir = str(tmp_path / "run")
  train_lib.train(config, workdir)
  held = validation.held_out_split(layout.load_index(data, rig.AGIBOT, "edge", 9),
                                   0.3, 0)[1]
  (trained,) = loaded
  assert len(held) == 1 and len(trained) == 2 and held[0].sample_id not in {s.sample_id for s in trained}
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  val_rows = [r for r in rows if "val/loss" in r]
  assert [r["step"] for r in val_rows] == [2] and np.isfinite(val_rows[0]["val_ema/loss"])
  assert {"val/loss", "val_ema/loss/head_color", "train/loss"} <= test_train.tensorboard_tags(workdir)
