"""agibot_jax/data/import_lerobot.py: any robot's LeRobot dataset in, then a 2-camera rig through every command.

The default run checks the command's refusals (one line, exit 2, before anything is read or written); the importer
with a camera map, the rig, the 2-camera batch and the 1-camera forward have their own default-run tests
(tests/data/agibot_world/test_importer.py::test_any_lerobot_dataset_with_a_camera_map, tests/test_rig.py,
tests/data/test_pipeline.py::test_two_camera_rig_batch, tests/models/test_dit.py::test_one_camera_rig_forward). The
slow run takes an ALOHA-style LeRobot v3.0 root with 4 cameras through import (2 of them), inspect, train (2 steps),
sample and eval, each the real command.
"""

import json
import os
import subprocess
import sys

import cv2
import orbax.checkpoint as ocp
import pytest

from agibot_jax import rig
from tests.conftest import REPO
from tests.data.agibot_world import conftest as fixtures

# The tiny config made cheaper (as tests/test_eval.py), as command-line overrides.
OVERRIDES = {"model.net.num_blocks": 2, "model.net.vace_block_every_n": 2, "model.net.text_tokens_per_view": 8,
             "model.text_encoder.num_tokens": 8, "dataloader_train.dataset.resolution_hw": "32,48"}
FOUR_CAMERAS = ",".join(f"{key}={key.rsplit('.', 1)[1].removeprefix('cam_')}" for key in fixtures.ALOHA_KEYS)


def _run(module, *args, timeout=900):
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_refusals_are_one_line_before_anything_is_read(tmp_path):
  four = _run("agibot_jax.data.import_lerobot", tmp_path / "nowhere", tmp_path / "dst", f"--cameras={FOUR_CAMERAS}")
  assert four.returncode == 2 and four.stdout == ""
  assert four.stderr == ("REFUSED rig 'dst' has 4 cameras (high, left_wrist, low, right_wrist); the released network "
                         "has 3 view rows (model.net.n_cameras_emb), so a rig has 1 to 3 cameras: keep at most 3\n")
  none = _run("agibot_jax.data.import_lerobot", tmp_path / "nowhere", tmp_path / "dst")
  assert none.returncode == 2 and none.stderr.startswith("REFUSED --cameras VIDEO_FEATURE=CAMERA,... (1 to 3 cameras)")
  assert not (tmp_path / "dst").exists()


@pytest.mark.slow  # ~4-6 min on 2 CPU cores: six command start-ups, a 2-step training run, sampling, evaluation
def test_two_camera_rig_end_to_end(tmp_path):
  src, dst, workdir = tmp_path / "aloha_cups", tmp_path / "aloha", tmp_path / "run"
  fixtures.write_lerobot(src, "v3.0", [20, 14], ["Put the cup in the bin", "Stack the cups"],
                         keys=fixtures.ALOHA_KEYS, robot_type="aloha")
  cameras = "observation.images.cam_high=head,observation.images.cam_left_wrist=left_wrist"
  imported = _run("agibot_jax.data.import_lerobot", src, dst, "--cameras", cameras, "--clip_frames=9", "--workers=2")
  assert imported.returncode == 0, imported.stderr[-3000:]
  assert imported.stdout.startswith("imported 3 clip(s) from 2 episode(s) of a lerobot v3.0 root")
  assert sorted(os.listdir(dst / "videos")) == ["head", "left_wrist"]
  rig_file = dst / rig.RIG_FILE
  assert rig.parse(str(rig_file)).describe() == "aloha (head=0, left_wrist=1)"

  config = ["--config", "configs/edge.py:tiny", f"--config.rig={rig_file}",
            *(f"--config.{k}={v}" for k, v in OVERRIDES.items())]
  inspected = _run("agibot_jax.data.inspect", *config, f"--config.dataloader_train.dataset.dataset_dir={dst}")
  assert inspected.returncode == 0, inspected.stderr[-3000:]
  assert "rig:            aloha (head=0, left_wrist=1) (camera=view row)" in inspected.stdout
  assert "samples:        3" in inspected.stdout

  trained = _run("agibot_jax.train", *config, f"--config.dataloader_train.dataset.dataset_dir={dst}", "--workdir",
                 workdir, "--config.trainer.max_iter=2", "--config.checkpoint.save_iter=2",
                 "--config.trainer.callbacks.every_n_sample.every_n=0")
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert json.loads(trained.stdout.strip().splitlines()[-1])["step"] == 2
  saved = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(str(workdir / "checkpoints" / "2" / "config"))
  assert saved["dataloader_train"]["dataset"]["views"] == ["head", "left_wrist"]
  assert rig.parse(saved["rig"]) == rig.parse(str(rig_file))  # the cameras themselves, not the file's path

  out = tmp_path / "sample.mp4"
  sampled = _run("agibot_jax.sample", *config, f"--config.dataloader_train.dataset.dataset_dir={dst}", "--checkpoint",
                 workdir, "--sample_id", "aloha_cups_1_c0", "--num_steps", "2", "--out", out)
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  assert json.loads(sampled.stdout.strip().splitlines()[-1])["video_shape_BVTHWC"] == [1, 2, 9, 32, 48, 3]
  assert cv2.VideoCapture(str(out)).isOpened() and (tmp_path / "sample_12frames.jpg").is_file()

  report = tmp_path / "eval" / "report.json"
  evaluated = _run("agibot_jax.eval", *config, f"--config.dataloader_val.dataset_dir={dst}", "--checkpoint", workdir,
                   "--num_samples", "1", "--num_steps", "2", "--out", report)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  result = json.loads(report.read_text())
  assert {"val_ema/loss/head", "val_ema/loss/left_wrist"} <= set(result["validation"])
  assert {"edge_f1/head", "edge_f1/left_wrist"} <= set(result["samples"][0]["scores"])
