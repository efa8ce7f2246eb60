"""agibot_jax/text/provider.py: per-view packing of caption embeddings (spec §3.3)."""

import numpy as np
import pytest

from agibot_jax.text import provider as text_provider


class _ConstantProvider:
  """Test double: caption i of a call -> a block filled with its length."""
  num_tokens = 4
  dim = 2
  projected = False

  def embed(self, captions):
    return np.stack([np.full((4, 2), len(c), np.float32) for c in captions])


def test_embed_batch_view_major():
  provider = _ConstantProvider()
  assert isinstance(provider, text_provider.TextEmbeddingProvider)
  emb = text_provider.embed_batch(provider, [["a", "bb", "ccc"], ["dddd", "e", "ff"]])
  assert emb.shape == (2, 12, 2)
  np.testing.assert_array_equal(emb[0, :, 0], [1] * 4 + [2] * 4 + [3] * 4)
  np.testing.assert_array_equal(emb[1, :, 0], [4] * 4 + [1] * 4 + [2] * 4)


def test_embed_batch_rejects_ragged_views():
  with pytest.raises(ValueError, match="same number of view captions"):
    text_provider.embed_batch(_ConstantProvider(), [["a", "b"], ["c"]])
