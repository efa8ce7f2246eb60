"""agibot_jax/text/demo.py: the random stand-in text encoder has the configured FULL_CONCAT width."""

import pytest

from agibot_jax.text.demo import demo_layers


def test_demo_layers_split_the_width():
  assert demo_layers(96) == 3  # the tiny configs: 3 layers of 32
  assert demo_layers(100352) == 196  # the real width (28 × 3584) as 196 layers of 512
  for width in (96, 100352, 24):
    layers = demo_layers(width)
    assert width % layers == 0 and (width // layers) % 8 == 0 and width // layers <= 512


def test_demo_layers_rejects_a_width_without_a_split():
  with pytest.raises(ValueError, match="embedding_channels 1031"):
    demo_layers(1031)  # prime


def test_online_embeddings_stay_on_the_device():
  """embed_batch leaves an online encoder's output on the device (the train loop queues it), same values."""
  import jax
  import numpy as np

  from agibot_jax.text.provider import embed_batch
  from agibot_jax.text.demo import demo_text_embedder

  embedder = demo_text_embedder(96)
  embedder.num_tokens = 8
  captions = [["a red cup", "left hand", "right hand"]]
  packed = embed_batch(embedder, captions)
  assert isinstance(packed, jax.Array) and packed.shape == (1, 3 * 8, 96)
  np.testing.assert_array_equal(np.asarray(packed), embedder.embed(captions[0]).reshape(1, 24, 96))
