"""Tests for agibot_jax/sampling/callback.py: when it fires, what it writes, the rows it draws."""

import cv2
import jax
import numpy as np
import pytest

from agibot_jax.sampling import callback, generate
from agibot_jax.training import ema as ema_lib
from agibot_jax.training import optimizer as optim
from agibot_jax.training.state import new_state
from tests.sampling.tiny_setup import LATENT_HW, NUM_VIEWS, make_model_batch

STEPS = 2


@pytest.fixture(scope="module")
def setup(tiny_models):
  config, model, params, vae_model, vae_params = tiny_models
  config = config.copy_and_resolve_references()
  config.trainer.callbacks.every_n_sample.every_n = 2
  config.trainer.callbacks.every_n_sample.num_sampling_step = STEPS
  state = new_state(params, config, optim.make_optimizer(config), ema_lib.PowerEMA.from_config(config), seed=0)
  # An EMA that differs from the trained weights, so the two sets of samples can be told apart.
  state = state.replace(ema=jax.tree.map(lambda x: x + 0.05, state.ema))
  rng = np.random.RandomState(0)
  batch = make_model_batch(model.cfg, rng)
  frames = 4 * (model.cfg.state_t - 1) + 1
  h, w = 8 * LATENT_HW[0], 8 * LATENT_HW[1]
  loader_batch = {
      "video": rng.randint(0, 256, (1, 3, NUM_VIEWS * frames, h, w)).astype(np.uint8),
      "control_input_edge": rng.randint(0, 256, (1, 3, NUM_VIEWS * frames, h, w)).astype(np.uint8),
  }
  return config, model, vae_model, vae_params, state, batch, loader_batch, (frames, h, w)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="module")
def cb(setup, workdir):
  """One callback for the module, so its compiled sampler is reused."""
  config, model, vae_model, vae_params = setup[:4]
  return callback.EveryNSample(config, str(workdir), dit_model=model, vae_model=vae_model, vae_params=vae_params)


def test_fires_every_n_and_writes_reg_and_ema(setup, cb, workdir):
  _, _, _, _, state, batch, loader_batch, (frames, h, w) = setup
  cb(1, state, batch, loader_batch)
  assert not (workdir / "samples").exists()
  cb(2, state, batch, loader_batch)
  for tag in ("reg", "ema"):
    base = workdir / "samples" / f"{tag}_ReplicateID0000_Sample_Iter000000002_3views"
    cap = cv2.VideoCapture(str(base) + ".mp4")
    assert cap.isOpened()
    # 6 samples + input video + control = 8 rows; 3 views side by side; a label column on the left and a header row
    # naming the views.
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == frames
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    ok, frame = cap.read()
    cap.release()
    left, top = width - NUM_VIEWS * w, height - 8 * h
    assert 40 < left < 200 and 8 < top < 30, (width, height)
    assert (frame[top:, :left] > 200).any() and (frame[:top, left:] > 200).any()  # text in both label bands
    strip = cv2.imread(f"{base}_{frames}frames.jpg")  # every frame of the short clip, at full size, labelled
    assert strip is not None and strip.shape[0] > 8 * h and strip.shape[1] > frames * NUM_VIEWS * w

  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  events = EventAccumulator(str(workdir / "tensorboard"))
  events.Reload()
  assert set(events.Tags()["images"]) == {"samples/reg", "samples/ema"}
  image = events.Images("samples/ema")[0]
  assert image.step == 2 and image.width <= 2048 and image.height > 8 * h  # 4 labelled frames per row


