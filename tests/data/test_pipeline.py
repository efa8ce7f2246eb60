"""agibot_jax/data/pipeline.py: sample layout of spec §1.8 on real clips (night_3view: edge/vis; robot_example
assembled as a depth/seg dataset), grain batching, determinism, sharding and iterator checkpoints."""

import json
import os

import numpy as np
import pytest

from agibot_jax import rig
from agibot_jax import video_io as video
from agibot_jax.data import controls, pipeline, resize, synthetic
from tests.data.conftest import corrupt_mid_stream, tiny_config

VIEWS = ("head_color", "hand_left", "hand_right")


def _settings(dataset_dir, control_type, **kw):
  kw.setdefault("resolution_hw", (72, 128))
  kw.setdefault("num_video_frames", 5)
  return pipeline.DataSettings(dataset_dir=str(dataset_dir), control_type=control_type, **kw)


@pytest.fixture(scope="module")
def robot_dataset(data_dir, tmp_path_factory):
  """robot_example as a 3-view depth/seg dataset: the same clip and controls symlinked into every view."""
  root = tmp_path_factory.mktemp("robot")
  src = data_dir / "robot_example"
  prompt = json.loads((src / "robot_prompt.json").read_text())["prompt"]
  for view in VIEWS:
    for folder, name in (("videos", "robot_input"), ("control_input_depth", "robot_depth"),
                         ("control_input_seg", "robot_seg")):
      (root / folder / view).mkdir(parents=True)
      os.symlink(src / f"{name}.mp4", root / folder / view / "robot_000.mp4")
    (root / "captions" / view).mkdir(parents=True)
    (root / "captions" / view / "robot_000.json").write_text(json.dumps({"caption": prompt}))
  return root, prompt


@pytest.mark.parametrize("control_type", ["edge", "vis"])
def test_night_3view_sample(data_dir, control_type):
  root = data_dir / "night_3view"
  source = pipeline.AgibotMultiviewSource(_settings(root, control_type))
  assert len(source) == 2
  rng_args = (3, 1, 0)
  s = source.load(0, pipeline.sample_rng(*rng_args))
  t = 5
  assert s["video"].shape == s[f"control_input_{control_type}"].shape == (3, 3 * t, 72, 128)
  assert s["video"].dtype == s[f"control_input_{control_type}"].dtype == np.uint8
  np.testing.assert_array_equal(s["view_indices"], [0] * t + [1] * t + [2] * t)
  assert s["view_indices"].dtype == np.int64
  prompt = json.loads((root / "captions/head_color/night_000.json").read_text())["caption"]
  assert s["ai_caption"] == rig.AGIBOT.captions(prompt)
  assert s["fps"] == 30.0 and s["__key__"] == "night_000"
  assert s["padding_mask"].shape == (1, 72, 128) and s["padding_mask"].dtype == np.float32
  assert not s["padding_mask"].any()
  np.testing.assert_array_equal(s["original_hw"], [[720, 1280]] * 3)
  np.testing.assert_array_equal(s["frame_indices"], np.arange(t))
  # Views are concatenated view-major along time: frames [t, 2t) are hand_left.
  left = resize.resize_uint8(video.read_frames(str(root / "videos/hand_left/night_000.mp4"), 0, t), (72, 128))
  np.testing.assert_array_equal(s["video"][:, t:2 * t], left.transpose(3, 0, 1, 2))
  # The control is computed from the resized video of all views with the sample's RNG.
  frames_THWC = s["video"].transpose(1, 2, 3, 0)
  expected = controls.compute(control_type, frames_THWC, pipeline.sample_rng(*rng_args))
  np.testing.assert_array_equal(s[f"control_input_{control_type}"], expected.transpose(3, 0, 1, 2))


