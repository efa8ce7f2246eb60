"""Per-clip captions from an episode's task name, scene text and the sub-actions overlapping the clip.

The template's fields (each already a sentence: trimmed, single-spaced, ending in . ! or ?; empty when absent):
  {task_name}  the task instruction (`task_name` of task_info; the LeRobot task string)
  {scene}      the initial scene description (`init_scene_text`)
  {actions}    the `action_text` of every sub-action segment overlapping the clip, in start order,
               consecutive repeats once
Whitespace of the result is collapsed. View prefixes ("The video is captured from a camera mounted on ...")
are added by the training pipeline (the rig's caption prefixes, agibot_jax/rig.py) and never written here.

Segments are end-exclusive, [start_frame, end_frame), as LeRobot's AgiBot port reads them; the public
sources do not say (spec agibot_world_formats.md §1.5), and an inclusive end changes overlap by one frame.
"""

from __future__ import annotations

import dataclasses
import string

DEFAULT_TEMPLATE = "{task_name} {scene} {actions}"
FIELDS = ("task_name", "scene", "actions")


@dataclasses.dataclass(frozen=True)
class Segment:
  start: int  # first source frame of the sub-action
  end: int  # one past its last source frame
  text: str


@dataclasses.dataclass(frozen=True)
class EpisodeText:
  task_name: str
  scene: str = ""
  segments: tuple[Segment, ...] = ()


def check_template(template: str) -> None:
  """Raises ValueError unless `template` uses only the fields in FIELDS (at least one)."""
  try:
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
  except ValueError as e:
    raise ValueError(f"caption template {template!r} is malformed ({e})") from None
  unknown = [n for n in names if n not in FIELDS]
  if unknown or not names:
    raise ValueError(f"caption template {template!r} may use only the fields {{{'}, {'.join(FIELDS)}}}, "
                     f"at least one; got {names}")


def sentence(text: str) -> str:
  """`text` trimmed and single-spaced, ending in . ! or ? ("" stays "")."""
  text = " ".join(text.split())
  return text if not text or text[-1] in ".!?" else text + "."


def overlapping_actions(segments: tuple[Segment, ...], first: int, last: int) -> list[str]:
  """Texts of the segments overlapping source frames [first, last], in start order, consecutive repeats once."""
  texts: list[str] = []
  for seg in sorted(segments, key=lambda s: (s.start, s.end)):
    text = sentence(seg.text)
    if seg.start <= last and seg.end > first and text and (not texts or texts[-1] != text):
      texts.append(text)
  return texts


def clip_caption(text: EpisodeText, first: int, last: int, template: str = DEFAULT_TEMPLATE) -> str:
  """The caption of the clip covering source frames [first, last] of the episode."""
  fields = {"task_name": sentence(text.task_name), "scene": sentence(text.scene),
            "actions": " ".join(overlapping_actions(text.segments, first, last))}
  return " ".join(template.format(**fields).split())
