"""agibot_jax/eval.py, the evaluation command, end to end on CPU: a reduced tiny config, one held-out sample, two
denoising steps; the report's JSON and its HTML page (tables and the frame grid it links) are opened."""

import html.parser
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from agibot_jax import eval as eval_cmd
from agibot_jax import params_io, sharding
from agibot_jax.data import synthetic
from agibot_jax.evaluation import report as report_lib
from agibot_jax.models import dit_config
from agibot_jax.models import vae as vae_lib
from tests.conftest import REPO
from tests.evaluation import tiny_validation as tiny
from tests.sampling import tiny_setup

# The tiny config made cheaper (tests/evaluation/tiny_validation.py), as command-line overrides.
OVERRIDES = {"model.net.num_blocks": 2, "model.net.vace_block_every_n": 2, "model.net.text_tokens_per_view": 8,
             "model.text_encoder.num_tokens": 8, "dataloader_train.dataset.resolution_hw": "32,48"}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """A converted DiT and VAE of random tiny weights."""
  root = tmp_path_factory.mktemp("converted")
  config = tiny.config()
  cfg = dit_config.DiTConfig.from_config(config.model.net)
  params_io.save_params(str(root / "dit"), tiny.params(cfg, sharding.make_mesh(1, 1, 1)), {"model": "dit"})
  vae_model = vae_lib.WanVAE(vae_lib.VAEConfig.from_tokenizer_config(config.model.tokenizer))
  params_io.save_params(str(root / "vae"), tiny_setup.random_vae_params(vae_model, 1),
                        {"model": params_io.MODEL_VAE})
  return root


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
  out = tmp_path_factory.mktemp("held_out")
  synthetic.write_example(str(out), num_samples=2, frames=11, height=40, width=56)
  return out


class _Page(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.images, self.cells = [], []

  def handle_starttag(self, tag, attrs):
    if tag == "img":
      self.images.append(dict(attrs)["src"])

  def handle_data(self, data):
    self.cells.append(data)


def test_cli_writes_a_report_that_opens(converted, held_out, tmp_path):
  out = tmp_path / "eval" / "report.json"
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
      [sys.executable, "-m", "agibot_jax.eval", "--config", "configs/edge.py:tiny", "--checkpoint",
       str(converted / "dit"), f"--config.model.tokenizer.path={converted / 'vae'}",
       f"--config.dataloader_val.dataset_dir={held_out}", *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
       "--num_samples", "1", "--num_steps", "2", "--guidance", "3", "--out", str(out)],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  report = json.loads(out.read_text())
  printed = json.loads(proc.stdout.strip().splitlines()[-1])
  assert printed["report"] == str(out) and printed["html"] == str(tmp_path / "eval" / "report.html")
  assert printed["val_loss"] == report["validation"]["val/loss"] and printed["edge_f1"] == report["metrics"]["edge_f1"]
  assert "edge_f1/head_color" not in printed
  assert report["weights"] == "converted" and report["control_type"] == "edge"
  assert report["settings"]["num_steps"] == 2 and report["settings"]["validation_samples"] == 2
  assert {"val/loss", "val/loss/hand_left", "val/loss_t/0.75-1.00"} <= set(report["validation"])
  (sample,) = report["samples"]
  assert sample["sample_id"] == "synthetic_000"
  # Edge adherence, and reconstruction since the sample had a clean first frame; per view and their means.
  for metric in ("edge_precision", "edge_recall", "edge_f1", "psnr", "ssim"):
    assert np.isfinite(report["metrics"][metric]) and f"{metric}/hand_right" in sample["scores"]

  page = _Page()
  page.feed((tmp_path / "eval" / "report.html").read_text())
  assert page.images == [sample["image"]] == ["report_synthetic_000.jpg"]
  assert {"val/loss", "edge_f1", "psnr", "synthetic_000"} <= {c.strip() for c in page.cells}
  grid = cv2.imread(str(tmp_path / "eval" / page.images[0]))
  # Per view 3 rows (generated, ground truth, control) of 48x32 frames resized to 256 wide; 4 frames across; a label
  # column naming each row's view and video and a header naming each frame (issue 31, item 9).
  left, top = grid.shape[1] - 4 * 256, grid.shape[0] - 9 * 171
  assert 40 < left < 300 and 8 < top < 30, grid.shape
  assert (grid[top:, :left] > 200).any() and (grid[:top, left:] > 200).any()
  assert "val loss: 100%" in proc.stderr  # the validation stage has its progress bar (issue 31, item 7)


def test_bad_inputs_are_named_before_any_model(converted, held_out, tmp_path):
  config = tiny.config()
  out = str(tmp_path / "r.json")
  with pytest.raises(ValueError, match="must end in .json"):
    eval_cmd.run(config, checkpoint=str(converted / "dit"), out=str(tmp_path / "r.html"))
  with pytest.raises(ValueError, match="no held-out clips: pass --config.dataloader_val.dataset_dir"):
    eval_cmd.run(config, checkpoint=str(converted / "dit"), out=out)
  config.dataloader_val.dataset_dir = str(tmp_path / "nothing")
  with pytest.raises(ValueError, match=r"dataloader_val.dataset_dir=.*nothing: not found"):
    eval_cmd.run(config, checkpoint=str(converted / "dit"), out=out)
  with pytest.raises(ValueError, match="--checkpoint .*absent: no such file or folder"):  # a cli.UserError
    eval_cmd.run(config, checkpoint=str(tmp_path / "absent"), out=out)


def test_frame_grid_layout():
  """Row r of the grid is (view r // 3, video r % 3); column c is frame round(c·(T−1)/3)."""
  v, t, h, w = 3, 9, 8, 12
  videos = [np.zeros((v, t, h, w, 3), np.uint8) for _ in range(3)]
  for k, video in enumerate(videos):
    for view in range(v):
      for frame in range(t):
        video[view, frame] = 10 * view + 3 * k + 100 * (frame % 2) + frame
  grid = report_lib.frame_grid(videos, cell_width=24)
  assert grid.shape == (9 * 16, 4 * 24, 3)
  for r in range(9):
    for c, frame in enumerate((0, 3, 5, 8)):
      assert grid[r * 16 + 8, c * 24 + 12, 0] == 10 * (r // 3) + 3 * (r % 3) + 100 * (frame % 2) + frame
  with pytest.raises(ValueError, match="one \\(V, T, H, W, 3\\) shape"):
    report_lib.frame_grid([videos[0], videos[1][:, :4]])