def test_rows_are_six_samples_then_video_then_control(setup, cb):
  _, _, _, vae_params, state, batch, loader_batch, (frames, h, w) = setup
  rows = cb.sample_rows(state.params(), batch, loader_batch)
  assert len(rows) == 8
  assert all(r.shape == (1, NUM_VIEWS, frames, h, w, 3) for r in rows)
  # num_cond_frames outer, guidance inner: row 4 is n = 1, g = 3.
  want = cb.generator.generate(state.params(), vae_params, batch, guidance=3.0, num_cond_frames=1)
  np.testing.assert_allclose(rows[4], want, rtol=1e-5, atol=1e-5)
  assert not np.allclose(rows[0], rows[1]) and not np.allclose(rows[0], rows[3])
  np.testing.assert_array_equal(rows[6], generate.pixels_to_rows(loader_batch["video"], NUM_VIEWS))
  np.testing.assert_array_equal(rows[7], generate.pixels_to_rows(loader_batch["control_input_edge"], NUM_VIEWS))
  ema_rows = cb.sample_rows(state.ema_params(), batch, loader_batch)
  assert not np.allclose(rows[0], ema_rows[0])


@pytest.mark.slow  # ~16 s; README command 1 (the demo) scores its samples in every CI run
def test_scores_of_every_sample_row_go_to_tensorboard(setup, cb, tmp_path, monkeypatch):
  """score_fn sees each sample row with the input video and control rows and its num_cond_frames."""
  _, _, _, vae_params, state, batch, loader_batch, _ = setup
  calls = []

  def score_fn(generated, ground_truth, control, num_cond_frames):
    calls.append((generated, ground_truth, control, num_cond_frames))
    return {"edge_f1": float(len(calls)), "psnr": 20.0 + num_cond_frames}

  monkeypatch.setattr(cb, "score_fn", score_fn)
  monkeypatch.setattr(cb, "tb_dir", str(tmp_path / "tensorboard"))
  monkeypatch.setattr(cb, "out_dir", str(tmp_path / "samples"))
  cb(4, state, batch, loader_batch)
  assert len(calls) == 12  # 6 samples x (reg, ema)
  assert [n for *_, n in calls] == [0, 0, 0, 1, 1, 1] * 2
  want = cb.generator.generate(state.params(), vae_params, batch, guidance=3.0, num_cond_frames=1)
  np.testing.assert_allclose(calls[4][0], want, rtol=1e-5, atol=1e-5)  # reg, row 4: n = 1, g = 3
  for _, ground_truth, control, _ in calls:
    np.testing.assert_array_equal(ground_truth, generate.pixels_to_rows(loader_batch["video"], NUM_VIEWS))
    np.testing.assert_array_equal(control, generate.pixels_to_rows(loader_batch["control_input_edge"], NUM_VIEWS))

  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  events = EventAccumulator(str(tmp_path / "tensorboard"))
  events.Reload()
  tags = set(events.Tags()["scalars"])
  assert len(tags) == 2 * 6 * 2
  assert events.Scalars("sample_metrics/reg/n1_w1_g3/edge_f1")[0].value == 5.0  # row 4: n = 1, g = 3
  assert events.Scalars("sample_metrics/ema/n0_w1_g0/psnr")[0].value == 20.0
  assert events.Scalars("sample_metrics/ema/n0_w1_g0/psnr")[0].step == 4


@pytest.mark.slow  # ~14 s; the rows themselves: test_rows_are_six_samples_then_video_then_control
def test_latent_batches_show_decoded_latents(setup, cb):
  _, _, _, vae_params, state, batch, _, _ = setup
  rows = cb.sample_rows(state.params(), batch, {})
  np.testing.assert_allclose(rows[6], cb.generator.decode(vae_params, batch["x0_BTHWC"]), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(rows[7], cb.generator.decode(vae_params, batch["control_BTHWC"]), rtol=1e-6,
                             atol=1e-6)


def test_disabled_when_every_n_is_zero(setup, tmp_path):
  config = setup[0].copy_and_resolve_references()
  config.trainer.callbacks.every_n_sample.every_n = 0
  cb = callback.EveryNSample(config, str(tmp_path), dit_model=setup[1], vae_model=setup[2], vae_params=setup[3])
  cb(0, setup[4], setup[5], setup[6])
  assert not (tmp_path / "samples").exists()
