"""One attention entry point for every network in the package.

All attention calls (DiT self/cross-view/text attention, VAE mid-block attention, the
text encoder) go through `dot_product_attention`, so the kernel is chosen in one place:

- "xla":   plain softmax(q kᵀ·scale) v with float32 logits and HIGHEST matmul precision;
           the exact path used for parity against the PyTorch reference.
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` (flash attention on
           Hopper); needs bf16/fp16 inputs, so q, k, v are cast to `jnp.bfloat16`. Its training
           path refuses odd sequence lengths (jax's `check_is_flash_attention`: "Unsupported
           sequence length Q 15, KV 30", e.g. cross-view attention over 3x5 latent tokens per
           frame), so an odd query or key length is padded by one token, masked by the kernel's
           own sequence lengths (`query_seq_lengths`, `key_value_seq_lengths`) and cut off again.
- "auto":  "cudnn" on GPU, else "xla".

A `name` (a DiT call site) names the kernel's output and what it keeps for its backward, for the
remat policies (agibot_jax/models/remat.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from agibot_jax.models import remat

IMPLEMENTATIONS = ("xla", "cudnn", "auto")


def resolve_implementation(implementation: str) -> str:
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
  if implementation == "auto":
    return "cudnn" if jax.default_backend() == "gpu" else "xla"
  return implementation


def dot_product_attention(
    q_BQHK: jax.Array,
    k_BKHK: jax.Array,
    v_BKHK: jax.Array,
    *,
    kv_lengths_B: jax.Array | None = None,
    is_causal: bool = False,
    implementation: str = "xla",
    name: str | None = None,
) -> jax.Array:
  """Multi-head attention, scale 1/sqrt(head_dim).

  Args:
    q_BQHK: queries (batch, q_len, heads, head_dim).
    k_BKHK, v_BKHK: keys/values (batch, kv_len, kv_heads, head_dim); kv_heads may divide
      heads (grouped-query attention).
    kv_lengths_B: optional int (batch,) number of valid keys; keys at positions >= length are
      masked (a key-padding mask whose valid keys form a prefix).
    is_causal: causal mask (query i sees keys <= i).
    implementation: see module docstring.
    name: optional call site (one of `remat.ATTENTION`): the kernel's output and what it keeps for
      its backward, other than q, k, v, are named so, for the remat policies that save them
      (`remat.named_residuals`).

  Returns:
    (batch, q_len, heads, head_dim) in q's dtype.
  """
  impl = resolve_implementation(implementation)
  out_dtype, q_len = q_BQHK.dtype, q_BQHK.shape[1]
  if impl == "cudnn":
    kernel = functools.partial(_cudnn_attention, is_causal=is_causal)
    args = pad_to_even(*(t.astype(jnp.bfloat16) for t in (q_BQHK, k_BKHK, v_BKHK)),
                       None if kv_lengths_B is None else kv_lengths_B.astype(jnp.int32))
    expected = _cudnn_residuals(args[0], args[2])
  else:
    kernel = functools.partial(_reference_attention, is_causal=is_causal)
    args, expected = (q_BQHK, k_BKHK, v_BKHK, kv_lengths_B), None
  if name is not None:
    kernel = remat.named_residuals(kernel, name, expected)
  return kernel(*args)[:, :q_len].astype(out_dtype)


def pad_to_even(q_BQHK, k_BKHK, v_BKHK, kv_lengths_B):
  """(q, k, v, q_lengths, kv_lengths): q and k, v padded at the end to even lengths, with the lengths that mask the
  padding (None when nothing is padded: the kernel then runs without a mask, as before)."""
  b, q_len, kv_len = q_BQHK.shape[0], q_BQHK.shape[1], k_BKHK.shape[1]
  if q_len % 2 == 0 and kv_len % 2 == 0:
    return q_BQHK, k_BKHK, v_BKHK, None, kv_lengths_B
  pad = lambda t: jnp.pad(t, ((0, 0), (0, t.shape[1] % 2), (0, 0), (0, 0)))
  q_lengths = jnp.full((b,), q_len, jnp.int32)
  kv_lengths = jnp.full((b,), kv_len, jnp.int32) if kv_lengths_B is None else kv_lengths_B
  return pad(q_BQHK), pad(k_BKHK), pad(v_BKHK), q_lengths, kv_lengths


def _cudnn_attention(q, k, v, q_lengths, kv_lengths, is_causal):
  """cuDNN flash attention on bf16 q, k, v (BTNH layout)."""
  return jax.nn.dot_product_attention(q, k, v, query_seq_lengths=q_lengths, key_value_seq_lengths=kv_lengths,
                                      is_causal=is_causal, implementation="cudnn")


def _cudnn_residuals(q_BQHK, v_BKHK) -> tuple[jax.ShapeDtypeStruct, ...]:
  """The cuDNN kernel's output and what it keeps for its backward besides q, k, v: the output itself (B, Q, H, K)
  and the float32 softmax statistics (B, H, Q) (jax/_src/cudnn/fused_attention_stablehlo.py)."""
  b, q_len, heads, _ = q_BQHK.shape
  return (jax.ShapeDtypeStruct((b, q_len, heads, v_BKHK.shape[-1]), q_BQHK.dtype),
          jax.ShapeDtypeStruct((b, heads, q_len), jnp.float32))


def _reference_attention(q, k, v, kv_lengths, is_causal):
  """float32 math attention (exact path)."""
  heads, kv_heads = q.shape[2], k.shape[2]
  if heads != kv_heads:
    k = jnp.repeat(k, heads // kv_heads, axis=2)
    v = jnp.repeat(v, heads // kv_heads, axis=2)
  scale = q.shape[-1] ** -0.5
  hi = jax.lax.Precision.HIGHEST
  logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32), precision=hi) * scale
  q_len, kv_len = logits.shape[-2], logits.shape[-1]
  mask = None
  if kv_lengths is not None:
    mask = (jnp.arange(kv_len)[None, :] < kv_lengths[:, None])[:, None, None, :]
  if is_causal:
    causal = (jnp.arange(q_len)[:, None] >= jnp.arange(kv_len)[None, :])[None, None]
    mask = causal if mask is None else mask & causal
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(jnp.float32), precision=hi)
