"""agibot_jax/evaluation/scoring.py: dispatch per control type on hand-made scenes, conditioned frames, per-view
means, the registry hook, aggregation, and the proxies on the reference's real robot clip and its controls."""

import numpy as np
import pytest

from agibot_jax import registry, rig
from agibot_jax import video_io as video
from agibot_jax.data import controls
from agibot_jax.evaluation import metrics, scoring

V, T, H, W = 3, 9, 32, 48  # 9 pixel frames = 3 latent frames (1 + 4 + 4)
BAR = slice(16, 28)  # columns of the bright bar in every scene


def bar_scene(offset: int = 0) -> np.ndarray:
  """uint8 (V, T, H, W, 3): a bright bar on a dark background, moved `offset` columns to the right."""
  scene_VTHWC = np.full((V, T, H, W, 3), 30, np.uint8)
  scene_VTHWC[:, :, :, BAR.start + offset:BAR.stop + offset] = (230, 200, 120)
  return scene_VTHWC


def depth_map(offset: int = 0) -> np.ndarray:
  """A depth video: a gentle ramp (0.8 grey levels a column, no boundary) and a step of 120 at the bar."""
  ramp_W = np.linspace(20, 60, W)
  depth_VTHW = np.broadcast_to(ramp_W, (V, T, H, W)).copy()
  depth_VTHW[..., BAR.start + offset:BAR.stop + offset] += 120
  return np.repeat(depth_VTHW.astype(np.uint8)[..., None], 3, axis=-1)


def seg_map(offset: int = 0) -> np.ndarray:
  """A seg video: two flat regions of distinct colours, split at the bar."""
  seg_VTHWC = np.empty((V, T, H, W, 3), np.uint8)
  seg_VTHWC[:] = (0, 0, 142)
  seg_VTHWC[:, :, :, BAR.start + offset:BAR.stop + offset] = (220, 20, 60)
  return seg_VTHWC


def control_of(control_type: str, scene_VTHWC: np.ndarray, offset: int = 0) -> np.ndarray:
  """The `control_type` map of the bar scene, its bar moved `offset` columns."""
  moved_VTHWC = np.roll(scene_VTHWC, offset, axis=-2)
  if control_type == "edge":
    return np.stack([controls.edge(view_THWC, None, "medium") for view_THWC in moved_VTHWC])
  if control_type == "vis":
    return np.stack([controls.vis(view_THWC, None, "medium") for view_THWC in moved_VTHWC])
  return {"depth": depth_map, "seg": seg_map}[control_type](offset)


PRIMARY = {"edge": "edge_f1", "vis": "vis_ssim", "depth": "depth_edge_f1", "seg": "seg_boundary_f1"}


@pytest.mark.parametrize("control_type", registry.control_types())
def test_dispatch_matching_control_scores_one(control_type):
  scene_VTHWC = bar_scene()
  scores = scoring.score_sample(control_type, scene_VTHWC, control_of(control_type, scene_VTHWC),
                                num_cond_frames=1)
  key = PRIMARY[control_type]
  assert scores[key] == pytest.approx(1.0, abs=1e-9)
  assert all(scores[f"{key}/{view}"] == pytest.approx(1.0, abs=1e-9) for view in rig.AGIBOT.names)


@pytest.mark.parametrize("control_type", ["edge", "depth", "seg"])
@pytest.mark.parametrize("offset,f1", [(2, 1.0), (3, 0.0)])
def test_shifted_boundaries(control_type, offset, f1):
  # The bar's two edges move `offset` px across themselves: within the 2 px tolerance all match, beyond none.
  scene_VTHWC = bar_scene()
  scores = scoring.score_sample(control_type, scene_VTHWC, control_of(control_type, scene_VTHWC, offset),
                                num_cond_frames=1)
  assert scores[PRIMARY[control_type]] == f1


def test_vis_drops_with_a_shift_or_another_preset():
  scene_VTHWC = bar_scene()
  shifted = scoring.score_sample("vis", scene_VTHWC, control_of("vis", scene_VTHWC, 6), num_cond_frames=1)
  assert shifted["vis_ssim"] < 0.9
  other_preset = scoring.score_sample("vis", scene_VTHWC, control_of("vis", scene_VTHWC), num_cond_frames=1,
                                      preset="very_high")
  assert other_preset["vis_ssim"] < 0.99


