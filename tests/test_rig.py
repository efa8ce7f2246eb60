"""agibot_jax/rig.py: the agibot preset is the reference's three views; rigs of 1-3 cameras from a config value, a
file or JSON text; every unusable rig or camera choice is refused in one line naming the camera and the key."""

import json

import pytest

from agibot_jax import rig
from configs import base

PREFIX = "The video is captured from a camera on the {} of the robot."


def cams(*names, **overrides):
  return [{"name": n, "caption_prefix": PREFIX.format(n), **overrides.get(n, {})} for n in names]


def test_agibot_preset_is_the_reference_views():
  caps = rig.AGIBOT.captions("A robot folds cloth.")
  assert caps == [
      "The video is captured from a camera mounted on the head of the subject, facing forward. A robot folds cloth.",
      "The video is captured from a camera mounted on the left hand of the subject. ",
      "The video is captured from a camera mounted on the right hand of the subject. ",
  ]
  assert rig.AGIBOT.names == ("head_color", "hand_left", "hand_right") and rig.AGIBOT.view_ids == (0, 1, 2)
  assert rig.AGIBOT.cross_view_attn_map() == ((1, 2), (0, 2), (0, 1))
  # Permuted cameras: the prompt stays with head_color, each camera keeps its view row.
  picked = rig.AGIBOT.select(("hand_right", "head_color"))
  assert picked.view_ids == (2, 0) and picked.captions("p")[1].endswith("forward. p")
  assert base.get_config("edge").rig == rig.DEFAULT == "agibot"


def test_agibot_preset_matches_the_reference_network(golden_dir):
  kwargs = json.loads((golden_dir / "dit_tiny.json").read_text())["constructor_kwargs"]
  assert dict(zip(rig.AGIBOT.names, rig.AGIBOT.view_ids)) == kwargs["camera_to_view_id"]
  assert {c.name: list(c.neighbours) for c in rig.AGIBOT.cameras} == kwargs["cross_view_attn_map_str"]
  assert kwargs["n_cameras_emb"] == rig.VIEW_ROWS


def test_defaults_and_the_network_neighbour_map():
  two = rig.from_cameras(cams("top", "wrist"), name="arm")
  assert two.describe() == "arm (top=0, wrist=1)" and two.prompt_view == "top"
  assert [c.neighbours for c in two.cameras] == [("wrist",), ("top",)]
  assert two.cross_view_attn_map() == ((1,), (0,), ())
  assert two.captions("Pick the cube.") == [PREFIX.format("top") + " Pick the cube.", PREFIX.format("wrist") + " "]
  one = rig.from_cameras(cams("wrist", wrist={"view": 2}))
  assert one.view_ids == (2,) and one.cross_view_attn_map() == ((), (), ())
  # Rows follow the cameras' own rows; a neighbour left out by `select` is left out of the map.
  three = rig.from_cameras(cams("a", "b", "c", a={"view": 2, "neighbours": ["c"]}, c={"view": 0}))
  assert three.cross_view_attn_map() == ((2, 1), (2, 0), (0,))
  assert three.select(("a", "b")).cross_view_attn_map() == ((), (2,), ())


def test_more_than_three_cameras_is_refused_saying_why():
  with pytest.raises(rig.RigError) as e:
    rig.from_cameras(cams("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"), name="aloha")
  assert str(e.value) == ("rig 'aloha' has 4 cameras (cam_high, cam_low, cam_left_wrist, cam_right_wrist); the "
                          "released network has 3 view rows (model.net.n_cameras_emb), so a rig has 1 to 3 cameras: "
                          "keep at most 3")
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("cameras, words", [
    ([], "has 0 cameras"),
    (cams("a", a={"lens": "wide"}), "unknown key(s) ['lens']"),
    (cams("a", "a"), "must be distinct"),
    (cams("a/b"), "must be a folder name"),
    (cams(".hidden"), "must be a folder name"),
    (cams("a", a={"view": 3}), "view must be a view row 0..2"),
    (cams("a", a={"view": True}), "view must be a view row"),
    (cams("a", "b", b={"view": 0}), "share a view row"),
    ([{"name": "a"}], "camera 'a': needs a caption_prefix"),
    (cams("a", "b", a={"neighbours": ["c"]}), "neighbours ['c'] must be other cameras"),
    (cams("a", a={"neighbours": ["a"]}), "neighbours ['a'] must be other cameras"),
    (cams("a", "b", a={"neighbours": "b"}), "neighbours must be a list"),
    (["head"], "camera 0 must be a mapping"),
])
def test_bad_cameras_are_named(cameras, words):
  with pytest.raises(rig.RigError, match="^rig 'custom'") as e:
    rig.from_cameras(cameras)
  assert words in str(e.value)


def test_config_values_preset_file_json_and_list(tmp_path):
  doc = {"name": "so100", "cameras": cams("laptop", "phone")}
  path = tmp_path / "rig.json"
  path.write_text(json.dumps(doc))
  from_file, from_text, from_list = rig.parse(str(path)), rig.parse(json.dumps(doc)), rig.parse(doc["cameras"])
  assert from_file == from_text and from_file.names == from_list.names == ("laptop", "phone")
  assert (from_file.name, from_list.name) == ("so100", "custom")
  assert rig.parse(json.dumps(doc["cameras"])).names == ("laptop", "phone")
  assert rig.parse(" agibot ") is rig.AGIBOT
  # What a run's config records: a preset's name, else the cameras as JSON (read back to the same rig).
  assert rig.canonical(rig.AGIBOT.to_json()["cameras"]) == "agibot"
  assert rig.parse(rig.canonical(str(path))) == from_file
  for value, words in [("aloha", "not a preset (agibot), a .json file or a list of cameras"),
                       (str(tmp_path / "missing.json"), "missing.json: unreadable"),
                       ("[{", "config.rig: not valid JSON"), (json.dumps({"cams": []}), "a rig document is")]:
    with pytest.raises(rig.RigError) as e:
      rig.parse(value)
    assert words in str(e.value), value
  path.write_text(json.dumps({"name": "bad", "cameras": cams("a", a={"view": 5})}))
  with pytest.raises(rig.RigError, match=r"rig.json: rig 'bad': camera 'a': view must be"):
    rig.parse(str(path))


def test_config_rig_and_views():
  config = base.get_config("edge", "tiny")
  config.rig = cams("top", "wrist")  # a config file may assign a list
  assert rig.of_config(config).names == ("top", "wrist")
  config.dataloader_train.dataset.views = ("wrist",)
  assert rig.of_config(config).names == ("wrist",) and rig.of_config(config).prompt_view == "top"
  config.dataloader_train.dataset.views = ("wrist", "head_color")
  with pytest.raises(rig.RigError) as e:
    rig.of_config(config)
  assert str(e.value) == ("dataloader_train.dataset.views=('wrist', 'head_color'): must be distinct cameras of rig "
                          "custom (top=0, wrist=1); not cameras of it: head_color")
  config.dataloader_train.dataset.views = ("wrist", "wrist")
  with pytest.raises(rig.RigError, match="must be distinct cameras"):
    rig.of_config(config)
