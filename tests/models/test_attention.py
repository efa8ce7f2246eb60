"""The exact attention path against plain NumPy math (masks, causal, grouped-query)."""

import numpy as np
import pytest

from agibot_jax.models.attention import dot_product_attention


def _numpy_attention(q, k, v, lengths=None, causal=False):
  h, kh = q.shape[2], k.shape[2]
  k, v = np.repeat(k, h // kh, 2), np.repeat(v, h // kh, 2)
  s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  mask = np.ones(s.shape, bool)
  if lengths is not None:
    mask &= (np.arange(k.shape[1])[None, :] < np.asarray(lengths)[:, None])[:, None, None, :]
  if causal:
    mask &= np.tril(np.ones((q.shape[1], k.shape[1]), bool))[None, None]
  s = np.where(mask, s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", p, v)


@pytest.mark.parametrize("lengths,causal,kv_heads", [(None, False, 4), ([3, 7], False, 4), (None, True, 2)])
def test_xla_attention_matches_numpy(lengths, causal, kv_heads):
  rng = np.random.default_rng(0)
  q = rng.standard_normal((2, 7, 4, 8)).astype(np.float32)
  k = rng.standard_normal((2, 7, kv_heads, 8)).astype(np.float32)
  v = rng.standard_normal((2, 7, kv_heads, 8)).astype(np.float32)
  got = dot_product_attention(q, k, v, kv_lengths_B=None if lengths is None else np.array(lengths), is_causal=causal)
  np.testing.assert_allclose(np.asarray(got), _numpy_attention(q, k, v, lengths, causal), atol=1e-5)


def test_unknown_implementation_is_rejected():
  x = np.zeros((1, 2, 1, 4), np.float32)
  with pytest.raises(ValueError, match="flash"):
    dot_product_attention(x, x, x, implementation="flash")