def test_edge_empty_maps():
  flat_VTHWC = np.full((V, T, H, W, 3), 90, np.uint8)
  no_edges_VTHWC = np.zeros_like(flat_VTHWC)
  both_empty = scoring.score_sample("edge", flat_VTHWC, no_edges_VTHWC, num_cond_frames=1)
  assert both_empty["edge_f1"] == 1.0
  generated_only = scoring.score_sample("edge", bar_scene(), no_edges_VTHWC, num_cond_frames=1)
  assert generated_only["edge_f1"] == 0.0 and generated_only["edge_recall"] == 0.0


def test_texture_lowers_the_proxy_precision_only():
  # Stripes inside the bar are image edges with no seg boundary: precision drops, recall stays 1.
  scene_VTHWC = bar_scene()
  scene_VTHWC[:, :, ::4, BAR] = 0
  scores = scoring.score_sample("seg", scene_VTHWC, seg_map(), num_cond_frames=1)
  assert scores["seg_boundary_recall"] == 1.0 and scores["seg_boundary_precision"] < 0.75


def test_num_cond_pixel_frames():
  assert [scoring.num_cond_pixel_frames(n) for n in (0, 1, 2, 24)] == [0, 1, 5, 93]
  with pytest.raises(ValueError, match="num_cond_frames"):
    scoring.num_cond_pixel_frames(-1)


@pytest.mark.parametrize("num_cond_frames,spoiled_frame,perfect", [
    (0, 0, False), (1, 0, True), (1, 1, False), (2, 4, True), (2, 5, False)])
def test_reconstruction_leaves_out_conditioned_frames(num_cond_frames, spoiled_frame, perfect):
  truth_VTHWC = bar_scene()
  generated_VTHWC = truth_VTHWC.copy()
  # The bar of one frame moved 6 px: that frame's edges miss the control's and its pixels the truth's.
  generated_VTHWC[:, spoiled_frame] = np.roll(generated_VTHWC[:, spoiled_frame], 6, axis=-2)
  scores = scoring.score_sample("edge", generated_VTHWC, control_of("edge", truth_VTHWC), truth_VTHWC,
                                num_cond_frames=num_cond_frames)
  assert (scores["psnr"] == metrics.PSNR_CAP_DB) == perfect
  assert (scores["ssim"] == pytest.approx(1.0)) == perfect
  assert (scores["edge_f1"] == 1.0) == perfect


def test_registered_metric_gets_each_view_without_conditioned_frames(monkeypatch):
  monkeypatch.setattr(scoring, "CONTROL_METRICS", dict(scoring.CONTROL_METRICS))
  calls = []

  def fake(generated_THWC, control_THWC, preset):
    calls.append(preset)
    return {"fake_level": float(control_THWC.mean()), "fake_frames": float(len(generated_THWC))}

  scoring.register("fake", fake)
  control_VTHWC = np.stack([np.full((T, H, W, 3), level, np.uint8) for level in (10, 20, 60)])
  scores = scoring.score_sample("fake", bar_scene(), control_VTHWC, num_cond_frames=2, preset="low")
  assert calls == ["low"] * V
  assert [scores[f"fake_level/{view}"] for view in rig.AGIBOT.names] == [10.0, 20.0, 60.0]
  assert scores["fake_level"] == 30.0
  assert scores["fake_frames"] == T - 5
  with pytest.raises(ValueError, match="already has a metric"):
    scoring.register("fake", fake)
  scoring.register("depth", fake, replace=True)
  assert "fake_level" in scoring.score_sample("depth", bar_scene(), control_VTHWC, num_cond_frames=1)


def test_every_control_type_has_a_metric():
  assert set(registry.control_types()) <= set(scoring.CONTROL_METRICS)


def test_one_view_without_the_view_axis():
  scene_THWC = bar_scene()[0]
  scores = scoring.score_sample("edge", scene_THWC, controls.edge(scene_THWC), num_cond_frames=1,
                                views=("hand_left",))
  assert scores == {**{k: 1.0 for k in ("edge_precision", "edge_recall", "edge_f1")},
                    **{f"{k}/hand_left": 1.0 for k in ("edge_precision", "edge_recall", "edge_f1")}}


