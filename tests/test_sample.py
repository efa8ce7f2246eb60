"""Tests for agibot_jax/sample.py, the generation CLI, end to end on CPU with the tiny config."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from agibot_jax import params_io
from agibot_jax import sample
from agibot_jax import video_io as video
from agibot_jax.data import synthetic
from configs import edge
from tests.sampling import tiny_setup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HW = (32, 32)  # pixels; latent 4x4
FRAMES = 9  # num_video_frames of the tiny config (4·(state_t − 1) + 1)


def _config():
  config = edge.get_config("tiny")
  config.dataloader_train.dataset.resolution_hw = HW
  return config


def _cli(*args):
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-m", "agibot_jax.sample", "--config", "configs/edge.py:tiny", *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def _assert_video(path, frames, width, height):
  """`frames` decodable frames of a grid `width` x `height` plus the labels: a column on the left naming the rows and
  a header naming the views."""
  cap = cv2.VideoCapture(str(path))
  assert cap.isOpened(), path
  count, got_w, got_h = (int(cap.get(p)) for p in (cv2.CAP_PROP_FRAME_COUNT, cv2.CAP_PROP_FRAME_WIDTH,
                                                   cv2.CAP_PROP_FRAME_HEIGHT))
  decoded = 0
  while cap.read()[0]:
    decoded += 1
  cap.release()
  assert count == decoded == frames
  assert width + 40 < got_w < width + 250 and height + 8 < got_h < height + 30, (got_w, got_h, width, height)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """A converted DiT dir and a converted VAE dir holding tiny random weights."""
  root = tmp_path_factory.mktemp("converted")
  _, params, _, vae_params = tiny_setup.tiny_models(_config())
  params_io.save_params(str(root / "dit"), params, {"model": "dit"})
  params_io.save_params(str(root / "vae"), vae_params, {"model": params_io.MODEL_VAE})
  return root


@pytest.fixture(scope="module")
def control_videos(tmp_path_factory):
  root = tmp_path_factory.mktemp("controls")
  rng = np.random.RandomState(0)
  paths = []
  for view in ("head", "left", "right"):
    frames = np.zeros((FRAMES + 2, 40, 48, 3), np.uint8)
    frames[:, 10:30, 12:36] = rng.randint(0, 256, 3, dtype=np.uint8)
    paths.append(str(root / f"{view}.mp4"))
    video.write_video(paths[-1], frames, fps=10.0)
  return paths


@pytest.mark.slow  # ~35 s; the default run keeps the dataset sample through the CLI
def test_cli_control_videos_without_dataset(converted, control_videos, tmp_path):
  out = tmp_path / "gen" / "out.mp4"
  proc = _cli("--checkpoint", str(converted / "dit"), f"--config.model.tokenizer.path={converted / 'vae'}",
              f"--config.dataloader_train.dataset.resolution_hw=({HW[0]},{HW[1]})",
              "--control_videos", ",".join(control_videos), "--prompt", "robot picks up red cup",
              "--num_steps", "2", "--guidance", "3", "--out", str(out))
  assert "denoise g=3 n=0" in proc.stderr and "2/2" in proc.stderr  # the progress bar over the steps
  # Rows: the sample and the control pixels (no input video); 3 views side by side.
  _assert_video(out, FRAMES, 3 * HW[1], 2 * HW[0])
  assert (tmp_path / "gen" / "out_9frames.jpg").is_file()


def test_dataset_sample_with_clean_first_frame(converted, tmp_path, caplog):
  config = _config()
  config.model.tokenizer.path = str(converted / "vae")
  data = tmp_path / "data"
  ids = synthetic.write_example(str(data), num_samples=2, frames=FRAMES + 2, height=40, width=48)
  config.dataloader_train.dataset.dataset_dir = str(data)
  out = tmp_path / "sample.mp4"
  caplog.set_level("INFO", logger="agibot_jax")
  summary = sample.run(config, checkpoint=str(converted / "dit"), out=str(out), sample_id=ids[1], guidance=5.0,
                       num_cond_frames=1, num_steps=2)
  assert summary["rows"] == 3 and summary["num_cond_frames"] == 1
  assert f"wrote {out} (rows: g=5 n=1 w=1, input, edge control" in caplog.text  # issue 31, item 8
  _assert_video(out, FRAMES, 3 * HW[1], 3 * HW[0])


def test_bad_inputs_are_named(converted, control_videos, tmp_path):
  out = str(tmp_path / "x.mp4")
  with pytest.raises(ValueError, match="--num_cond_frames=1 needs clean frames"):
    sample.run(_config(), checkpoint=str(converted / "dit"), out=out, control_videos=control_videos, prompt="p",
               num_cond_frames=1)
  with pytest.raises(ValueError, match="--control_videos needs --prompt"):
    sample.run(_config(), checkpoint=str(converted / "dit"), out=out, control_videos=control_videos)
  with pytest.raises(ValueError, match="neither a training workdir"):
    sample.run(_config(), checkpoint=str(tmp_path), out=out)
  with pytest.raises(ValueError, match="holds a 'wan2.1_vae' model, not 'dit'"):
    sample.run(_config(), checkpoint=str(converted / "vae"), out=out, control_videos=control_videos, prompt="p")
  config = _config()
  config.model.tokenizer.path = str(converted / "vae")
  with pytest.raises(ValueError, match="one per camera of rig agibot"):
    sample.run(config, checkpoint=str(converted / "dit"), out=out, control_videos=control_videos[:2], prompt="p")


@pytest.mark.slow
def test_train_two_steps_then_sample_from_workdir(tmp_path):
  """The issue's acceptance: the tiny demo trains 2 steps, then the CLI samples from that workdir."""
  from agibot_jax import train

  config = edge.get_config("tiny")
  config.trainer.max_iter = 2
  config.trainer.callbacks.every_n_sample.every_n = 0
  workdir = tmp_path / "run"
  train.train(config, str(workdir))
  h, w = config.dataloader_train.dataset.resolution_hw
  for flag, name, weights in (("--ema", "ema.mp4", "EMA"), ("--no_ema", "reg.mp4", "regular")):
    out = tmp_path / name
    proc = _cli("--checkpoint", str(workdir), flag, "--sample_id", "synthetic_001", "--num_steps", "3",
                "--guidance", "3", "--num_cond_frames", "1", "--out", str(out))
    assert f"restored step 2 from {workdir / 'checkpoints'} ({weights} weights)" in proc.stderr
    # Rows: sample, input video, control; the 3·96-px width is under video_out's 2048 cap.
    _assert_video(out, config.dataloader_train.dataset.num_video_frames, 3 * w, 3 * h)
    assert (tmp_path / name.replace(".mp4", "_9frames.jpg")).is_file()
