"""benchmarks/learning_run.py: the lossless stand-in tokenizer, the curve plot, the time budget and (slow) a CPU-sized
run of every stage."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import REPO

sys.path.insert(0, str(Path(REPO) / "benchmarks"))
import learning_run  # noqa: E402


def test_pixel_tokenizer_is_lossless_and_view_major():
  encode, decode = learning_run.pixel_tokenizer(4)
  rng = np.random.RandomState(0)
  video_BCTHW = rng.randint(0, 256, (2, 3, 3 * 5, 8, 12)).astype(np.uint8)  # 3 views x 5 frames
  latent, control = encode(None, video_BCTHW, video_BCTHW[:, ::-1])
  assert latent.shape == (2, 15, 2, 3, 48) and control.shape == latent.shape
  # Latent pixel (y, x) of frame t holds the 4x4 block at (4y, 4x) of pixel frame t.
  block = np.asarray(latent[1, 7, 1, 2]).reshape(4, 4, 3)
  np.testing.assert_allclose(block, video_BCTHW[1, :, 7, 4:8, 8:12].transpose(1, 2, 0) / 127.5 - 1, atol=1e-6)
  rows = decode(latent)
  assert rows.shape == (2, 3, 5, 8, 12, 3)
  back = np.rint((rows + 1) * 127.5).astype(np.uint8)
  np.testing.assert_array_equal(back, video_BCTHW.reshape(2, 3, 3, 5, 8, 12).transpose(0, 2, 3, 4, 5, 1))


def test_draw_curves_puts_each_series_in_its_colour():
  image = learning_run.draw_curves({"a": ([0, 10, 20], [3.0, 2.0, 1.0]), "b": ([0, 20], [2.5, 2.5])})
  assert image.shape == (480, 720, 3) and image.dtype == np.uint8
  blue = (image == (31, 119, 180)).all(-1)
  red = (image == (214, 39, 40)).all(-1)
  assert blue.sum() > 500 and red.sum() > 500
  # Series a falls from the top left to the bottom right; b is flat in the middle.
  ys, xs = np.nonzero(blue[:, 70:-200])
  assert np.corrcoef(xs, ys)[0, 1] > 0.9


def test_time_budget_keeps_the_last_state():
  budget = learning_run.TimeBudget(3600)
  budget(1, "state 1", None, None)
  assert budget.state is None
  budget.deadline = 0
  with pytest.raises(learning_run._OutOfTime):
    budget(2, "state 2", None, None)
  assert (budget.step, budget.state) == (2, "state 2")


@pytest.mark.slow
def test_smoke_run_writes_every_output(tmp_path):
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "benchmarks/learning_run.py", "--workdir", str(tmp_path / "work"),
                         "--out_dir", str(tmp_path / "out"), "--smoke"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  summary = json.loads((tmp_path / "out" / "learning_run.json").read_text())
  assert summary["steps_done"] == 5 and summary["val_loss"]["steps"] == [0, 5]
  assert set(summary["edge"]) == {"untrained", "trained EMA", "trained regular", "trained EMA, control weight 0",
                                  "ground truth"}
  assert all(0 <= s["edge_f1"] <= 1 for s in summary["edge"].values())
  assert summary["edge"]["ground truth"]["edge_f1"] > 0.9  # the clip against its own (preset) control
  assert cv2.imread(str(tmp_path / "out" / "learning_curve.png")).shape == (480, 720, 3)
  assert cv2.imread(str(tmp_path / "out" / "samples.jpg")).shape == (12 * 171, 4 * 256, 3)
