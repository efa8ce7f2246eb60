"""The Agibot 3-view dataset's facts, stated once: camera views and control types (spec training.md §1-§2).

Configs, the dataset scan, the data pipeline, the caches, the text precompute and the DiT's defaults read
these tables; nothing else spells a view name, a caption prefix or a control folder.

Adding a control type is one `ControlType` entry here and one config file (configs/<name>.py):
- `source="file"`: the map is read from `control_input_<name>/<view>/<id>.mp4`;
- `source="computed"`: the map is computed from the RGB frames at load time by `compute`, a
  "module:function" path to `fn(frames_THWC uint8, rng or None, preset) -> frames_THWC uint8`
  (rng given in training: the map's random parameters are drawn from it; None: the inference `preset`).
`randomized` says whether training draws such parameters (a latent cache then freezes one draw per sample).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class View:
  name: str
  view_id: int  # index of the camera embedding (adaln_view_embedder) and of the view's frames' ids
  caption_prefix: str  # prepended to every caption of this view (exact string, spec §1.3)
  neighbours: tuple[str, ...]  # views this view attends to in cross-view attention


VIEWS: dict[str, View] = {v.name: v for v in (
    View("head_color", 0,
         "The video is captured from a camera mounted on the head of the subject, facing forward.",
         ("hand_left", "hand_right")),
    View("hand_left", 1,
         "The video is captured from a camera mounted on the left hand of the subject.",
         ("head_color", "hand_right")),
    View("hand_right", 2,
         "The video is captured from a camera mounted on the right hand of the subject.",
         ("head_color", "hand_left")),
)}
VIEW_NAMES = tuple(VIEWS)
# The view whose caption file holds the sample's prompt; the other views' captions are their prefix alone.
PROMPT_VIEW = "head_color"

SOURCES = ("computed", "file")


@dataclasses.dataclass(frozen=True)
class ControlType:
  name: str
  source: str  # "computed" | "file"
  randomized: bool  # training draws the map's parameters at random per sample
  compute: str | None = None  # "module:function" for computed maps (module docstring)

  def __post_init__(self):
    if self.source not in SOURCES:
      raise ValueError(f"control {self.name!r}: source must be one of {SOURCES}, got {self.source!r}")
    if (self.source == "computed") != (self.compute is not None):
      raise ValueError(f"control {self.name!r}: a computed control needs `compute`, a file control must not have it")

  @property
  def key(self) -> str:
    """The loader batch key of the control pixels, and the dataset folder of file controls."""
    return f"control_input_{self.name}"

  @property
  def from_files(self) -> bool:
    return self.source == "file"


CONTROLS: dict[str, ControlType] = {c.name: c for c in (
    ControlType("edge", "computed", randomized=True, compute="agibot_jax.data.controls:edge"),
    ControlType("depth", "file", randomized=False),
    ControlType("seg", "file", randomized=False),
    ControlType("vis", "computed", randomized=True, compute="agibot_jax.data.controls:vis"),
)}


def control_types() -> tuple[str, ...]:
  return tuple(CONTROLS)


def control(name: str) -> ControlType:
  if name not in CONTROLS:
    raise ValueError(f"unknown control type {name!r}; known: {control_types()}")
  return CONTROLS[name]


def view(name: str) -> View:
  if name not in VIEWS:
    raise ValueError(f"unknown view {name!r}; known: {VIEW_NAMES}")
  return VIEWS[name]


def check_views(views: Sequence[str]) -> tuple[str, ...]:
  """`views` as a tuple; raises unless they are distinct known view names (at least one)."""
  views = tuple(views)
  unknown = [v for v in views if v not in VIEWS]
  if unknown or len(set(views)) != len(views) or not views:
    raise ValueError(f"views must be distinct names from {VIEW_NAMES}, got {views}")
  return views


def view_ids(views: Sequence[str]) -> tuple[int, ...]:
  return tuple(view(v).view_id for v in views)


def view_captions(prompt: str, views: Sequence[str]) -> list[str]:
  """The caption strings fed to the text encoder, one per view (spec §1.3).

  The prompt view gets `prefix + " " + prompt`; every other view `prefix + " "` (the trailing space is kept).
  """
  return [f"{view(v).caption_prefix} {prompt if v == PROMPT_VIEW else ''}" for v in views]


def cross_view_attn_map() -> tuple[tuple[int, ...], ...]:
  """Neighbour view ids of every view id (the DiT's `cross_view_attn_map`), in view-id order."""
  by_id = sorted(VIEWS.values(), key=lambda v: v.view_id)
  return tuple(tuple(view(n).view_id for n in v.neighbours) for v in by_id)
