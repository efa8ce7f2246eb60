"""agibot_jax/data/agibot_world/captions.py: the caption template and which sub-actions a clip gets."""

import pytest

from agibot_jax import rig
from agibot_jax.data.agibot_world import captions

TEXT = captions.EpisodeText("Stock the shelf", "A shelf and a crate of cans ", (
    captions.Segment(12, 30, "Place the can on the shelf"), captions.Segment(0, 12, "Pick a can from the crate."),
    captions.Segment(30, 40, "Place the can on the shelf")))


@pytest.mark.parametrize("first, last, actions", [
    (0, 8, "Pick a can from the crate."),
    (9, 17, "Pick a can from the crate. Place the can on the shelf."),
    (12, 20, "Place the can on the shelf."),  # end_frame 12 is exclusive
    (25, 35, "Place the can on the shelf."),  # a repeated sub-action once
    (40, 50, ""),
])
def test_default_template(first, last, actions):
  caption = captions.clip_caption(TEXT, first, last)
  assert caption == " ".join(f"Stock the shelf. A shelf and a crate of cans. {actions}".split())
  assert not any(v.caption_prefix in caption for v in rig.AGIBOT.cameras)


def test_custom_template_and_missing_fields():
  text = captions.EpisodeText("pick up the cup", "", ())
  assert captions.clip_caption(text, 0, 9, "Task: {task_name} Scene: {scene} {actions}") == (
      "Task: pick up the cup. Scene:")


@pytest.mark.parametrize("template", ["{view} {task_name}", "no fields", "{task_name"])
def test_bad_templates_refused(template):
  with pytest.raises(ValueError, match="caption template"):
    captions.check_template(template)