@pytest.mark.parametrize("control_type", ["depth", "seg"])
def test_robot_depth_seg_sample(robot_dataset, data_dir, control_type):
  root, prompt = robot_dataset
  source = pipeline.AgibotMultiviewSource(_settings(root, control_type, resolution_hw=(64, 96)))
  s = source[0]
  assert s["ai_caption"][0].endswith(prompt)
  ctrl = s[f"control_input_{control_type}"]
  assert ctrl.shape == (3, 15, 64, 96) and ctrl.dtype == np.uint8
  raw = video.read_frames(str(data_dir / f"robot_example/robot_{control_type}.mp4"), 0, 5)
  expected = resize.resize_uint8(raw, (64, 96)).transpose(3, 0, 1, 2)
  for v in range(3):  # same frame indices and resize as the RGB video, every view
    np.testing.assert_array_equal(ctrl[:, 5 * v:5 * v + 5], expected)
  np.testing.assert_array_equal(s["original_hw"], [[480, 640]] * 3)


def test_random_start_frame(synthetic_dir):
  source = pipeline.AgibotMultiviewSource(_settings(synthetic_dir, "edge", random_start_frame=True,
                                                    resolution_hw=(48, 80)))
  starts = set()
  for epoch in range(6):
    s = source.load(1, pipeline.sample_rng(0, epoch, 1))
    start = int(s["frame_indices"][0])
    starts.add(start)
    assert 0 <= start <= 12 - 5
    head = video.read_frames(source.samples[1].videos[0], start, 5)
    np.testing.assert_array_equal(s["video"][:, :5], head.transpose(3, 0, 1, 2))
  assert len(starts) > 1
  assert source[1]["frame_indices"][0] == 0  # no RNG: the reference's start 0


def _batches(config, n, num_workers=0, state=None):
  source = pipeline.AgibotMultiviewSource(pipeline.DataSettings.from_config(config))
  ds = pipeline.build_dataset(source, batch_size=config.dataloader_train.batch_size, seed=config.seed)
  it = pipeline.make_iterator(ds, num_workers=num_workers, prefetch_buffer_size=1)
  if state is not None:
    it.set_state(state)
  out = [next(it) for _ in range(n)]
  return out, it


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    if isinstance(a[k], np.ndarray):
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    else:
      assert a[k] == b[k], k


def test_batch_layout(synthetic_dir):
  config = tiny_config("edge", synthetic_dir)
  config.dataloader_train.batch_size = 2
  (b,), _ = _batches(config, 1)
  assert b["video"].shape == b["control_input_edge"].shape == (2, 3, 27, 64, 96)
  assert b["view_indices"].shape == (2, 27) and b["view_indices"].dtype == np.int64
  assert b["padding_mask"].shape == (2, 1, 64, 96) and b["fps"].shape == (2,)
  assert b["fps"].dtype == np.float64 and b["original_hw"].shape == (2, 3, 2)
  assert sorted(b["__key__"]) == ["synthetic_000", "synthetic_001"]
  assert len(b["ai_caption"]) == 2 and all(len(c) == 3 and all(isinstance(x, str) for x in c)
                                           for c in b["ai_caption"])
  assert b["camera_keys_selection"] == [list(VIEWS)] * 2


def _decoded(root, folder, views, sid, t, hw):
  """(3, V·T, H, W): the files of `views` decoded and resized independently of the loader, views major along time."""
  frames = [resize.resize_uint8(video.read_frames(str(root / folder / v / f"{sid}.mp4"), 0, t), hw) for v in views]
  return np.concatenate(frames).transpose(3, 0, 1, 2)


def test_agibot_rig_batch_is_todays(synthetic_dir):
  """The default (agibot) rig loads what main (be348e4) loaded: these caption strings and view fields were recorded
  from it on this dataset, and the pixels are the three camera folders in head, left, right order."""
  b = next(pipeline.from_config(tiny_config("seg", synthetic_dir), num_epochs=1))
  scene = ("A synthetic tabletop scene in which 5 coloured shapes drift and bounce slowly across a smoothly shaded "
           "background, seen by a head camera and two hand cameras.")
  assert b["ai_caption"] == [[
      "The video is captured from a camera mounted on the head of the subject, facing forward. " + scene,
      "The video is captured from a camera mounted on the left hand of the subject. ",
      "The video is captured from a camera mounted on the right hand of the subject. "]]
  assert b["camera_keys_selection"] == [["head_color", "hand_left", "hand_right"]]
  np.testing.assert_array_equal(b["view_indices"], [[0] * 9 + [1] * 9 + [2] * 9])
  np.testing.assert_array_equal(b["view_indices_selection"], [[0, 1, 2]])
  assert b["sample_n_views"].tolist() == [3] and b["__key__"] == ["synthetic_000"]
  for key, folder in (("video", "videos"), ("control_input_seg", "control_input_seg")):
    np.testing.assert_array_equal(b[key][0], _decoded(synthetic_dir, folder, VIEWS, "synthetic_000", 9, (64, 96)))


