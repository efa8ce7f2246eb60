"""The exact attention path against plain NumPy math (masks, causal, grouped-query); naming a call site changes
nothing in the math."""

import jax
import jax.numpy as jnp
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


@pytest.mark.parametrize("lengths,causal", [(None, False), ([3, 7], False), (None, True)])
def test_named_attention_has_the_same_values_and_gradients(lengths, causal):
  # `name` only tags what the kernel keeps for its backward (agibot_jax/models/remat.py); the math is unchanged.
  rng = np.random.default_rng(1)
  q, k, v = (rng.standard_normal((2, 7, 4, 8)).astype(np.float32) for _ in range(3))
  kv_lengths = None if lengths is None else jnp.array(lengths)

  def loss(q, k, v, name):
    o = dot_product_attention(q, k, v, kv_lengths_B=kv_lengths, is_causal=causal, name=name)
    return jnp.sum(jnp.sin(o))

  want = jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v, None)
  got = jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v, "self_attention")
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(g, w)


def test_unknown_attention_name_is_rejected():
  x = np.zeros((1, 2, 1, 4), np.float32)
  with pytest.raises(ValueError, match="self_attn"):
    dot_product_attention(x, x, x, name="self_attn")