@pytest.mark.parametrize("change,message", [
    (dict(control_type="hdmap"), "no metric for control 'hdmap'"),
    (dict(preset="strong"), "preset must be one of"),
    (dict(control_VTHWC=np.zeros((V, T, H, W + 1, 3), np.uint8)), "must have one shape"),
    (dict(ground_truth_VTHWC=np.zeros((V, T, H, W, 3), np.float32)), "ground_truth must be uint8"),
    (dict(views=("head_color",)), r"got 3 view\(s\) but 1 view names"),
    (dict(views=("head_color", "head_color", "hand_left")), "views must be distinct names"),
    (dict(num_cond_frames=3), "none of the 9 frames"),
])
def test_bad_input_is_named(change, message):
  args = dict(control_type="edge", generated_VTHWC=bar_scene(), control_VTHWC=bar_scene(), num_cond_frames=1)
  with pytest.raises(ValueError, match=message):
    scoring.score_sample(**(args | change))


def test_aggregate_means_each_key_over_the_samples_holding_it():
  assert scoring.aggregate([{"edge_f1": 0.5, "psnr": 30.0}, {"edge_f1": 1.0}]) == {"edge_f1": 0.75, "psnr": 30.0}
  with pytest.raises(ValueError, match="at least one"):
    scoring.aggregate([])


def test_proxies_on_the_real_robot_clip(data_dir):
  # The reference's robot clip against its own edge / depth / seg controls, and mirrored (no adherence).
  clip = data_dir / "robot_example"
  read = lambda name: video.read_frames(str(clip / f"robot_{name}.mp4"), 0, 8)
  rgb_THWC = read("input")
  for control_type, key, low, high in [("edge", "edge_f1", 0.5, 0.95), ("depth", "depth_edge_f1", 0.2, 0.4),
                                       ("seg", "seg_boundary_f1", 0.2, 0.3)]:
    control_THWC = read(control_type)
    score = lambda generated_THWC: scoring.score_sample(
        control_type, generated_THWC, control_THWC, num_cond_frames=0, views=("head_color",))[key]
    assert score(rgb_THWC) > high
    assert score(rgb_THWC[:, :, ::-1]) < low  # a strided view: the metrics must accept it


def test_to_uint8_inverts_the_loader_rows():
  pixels = np.arange(256, dtype=np.uint8)
  assert np.array_equal(scoring.to_uint8(pixels.astype(np.float32) / 127.5 - 1.0), pixels)
  assert np.array_equal(scoring.to_uint8(np.array([-1.7, 1.3])), [0, 255])


def test_score_rows_per_item_with_the_truth_only_after_clean_frames():
  as_rows = lambda video_VTHWC: video_VTHWC[None].astype(np.float32) / 127.5 - 1.0
  scene, moved = bar_scene(), np.roll(bar_scene(), 6, axis=-2)
  generated = np.concatenate([as_rows(scene), as_rows(moved)])  # item 0 follows the control, item 1 does not
  control = np.concatenate([as_rows(control_of("edge", scene))] * 2)
  truth = np.concatenate([as_rows(scene)] * 2)
  with_truth = scoring.score_rows("edge", generated, control, truth, num_cond_frames=1)
  assert [s["edge_f1"] for s in with_truth] == [1.0, 0.0]
  assert with_truth[0]["psnr"] == metrics.PSNR_CAP_DB and with_truth[1]["psnr"] < 20
  assert "psnr" not in scoring.score_rows("edge", generated, control, truth, num_cond_frames=0)[0]
  means = scoring.row_scorer("edge")(generated, truth, control, 1)
  assert means == {"edge_precision": 0.5, "edge_recall": 0.5, "edge_f1": 0.5, "psnr": pytest.approx(
      (metrics.PSNR_CAP_DB + with_truth[1]["psnr"]) / 2), "ssim": pytest.approx((1.0 + with_truth[1]["ssim"]) / 2)}
  with pytest.raises(ValueError, match="no metric for control 'hdmap'"):
    scoring.row_scorer("hdmap")