def test_two_camera_rig_batch(tmp_path):
  """A rig's cameras, in its order, with its view rows and caption prefixes (the wrist camera uses view row 2)."""
  root = tmp_path / "two"
  synthetic.write_example(str(root), num_samples=1, frames=9, height=48, width=80, views=("wrist", "top"))
  config = tiny_config("seg", root)
  config.rig = [{"name": "top", "view": 0, "caption_prefix": "The video is captured from above the table."},
                {"name": "wrist", "view": 2, "caption_prefix": "The video is captured from the wrist."}]
  b = next(pipeline.from_config(config, num_epochs=1))
  assert b["video"].shape == b["control_input_seg"].shape == (1, 3, 18, 64, 96)
  np.testing.assert_array_equal(b["view_indices"], [[0] * 9 + [2] * 9])
  prompt = json.loads((root / "captions" / "top" / "synthetic_000.json").read_text())["caption"]
  assert "seen by a wide camera and a closer camera on the left." in prompt
  assert b["ai_caption"] == [["The video is captured from above the table. " + prompt,
                              "The video is captured from the wrist. "]]
  assert b["camera_keys_selection"] == [["top", "wrist"]] and b["original_hw"].shape == (1, 2, 2)
  for key, folder in (("video", "videos"), ("control_input_seg", "control_input_seg")):
    np.testing.assert_array_equal(b[key][0], _decoded(root, folder, ("top", "wrist"), "synthetic_000", 9, (64, 96)))


def test_determinism_across_instances_and_worker_counts(synthetic_dir):
  config = tiny_config("vis", synthetic_dir)
  first, _ = _batches(config, 4)
  again, _ = _batches(config, 4)
  workers, _ = _batches(config, 4, num_workers=2)
  for a, b, c in zip(first, again, workers):
    _assert_same(a, b)
    _assert_same(a, c)
  # Epochs 0 and 1 reshuffle and redraw the vis blur of the same samples.
  assert sorted(first[0]["__key__"] + first[1]["__key__"]) == ["synthetic_000", "synthetic_001"]
  by_key = {(e, b["__key__"][0]): b for e, pair in enumerate((first[:2], first[2:])) for b in pair}
  assert not np.array_equal(by_key[(0, "synthetic_000")]["control_input_vis"],
                            by_key[(1, "synthetic_000")]["control_input_vis"])
  np.testing.assert_array_equal(by_key[(0, "synthetic_000")]["video"], by_key[(1, "synthetic_000")]["video"])


def test_iterator_state_resumes_exactly(synthetic_dir):
  config = tiny_config("edge", synthetic_dir)
  (_, _), it = _batches(config, 2)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  resumed, _ = _batches(config, 3, state=state)
  for a, b in zip(expected, resumed):
    _assert_same(a, b)


def test_process_rows_split_every_global_batch(synthetic_dir):
  """Processes holding rows 0:1 and 1:3 of a global batch of 3 together load exactly the one-process batches."""
  source = pipeline.AgibotMultiviewSource(_settings(synthetic_dir, "edge", resolution_hw=(48, 80)))
  whole = list(pipeline.build_dataset(source, batch_size=3, seed=0, num_epochs=3))
  parts = [list(pipeline.build_dataset(source, batch_size=3, seed=0, num_epochs=3, rows=rows))
           for rows in (slice(0, 1), slice(1, 3))]
  assert len(whole) == len(parts[0]) == len(parts[1]) == 2  # 6 samples in 3 epochs of 2
  # Global batches run across epoch ends: batch 0 is epoch 0's two samples and the first of epoch 1.
  assert sorted(whole[0]["__key__"][:2]) == ["synthetic_000", "synthetic_001"]
  for batch, first, rest in zip(whole, *parts):
    _assert_same(batch, pipeline.collate([{k: v[0] for k, v in first.items()},
                                          *({k: v[i] for k, v in rest.items()} for i in range(2))]))
  with pytest.raises(ValueError, match="rows 2:4 are not within a global batch of 3"):
    pipeline.build_dataset(source, batch_size=3, seed=0, rows=slice(2, 4))


