"""The control types, stated once (spec training.md §2); the cameras are a rig's (agibot_jax/rig.py).

Configs, the dataset scan, the data pipeline and the caches read this table; nothing else spells a control folder.

Adding a control type is one `ControlType` entry here and one config file (configs/<name>.py):
- `source="file"`: the map is read from `control_input_<name>/<view>/<id>.mp4`;
- `source="computed"`: the map is computed from the RGB frames at load time by `compute`, a
  "module:function" path to `fn(frames_THWC uint8, rng or None, preset) -> frames_THWC uint8`
  (rng given in training: the map's random parameters are drawn from it; None: the inference `preset`).
`randomized` says whether training draws such parameters (a latent cache then freezes one draw per sample).
"""

from __future__ import annotations

import dataclasses

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
