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


def test_cudnn_path_pads_odd_lengths_to_even_and_masks_the_padding(monkeypatch):
  """Issue 33 row 14: cuDNN's attention backward refuses odd lengths ("Unsupported sequence length Q 15, KV 30",
  cross-view attention over 3x5 tokens per frame on an H200). On CPU the cuDNN kernel is stood in for by JAX's XLA
  kernel with the same sequence-length arguments (in float32): the padded call gives the unpadded values and
  gradients, and the kernel only ever sees even lengths."""
  from agibot_jax.models import attention

  seen = []

  def kernel(q, k, v, q_lengths, kv_lengths, is_causal):
    seen.append((q.shape[1], k.shape[1], q_lengths is not None))
    f32 = lambda t: t.astype(jnp.float32)
    return jax.nn.dot_product_attention(f32(q), f32(k), f32(v), query_seq_lengths=q_lengths,
                                        key_value_seq_lengths=kv_lengths, is_causal=is_causal, implementation="xla")

  monkeypatch.setattr(attention, "_cudnn_attention", kernel)
  q_len, kv_len, lengths, causal = 15, 29, [20, 29], True  # odd query and key lengths, a key mask, causal
  rng = np.random.default_rng(2)
  q = jnp.asarray(rng.standard_normal((2, q_len, 4, 8)), jnp.bfloat16).astype(jnp.float32)
  k, v = (jnp.asarray(rng.standard_normal((2, kv_len, 4, 8)), jnp.bfloat16).astype(jnp.float32) for _ in range(2))
  kv_lengths = None if lengths is None else jnp.array(lengths)

  def loss(q, k, v, implementation):
    o = dot_product_attention(q, k, v, kv_lengths_B=kv_lengths, is_causal=causal, implementation=implementation)
    return jnp.sum(jnp.sin(o)), o

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True), static_argnums=3)
  (_, got), got_grads = grad(q, k, v, "cudnn")
  (_, want), want_grads = grad(q, k, v, "xla")
  assert seen and all(s[0] % 2 == 0 and s[1] % 2 == 0 and s[2] for s in seen), seen
  assert got.shape == (2, q_len, 4, 8)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  for g, w in zip(got_grads, want_grads):  # the cast to bfloat16 rounds the gradients
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-2, atol=2e-2)


def test_cudnn_path_leaves_even_lengths_unpadded_and_unmasked():
  from agibot_jax.models import attention

  q, k, v = (jnp.zeros((1, n, 2, 8), jnp.bfloat16) for n in (16, 30, 30))
  padded = attention.pad_to_even(q, k, v, None)
  assert all(a is b for a, b in zip(padded[:3], (q, k, v))) and padded[3:] == (None, None)


@pytest.mark.gpu
def test_cudnn_kernel_takes_odd_lengths_forward_and_backward_on_the_gpu():
  """Issue 33 row 14 on the real kernel: odd query and key lengths with a key mask run forward and backward through
  cuDNN (padded to even inside) and give the XLA path's values and gradients to bfloat16 rounding."""
  assert jax.default_backend() == "gpu", "a GPU test: run it on the GPU machine (pytest -m gpu)"
  rng = np.random.default_rng(3)
  q = jnp.asarray(rng.standard_normal((2, 15, 4, 64)), jnp.bfloat16)
  k, v = (jnp.asarray(rng.standard_normal((2, 29, 4, 64)), jnp.bfloat16) for _ in range(2))
  kv_lengths = jnp.array([20, 29])

  def loss(q, k, v, implementation):
    o = dot_product_attention(q, k, v, kv_lengths_B=kv_lengths, implementation=implementation)
    return jnp.sum(jnp.sin(o.astype(jnp.float32))), o

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True), static_argnums=3)
  (_, got), got_grads = grad(q, k, v, "cudnn")
  (_, want), want_grads = grad(q, k, v, "xla")
  f32 = lambda a: np.asarray(a, np.float32)
  np.testing.assert_allclose(f32(got), f32(want), atol=2e-2)  # bf16 outputs of size ~1: a few ulps
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(f32(g), f32(w), rtol=2e-2, atol=2e-2)
