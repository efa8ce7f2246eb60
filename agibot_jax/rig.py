"""Camera rigs: the cameras of a robot and how the network sees each one (README "Your own robot").

A rig is data. Per camera: its folder name (under videos/, captions/ and control_input_<ct>/), the view row it uses
(the row of the DiT's view embedding, 0..VIEW_ROWS-1), the prefix prepended to its captions, and the cameras its
tokens attend to in cross-view attention. The rig's first camera holds the sample's prompt; the others' captions
are their prefix alone (spec training.md §1.3). Cameras stack along time in rig order.

`config.rig` is a preset name (`agibot`, the default: the AgiBot G1's three views with the reference's exact
prefixes), a JSON file, or a list of cameras (in a Python config, or the JSON text itself):

  [{"name": "head", "view": 0, "caption_prefix": "The video is captured from a camera above the table."},
   {"name": "left_wrist", "view": 1, "caption_prefix": "The video is captured from the left wrist camera.",
    "neighbours": ["head"]}]

`view` defaults to the camera's position in the list and `neighbours` to every other camera. A JSON file holds that
list or {"name": ..., "cameras": [...]} (`python -m agibot_jax.data.import_lerobot` writes one beside the data).
The released network has VIEW_ROWS = 3 view rows, so a rig has 1 to 3 cameras.
`dataloader_train.dataset.views` picks some of the rig's cameras, in that order (empty: all of them).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

VIEW_ROWS = 3  # rows of the released network's view embedding (spec network.md §1, n_cameras_emb)
DEFAULT = "agibot"
RIG_FILE = "rig.json"  # a dataset's own rig, written by the importers
_CAMERA_KEYS = ("name", "view", "caption_prefix", "neighbours")


class RigError(ValueError):
  """A rig, or a choice of its cameras, that cannot run; the one-line message names the key and the camera."""


@dataclasses.dataclass(frozen=True)
class Camera:
  name: str  # folder name in the dataset
  view_id: int  # row of the view embedding (adaln_view_embedder); the view id of the camera's frames
  caption_prefix: str  # prepended to every caption of this camera (exact string)
  neighbours: tuple[str, ...]  # cameras this one attends to in cross-view attention


@dataclasses.dataclass(frozen=True)
class Rig:
  """Cameras in batch order; `prompt_view` is the camera whose caption file holds the prompt (it may be left out
  by `select`, and then no camera carries the prompt)."""
  name: str
  cameras: tuple[Camera, ...]
  prompt_view: str

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(c.name for c in self.cameras)

  @property
  def view_ids(self) -> tuple[int, ...]:
    return tuple(c.view_id for c in self.cameras)

  def describe(self) -> str:
    """`agibot (head_color=0, hand_left=1, hand_right=2)`: the rig and each camera's view row."""
    return f"{self.name} ({', '.join(f'{c.name}={c.view_id}' for c in self.cameras)})"

  def captions(self, prompt: str) -> list[str]:
    """The caption strings fed to the text encoder, one per camera: the prompt camera gets `prefix + " " + prompt`,
    every other camera `prefix + " "` (the trailing space is kept, as the reference does)."""
    return [f"{c.caption_prefix} {prompt if c.name == self.prompt_view else ''}" for c in self.cameras]

  def cross_view_attn_map(self, rows: int = VIEW_ROWS) -> tuple[tuple[int, ...], ...]:
    """Neighbour view rows of every view row (the DiT's `cross_view_attn_map`); rows no camera uses have none, and
    neighbours outside the rig are left out."""
    by_name = {c.name: c for c in self.cameras}
    table = [()] * rows
    for c in self.cameras:
      table[c.view_id] = tuple(by_name[n].view_id for n in c.neighbours if n in by_name)
    return tuple(table)

  def select(self, views: Sequence[str]) -> Rig:
    """The rig's cameras `views`, in that order. Raises RigError naming any that is not one of them, or repeated."""
    views = tuple(views)
    unknown = [v for v in views if v not in self.names]
    if unknown or len(set(views)) != len(views) or not views:
      raise RigError(f"dataloader_train.dataset.views={views}: must be distinct cameras of rig {self.describe()}"
                     + (f"; not cameras of it: {', '.join(unknown)}" if unknown else ""))
    by_name = {c.name: c for c in self.cameras}
    return dataclasses.replace(self, cameras=tuple(by_name[v] for v in views))

  def to_json(self) -> dict[str, Any]:
    """The rig as a JSON document (`parse` reads it back)."""
    return {"name": self.name, "cameras": [{"name": c.name, "view": c.view_id, "caption_prefix": c.caption_prefix,
                                            "neighbours": list(c.neighbours)} for c in self.cameras]}