def test_from_config_tiny(synthetic_dir):
  config = tiny_config("depth", synthetic_dir)
  batch = next(pipeline.from_config(config))
  assert batch["video"].shape == batch["control_input_depth"].shape == (1, 3, 27, 64, 96)


def test_undecodable_sample_is_replaced_counted_and_stops_the_run(synthetic_copy, caplog):
  """Issue 17 item 5: a file that goes bad after the start-up check is skipped at run time (replaced by the next
  sample, deterministically), reported by the training process, and more than max_bad_samples stop the run."""
  source = pipeline.AgibotMultiviewSource(_settings(synthetic_copy, "edge", num_video_frames=9, max_bad_samples=1))
  bad = synthetic_copy / "videos/hand_left/synthetic_000.mp4"
  corrupt_mid_stream(bad, 9)
  with pytest.raises(video.VideoError):
    source.load(0, None)
  ds = pipeline.build_dataset(source, batch_size=1, seed=0, shuffle=False, num_epochs=1)
  batches = list(ds)
  assert [b["__key__"] for b in batches] == [["synthetic_001"], ["synthetic_001"]]
  (skipped,), = batches[0][pipeline.SKIPPED_KEY]
  assert skipped.startswith("sample 'synthetic_000': ") and str(bad) in skipped
  assert batches[1][pipeline.SKIPPED_KEY] == [[]]
  _assert_same(batches[0], list(pipeline.build_dataset(source, batch_size=1, seed=0, shuffle=False, num_epochs=1))[0])

  it = pipeline.SkippedSamples(iter(batches * 2), max_bad=1)
  next(it), next(it)
  assert it.count == 1 and str(bad) in caplog.text
  with pytest.raises(pipeline.BadSamplesError, match=r"2 undecodable samples skipped, more than .*max_bad_samples=1"):
    next(it)


@pytest.mark.slow
def test_full_size_decode_matches_torch_resize(data_dir):
  """The reference's 93 frames at 432x768 (edge), checked against torch's antialiased bilinear resize.
  Tolerance: off by at most 1 on at most 1e-3 of the values (observed 5.6e-4 on this clip)."""
  torch = pytest.importorskip("torch")
  root = data_dir / "night_3view"
  source = pipeline.AgibotMultiviewSource(pipeline.DataSettings(str(root), "edge"))
  s = source.load(1, pipeline.sample_rng(0, 0, 1))
  assert s["video"].shape == s["control_input_edge"].shape == (3, 279, 432, 768)
  raw = torch.from_numpy(video.read_frames(str(root / "videos/hand_right/night_001.mp4"), 0, 93))
  ref = torch.nn.functional.interpolate(raw.permute(0, 3, 1, 2).float(), size=(432, 768), mode="bilinear",
                                        align_corners=False, antialias=True)
  ref = torch.round(ref).to(torch.uint8).permute(1, 0, 2, 3).numpy()
  diff = np.abs(s["video"][:, 186:].astype(np.int32) - ref)
  assert diff.max() <= 1 and np.mean(diff > 0) <= 1e-3


def test_workers_end_with_the_training_process(monkeypatch):
  """Issue 33 row 9: each worker watches the process that started it (the mechanism: tests/test_utils.py)."""
  import signal

  from agibot_jax import utils

  watched = []
  monkeypatch.setattr(utils, "end_with_parent", watched.append)
  monkeypatch.setattr(signal, "signal", lambda *args: None)
  pipeline._worker_init(0, 2, parent_pid=4242)
  assert watched == [4242]