def from_cameras(cameras: Sequence[Mapping[str, Any]], name: str = "custom") -> Rig:
  """A rig from camera mappings (module docstring). Raises RigError naming the camera and the key."""
  if isinstance(cameras, (str, bytes, Mapping)) or not isinstance(cameras, Sequence):
    raise RigError(f"rig {name!r}: expected a list of cameras, got {cameras!r}")
  cameras = list(cameras)
  if not cameras or len(cameras) > VIEW_ROWS:
    listed = ", ".join(str(c.get("name") if isinstance(c, Mapping) else c) for c in cameras)
    raise RigError(f"rig {name!r} has {len(cameras)} cameras ({listed}); the released network has {VIEW_ROWS} view "
                   f"rows (model.net.n_cameras_emb), so a rig has 1 to {VIEW_ROWS} cameras: keep at most {VIEW_ROWS}")
  for i, cam in enumerate(cameras):
    if not isinstance(cam, Mapping):
      raise RigError(f"rig {name!r}: camera {i} must be a mapping with keys {_CAMERA_KEYS}, got {cam!r}")
    if unknown := sorted(set(cam) - set(_CAMERA_KEYS)):
      raise RigError(f"rig {name!r}: camera {i} has unknown key(s) {unknown}; a camera has {_CAMERA_KEYS}")
  names = [cam.get("name") for cam in cameras]
  for n in names:
    if not isinstance(n, str) or not n or n in (".", "..") or n.startswith(".") or "/" in n or os.sep in n:
      raise RigError(f"rig {name!r}: camera name {n!r} must be a folder name (no '/', not starting with '.')")
  if len(set(names)) != len(names):
    raise RigError(f"rig {name!r}: camera names {names} must be distinct")
  out = []
  for i, cam in enumerate(cameras):
    label = f"rig {name!r}: camera {names[i]!r}"
    view = cam.get("view", i)
    if isinstance(view, bool) or not isinstance(view, int) or not 0 <= view < VIEW_ROWS:
      raise RigError(f"{label}: view must be a view row 0..{VIEW_ROWS - 1} (the released network has {VIEW_ROWS}), "
                     f"got {view!r}")
    prefix = cam.get("caption_prefix")
    if not isinstance(prefix, str) or not prefix.strip():
      raise RigError(f"{label}: needs a caption_prefix, the sentence that says where the camera is (e.g. \"The "
                     f"video is captured from a camera mounted on the left wrist of the robot.\")")
    neighbours = cam.get("neighbours", [n for n in names if n != names[i]])
    if isinstance(neighbours, str) or not isinstance(neighbours, Sequence):
      raise RigError(f"{label}: neighbours must be a list of camera names, got {neighbours!r}")
    neighbours = tuple(neighbours)
    if bad := [n for n in neighbours if n not in names or n == names[i]]:
      raise RigError(f"{label}: neighbours {bad} must be other cameras of the rig ({', '.join(names)})")
    if len(set(neighbours)) != len(neighbours):
      raise RigError(f"{label}: neighbours {list(neighbours)} repeat a camera")
    out.append(Camera(names[i], view, prefix, neighbours))
  views = [c.view_id for c in out]
  if len(set(views)) != len(views):
    raise RigError(f"rig {name!r}: cameras {', '.join(f'{c.name}={c.view_id}' for c in out)} share a view row; "
                   "each camera needs its own")
  return Rig(name, tuple(out), prompt_view=out[0].name)


def _from_document(doc: Any, name: str) -> Rig:
  if isinstance(doc, Mapping):
    if set(doc) - {"name", "cameras"} or "cameras" not in doc:
      raise RigError(f"rig {name!r}: a rig document is a list of cameras or {{\"name\": ..., \"cameras\": [...]}}")
    return from_cameras(doc["cameras"], str(doc.get("name", name)))
  return from_cameras(doc, name)


def load(path: str) -> Rig:
  """The rig of a JSON file. Raises RigError naming the file."""
  try:
    with open(path, encoding="utf-8") as f:
      doc = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise RigError(f"rig file {path}: unreadable ({e})") from None
  try:
    return _from_document(doc, os.path.splitext(os.path.basename(path))[0])
  except RigError as e:
    raise RigError(f"{path}: {e}") from None


def parse(value: Any) -> Rig:
  """`config.rig` -> Rig: a preset name, a JSON file, JSON text, or a list of cameras. Raises RigError."""
  if isinstance(value, Rig):
    return value
  if isinstance(value, str):
    text = value.strip()
    if text in PRESETS:
      return PRESETS[text]
    if text.startswith(("[", "{")):
      try:
        return _from_document(json.loads(text), "custom")
      except json.JSONDecodeError as e:
        raise RigError(f"config.rig: not valid JSON ({e})") from None
    if text.endswith(".json") or os.path.isfile(text):
      return load(text)
    raise RigError(f"config.rig={value!r}: not a preset ({', '.join(PRESETS)}), a .json file or a list of cameras")
  return from_cameras(value)


def canonical(value: Any) -> str:
  """`config.rig` as the config of a run records it: the name of the preset with these cameras, else the rig's JSON
  (so a run's saved config holds its cameras, whatever file they came from)."""
  rig = parse(value)
  preset = next((name for name, p in PRESETS.items() if p.cameras == rig.cameras), None)
  return preset or json.dumps(rig.to_json(), separators=(",", ":"), ensure_ascii=False)


def of_config(config) -> Rig:
  """The run's cameras: `config.rig`, narrowed to `dataloader_train.dataset.views` when that is set."""
  rig = parse(config.rig)
  views = tuple(config.dataloader_train.dataset.views)
  return rig.select(views) if views else rig


AGIBOT = from_cameras([
    {"name": "head_color", "view": 0,
     "caption_prefix": "The video is captured from a camera mounted on the head of the subject, facing forward."},
    {"name": "hand_left", "view": 1,
     "caption_prefix": "The video is captured from a camera mounted on the left hand of the subject."},
    {"name": "hand_right", "view": 2,
     "caption_prefix": "The video is captured from a camera mounted on the right hand of the subject."},
], name="agibot")
PRESETS: dict[str, Rig] = {AGIBOT.name: AGIBOT}
